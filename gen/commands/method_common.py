"""The part every method's `gen` subcommand shares: open the engine and the run, print the summary, pick the exit
status (as `gen label` does: 0 done, 3 a budget stopped the run, 4 some requests failed after retries; a rerun of
the same command finishes the work from the cache)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from gen.errors import UserError

if TYPE_CHECKING:
    from gen.methods.base import MethodRun

EXIT_BUDGET = 3
EXIT_FAILURES = 4


def run_seed(args: argparse.Namespace) -> int:
    """The run's seed: `--seed` if given, else 0 (a method run is reproducible by default)."""
    return int(args.seed) if getattr(args, "seed", None) is not None else 0


def add_out_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--out", required=default is None, default=default, metavar="DIR",
                        help="run directory: OUT/train, OUT/rejected, OUT/manifest.json, OUT/.cache "
                             "(rerunning the same command resumes)" + (f" (default {default})" if default else ""))


def reject_redis_flag(args: argparse.Namespace, method: str) -> None:
    """`--redis` shares Evol-Instruct's near-duplicate index; no other command keeps one while it generates."""
    if getattr(args, "redis", None) and method != "evol_instruct":
        raise UserError(f"--redis: only `gen evol` keeps a near-duplicate index while generating; for {method} rows "
                        "run `gen dedup` on the merged output")


@contextmanager
def method_run(args: argparse.Namespace, method: str, sampling) -> Iterator[MethodRun]:
    """Engine + MethodRun for a command, holding the run directory's lock (`gen.data.lock`); the engine (and its
    teacher) is closed on the way out."""
    from gen.commands.common import open_engine, run_config
    from gen.data.lock import run_lock
    from gen.methods.base import MethodRun

    reject_redis_flag(args, method)
    with run_lock(args.out, method):  # one writer per run directory, taken before any request is sent
        engine = open_engine(args, args.out)
        try:
            config = run_config(args)
            config["method"] = method
            yield MethodRun(engine, args.out, method=method, sampling=sampling, seed=run_seed(args), config=config,
                            system=getattr(args, "system", None))
        finally:
            engine.close()


def finish(run: MethodRun, command: str) -> int:
    """Print where the shards are and the funnel (stdout) and the engine line (stderr); the exit status."""
    from gen.commands.common import print_summary

    print(f"gen {command}: done" if not run.stopped else f"gen {command}: stopped by the budget")
    print(run.summary(), flush=True)
    print_summary(run.engine)
    failed = run.funnel.total.get("requests_failed", 0)
    if run.stopped:
        return EXIT_BUDGET
    if failed:
        print(f"gen {command}: {failed} requests failed after retries (not written; rerun to retry them)",
              file=sys.stderr)
        return EXIT_FAILURES
    return 0
