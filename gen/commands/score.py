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
    from gen.methods.judge import judge_scores

    def score(run_dir: Path, rows: list[dict[str, Any]]):
        engine = open_engine(run_dir)
        try:
            outcome = judge_scores(engine, rows, rubric, params)
            outcome.counts["engine"] = {k: engine.stats.get(k, 0) for k in ("requests", "sent", "cache_hits", "failures",
                                                                              "prompt_tokens", "completion_tokens")}
            # On Ray (`gen.scale.DistributedEngine`) also the workers and the units they ran.
            outcome.counts["engine"].update({k: engine.stats[k] for k in ("workers", "units") if k in engine.stats})
            print_summary(engine)
        finally:
            engine.close()
        return outcome

    return score


def _scorers(args: argparse.Namespace) -> list[Scorer]:
    """The scorers the flags ask for, in the order they run (the judge; IFD plugs in here)."""
    return [_judge_scorer(args)]


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
