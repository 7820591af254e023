"""`gen card DIR`: render a run's Hub dataset card (README.md) alone, for review before `gen publish`."""

from __future__ import annotations

import argparse
import sys

from gen.commands.common import finite_float

HELP = "render the Hub dataset card (README.md) of a run, for review"


def add_export_arguments(parser: argparse.ArgumentParser, *, repo_required: bool) -> None:
    """Options shared by `gen card` and `gen publish`: they must lay out the same configs to describe the same repo."""
    parser.add_argument("run_dir", metavar="DIR", help="a finished kdforge run directory (manifest.json + shards)")
    parser.add_argument("--repo", metavar="OWNER/NAME", required=repo_required, default=None if repo_required else "OWNER/NAME",
                        help="the Hub dataset repo" + ("" if repo_required else " named in the card's usage snippets"))
    parser.add_argument("--config-by", choices=("method", "operation", "single"), default="method",
                        help="one config per generation method (default; plus an 'all' config that is the default), "
                             "per method+operation, or a single 'default' config")
    parser.add_argument("--include-rejected", action="store_true",
                        help="also publish the 'rejected' split (rows with the reasons they were rejected)")
    parser.add_argument("--license", default=None,
                        help="Hub license id; default from the teacher's terms ('gemma' for the embedded Gemma "
                             "teacher, else 'other')")
    parser.add_argument("--language", action="append", default=None, metavar="CODE",
                        help="language code for the card (repeatable; default: en)")
    parser.add_argument("--pretty-name", default=None, help="the card's title (default: from the repo name)")
    parser.add_argument("--max-file-mb", type=finite_float, default=512,
                        help="cut a split into several Parquet files above this many MB of rows (default 512)")


def repo_id_arg(args: argparse.Namespace) -> str:
    """`--repo`, refused in one line unless the Hub would accept it (it lands in the card, the folder and the URL)."""
    from gen.errors import UserError
    from gen.publish.repo_id import repo_id_problem

    problem = repo_id_problem(args.repo)
    if problem:
        raise UserError(f"--repo {args.repo!r}: {problem}")
    return args.repo


def license_arg(args: argparse.Namespace) -> str | None:
    """`--license`, refused in one line naming the flag unless it is a Hub license id."""
    from gen.errors import UserError
    from gen.publish.card import license_problem

    problem = license_problem(args.license) if args.license is not None else None
    if problem:
        raise UserError(f"--license {args.license!r}: {problem}")
    return args.license


def export_options(args: argparse.Namespace) -> dict:
    return {"config_by": args.config_by, "include_rejected": args.include_rejected,
            "max_file_bytes": max(1, int(args.max_file_mb * 1024 * 1024))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_export_arguments(parser, repo_required=False)
    parser.add_argument("-o", "--output", default=None, metavar="FILE", help="write the card here (default: stdout)")


def run(args: argparse.Namespace) -> int:
    from gen.errors import UserError
    from gen.publish.card import card_facts, render_card
    from gen.publish.leaks import check_rows_for_secrets, environment_secrets
    from gen.publish.plan import plan_export

    repo_id, license = repo_id_arg(args), license_arg(args)
    plan = plan_export(args.run_dir, **export_options(args))
    # The card quotes rows: refuse what `gen publish` would refuse, before anything is printed or written.
    secrets = environment_secrets()
    check_rows_for_secrets(plan, secrets, action="render a card of")
    facts = card_facts(plan, repo_id=repo_id, license=license, languages=args.language or ["en"],
                       pretty_name=args.pretty_name)
    card = render_card(facts)
    leaked = next((name for name, value in secrets.items() if value in card), None)
    if leaked:
        raise UserError(f"{args.run_dir}: the card would contain the value of {leaked}; refusing to render it")
    if args.output:
        from pathlib import Path

        from gen.data.shards import atomic_write_bytes

        atomic_write_bytes(Path(args.output), card.encode("utf-8"))
        print(f"gen card: wrote {args.output} ({facts.published_rows:,} rows, {len(plan.configs)} config(s), "
              f"license {facts.license})", file=sys.stderr)
    else:
        sys.stdout.write(card)
    return 0
