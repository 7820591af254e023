"""The executor of a method's rounds: one round is a sequence of phases over the round's items, run in this process
(`LocalPhases`, the default) or as units of work on Ray workers (`gen.scale.phase_units.RayPhases`, which a command
passes in with `--ray`; this layer never imports `gen.scale`).

A method is made of two kinds of phases:
- request phases: a batch of requests, `MethodRun.ask(requests)`, answered by the run's engine — the one-process
  `Engine`, or with `--ray` the `DistributedEngine` whose units are the requests. Self-Instruct, UltraChat, self-chat
  and label are made of these only: their own state (pools, admission, dialogues) stays in the driver.
- method phases (`PhasedMethod`): the method's own work on a slice of items (requests *and* the checks on their
  answers), so that with `--ray` a worker does the whole slice and sends back rows. Evol-Instruct's round is two:
  `rewrite` (rewrite + cheap checks) and `answer` (near-duplicate rule, answer, judge, eliminator).

A `PhasedMethod` round, run by either executor:

    outputs = phase_0(round, slice of items, None)
    given   = method.between(phase_0, round, {slice: outputs}, earlier)   # in the driver: a barrier
    outputs = phase_1(round, outputs, given[slice])
    ...
    outcome = method.outcome(round, [outputs of every phase])            # JSON: what the next round needs

`LocalPhases` runs it on one slice (all items) with the run's own writers and funnel. `RayPhases` cuts the items
into slices, runs each phase of each slice on a worker (which rebuilds the method from `method.spec()` over its own
engine, with rows collected in memory), and commits each slice's rows and outcome exactly once; a rerun skips
committed slices and reads their outcome back (`earlier`). The method's loop over rounds is written once, in the
method, and calls `runner.run_round(...)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from gen.methods.base import MethodRun


class PhasedMethod(Protocol):
    """What a method provides to have its rounds run by an executor (see the module docstring)."""

    run: MethodRun
    phases: tuple[str, ...]  # in order
    step: str  # what a round's slice is called in its unit id, e.g. "evolve"

    def spec(self) -> Mapping[str, Any]:
        """Picklable: what `from_spec` needs to rebuild this method on a worker (not the run: that is `run.spec()`)."""
        ...

    @classmethod
    def from_spec(cls, run: MethodRun, spec: Mapping[str, Any]) -> PhasedMethod: ...

    def item_id(self, item: Any) -> str:
        """The stable id of one of a round's items (unit ids hash them)."""
        ...

    def phase(self, name: str, round_: int, data: Any, given: Any) -> Any:
        """Run phase `name` on a slice: `data` is the slice's items (first phase) or the previous phase's output;
        `given` what `between` gave this slice. Rows go through `self.run` (keep / reject)."""
        ...

    def between(self, name: str, round_: int, outputs: Mapping[str, Any],
                earlier: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """In the driver, after phase `name` ran on every slice (`outputs`: slice -> its output): what each slice's
        next phase is given. `earlier`: outcomes of this round's slices committed by an earlier run."""
        ...

    def outcome(self, round_: int, outputs: Sequence[Any]) -> dict[str, Any]:
        """A slice's outputs of every phase -> what the driver keeps of it (JSON-serialisable)."""
        ...


class PhasedBase:
    """Defaults for a `PhasedMethod`: rebuilt on a worker as `cls(run, **spec())`, items identified by their `id`, no
    barrier between phases, nothing kept of a slice but its rows. A subclass sets `phases`, sets `self.run`, and
    implements `phase` (and `spec`/`from_spec` when its constructor takes more than the run)."""

    run: MethodRun
    phases: tuple[str, ...] = ()
    step = "round"

    def spec(self) -> Mapping[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, run: MethodRun, spec: Mapping[str, Any]) -> Any:
        return cls(run, **spec)

    def item_id(self, item: Any) -> str:
        return str(item.id)

    def phase(self, name: str, round_: int, data: Any, given: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no phase {name!r}")

    def between(self, name: str, round_: int, outputs: Mapping[str, Any],
                earlier: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        return {key: None for key in outputs}

    def outcome(self, round_: int, outputs: Sequence[Any]) -> dict[str, Any]:
        return {}


class LocalPhases:
    """Runs every phase of a round on all items in this process, with the run's own writers and funnel."""

    def __init__(self, run: MethodRun):
        self.run = run

    def describe(self, items: int) -> str:
        """How a round of `items` is run, for the log (nothing to add in one process)."""
        return ""

    def keep_once(self, round_: int, name: str, item_ids: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        """Keep rows that do not come from a phase (e.g. inputs kept as round-0 rows)."""
        for row in rows:
            self.run.keep(row, round=round_)

    def run_round(self, method: PhasedMethod, round_: int, items: Sequence[Any]) -> list[dict[str, Any] | None]:
        """The round's outcome per slice (here one slice: all items)."""
        data: Any = items
        given: Any = None
        outputs = []
        for k, name in enumerate(method.phases):
            data = method.phase(name, round_, data, given)
            outputs.append(data)
            if k + 1 < len(method.phases):
                given = method.between(name, round_, {"all": data}, [])["all"]
        return [method.outcome(round_, outputs)]

    def extra(self) -> dict[str, Any]:
        """What the executor adds to the manifest."""
        return {}
