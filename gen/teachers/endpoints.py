"""An HTTP teacher behind several endpoints (`--base-url URL1,URL2,...`): replicas of one model, balanced by
in-flight load, with a circuit breaker per endpoint.

    teacher = OpenAITeacher.pool("my-model", ["http://gpu1:8000/v1", "http://gpu2:8000/v1"])
    # = EndpointPool("my-model", urls, lambda url: OpenAITeacher("my-model", base_url=url))
    engine = Engine(teacher)                   # the engine keeps many requests in flight, as with one endpoint
    teacher.endpoint_stats()                   # {url: {requests, failures, ejections, in_flight, healthy, ...}}

Every endpoint is a plain teacher of any HTTP backend (`gen.teachers.http_base.HTTPTeacher`: same transport, same
error mapping), built by the `teacher_for(url)` the pool is given. The pool only decides where each `acomplete`
goes and keeps score; the engine still owns retries, backoff and concurrency. The pool's `teacher_id` is the single
endpoint's (`openai:<model>`): the endpoints are replicas, so a request's cache key must not depend on which one
answered. URLs are shown (stats, errors) with their credentials redacted.

Choosing an endpoint, per request:
1. an endpoint out of service whose cooldown has passed gets the request as its one *probe* (half-open);
2. else the endpoint with the fewest requests in flight among those in service (ties: round robin), so a slow
   replica, whose requests stay in flight longer, gets fewer; an endpoint that answered 429 is passed over until
   its `Retry-After` has gone by, unless no other endpoint is in service; an endpoint with a failure streak (see
   below) takes one request at a time, unless nothing else is free;
3. if every endpoint is out of service (and no probe is due), `TransientError("all N endpoints unavailable; next
   retry in S s")`: the engine backs off and retries; nothing here waits or spins.

Health (a circuit breaker per endpoint), by what an attempt on it came to:
- a completion: the failure streak is reset; a probe's puts the endpoint back in service;
- `TransientError` (5xx, 408, reset, malformed body) or a timeout: streak + 1; at `failures_to_eject` (K, default
  3) the endpoint is taken out for `cooldown` s (default 2), then probed; each failed probe doubles the cooldown, up
  to `max_cooldown` (default 60);
- `RateLimited` (429): not a failure. It goes to the engine (which shrinks concurrency and honours `Retry-After`),
  and the endpoint is passed over for `Retry-After` s (1 s without one); a 429 to a probe shows the endpoint is up
  and puts it back;
- `PermanentError` (any other 4xx): the request's fault; passed through, no health change.

Why a failing endpoint takes one request at a time: an endpoint that fails fast (a 500 in a millisecond) has nothing
in flight and would otherwise win every pick; this way a dead endpoint swallows at most K requests (plus those
already in flight when it started failing) before it is taken out, and one probe per cooldown after that.
Only attempts started in the endpoint's current state change it: an answer that was in flight when the endpoint was
taken out (or put back) is counted in its stats but decides nothing.

Limits: fewest-in-flight equalizes requests in flight, not waiting time, so under a client concurrency cap a much
slower replica still holds about its share of the slots (measured: a 0.05 s and a 0.5 s replica at 16 in flight
answer 200 requests in 1.6 s, the fast one alone in 0.8 s). Each process (each Ray actor) has its own pool: pools
do not share load or health.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gen.data.secrets import redact_url
from gen.errors import UserError
from gen.teachers.base import (
    ChatRequest,
    Completion,
    PermanentError,
    RateLimited,
    Teacher,
    TeacherError,
    TextRequest,
    TransientError,
)

DEFAULT_FAILURES_TO_EJECT = 3
DEFAULT_COOLDOWN_S = 2.0
DEFAULT_MAX_COOLDOWN_S = 60.0
# How long a 429 without `Retry-After` makes its endpoint less preferred.
DEFAULT_RATE_LIMIT_AVOID_S = 1.0
# A cancellation arriving this close to the attempt's deadline is the engine's timeout, not a shutdown.
_TIMEOUT_SLACK = 0.95
# Errors that mean "this endpoint did not answer" although a backend let them through unwrapped.
_ENDPOINT_FAILURES = (TransientError, TimeoutError, asyncio.TimeoutError, ConnectionError, OSError, EOFError)


def split_base_urls(value: str) -> list[str]:
    """`--base-url URL1,URL2,...` -> the URLs, each checked: http(s) with a host, none empty, none repeated.
    A bad one is a one-line UserError naming it."""
    urls = [part.strip() for part in value.split(",")]
    seen: set[str] = set()
    for url in urls:
        if not url:
            raise UserError(f"--base-url {redact_url(value)!r}: empty URL in the comma-separated list")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--base-url: {redact_url(url)!r} is not an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise UserError(f"--base-url: {redact_url(url)!r} has an invalid port") from None
        key = url.rstrip("/")
        if key in seen:
            raise UserError(f"--base-url: {redact_url(url)!r} is given twice")
        seen.add(key)
    return urls


@dataclass
class Endpoint:
    """One endpoint's teacher, load and health. `generation` changes whenever it is taken out or put back, so that
    answers of attempts started before the change do not decide its health."""

    url: str
    teacher: Teacher
    cooldown: float
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    rate_limited: int = 0
    ejections: int = 0
    probes: int = 0
    streak: int = 0             # consecutive failures in the current generation
    out: bool = False           # taken out of service
    out_until: float = 0.0      # monotonic time its cooldown ends
    probing: bool = False       # its one half-open probe is in flight
    avoid_until: float = 0.0    # monotonic time a 429's Retry-After ends
    generation: int = 0

    def stats(self, now: float) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "ejections": self.ejections,
                "in_flight": self.in_flight, "healthy": not self.out, "rate_limited": self.rate_limited,
                "probes": self.probes,
                "retry_in_s": round(max(0.0, self.out_until - now), 3) if self.out else 0.0}


class EndpointPool(Teacher):
    """One teacher over several endpoints serving the same model. See the module docstring.

    Args:
        model: the model name every endpoint serves.
        base_urls: the endpoints (each like `http://host:8000/v1`), at least one; validated by `split_base_urls`.
        teacher_for: builds the teacher of one endpoint from its URL (its key, connections and transport are its
            own business).
        max_in_flight: requests in flight per endpoint at most (None: no cap). The pool's own `max_in_flight`,
            which caps the engine's concurrency, is the sum over endpoints.
        failures_to_eject: K, consecutive failures that take an endpoint out.
        cooldown, max_cooldown: seconds out of service after an ejection, doubled after each failed probe up to
            `max_cooldown`.
        rate_limit_avoid: seconds a 429 without `Retry-After` makes its endpoint less preferred.
    """

    def __init__(self, model: str, base_urls: Sequence[str], teacher_for: Callable[[str], Teacher], *,
                 max_in_flight: int | None = None, failures_to_eject: int = DEFAULT_FAILURES_TO_EJECT,
                 cooldown: float = DEFAULT_COOLDOWN_S, max_cooldown: float = DEFAULT_MAX_COOLDOWN_S,
                 rate_limit_avoid: float = DEFAULT_RATE_LIMIT_AVOID_S):
        super().__init__(model)
        urls = split_base_urls(",".join(base_urls)) if base_urls else []
        if not urls:
            raise UserError("--base-url: no endpoint given")
        if failures_to_eject < 1:
            raise ValueError(f"failures_to_eject {failures_to_eject}: must be at least 1")
        if not 0 < cooldown <= max_cooldown:
            raise ValueError(f"cooldown {cooldown}, max_cooldown {max_cooldown}: need 0 < cooldown <= max_cooldown")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight {max_in_flight}: must be at least 1")
        self.failures_to_eject = int(failures_to_eject)
        self.base_cooldown = float(cooldown)
        self.max_cooldown = float(max_cooldown)
        self.rate_limit_avoid = float(rate_limit_avoid)
        self.per_endpoint_in_flight = max_in_flight
        self.endpoints: list[Endpoint] = []
        try:
            for url in urls:
                self.endpoints.append(Endpoint(url=url, teacher=teacher_for(url), cooldown=self.base_cooldown))
        except BaseException:
            self.close()
            raise
        first = self.endpoints[0].teacher
        # teacher_id == "<backend>:<model>", as with one endpoint: cache keys do not name the replica.
        self.backend = first.backend
        self.transport = getattr(first, "transport", None)
        if max_in_flight is not None:
            self.max_in_flight = max_in_flight * len(self.endpoints)
        self._next = 0  # round-robin start among equally loaded endpoints

    @property
    def base_urls(self) -> list[str]:
        return [endpoint.url for endpoint in self.endpoints]

    # ------------------------------------------------------------------------------------------------ choosing

    def _pick(self, now: float) -> tuple[Endpoint, bool]:
        """The endpoint for the next attempt and whether the attempt is its half-open probe; TransientError when
        every endpoint is out of service."""
        n = len(self.endpoints)
        order = [self.endpoints[(self._next + i) % n] for i in range(n)]
        self._next = (self._next + 1) % n
        for endpoint in order:
            # A due probe goes first: under steady load a least-loaded rule might never pick the ejected endpoint.
            if endpoint.out and not endpoint.probing and now >= endpoint.out_until:
                return endpoint, True
        in_service = [e for e in order if not e.out]
        if not in_service:
            waits = [e.out_until - now for e in self.endpoints if not e.probing]
            retry = f"next retry in {max(0.0, min(waits)):.1f} s" if waits else "a probe is in flight"
            raise TransientError(f"all {n} endpoints unavailable; {retry}")
        cap = self.per_endpoint_in_flight
        free = [e for e in in_service if (cap is None or e.in_flight < cap) and not (e.streak and e.in_flight)]
        # Nothing free (every endpoint at its cap or mid failure streak, e.g. while others are out): the request
        # queues at the least loaded endpoint rather than failing; a queued request only waits, a failed one
        # spends one of its retries.
        candidates = free or in_service
        # min() keeps the first of equal keys, and `order` rotates: ties go round robin.
        return min(candidates, key=lambda e: (e.avoid_until > now, e.in_flight)), False

    # ------------------------------------------------------------------------------------------------ health

    def _eject(self, endpoint: Endpoint, now: float, cooldown: float) -> None:
        endpoint.out = True
        endpoint.cooldown = cooldown
        endpoint.out_until = now + cooldown
        endpoint.ejections += 1
        endpoint.streak = 0
        endpoint.generation += 1

    def _reinstate(self, endpoint: Endpoint) -> None:
        endpoint.out = False
        endpoint.cooldown = self.base_cooldown
        endpoint.streak = 0
        endpoint.generation += 1

    def _on_success(self, endpoint: Endpoint, probe: bool, generation: int) -> None:
        if probe:
            self._reinstate(endpoint)
        elif generation == endpoint.generation:
            endpoint.streak = 0

    def _on_failure(self, endpoint: Endpoint, probe: bool, generation: int, now: float) -> None:
        endpoint.failures += 1
        if probe:
            self._eject(endpoint, now, min(self.max_cooldown, endpoint.cooldown * 2))
            return
        if generation != endpoint.generation or endpoint.out:
            return
        endpoint.streak += 1
        if endpoint.streak >= self.failures_to_eject:
            self._eject(endpoint, now, self.base_cooldown)

    def _on_rate_limited(self, endpoint: Endpoint, probe: bool, retry_after: float | None, now: float) -> None:
        endpoint.rate_limited += 1
        wait = retry_after if retry_after is not None and retry_after > 0 else self.rate_limit_avoid
        endpoint.avoid_until = max(endpoint.avoid_until, now + wait)
        if probe:
            self._reinstate(endpoint)  # it answered: up, only busy

    # ------------------------------------------------------------------------------------------------ requests

    @property
    def raw_completion(self) -> bool:  # type: ignore[override]
        return all(endpoint.teacher.raw_completion for endpoint in self.endpoints)

    def why_no_raw_completion(self) -> str | None:
        return self.endpoints[0].teacher.why_no_raw_completion()

    def render_chat(self, messages):
        return self.endpoints[0].teacher.render_chat(messages)

    async def acomplete(self, request: ChatRequest, timeout: float) -> Completion:
        return await self._through_endpoint(request, timeout, text=False)

    async def acomplete_text(self, request: TextRequest, timeout: float) -> Completion:
        return await self._through_endpoint(request, timeout, text=True)

    async def _through_endpoint(self, request: Any, timeout: float, text: bool) -> Completion:
        started = time.monotonic()
        endpoint, probe = self._pick(started)
        generation = endpoint.generation
        endpoint.in_flight += 1
        endpoint.requests += 1
        if probe:
            endpoint.probing = True
            endpoint.probes += 1
        try:
            send = endpoint.teacher.acomplete_text if text else endpoint.teacher.acomplete
            completion = await send(request, timeout)
        except RateLimited as exc:
            self._on_rate_limited(endpoint, probe, exc.retry_after, time.monotonic())
            raise RateLimited(self._label(endpoint, exc), retry_after=exc.retry_after) from exc
        except PermanentError as exc:
            raise PermanentError(self._label(endpoint, exc)) from exc
        except _ENDPOINT_FAILURES as exc:
            self._on_failure(endpoint, probe, generation, time.monotonic())
            if isinstance(exc, TeacherError):
                raise TransientError(self._label(endpoint, exc)) from exc
            raise
        except asyncio.CancelledError:
            # The engine enforces the attempt's deadline by cancelling it: that is a timeout of this endpoint.
            # Any earlier cancellation (a shutdown) says nothing about the endpoint.
            now = time.monotonic()
            if now - started >= _TIMEOUT_SLACK * timeout:
                self._on_failure(endpoint, probe, generation, now)
            raise
        else:
            self._on_success(endpoint, probe, generation)
            return completion
        finally:
            endpoint.in_flight -= 1
            if probe:
                endpoint.probing = False

    @staticmethod
    def _label(endpoint: Endpoint, exc: BaseException) -> str:
        """The error's message prefixed with its endpoint (which replica failed matters when reading errors)."""
        return f"{redact_url(endpoint.url)}: {exc}"

    def endpoint_stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint URL (credentials stripped): requests (attempts sent), failures (counted toward ejection),
        ejections, in_flight, healthy (in service), rate_limited (429s), probes, retry_in_s (cooldown left)."""
        now = time.monotonic()
        return {redact_url(e.url): e.stats(now) for e in self.endpoints}

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close every endpoint's connections from inside the loop that used them (the engine calls this last)."""
        await _close_all(endpoint.teacher.aclose() for endpoint in self.endpoints)

    def close(self) -> None:
        errors = []
        for endpoint in self.endpoints:
            try:
                endpoint.teacher.close()
            except Exception as exc:  # close the others anyway; report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]


async def _close_all(closings: Iterable[Any]) -> None:
    results = await asyncio.gather(*closings, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

