"""`gen score DIR --judge SPEC --rubric NAME|FILE`: add scores to every row of a finished run, in place.

Each scorer writes its own entry of the rows' `scores` column (`gen.data.scores`: `{"quality": {"value": 7.0,
"aspects": ..., "rationale": ..., "judge": ..., "rubric": ..., "template_hash": ..., "raw": ...}}`); the judge is one
scorer (`gen.methods.judge`), and a scorer is one entry of `_scorers` below (a new one, e.g. `--ifd MODEL`, adds its
flag and its entry there). A row whose verdict cannot be parsed even after one retry moves to `rejected` with reason
`judge_unparseable` (never a default score); the manifest's funnel gets a `score` entry with the counts.

Resuming: the judge's requests go through the engine and its cache (`DIR/.cache/requests.sqlite`), so a rerun is all
cache hits, and after a kill -9 it sends only what never completed. The run is rewritten once at the end through
`gen.data.rewrite` (atomic swap), under the run's lock from before its rows are read.

Exit status as `gen label`: 0 done, 3 a budget stopped it (the rows judged so far are written; rerun to finish from
the cache), 4 some requests failed after retries (those rows are left unscored; rerun), 2 a user error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gen.commands.common import add_engine_arguments, add_judge_arguments
from gen.errors import UserError

HELP = "score every row of a run with a judge's rubric (a `scores` column); unparseable verdicts go to `rejected`"

EXIT_BUDGET = 3
EXIT_FAILURES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory (rewritten in place)")
    add_judge_arguments(parser, rubric_default="quality")
    add_engine_arguments(parser)
    # IFD selection: instruction-following difficulty with a local causal LM (gen.logits.ifd).
    group = parser.add_argument_group("ifd")
    group.add_argument("--ifd", default=None, metavar="MODEL",
                       help="score IFD = PPL(answer | instruction) / PPL(answer) with a local causal LM (hf:PATH or "
                            "PATH: a transformers directory or .gguf); stored as the `ifd` score. With --ifd the "
                            "judge runs only when --judge is given")
    group.add_argument("--ifd-max-length", type=int, default=1024, metavar="N",
                       help="IFD: tokens per sequence (the answer keeps its head, the context its tail)")
    group.add_argument("--ifd-chat-template", default=None, metavar="FILE",
                       help="IFD: Jinja chat template for the model (default: its own; for a model without one, the "
                            "plain User:/Assistant: transcript the bundled teacher is prompted with)")
    group.add_argument("--ifd-batch-rows", type=int, default=8, metavar="N", help="IFD: rows per forward pass")
    group.add_argument("--ifd-max-batch-tokens", type=int, default=2048, metavar="N",
                       help="IFD: padded tokens per forward pass (bounds the [tokens, vocab] logits memory)")
    parser.set_defaults(judge=None)  # None: the default judge (llamacpp), unless only --ifd is asked for


Scorer = Callable[[Path, list[dict[str, Any]]], Any]  # (run dir, rows) -> gen.data.scores.ScoreOutcome


def _judge_scorer(args: argparse.Namespace) -> Scorer:
    """The judge as a scorer: its rubric and params are checked now (before the run is touched), its engine is
    opened when it scores and closed before the run is rewritten."""
    from gen.commands.common import judge_sampling_from_args, open_judge_engine
    from gen.methods.judge import load_rubric

    rubric = load_rubric(args.rubric)
    if rubric.pairwise:
        raise UserError(f"--rubric {args.rubric}: compares two answers (target: pair); gen score needs a rubric "
                          "that scores one answer or instruction")
    params = judge_sampling_from_args(args, rubric)
    return judge_scorer(rubric, params, lambda run_dir: open_judge_engine(args, run_dir))


def judge_scorer(rubric, params, open_engine: Callable[[Path], Any]) -> Scorer:
    """A scorer applying `rubric` (a pointwise `gen.methods.judge.Rubric`) with sampling `params` through the engine
    `open_engine(run_dir)` opens (closed once the rows are judged). `gen score --judge` builds it from its flags;
    a caller holding an open teacher (the vLLM tests) passes an opener of an engine over it."""
    from gen.commands.common import print_summary
    from gen.engine.budget import reported_counters
    from gen.methods.judge import judge_scores

    def score(run_dir: Path, rows: list[dict[str, Any]]):
        engine = open_engine(run_dir)
        try:
            outcome = judge_scores(engine, rows, rubric, params)
            outcome.counts["engine"] = reported_counters(engine)
            print_summary(engine)
        finally:
            engine.close()
        return outcome

    return score


def _ifd_scorer(args: argparse.Namespace) -> Scorer:
    """IFD as a scorer (gen.logits.ifd). Rows already holding an `ifd` entry from the same model files, max length
    and row text are reused, so a rerun loads no model when nothing changed; rows with no answer tokens move to
    `rejected` with reason `ifd_no_answer`."""
    from gen.commands.common import read_chat_template
    from gen.data.scores import ScoreOutcome, parse_scores
    from gen.logits.capture import check_hf_model_path
    from gen.logits.ifd import NO_ANSWER, IFDScorer, model_fingerprint, row_fingerprint

    spec = args.ifd
    path = spec[3:] if spec.startswith("hf:") else spec
    try:
        check_hf_model_path(path)
    except UserError as exc:
        raise UserError(str(exc).replace("--teacher", "--ifd")) from None
    if args.ifd_max_length < 2:
        raise UserError(f"--ifd-max-length {args.ifd_max_length}: must be at least 2")
    if args.ifd_batch_rows < 1:
        raise UserError(f"--ifd-batch-rows {args.ifd_batch_rows}: must be at least 1")
    if args.ifd_max_batch_tokens < 1:
        raise UserError(f"--ifd-max-batch-tokens {args.ifd_max_batch_tokens}: must be at least 1")
    try:
        template = read_chat_template(args.ifd_chat_template)
    except UserError as exc:
        raise UserError(str(exc).replace("--chat-template", "--ifd-chat-template")) from None
    model_id = model_fingerprint(path, args.ifd_max_length, template)

    def score(run_dir: Path, rows: list[dict[str, Any]]):
        outcome = ScoreOutcome("ifd", settings={"model": f"hf:{path}", "model_fingerprint": model_id,
                                               "max_length": args.ifd_max_length})
        fingerprints = [row_fingerprint(row) for row in rows]
        todo = []
        for position, row in enumerate(rows):
            old = parse_scores(row.get("scores")).get("ifd")
            if not (isinstance(old, dict) and old.get("model_fingerprint") == model_id
                    and old.get("row_fingerprint") == fingerprints[position]):
                todo.append(position)
        values = []
        if todo:
            from gen.teachers.llamacpp import TRANSCRIPT_TEMPLATE

            scorer = IFDScorer(path, max_length=args.ifd_max_length, batch_rows=args.ifd_batch_rows,
                               max_batch_tokens=args.ifd_max_batch_tokens,
                               chat_template=template, default_chat_template=TRANSCRIPT_TEMPLATE)
            try:
                values = scorer.score([rows[i] for i in todo])
            finally:
                scorer.close()
        for position, value in zip(todo, values):
            if value is None:
                outcome.rejected[position] = NO_ANSWER
                continue
            outcome.entries[position] = {
                "value": value.ifd, "ppl_conditioned": value.ppl_conditioned,
                "ppl_unconditioned": value.ppl_unconditioned, "answer_tokens": value.answer_tokens,
                "model": f"hf:{path}", "model_fingerprint": model_id, "row_fingerprint": fingerprints[position]}
        outcome.counts = {"rows": len(rows), "scored": len(outcome.entries), "reused": len(rows) - len(todo),
                          "no_answer": len(outcome.rejected)}
        return outcome

    return score


def _scorers(args: argparse.Namespace) -> list[Scorer]:
    """The scorers the flags ask for, in the order they run: the judge (unless only --ifd is given), then IFD."""
    scorers = []
    if args.judge is not None or not args.ifd:
        if args.judge is None:
            args.judge = "llamacpp"
        scorers.append(_judge_scorer(args))
    if args.ifd:
        scorers.append(_ifd_scorer(args))
    return scorers


def run(args: argparse.Namespace) -> int:
    scorers = _scorers(args)  # flags and rubric files are checked before the run is locked or read
    return score_run(Path(args.run_dir), scorers)


def score_run(run_dir: Path, scorers: list[Scorer]) -> int:
    """Score the run at `run_dir` in place with `scorers`; the exit status as `gen score` returns it."""
    from gen.data.rewrite import rewriting

    # The run's lock from before its rows are read until the scored run is in place (gen.data.rewrite).
    with rewriting(run_dir, None, "score"):
        return _score(run_dir, scorers)


def _score(run_dir: Path, scorers: list[Scorer]) -> int:
    from gen.data.rejections import Rejections
    from gen.data.rewrite import load_train, rewrite_run
    from gen.data.scores import apply_scores, scores_texts, with_scores
    from gen.data.shards import list_splits, shard_paths

    if not shard_paths(run_dir, "train") and "rejected" in list_splits(run_dir):
        # Every row was rejected already (by an earlier `gen score`, dedup or filter): nothing left to score.
        print(f"gen score: {run_dir}: no kept rows to score (all {run_dir}/rejected)")
        return 0
    table = load_train(run_dir)
    columns = [c for c in ("id", "messages", "system") if c in table.column_names]
    rows = table.select(columns).to_pylist()
    for row, scores in zip(rows, scores_texts(table)):  # the scores already there (IFD reuses its own)
        row["scores"] = scores
    outcomes = [scorer(run_dir, rows) for scorer in scorers]
    table = with_scores(table, apply_scores(scores_texts(table), outcomes))
    rejected = Rejections()
    for outcome in outcomes:
        for position, reason in outcome.rejected.items():
            rejected.add(position, [reason])
    funnel = rejected.funnel_entry(len(rows), scorers={o.scorer: o.counts for o in outcomes})
    settings = {o.scorer: o.settings for o in outcomes}
    destination = rewrite_run(run_dir, None, table, rejected, step="score", settings=settings, funnel_entry=funnel)
    for outcome in outcomes:
        c = outcome.counts
        if outcome.scorer == "ifd":
            print(f"gen score: ifd: {c['rows']} rows -> {c['scored']} scored, {c['reused']} reused, "
                  f"{c['no_answer']} without answer tokens (moved to rejected: ifd_no_answer) in {destination}")
            continue
        print(f"gen score: {outcome.scorer}: {c.get('rows', len(rows))} rows -> {c.get('scored', 0)} scored, "
              f"{c.get('unparseable', 0)} unparseable (moved to rejected: judge_unparseable), "
              f"{c.get('failed', 0)} failed, {c.get('not_sent_budget', 0)} not sent (budget) in {destination}")
    first_error = next((o.first_error for o in outcomes if o.first_error), None)
    if first_error:
        failed = sum(o.failed for o in outcomes)
        print(f"gen score: {failed} requests failed (rows left unscored; rerun to retry); first error: {first_error}",
              file=sys.stderr)
    if any(o.exhausted for o in outcomes):
        return EXIT_BUDGET
    return EXIT_FAILURES if any(o.failed for o in outcomes) else 0
