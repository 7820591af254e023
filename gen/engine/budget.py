"""What a run may spend and what it has spent: the budget check and the engine's counters, in one place.

The one-process `Engine` and the Ray driver's `DistributedEngine` (`gen.scale.request_units`) both keep a `Budget`:
`stats` is the counter dict they expose as `engine.stats`, `exhausted` the flag callers read as `engine.exhausted`.

    budget = Budget(max_total_tokens=10_000, price=price)
    if budget.has_room(reserved_tokens, reserved_cost): ...   # may one more request start?
    budget.charge(completion)                                   # what it cost, once it is back
    budget.count_results(results)                               # per `run` call: requests, cache hits, failures
    budget.add(counters)                                        # a Ray unit's counters, counted by its worker
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gen.errors import InvalidSetting
from gen.teachers.base import ChatRequest, Completion
from gen.teachers.pricing import Price

BUDGET_EXHAUSTED = "budget exhausted"

# The counters every engine keeps (and a Ray worker reports per unit, as deltas), besides `cost` and `seconds`.
COUNTERS = ("requests", "sent", "attempts", "cache_hits", "failures", "skipped", "rate_limited",
            "prompt_tokens", "completion_tokens")
# The counters of what was actually sent. The rest (requests, failures, skipped, and cache hits of the caller's own
# cache) are counted per `run` call from its results by `count_results`.
SENDING_COUNTERS = ("sent", "attempts", "cache_hits", "rate_limited", "prompt_tokens", "completion_tokens")
# The counters a command reports for each engine it opened (summary line, manifest, funnel).
REPORTED_COUNTERS = ("requests", "sent", "cache_hits", "failures", "prompt_tokens", "completion_tokens")


def reported_counters(engine: Any) -> dict[str, Any]:
    """An engine's REPORTED_COUNTERS (0 where it kept none) and, on Ray (`gen.scale.DistributedEngine`), the workers
    and the units they ran."""
    stats = dict(getattr(engine, "stats", {}) or {})
    counters = {k: stats.get(k, 0) for k in REPORTED_COUNTERS}
    counters.update({k: stats[k] for k in ("workers", "units") if k in stats})
    return counters


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A cheap, generous estimate of a request's prompt tokens (≈3 characters per token, plus per-message overhead),
    used only to reserve budget and TPM before the true usage is known."""
    return sum(len(content) for _, content in request.messages) // 3 + 8 * len(request.messages) + 8


class Budget:
    """Token and dollar budgets (None: no limit) and the counters they are checked against. A dollar budget needs
    the teacher's `price` (`teacher_id` names it in the error)."""

    def __init__(self, *, max_total_tokens: int | None = None, max_cost: float | None = None,
                 price: Price | None = None, teacher_id: str = "unknown"):
        if max_cost is not None and price is None:
            raise InvalidSetting("max_cost", f"no known price for teacher {teacher_id!r}: a cost budget needs one "
                                             "(give a price, or budget tokens instead)")
        self.max_total_tokens = max_total_tokens
        self.max_cost = max_cost
        self.price = price
        self.exhausted = False
        self.stats: dict[str, Any] = {name: 0 for name in COUNTERS}
        self.stats.update(cost=0.0 if price is not None else None, seconds=0.0)

    @property
    def limited(self) -> bool:
        return self.max_total_tokens is not None or self.max_cost is not None

    def spent_tokens(self) -> int:
        return self.stats["prompt_tokens"] + self.stats["completion_tokens"]

    def has_room(self, reserved_tokens: int = 0, reserved_cost: float = 0.0) -> bool:
        """True while some budget is left beyond what is already spent plus `reserved` (what requests in flight, or
        about to be sent together, may still spend)."""
        if self.max_total_tokens is not None and self.spent_tokens() + reserved_tokens >= self.max_total_tokens:
            return False
        if self.max_cost is not None and (self.stats["cost"] or 0.0) + reserved_cost >= self.max_cost:
            return False
        return True

    def estimate(self, request: ChatRequest) -> tuple[int, float]:
        """A request's worst case before it is sent: (prompt estimate + max_tokens, its price)."""
        prompt = estimate_prompt_tokens(request)
        completion = int(request.params.max_tokens or 0)
        return prompt + completion, self.price.cost(prompt, completion) if self.price is not None else 0.0

    def fitting(self, requests: Iterable[tuple[str, ChatRequest]]) -> list[tuple[str, ChatRequest]]:
        """The longest prefix of (key, request) that may be sent at once (a whole batch cannot be stopped midway):
        each starts only while the budget has room beyond the worst case of those before it."""
        if not self.limited:
            return list(requests)
        fitting, tokens, cost = [], 0, 0.0
        for key, request in requests:
            if not self.has_room(tokens, cost):
                break
            fitting.append((key, request))
            est_tokens, est_cost = self.estimate(request)
            tokens += est_tokens
            cost += est_cost
        return fitting

    def charge(self, completion: Completion) -> None:
        """A completion came back: add its tokens and their price."""
        prompt, completion_tokens = int(completion.prompt_tokens or 0), int(completion.completion_tokens or 0)
        self.stats["prompt_tokens"] += prompt
        self.stats["completion_tokens"] += completion_tokens
        if self.price is not None:
            self.stats["cost"] += self.price.cost(prompt, completion_tokens)

    def add(self, counters: Mapping[str, Any], names: Sequence[str] = COUNTERS) -> None:
        """Add counters (the deltas a Ray unit reports) and price all tokens so far."""
        for name in names:
            self.stats[name] += counters.get(name, 0)
        if self.price is not None:
            self.stats["cost"] = self.price.cost(self.stats["prompt_tokens"], self.stats["completion_tokens"])

    def count_results(self, results: Sequence[Any]) -> None:
        """One `run` call's results (`gen.engine.engine.Result`): requests, hits of this engine's cache, failures
        and the requests the budget stopped (which mark it exhausted)."""
        skipped = sum(1 for r in results if r.error == BUDGET_EXHAUSTED)
        self.stats["requests"] += len(results)
        self.stats["cache_hits"] += sum(1 for r in results if r.cached)
        self.stats["failures"] += sum(1 for r in results if not r.ok and r.error != BUDGET_EXHAUSTED)
        self.stats["skipped"] += skipped
        if skipped:
            self.exhausted = True
