"""Evol-Instruct on a Ray cluster: each round's pool is cut into units (a slice of the pool × the round) that the
workers run, and the driver commits each unit's rows once.

A round, for every unit not committed yet (a rerun skips committed units and reads their outcome from the record):
1. `evol.rewrite` (worker): rewrite the slice, cheap checks (`empty_evolution`, `prompt_leak`). With `--redis` the
   worker adds its candidates to the run's MinHash index in Redis (datasketch's Redis storage).
2. Barrier: every candidate of the round is indexed. Without Redis the driver indexes them in its own memory and
   resolves the near-duplicates itself.
3. `evol.answer` (worker): the near-duplicate rule (`earlier_duplicates`: a near-copy of anything *before* it in
   (round, pool position) order) rejects copies before their answer is paid for: with Redis each worker queries the
   shared index itself, so a near-copy of an instruction another worker produced is caught there. The rest are
   answered and judged, the eliminator runs, and the rows come back to the driver, which commits them with the
   unit's id (`UnitStore.commit`) together with the outcome the next round needs (which parents were replaced).

Rounds stay barriers: round r+1's pool is round r's pool with the kept evolutions in place of their parents. The
rule depends only on the set of candidates and their keys, never on which worker indexed what first, so a run on N
workers keeps exactly the rows one process keeps (`EvolInstruct.evolve`) for the same answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from gen.data.records import content_id
from gen.errors import UserError
from gen.methods.base import MethodRun, RowList
from gen.methods.evol_instruct import (
    METHOD,
    Candidate,
    EvolConfig,
    EvolInstruct,
    PoolItem,
    earlier_duplicates,
    index_key,
)
from gen.methods.inputs import SeedItem
from gen.scale.units import UnitStore, WorkUnit, slices, unit_id

# Without --unit-size a round is cut into about 16 units (enough for every worker of a small cluster to get
# several), of at most 256 items (big runs: few, large shards). It depends on the pool's size only, never on the
# number of workers, so a rerun with another --workers finds the same unit ids.
MAX_DEFAULT_UNIT_ITEMS = 256
UNITS_PER_ROUND = 16


def default_unit_size(pool_size: int) -> int:
    return max(1, min(MAX_DEFAULT_UNIT_ITEMS, -(-pool_size // UNITS_PER_ROUND)))


def redis_storage_config(url: str, basename: str) -> dict[str, Any]:
    """datasketch's Redis storage config for `redis://[:password@]host:port/db` (or rediss:// for TLS)."""
    try:
        from redis.connection import parse_url
    except ImportError:
        raise UserError("--redis needs the redis client: pip install 'kdforge[redis]'") from None
    try:
        options = parse_url(url)
    except ValueError as exc:
        raise UserError(f"--redis {_without_password(url)}: {exc}") from None
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    return {"type": "redis", "basename": basename.encode(), "redis": options}


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if "@" in rest else url


def check_redis(storage: Mapping[str, Any], flag_value: str) -> None:
    """Fail early with one line if the Redis server is not reachable (not in the middle of round 1)."""
    import redis

    try:
        redis.Redis(**storage["redis"]).ping()
    except redis.RedisError as exc:
        raise UserError(f"--redis {_without_password(flag_value)}: {exc}") from None


def redis_index_storage(url: str, seed: int, items: Sequence[SeedItem], threshold: float) -> dict[str, Any]:
    """`--redis URL`: the run's near-duplicate index in Redis, checked reachable now. One index per (seed, inputs,
    threshold): a rerun finds its own keys again, another run never does."""
    name = "kdforge:evol:" + content_id(METHOD, seed, [item.id for item in items], threshold)[:20]
    storage = redis_storage_config(url, name)
    check_redis(storage, url)
    return storage


# ------------------------------------------------------------------------------------------------------ worker side


def _unit_evol(worker, spec: Mapping[str, Any]) -> EvolInstruct:
    """An EvolInstruct whose rows go to memory, on this worker's engine, configured as the driver's."""
    run = MethodRun(worker.engine, ".", method=METHOD, sampling=spec["sampling"], seed=spec["seed"],
                    system=spec["system"], log=lambda line: None, sinks=(RowList(), RowList()))
    return EvolInstruct(run, EvolConfig(**spec["config"]), rewrite_max_tokens=spec["rewrite_max_tokens"])


def _shared_index(worker, evol: EvolInstruct, storage: Mapping[str, Any]):
    """One client of the run's Redis index per actor (opened on first use)."""
    name = storage["basename"]
    if worker.state.get("index_name") != name:
        worker.state["index"] = evol.new_index(storage_config=dict(storage))
        worker.state["index_name"] = name
    return worker.state["index"]


def rewrite_unit(worker, payload: Mapping[str, Any]) -> dict[str, Any]:
    evol = _unit_evol(worker, payload["spec"])
    candidates = evol.rewrite_phase(payload["round"], payload["entries"])
    storage = payload["spec"]["storage"]
    if storage is not None:
        index = _shared_index(worker, evol, storage)
        for c in candidates:
            index.add(c.key, c.evolved)
    return {"candidates": candidates, "rejected": evol.run.rejected.rows, "funnel": evol.run.funnel.to_dict()}


def answer_unit(worker, payload: Mapping[str, Any]) -> dict[str, Any]:
    evol = _unit_evol(worker, payload["spec"])
    candidates: Sequence[Candidate] = payload["candidates"]
    duplicates = payload["duplicates"]
    if duplicates is None:  # --redis: this worker resolves its own candidates against the shared index
        duplicates = earlier_duplicates(_shared_index(worker, evol, payload["spec"]["storage"]), candidates)
    replacements = evol.answer_phase(payload["round"], candidates, duplicates)
    return {"train": evol.run.train.rows, "rejected": evol.run.rejected.rows, "funnel": evol.run.funnel.to_dict(),
            "replacements": {pos: dataclasses.asdict(item) for pos, item in replacements.items()},
            "duplicates": duplicates}


# ------------------------------------------------------------------------------------------------------ driver side


def merge_funnel(run: MethodRun, funnel: Mapping[str, Any]) -> None:
    """Add a unit's per-round funnel counts to the run's (every stage a method counts carries its round)."""
    for round_, stages in (funnel.get("rounds") or {}).items():
        for stage, n in stages.items():
            run.funnel.add(stage, n, int(round_) if str(round_).isdigit() else round_)


class ClusterEvol:
    """`gen evol ... --ray`: the driver's loop over rounds and units (see the module docstring)."""

    def __init__(self, run: MethodRun, config: EvolConfig, *, rewrite_max_tokens: int | None,
                 unit_size: int | None = None, index_storage: Mapping[str, Any] | None = None):
        if unit_size is not None and unit_size < 1:
            raise UserError(f"--unit-size {unit_size}: must be at least 1")
        self.run = run
        self.evol = EvolInstruct(run, config, rewrite_max_tokens=rewrite_max_tokens)
        self.config = config
        self.cluster = run.engine.cluster
        self.unit_size = unit_size
        self.store = UnitStore(run.out_dir)
        self.spec: dict[str, Any] = {"config": dataclasses.asdict(config), "rewrite_max_tokens": rewrite_max_tokens,
                                     "sampling": run.sampling, "seed": run.seed, "system": run.system,
                                     "storage": dict(index_storage) if index_storage else None}

    def evolve(self, items: Sequence[SeedItem]) -> list[PoolItem]:
        run, store = self.run, self.store
        for stray in store.clean_orphans():
            run.log(f"removed {stray.name}: written by a driver that died before committing its unit")
        ids = [item.id for item in items]
        self.unit_size = self.unit_size or default_unit_size(len(items))
        pool = [PoolItem(id=item.id, instruction=item.instruction, root_id=item.id) for item in items]
        run.funnel.add("inputs", len(pool), round=0)
        index = self.evol.new_index(storage_config=self.spec["storage"])
        for pos, item in enumerate(items):
            index.add(index_key(0, pos, item.id), item.instruction)
        inputs_unit = unit_id(METHOD, run.seed, 0, "inputs", ids)
        rows = self.evol.input_rows(items)
        if store.commit(inputs_unit, {"train": rows}, {"round": 0}):
            self._count_rows(rows, [])
        if rows:
            run.funnel.add("kept", len(rows), 0)
        run.commit(extra=self.evol.extra(0))

        for round_ in range(1, self.config.rounds + 1):
            run.log(f"round {round_}/{self.config.rounds}: evolving {len(pool)} instructions "
                    f"in units of {self.unit_size} on {len(self.cluster.actors)} workers")
            pool = self._round(round_, pool, index)
            run.commit(extra={**self.evol.extra(round_), "units": self._unit_stats()})
            if run.stopped:
                run.log(f"round {round_}/{self.config.rounds}: budget exhausted; stopping (rerun to continue)")
                break
        return pool

    def _count_rows(self, train: Sequence[Mapping[str, Any]], rejected: Sequence[Mapping[str, Any]]) -> None:
        """Rows committed by units, in the driver's writers' key sets (which the summary counts; nothing is written
        through them)."""
        self.run.train.keys.update(row["id"] for row in train)
        self.run.rejected.keys.update(row["id"] for row in rejected)

    def _unit_stats(self) -> dict[str, Any]:
        return {"committed": len(self.store.committed_ids()), "workers": len(self.cluster.actors),
                "redone_after_worker_death": self.cluster.redone_units, "worker_restarts": self.cluster.restarts}

    def _round(self, round_: int, pool: list[PoolItem], index: Any) -> list[PoolItem]:
        run, store = self.run, self.store
        parts = slices(list(enumerate(pool)), self.unit_size)
        unit_ids = [unit_id(METHOD, run.seed, round_, "evolve", [item.id for _, item in part]) for part in parts]
        records = {uid: store.committed(uid) for uid in unit_ids}
        todo = [(n, uid, part) for n, (uid, part) in enumerate(zip(unit_ids, parts)) if records[uid] is None]
        label = lambda phase, n: f"round {round_} {phase} {n + 1}/{len(parts)}"  # noqa: E731

        # 1. rewrite (workers)
        rewritten: dict[str, Mapping[str, Any]] = {}
        self._run([WorkUnit(id=uid, kind="evol.rewrite", label=label("rewrite", n),
                            payload={"spec": self.spec, "round": round_, "entries": list(part)})
                   for n, uid, part in todo], lambda unit, out: rewritten.__setitem__(unit.id, out))

        # 2. without Redis the driver resolves near-duplicates (committed units' candidates are re-indexed after a
        # restart of the driver: the rule needs every candidate of the round in the index)
        duplicates: dict[str, dict[int, str] | None] = {uid: None for uid in rewritten}
        if self.spec["storage"] is None:
            for record in records.values():
                for key, text in (record or {}).get("candidates", []):
                    index.add(key, text)
            for out in rewritten.values():
                for c in out["candidates"]:
                    index.add(c.key, c.evolved)
            duplicates = {uid: earlier_duplicates(index, out["candidates"]) for uid, out in rewritten.items()}

        # 3. answer (workers); each unit is committed as soon as it is back
        def commit(unit: WorkUnit, out: Mapping[str, Any]) -> None:
            first = rewritten[unit.id]
            outcome = {"round": round_, "replacements": out["replacements"], "funnel": [first["funnel"], out["funnel"]],
                       "candidates": [(c.key, c.evolved) for c in first["candidates"]], "worker": out["worker"],
                       "rewrite_worker": first["worker"], "engine": out["engine"]}
            rejected = list(first["rejected"]) + out["rejected"]
            if store.commit(unit.id, {"train": out["train"], "rejected": rejected}, outcome):
                records[unit.id] = store.committed(unit.id)
                self._count_rows(out["train"], rejected)

        self._run([WorkUnit(id=uid, kind="evol.answer", label=label("answer", n),
                            payload={"spec": self.spec, "round": round_, "candidates": rewritten[uid]["candidates"],
                                     "duplicates": duplicates[uid]})
                   for n, uid, _ in todo if uid in rewritten], commit)

        next_pool = list(pool)
        replaced = 0
        for uid in unit_ids:
            record = records.get(uid)
            if record is None:  # not run (budget): its parents stay for the next round or the rerun
                continue
            for funnel in record.get("funnel", []):
                merge_funnel(run, funnel)
            for pos, item in record["replacements"].items():
                next_pool[int(pos)] = PoolItem(**item)
                replaced += 1
        run.funnel.add("carried_over_unchanged", len(pool) - replaced, round_)
        return next_pool

    def _run(self, units: list[WorkUnit], on_result) -> None:
        engine = self.run.engine

        def counted(unit: WorkUnit, out: Mapping[str, Any]) -> None:
            engine.count_unit(out["engine"])
            on_result(unit, out)

        never_run = self.cluster.run(units, counted, keep_going=engine.within_budget)
        if never_run or not engine.within_budget():
            engine.exhausted = True
            self.run.stopped = True
