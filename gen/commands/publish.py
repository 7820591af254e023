"""`gen publish DIR --repo OWNER/NAME [--private] [--dry-run OUTDIR]`: a finished run -> a Hub dataset.

Parquet under data/<config>/, the card (README.md) and its plots, pushed in one commit; `--dry-run OUTDIR` writes
the same files locally instead (then `datasets.load_dataset(OUTDIR)` reads them). The token comes from HF_TOKEN or
`hf auth login`, never from the command line; HF_ENDPOINT points at another Hub. Every shard is verified against
the run's manifest first; OUTDIR must be new, empty or an earlier export (only files recorded in its
`.kdforge-export.json` are replaced or removed).
"""

from __future__ import annotations

import argparse

from gen.commands.card import add_export_arguments, export_options, license_arg, repo_id_arg

HELP = "publish a run to the Hugging Face Hub as a dataset (Parquet + card), or --dry-run to a folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_export_arguments(parser, repo_required=True)
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--dry-run", metavar="OUTDIR", default=None,
                        help="write the repo's files to OUTDIR instead of uploading them (OUTDIR: new, empty or an "
                             "earlier dry run's folder, whose files kdforge replaces only if unchanged)")


def run(args: argparse.Namespace) -> int:
    from gen.data.outdir import check_out_dir
    from gen.errors import UserError
    from gen.publish.pipeline import publish

    if args.dry_run is not None:
        try:
            check_out_dir(args.dry_run)  # before the export is planned and written
        except UserError as exc:
            raise UserError(f"--dry-run {exc}") from None

    result = publish(args.run_dir, repo_id_arg(args), private=args.private, dry_run_dir=args.dry_run,
                     license=license_arg(args), languages=args.language or ["en"], pretty_name=args.pretty_name,
                     **export_options(args))
    plan, export = result.plan, result.export
    configs = ", ".join(c.name + (" (default)" if c.default else "") for c in plan.configs)
    rows = export.facts.published_rows
    print(f"gen publish: {rows:,} rows, configs: {configs}; {len(plan.data_files())} Parquet file(s); "
          f"license {export.facts.license}")
    if result.upload is None:
        print(f"gen publish: dry run: wrote {len(export.files)} files to {args.dry_run} "
              f"(check with: python -c \"import datasets; print(datasets.load_dataset('{args.dry_run}'))\")")
    elif result.upload.commit_url is None:
        print(f"gen publish: {result.upload.repo_url} already holds these {len(result.upload.unchanged)} files; "
              "no commit made")
    else:
        up = result.upload
        print(f"gen publish: one commit: {len(up.added)} file(s) added or changed, {len(up.deleted)} deleted, "
              f"{len(up.unchanged)} unchanged: {up.commit_url}")
    return 0
