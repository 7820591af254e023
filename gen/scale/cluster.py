"""Ray: a cluster of `UnitWorker` actors, each owning one teacher, and the driver's loop that keeps them busy.

    cluster = RayCluster(TeacherSpec("openai:M", base_url=URL), EngineSpec(), ScaleSpec(workers=4, address="local"))
    cluster.run(units, on_result)        # on_result(unit, outcome) once per unit, in the driver
    cluster.close()

Each actor builds its own teacher and engine from the same `TeacherSpec` and `EngineSpec` (`build_engine`), exactly
as a one-process run would: an in-process vLLM engine on the GPUs Ray gives the actor (`ScaleSpec.gpus_per_worker`;
tensor parallel inside the actor, data parallel across actors, the way vLLM itself uses Ray), or an HTTP client of
one or several OpenAI-compatible endpoints. Ray places the actors, restarts one whose process
or node died (`max_restarts=-1`), and moves objects; the driver only decides which unit goes to which idle actor.

Failure model: a unit whose actor died (process killed, node lost) comes back as `RayActorError`; the driver puts
that unit back at the head of the queue for the next idle actor. The dead worker gets no unit, in this call or any
later one, until Ray has restarted it (an actor of a lost node may never come back when no node has room). Only
the dead actor's unfinished unit is redone: finished units were already handed to `on_result` (and committed), and
the redo's requests that had completed are answered from the request cache when the redo lands on the same node.
An exception raised *by a handler* (a bug, a bad input) is not retried: it stops the run with its message.

Secrets: actors read API keys from their own environment (a local cluster inherits the driver's); no key is ever
put into a task, an actor's arguments, or Ray's runtime environment.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gen.engine.budget import COUNTERS
from gen.engine.engine import build_engine
from gen.engine.spec import EngineSpec, ScaleSpec
from gen.errors import InvalidSetting, UserError
from gen.scale.units import WorkUnit
from gen.teachers.spec import TeacherSpec

# kind -> "module:function"; a handler is `fn(worker: WorkerContext, payload) -> dict` and runs inside an actor.
HANDLERS = {
    "requests": "gen.scale.request_units:run_request_unit",
    "phase": "gen.scale.phase_units:run_phase_unit",
}
MAX_ATTEMPTS = 5  # a unit whose actor died this many times in a row is a poison pill: stop and say which
RESTART_WAIT = 600.0  # seconds to wait for Ray to bring back a dead actor when no other actor is alive


def import_ray():
    try:
        import ray
    except ImportError:
        raise InvalidSetting("address", "Ray is not installed: pip install 'kdforge[ray]'") from None
    return ray


class WorkerContext:
    """What a handler gets inside an actor: its engine (teacher + request cache, built from the specs as a
    one-process run builds it), its index among the workers, and a place for per-actor state (e.g. a shared
    near-duplicate index client)."""

    def __init__(self, teacher: TeacherSpec, engine: EngineSpec, index: int, cache_path: str | None):
        self.teacher_spec = teacher
        self.engine_spec = engine
        self.index = index
        self.state: dict[str, Any] = {}
        self.engine = build_engine(teacher, engine, cache_path if cache_path and _writable(cache_path) else None)

    def close(self) -> None:
        self.engine.close()


def _writable(cache_path: str) -> bool:
    """The run directory's cache is reachable from this node (same machine or shared storage)?"""
    directory = Path(cache_path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.access(directory, os.W_OK)
    except OSError:
        return False


def gpus_per_worker(teacher: TeacherSpec, scale: ScaleSpec) -> float:
    """GPUs Ray gives each actor: `scale.gpus_per_worker` if set; else one per tensor-parallel rank for an in-process
    vLLM teacher on a machine with GPUs, and none for the HTTP teachers."""
    if scale.gpus_per_worker is not None:
        return float(scale.gpus_per_worker)
    if teacher.backend == "vllm" and _has_gpus():
        return float(teacher.tensor_parallel_size or 1)
    return 0.0


def _has_gpus() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_handler(worker: WorkerContext, unit: WorkUnit) -> dict[str, Any]:
    """Run one unit in `worker` and return its outcome plus the engine counters it moved and who ran it."""
    module_name, _, function = HANDLERS[unit.kind].partition(":")
    handler = getattr(importlib.import_module(module_name), function)
    before = {k: worker.engine.stats.get(k, 0) for k in COUNTERS}  # reported as deltas: one summary for all
    started = time.monotonic()
    outcome = handler(worker, unit.payload)
    outcome["engine"] = {k: worker.engine.stats.get(k, 0) - before[k] for k in COUNTERS}
    outcome["worker"] = worker.index
    outcome["pid"] = os.getpid()
    outcome["seconds"] = time.monotonic() - started
    return outcome


def _actor_class(ray):
    """The actor class, built on first use so that importing this module does not need Ray."""

    class UnitWorker:
        def __init__(self, teacher: TeacherSpec, engine: EngineSpec, index: int, cache_path: str | None):
            self.context = WorkerContext(teacher, engine, index, cache_path)

        def ready(self) -> dict[str, Any]:
            return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                    "node_id": ray.get_runtime_context().get_node_id(), "teacher_id": self.context.engine.teacher_id}

        def run(self, unit: WorkUnit) -> dict[str, Any]:
            return run_handler(self.context, unit)

    return ray.remote(UnitWorker)


class RayCluster:
    """`scale.workers` actors on the Ray cluster at `scale.address` ("local" starts one on this machine), each with
    a teacher opened from `teacher` and an engine built from `engine` (without its progress bar and budgets: the
    driver draws one bar and enforces the budgets). `cache_path`: the run's request cache, which the actors share
    where they can reach it (same machine or shared storage); None: each actor caches in memory."""

    def __init__(self, teacher: TeacherSpec, engine: EngineSpec, scale: ScaleSpec, *,
                 cache_path: str | os.PathLike | None = None, log: Callable[[str], None] | None = None):
        workers, address, cpus_per_worker = scale.workers, scale.address, scale.cpus_per_worker
        if workers < 1:
            raise InvalidSetting("workers", f"workers {workers}: must be at least 1")
        self.ray = ray = import_ray()
        self.progress = engine.progress
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._started_ray = False
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                    "logging_level": logging.WARNING}
            if address in ("local", "", None):
                # Always a new cluster: without address="local", ray.init() joins whatever RAY_ADDRESS or the last
                # `ray start` on this machine points at, even a dead one (and then refuses num_cpus). Sized for the
                # workers even on a small machine: HTTP workers mostly wait.
                init["address"] = "local"
                init["num_cpus"] = max(os.cpu_count() or 1, int(workers * cpus_per_worker + 0.999))
            else:
                init["address"] = address
            try:
                ray.init(**init)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise InvalidSetting("address", f"cannot connect to the Ray cluster at {address!r}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self._started_ray = True
        shared_cache = str(Path(cache_path).resolve()) if cache_path is not None else None
        actor = _actor_class(ray).options(max_restarts=-1, max_task_retries=0, num_cpus=cpus_per_worker,
                                          num_gpus=gpus_per_worker(teacher, scale))
        worker_engine = engine.for_worker()
        self.actors = [actor.remote(teacher, worker_engine, i, shared_cache) for i in range(workers)]
        self.pids: dict[int, int] = {}
        try:
            infos = ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayTaskError as exc:  # the teacher could not be opened (bad spec, missing key, ...)
            self.close()
            raise _user_error_from(exc) from None
        for i, info in enumerate(infos):
            self.pids[i] = info["pid"]
            self.log(f"worker {i}: pid {info['pid']} on node {info['node']} (id {info['node_id'][:8]}; "
                     f"{info['teacher_id']})")
        self.teacher_id = infos[0]["teacher_id"]
        self.restarts = 0
        # ready() refs of restarting actors -> (worker, died at). Kept across `run` calls: a worker in it gets no
        # unit until Ray has it back, and a lost node's actors may never come back (no resources left).
        self._returning: dict[Any, tuple[int, float]] = {}
        self._announced: set[int] = set()
        self.redone_units = 0
        self.recoveries: list[dict[str, float]] = []  # per death: seconds until its unit restarted / actor back

    # ---------------------------------------------------------------------------------------------------- run
    def run(self, units: Iterable[WorkUnit], on_result: Callable[[WorkUnit, Mapping[str, Any]], None],
            keep_going: Callable[[], bool] = lambda: True) -> list[WorkUnit]:
        """Run every unit once (redoing those whose actor died); `on_result` sees each finished unit exactly once,
        in the driver, as it finishes. Stops dispatching when `keep_going()` turns False (a budget); returns the
        units that were never run."""
        from gen.engine.progress import Progress

        ray = self.ray
        pending = deque(units)
        # One bar for the whole cluster, counted in units (the workers draw none).
        progress = Progress(len(pending), "units", enabled=self.progress)
        finished = sent = tokens = failures = 0
        inflight: dict[Any, tuple[WorkUnit, int]] = {}
        restarting = {worker for worker, _ in self._returning.values()}
        idle = deque(w for w in range(len(self.actors)) if w not in restarting)
        last_alive = time.monotonic()
        while inflight or (pending and keep_going()):
            while pending and idle and keep_going():
                worker = idle.popleft()
                unit = pending.popleft()
                unit.attempts += 1
                ref = self.actors[worker].run.remote(unit)
                inflight[ref] = (unit, worker)
                if worker not in self._announced or unit.attempts > 1:  # not one line per unit: there may be 10^5
                    self._announced.add(worker)
                    self.log(f"unit {unit.label or unit.id} started on worker {worker} (pid {self.pids.get(worker)})"
                             + (f", attempt {unit.attempts}" if unit.attempts > 1 else ""))
            waiting = list(inflight) + list(self._returning)
            if not waiting:
                break
            done, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
            if inflight or idle:
                last_alive = time.monotonic()
            elif time.monotonic() - last_alive > RESTART_WAIT:
                raise UserError(f"no Ray worker alive for {RESTART_WAIT:.0f} s (Ray could not restart them)")
            for ref in done:
                if ref in self._returning:
                    self._back(ref, idle)
                    continue
                unit, worker = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self._died(unit, worker, exc, pending)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise _user_error_from(exc, unit) from None
                idle.append(worker)
                on_result(unit, outcome)
                finished += 1
                counters = outcome.get("engine", {})
                sent += counters.get("sent", 0)
                tokens += counters.get("prompt_tokens", 0) + counters.get("completion_tokens", 0)
                failures += counters.get("failures", 0)
                progress.update(done=finished, sent=sent, tokens=tokens, failures=failures)
                progress.refresh()
        progress.close()
        return list(pending)

    def _died(self, unit: WorkUnit, worker: int, exc: BaseException, pending: deque) -> None:
        self.redone_units += 1
        if unit.attempts >= MAX_ATTEMPTS:
            raise UserError(f"unit {unit.label or unit.id}: its worker died {unit.attempts} times running it; "
                            "giving up (see the Ray logs under /tmp/ray/session_latest/logs)")
        died_at = time.monotonic()
        pending.appendleft(unit)  # the next idle actor redoes it first
        self.log(f"worker {worker} (pid {self.pids.get(worker)}) died running unit {unit.label or unit.id} "
                 f"({type(exc).__name__}); the unit goes to another worker, Ray restarts this one")
        if not any(w == worker for w, _ in self._returning.values()):
            self._returning[self.actors[worker].ready.remote()] = (worker, died_at)
        self.recoveries.append({"died_at": died_at})

    def _back(self, ref: Any, idle: deque) -> None:
        worker, died_at = self._returning.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:  # died again while restarting: keep waiting for Ray
            self._returning[self.actors[worker].ready.remote()] = (worker, died_at)
            return
        self.restarts += 1
        self.pids[worker] = info["pid"]
        self._announced.discard(worker)
        for record in self.recoveries:
            if record.get("died_at") == died_at:
                record["actor_back_s"] = time.monotonic() - died_at
        self.log(f"worker {worker} is back (pid {info['pid']}) after {time.monotonic() - died_at:.1f} s")
        idle.append(worker)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()


def _user_error_from(exc: BaseException, unit: WorkUnit | None = None) -> BaseException:
    """A handler's exception as the driver should raise it: a UserError keeps its one-line message."""
    cause = getattr(exc, "cause", None)
    where = f"unit {unit.label or unit.id}: " if unit is not None else ""
    if isinstance(cause, UserError):
        return UserError(f"{where}{cause}")
    if cause is not None:
        return RuntimeError(f"{where}{type(cause).__name__}: {cause}")
    return RuntimeError(f"{where}{exc}")
