"""What every method's loop shares: the engine, the train/rejected shard writers, the funnel, and commits.

A method is prompts + parsing + its own loop over phases: request phases (`MethodRun.ask`, answered by the run's
engine, in this process or as Ray request units) and, for a method whose per-item work should run on the workers,
method phases run by an executor (`gen.methods.phases`). A new method is one module here (`gen/methods/<name>.py`)
and its command (`gen/commands/<name>.py`: flags, then `method_run(...)` and the method's loop); Ray needs nothing
more.

A method's loop is *deterministic given (seed, inputs, teacher answers)*: every random choice comes from
`MethodRun.rng(...)`, seeded from the run seed and the content ids it is about, and every request carries a
per-request sampling seed made the same way. A rerun after a kill therefore builds the very same requests, the
engine answers the finished ones from its SQLite cache without sending them, and the ShardWriter skips rows already
on disk: the run picks up where it stopped, with the same rows.
"""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gen.data.records import content_id, make_row
from gen.data.rejections import mark_rejected
from gen.data.shards import ShardWriter, write_manifest
from gen.engine.budget import REPORTED_COUNTERS
from gen.teachers.base import ChatRequest, Completion, SamplingParams


class Funnel:
    """Counts per stage (generated -> rejected by reason -> kept), in total and per round, for the manifest and the
    summary table. Stage names are free-form; rejections are counted as `rejected:<reason>`."""

    def __init__(self) -> None:
        self.total: OrderedDict[str, int] = OrderedDict()
        self.rounds: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()

    def add(self, stage: str, n: int = 1, round: int | str | None = None) -> None:
        self.total[stage] = self.total.get(stage, 0) + n
        if round is not None:
            per_round = self.rounds.setdefault(str(round), OrderedDict())
            per_round[stage] = per_round.get(stage, 0) + n

    def reject(self, reason: str, n: int = 1, round: int | str | None = None) -> None:
        self.add(f"rejected:{reason}", n, round)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total": dict(self.total)}
        if self.rounds:
            out["rounds"] = {k: dict(v) for k, v in self.rounds.items()}
        return out

    _LAST = ("kept", "carried_over_unchanged", "not_needed")

    def _stage_rank(self, stage: str) -> tuple[int, int]:
        """Requests first, then what was generated (in the order first counted), the rejections, and what was kept."""
        order = list(self.total).index(stage)
        if stage.startswith("requests"):
            return 0, order
        if stage.startswith("rejected:"):
            return 2, order
        if stage in self._LAST:
            return 3, self._LAST.index(stage)
        return 1, order

    def table(self) -> str:
        """A small markdown table: one line per stage, one column per round (if any) and the total."""
        stages = sorted(self.total, key=self._stage_rank)
        columns = list(self.rounds) if len(self.rounds) <= 8 else []  # a long bootstrap: totals only
        header = ["stage"] + [f"round {c}" if c.isdigit() else c for c in columns] + ["total"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for stage in stages:
            cells = [stage] + [str(self.rounds[c].get(stage, 0)) for c in columns] + [str(self.total[stage])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def derive_seed(*parts: Any) -> int:
    """A 31-bit integer from any JSON-serialisable parts: stable across processes (unlike `hash()`)."""
    return int(content_id(*parts)[:8], 16) & 0x7FFFFFFF


def total_usage(completions: Iterable[Completion | None]) -> dict[str, int]:
    """Tokens of all the requests that went into one row (a row may cost several requests)."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for completion in completions:
        if completion is not None:
            usage["prompt_tokens"] += completion.prompt_tokens
            usage["completion_tokens"] += completion.completion_tokens
    return usage


class RowList:
    """A split's rows kept in memory (the ShardWriter interface a method uses: `write`, `flush`, `keys`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.keys: set[str] = set()

    def write(self, row: Mapping[str, Any]) -> bool:
        if row["id"] in self.keys:
            return False
        self.keys.add(row["id"])
        self.rows.append(dict(row))
        return True

    def flush(self) -> None:
        return None


class MethodRun:
    """One method run in `out_dir`: ask the engine, write kept and rejected rows, count the funnel, commit.

    `config` is the run's (redacted) configuration written to the manifest. `log` receives progress lines
    (default: stderr) — the CLI's kill-and-resume test reads them. `system` is the user's `--system` message.
    """

    def __init__(
        self,
        engine: Any,
        out_dir: str | Path,
        *,
        method: str,
        sampling: SamplingParams,
        seed: int = 0,
        config: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        system: str | None = None,
        sinks: tuple[Any, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.out_dir = Path(out_dir)
        self.method = method
        self.sampling = sampling
        self.seed = int(seed)
        self.config = dict(config or {})
        # `--system`: sent with the requests whose reply becomes a row's assistant turn, and recorded in that row.
        self.system = system or None
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        # `sinks` (train, rejected): where rows go instead of shards; a unit of work on a Ray worker collects its rows
        # in `RowList`s and the driver commits them (`gen.scale`).
        self.train, self.rejected = sinks or (ShardWriter(self.out_dir, "train"), ShardWriter(self.out_dir, "rejected"))
        self.funnel = Funnel()
        self._charged: dict[int, Completion] = {}  # id() -> completion (held so ids are not reused)
        self.stopped = False  # set once the engine's budget is exhausted: commit what we have and stop

    def spec(self) -> dict[str, Any]:
        """What a unit of work on a Ray worker needs to rebuild this run over its own engine (picklable)."""
        return {"method": self.method, "sampling": self.sampling, "seed": self.seed, "system": self.system}

    @classmethod
    def in_memory(cls, engine: Any, spec: Mapping[str, Any]) -> MethodRun:
        """The run of `spec` over `engine`, quiet, its rows collected in memory (`RowList`s): a unit of work."""
        return cls(engine, ".", method=spec["method"], sampling=spec["sampling"], seed=spec["seed"],
                   system=spec["system"], log=lambda line: None, sinks=(RowList(), RowList()))

    # ------------------------------------------------------------------------------------------------ randomness
    def rng(self, *parts: Any) -> random.Random:
        """A private random stream for one unit of work (a round, an item, a dialogue), identical on every rerun."""
        return random.Random(derive_seed(self.method, self.seed, *parts))

    def params_for(self, *parts: Any, base: SamplingParams | None = None, **changes: Any) -> SamplingParams:
        """Sampling params with a per-request seed derived from `parts`: a seeded backend samples the same text again
        if a request has to be re-sent, and the request (hence its cache key) is the same on every rerun."""
        base = base or self.sampling
        seed = derive_seed(self.method, self.seed, base.seed, *parts)
        return base.replace(seed=seed, **changes)

    # ------------------------------------------------------------------------------------------------- requests
    @property
    def teacher_id(self) -> str:
        return str(getattr(self.engine, "teacher_id", "unknown"))

    def ask(self, requests: Sequence[ChatRequest], desc: str = "", round: int | str | None = None) -> list[Any]:
        """Send a batch through the engine (in order). Failed results (ok False) are counted and left to the caller:
        they are not rows, and a rerun retries them (they are never cached)."""
        if not requests:
            return []
        results = self.engine.run(list(requests), desc=desc)
        failed = sum(1 for r in results if not r.ok)
        self.funnel.add("requests", len(results), round)
        if failed:
            self.funnel.add("requests_failed", failed, round)
        if getattr(self.engine, "exhausted", False):
            self.stopped = True
        return results

    # ------------------------------------------------------------------------------------------------------ rows
    def row(
        self,
        *,
        messages: list[Mapping[str, str]],
        operation: str | None,
        round: int | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        completions: Sequence[Completion | None] = (),
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        """A row in the common schema; `params` are merged over the base sampling params (minus the seed, which is
        per request)."""
        merged = {k: v for k, v in self.sampling.to_dict().items() if k != "seed"}
        merged["run_seed"] = self.seed
        merged.update(params or {})
        last = next((c for c in reversed(completions) if c is not None), None)
        if last is not None and last.sent is not None:
            merged["sent"] = dict(last.sent)  # what the backend really sent, where it differs (`Completion.sent`)
        # Each request's tokens are charged to the first row built from it, so that summing `usage` over all rows
        # (as the manifest does) gives what the run really spent, even when one reply yields several rows.
        fresh = [c for c in completions if c is not None and id(c) not in self._charged]
        for c in fresh:
            self._charged[id(c)] = c
        return make_row(
            messages=messages, method=self.method, operation=operation, round=round, parent_id=parent_id,
            root_id=root_id, system=system, teacher=self.teacher_id, params=merged, usage=total_usage(fresh),
            finish_reason=finish_reason if finish_reason is not None else (last.finish_reason if last else None),
        )

    def keep(self, row: Mapping[str, Any], round: int | str | None = None) -> bool:
        self.funnel.add("kept", 1, round)
        return self.train.write(row)

    def reject(self, row: Mapping[str, Any], reason: str | Sequence[str], round: int | str | None = None,
               duplicate_of: str | None = None) -> bool:
        """Record a rejection in the `rejected` split with its reason(s) in `filters` — never dropped silently."""
        reasons = [reason] if isinstance(reason, str) else list(reason)
        for r in reasons:
            self.funnel.reject(r, 1, round)
        return self.rejected.write(mark_rejected(row, reasons, duplicate_of))

    # ---------------------------------------------------------------------------------------------------- commit
    def engine_stats(self) -> dict[str, Any]:
        stats = dict(getattr(self.engine, "stats", {}) or {})
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}

    def commit(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Flush both splits (rows of finished work are on disk) and rewrite the manifest with the funnel."""
        self.train.flush()
        self.rejected.flush()
        return write_manifest(self.out_dir, config=self.config, funnel=self.funnel.to_dict(),
                              extra={"engine": self.engine_stats(), **(extra or {})})

    def summary(self) -> str:
        """What the CLI prints at the end: where the shards are, the funnel, and the engine's counters on one
        `key=value` line (tests of resume read `sent=` and `cache_hits=` from it)."""
        stats = self.engine_stats()
        lines = [
            f"shards: {self.out_dir / 'train'} ({len(self.train.keys)} rows), "
            f"{self.out_dir / 'rejected'} ({len(self.rejected.keys)} rows); manifest: {self.out_dir / 'manifest.json'}",
            "",
            self.funnel.table(),
            "",
            "engine: " + " ".join(f"{k}={stats.get(k, 0)}" for k in REPORTED_COUNTERS),
        ]
        if self.stopped:
            lines.append("stopped early: the token/cost budget is exhausted; rerun with a larger budget to continue")
        return "\n".join(lines)
