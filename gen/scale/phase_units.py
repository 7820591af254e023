"""`RayPhases`: the executor of a method's rounds (`gen.methods.phases`) on a Ray cluster — each round's items are
cut into slices, every phase of a slice runs on a worker as a unit of work, and the driver commits each slice's rows
once. Any `PhasedMethod` runs here unchanged; nothing in this module knows a method.

A round, for every slice not committed yet (a rerun skips committed slices and reads their outcome from the record):
1. each phase (`phase` units, `run_phase_unit`): a worker rebuilds the run (`MethodRun.in_memory`) and the method
   (`from_spec`) over its own engine, runs the phase on its slice, and returns the phase's output, its rows and its
   funnel counts;
2. between two phases, a barrier in the driver: `method.between(...)` sees every slice's output (and the outcomes of
   the slices committed by an earlier run) and says what each slice's next phase is given (Evol-Instruct: the
   near-duplicates that the driver's index found);
3. after the last phase, a slice is committed as soon as it is back (`UnitStore.commit`): its rows of every phase,
   and a record with `method.outcome(...)`, the funnel of each phase, and which worker ran each phase.

Rounds stay barriers. A method whose phases depend only on their slice and on what `between` gives them keeps, on N
workers, exactly the rows one process keeps (`LocalPhases`) for the same answers.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from gen.engine.budget import COUNTERS
from gen.errors import InvalidSetting
from gen.methods.base import MethodRun
from gen.methods.phases import PhasedMethod
from gen.scale.units import UnitStore, WorkUnit, slices, unit_id

# Without --unit-size a round is cut into about 16 units (enough for every worker of a small cluster to get
# several), of at most 256 items (big runs: few, large shards). It depends on the number of items only, never on the
# number of workers, so a rerun with another --workers finds the same unit ids.
MAX_DEFAULT_UNIT_ITEMS = 256
UNITS_PER_ROUND = 16


def default_unit_size(items: int) -> int:
    return max(1, min(MAX_DEFAULT_UNIT_ITEMS, -(-items // UNITS_PER_ROUND)))


# ------------------------------------------------------------------------------------------------------ worker side


def run_phase_unit(worker, payload: Mapping[str, Any]) -> dict[str, Any]:
    """In an actor: one phase of one slice, with the worker's engine; rows and funnel come back to the driver."""
    module_name, _, class_name = payload["method_class"].partition(":")
    method_class = getattr(importlib.import_module(module_name), class_name)
    run = MethodRun.in_memory(worker.engine, payload["run"])
    method = method_class.from_spec(run, payload["spec"])
    output = method.phase(payload["phase"], payload["round"], payload["data"], payload["given"])
    return {"output": output, "train": run.train.rows, "rejected": run.rejected.rows, "funnel": run.funnel.to_dict()}


# ------------------------------------------------------------------------------------------------------ driver side


def merge_funnel(run: MethodRun, funnel: Mapping[str, Any]) -> None:
    """Add a unit's per-round funnel counts to the run's (every stage a phased method counts carries its round)."""
    for round_, stages in (funnel.get("rounds") or {}).items():
        for stage, n in stages.items():
            run.funnel.add(stage, n, int(round_) if str(round_).isdigit() else round_)


class RayPhases:
    """Runs a `PhasedMethod`'s rounds on the cluster behind `run.engine` (a `DistributedEngine`), committing each
    slice's rows in `run.out_dir` (`OUT/units/`, `OUT/<split>/unit-<id>.arrow`)."""

    def __init__(self, run: MethodRun, unit_size: int | None = None):
        if unit_size is not None and unit_size < 1:
            raise InvalidSetting("unit_size", f"unit_size {unit_size}: must be at least 1")
        self.run = run
        self.engine = run.engine
        self.cluster = run.engine.cluster
        self.unit_size = unit_size
        self.store = UnitStore(run.out_dir)
        for stray in self.store.clean_orphans():
            run.log(f"removed {stray.name}: written by a driver that died before committing its unit")

    def describe(self, items: int) -> str:
        """How a round of `items` is run, for the log."""
        return f" in units of {self.unit_size or default_unit_size(items)} on {len(self.cluster.actors)} workers"

    def extra(self) -> dict[str, Any]:
        return {"units": {"committed": len(self.store.committed_ids()), "workers": len(self.cluster.actors),
                          "redone_after_worker_death": self.cluster.redone_units,
                          "worker_restarts": self.cluster.restarts}}

    def keep_once(self, round_: int, name: str, item_ids: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows that do not come from a phase (inputs kept as rows): one unit of their own, committed once."""
        run = self.run
        if self.store.commit(unit_id(run.method, run.seed, round_, name, item_ids), {"train": list(rows)},
                             {"round": round_}):
            self._count_rows(rows, [])
        if rows:
            run.funnel.add("kept", len(rows), round_)

    def run_round(self, method: PhasedMethod, round_: int, items: Sequence[Any]) -> list[dict[str, Any] | None]:
        """Every phase of every slice not committed yet; returns each slice's committed record (None: not run, the
        budget ran out), in slice order."""
        run, store = self.run, self.store
        if not self.unit_size:
            self.unit_size = default_unit_size(len(items))
        parts = slices(list(items), self.unit_size)
        ids = [unit_id(run.method, run.seed, round_, method.step, [method.item_id(x) for x in part]) for part in parts]
        records = {uid: store.committed(uid) for uid in ids}
        number = {uid: n for n, uid in enumerate(ids)}
        data: dict[str, Any] = {uid: part for uid, part in zip(ids, parts) if records[uid] is None}
        given: dict[str, Any] = {uid: None for uid in data}
        done: dict[str, list[Mapping[str, Any]]] = {uid: [] for uid in data}  # each phase's unit result
        payload = {"method_class": f"{type(method).__module__}:{type(method).__qualname__}", "run": run.spec(),
                   "spec": method.spec(), "round": round_}

        def commit(uid: str) -> None:
            outs = done[uid]
            outcome = {"round": round_, **method.outcome(round_, [out["output"] for out in outs]),
                       "funnel": [out["funnel"] for out in outs], "worker": outs[-1]["worker"],
                       **{f"{name}_worker": out["worker"] for name, out in zip(method.phases[:-1], outs)},
                       "engine": outs[-1]["engine"]}
            rows = {split: [row for out in outs for row in out[split]] for split in ("train", "rejected")}
            if store.commit(uid, rows, outcome):
                records[uid] = store.committed(uid)
                self._count_rows(rows["train"], rows["rejected"])

        for k, name in enumerate(method.phases):
            last = k + 1 == len(method.phases)

            def on_result(unit: WorkUnit, out: Mapping[str, Any], last: bool = last) -> None:
                done[unit.id].append(out)
                if last:
                    commit(unit.id)

            self._run([WorkUnit(id=uid, kind="phase", label=f"round {round_} {name} {number[uid] + 1}/{len(parts)}",
                                payload={**payload, "phase": name, "data": data[uid], "given": given[uid]})
                       for uid in ids if uid in data], on_result)
            data = {uid: outs[-1]["output"] for uid, outs in done.items() if len(outs) == k + 1}
            if not last:
                given = dict(method.between(name, round_, data, [r for r in records.values() if r is not None]))

        for uid in ids:
            if records[uid] is not None:
                for funnel in records[uid].get("funnel", []):
                    merge_funnel(run, funnel)
        return [records[uid] for uid in ids]

    def _count_rows(self, train: Sequence[Mapping[str, Any]], rejected: Sequence[Mapping[str, Any]]) -> None:
        """Rows committed by units, in the driver's writers' key sets (which the summary counts; nothing is written
        through them)."""
        self.run.train.keys.update(row["id"] for row in train)
        self.run.rejected.keys.update(row["id"] for row in rejected)

    def _run(self, units: list[WorkUnit], on_result) -> None:
        never_run = self.engine.run_units(units, on_result, counters=COUNTERS)
        if never_run or not self.engine.budget.has_room():
            self.engine.budget.exhausted = True
            self.run.stopped = True
