"""`DistributedEngine`: the engine's `run(requests)` with the requests spread over Ray workers in units.

Every method's loop talks to an engine (`engine.run(requests) -> results`, `stats`, `exhausted`, `teacher_id`).
With `--ray`, `gen.commands.common.open_engine` hands it this one instead: the method's own logic (Self-Instruct's
pool and its central ROUGE-L admission, UltraChat's and self-chat's turn loop, `gen label`'s chunks, Orca's system
messages) stays in the driver unchanged, rounds and turns stay barriers, and only the requests travel. So a run on
N workers builds exactly the rows a one-process run builds from the same answers.

A call's requests not already in the driver's cache are cut into units of `unit_size` in request order; a unit's
id hashes its requests' cache keys. A finished unit is committed to the driver's request cache in one transaction
with its id (`RequestCache.commit_unit`), so it is committed once, and a rerun of the command, wherever its units
land, answers it from the cache. Failed requests are never cached (a rerun retries them), as in `Engine`.

Budgets are the engine's own `Budget` (`gen.engine.budget`), checked here between units: no new unit starts once
what the finished units spent reaches the budget, so a run overshoots by at most the units in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gen.data.records import content_id
from gen.engine.budget import COUNTERS, SENDING_COUNTERS, Budget
from gen.engine.cache import RequestCache
from gen.engine.engine import Result, assemble_results, split_by_cache
from gen.errors import InvalidSetting
from gen.scale.cluster import RayCluster
from gen.scale.units import WorkUnit, slices
from gen.teachers.base import ChatRequest, Completion
from gen.teachers.pricing import Price, price_for

DEFAULT_UNIT_REQUESTS = 64


def run_request_unit(worker, payload: Sequence[ChatRequest]) -> dict[str, Any]:
    """In an actor: answer one unit of requests with the worker's own engine (its retries, rate limits, cache)."""
    results = worker.engine.run(list(payload), desc="unit")
    return {"answers": [(r.completion.text, r.completion.finish_reason, r.completion.prompt_tokens,
                         r.completion.completion_tokens, r.completion.sent) if r.ok else r.error for r in results]}


class DistributedEngine:
    """The `Engine` interface over a `RayCluster` (which it owns and closes). Budgets and counters are a `Budget`,
    as in `Engine`: the workers report what they sent per unit, the driver counts each call's results."""

    def __init__(self, cluster: RayCluster, *, cache_path=None, unit_size: int = DEFAULT_UNIT_REQUESTS,
                 max_total_tokens: int | None = None, max_cost: float | None = None, price: Price | None = None):
        if unit_size < 1:
            raise InvalidSetting("unit_size", f"unit_size {unit_size}: must be at least 1")
        self.cluster = cluster
        self.teacher_id = cluster.teacher_id
        self.cache = RequestCache(cache_path)
        self.unit_size = unit_size
        self.price = price or price_for(self.teacher_id)
        self.budget = Budget(max_total_tokens=max_total_tokens, max_cost=max_cost, price=self.price,
                             teacher_id=self.teacher_id)
        self.stats: dict[str, Any] = self.budget.stats
        self.stats.update(units=0, workers=len(cluster.actors))

    @property
    def exhausted(self) -> bool:
        return self.budget.exhausted

    def run_units(self, units: Sequence[WorkUnit], on_result: Callable[[WorkUnit, Mapping[str, Any]], None],
                  counters: Sequence[str] = COUNTERS) -> list[WorkUnit]:
        """Run units on the cluster while the budget has room; each finished unit's `counters` (what its worker
        counted) are added before `on_result` sees it. Returns the units never started (the budget ran out)."""

        def counted(unit: WorkUnit, outcome: Mapping[str, Any]) -> None:
            self.budget.add(outcome["engine"], counters)
            self.stats["units"] += 1
            on_result(unit, outcome)

        return self.cluster.run(units, counted, keep_going=self.budget.has_room)

    def run(self, requests: Sequence[ChatRequest], desc: str = "") -> list[Result]:
        """Complete `requests` on the workers; one `Result` per request, in order (as `Engine.run`)."""
        requests = list(requests)
        started = time.monotonic()
        keys, cached, missing = split_by_cache(requests, self.teacher_id, self.cache)
        outcomes: dict[str, Completion | str] = {}
        parts = slices(list(missing.items()), self.unit_size)
        units = [WorkUnit(id=content_id("requests", [k for k, _ in part])[:24], kind="requests",
                          payload=[r for _, r in part], label=f"{desc or 'requests'} {n + 1}/{len(parts)}")
                 for n, part in enumerate(parts)]

        def on_result(unit: WorkUnit, outcome: Mapping[str, Any]) -> None:
            answered: dict[str, Completion] = {}
            for request, answer in zip(unit.payload, outcome["answers"]):
                key = request.cache_key(self.teacher_id)
                if isinstance(answer, str) or answer is None:
                    outcomes[key] = answer or "failed"
                else:
                    answered[key] = outcomes[key] = Completion(*answer)
            self.cache.commit_unit(unit.id, self.teacher_id, answered)

        if units and not self.exhausted:
            # Requests, failures and skips are counted below from the results, as `Engine.run` counts them; the
            # workers add what they sent (and their own cache hits).
            self.run_units(units, on_result, counters=SENDING_COUNTERS)
        results = assemble_results(requests, keys, cached, outcomes)  # a unit never run: "budget exhausted"
        self.budget.count_results(results)
        self.stats["seconds"] += time.monotonic() - started
        return results

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            self.cluster.close()
