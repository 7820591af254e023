"""`build_distributed_engine`: the engine interface over a Ray cluster, built from the same specs as a one-process
engine (`gen.engine.engine.build_engine`). The command chooses which of the two it builds."""

from __future__ import annotations

import os

from gen.engine.spec import EngineSpec, ScaleSpec
from gen.scale.cluster import RayCluster
from gen.scale.request_units import DEFAULT_UNIT_REQUESTS, DistributedEngine
from gen.teachers.spec import TeacherSpec


def build_distributed_engine(teacher: TeacherSpec, engine: EngineSpec, scale: ScaleSpec,
                             cache_path: str | os.PathLike | None = None) -> DistributedEngine:
    """A `DistributedEngine` over a new `RayCluster` of `scale.workers` actors, each opening `teacher`. The driver
    keeps the request cache at `cache_path` (in memory when None; the actors share it where they can reach it) and
    enforces `engine`'s budgets between units. The engine owns the cluster: `engine.close()` closes both."""
    cluster = RayCluster(teacher, engine, scale, cache_path=cache_path)
    try:
        return DistributedEngine(cluster, cache_path=cache_path, unit_size=scale.unit_size or DEFAULT_UNIT_REQUESTS,
                                 max_total_tokens=engine.max_total_tokens, max_cost=engine.max_cost,
                                 price=engine.price)
    except BaseException:
        cluster.close()
        raise
