"""Typed, picklable settings of the request engine and of a Ray run, built once from the CLI flags.

Library code, Ray actors and methods receive these, never an `argparse.Namespace` or a dict of flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gen.teachers.pricing import Price


@dataclass(frozen=True)
class EngineSpec:
    """How the engine sends requests (see `gen.engine.engine.Engine` for what each does).

    max_total_tokens / max_cost: budgets for what this run sends (cache hits are free); None: no budget.
    price: dollars per 1M tokens, overriding the built-in table (None: the table's, if the model is known).
    """

    concurrency: int = 16
    max_concurrency: int = 256
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 120.0
    max_retries: int = 6
    max_total_tokens: int | None = None
    max_cost: float | None = None
    price: Price | None = None
    progress: bool = True

    def for_worker(self) -> EngineSpec:
        """The engine of one Ray worker: no progress bar (the driver draws one for the whole cluster) and no budget
        (the driver enforces it between units)."""
        return dataclasses.replace(self, progress=False, max_total_tokens=None, max_cost=None)


@dataclass(frozen=True)
class ScaleSpec:
    """A run on a Ray cluster: `address` is `local` (a new local cluster), `auto`, `HOST:PORT` or `ray://...`.

    unit_size: items (evol) or requests (other methods) per unit of work (None: the method's default).
    gpus_per_worker: GPUs Ray gives each actor (None: 1 per tensor-parallel rank for vLLM on a cluster with GPUs).
    redis_url: the shared near-duplicate index of Evol-Instruct (None: each process keeps its own).
    """

    address: str = "local"
    workers: int = 2
    unit_size: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    redis_url: str | None = None
