"""The request engine: many chat requests in flight against one teacher, cached, retried, rate-limited, budgeted.

    engine = Engine(teacher, cache_path=out / ".cache" / "requests.sqlite", concurrency=16)
    results = engine.run(requests)          # same order as `requests`
    for r in results:
        r.ok, r.completion, r.error, r.cached

What `run` does with a list of `ChatRequest`s (or `TextRequest`s, raw completions: sent with the teacher's
`acomplete_text`, or in its whole batch; everything else is the same):

1. Looks every request up in the SQLite cache (`gen.engine.cache`) by `request.cache_key(teacher_id)`; hits are not sent.
   Identical requests in one call are sent once.
2. A whole-batch teacher (in-process vLLM) gets all the remaining requests in one `complete_batch` call, so its own
   continuous batching schedules them. Any other teacher gets them one by one from a pool of asyncio workers:
   - adaptive concurrency (`gen.engine.ratelimit.AdaptiveConcurrency`): additive increase while healthy, halved on a 429 or
     a timeout, bounded by `max_concurrency`; a `Retry-After` pauses all new sends until it has passed;
   - exponential backoff with full jitter on 5xx, timeouts, connection resets and malformed bodies
     (`TransientError`), up to `max_retries` retries; a `PermanentError` (4xx) fails at once;
   - a hard per-request `timeout` (seconds), enforced here even if a backend forgets to;
   - optional RPM and TPM token buckets (`gen.engine.ratelimit.TokenBucket`).
3. Every completion is written to the cache as soon as it arrives (committed within ~0.2 s, no fsync per request:
   see `gen.engine.cache`). Failures are never cached: a rerun retries them.
4. Budgets (`max_total_tokens`, `max_cost`) count what *this engine* sends (cache hits are free). A request starts
   only while the budget has room beyond what in-flight requests may still spend (prompt estimate + max_tokens), so
   a run overshoots by at most one request's worth; once nothing more fits, the remaining requests come back with
   error "budget exhausted" and `engine.exhausted` is True. Callers commit what they have and stop.

Secrets: the engine never sees an API key (backends read it from the environment); error strings are scrubbed of
any key value present in the environment before they are returned.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen.data.secrets import scrub_text
from gen.engine.budget import BUDGET_EXHAUSTED, Budget, estimate_prompt_tokens
from gen.engine.cache import RequestCache
from gen.engine.progress import Progress
from gen.engine.ratelimit import AdaptiveConcurrency, TokenBucket
from gen.engine.spec import EngineSpec
from gen.errors import InvalidSetting
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
from gen.teachers.pricing import Price, price_for
from gen.teachers.spec import TeacherSpec

# Errors a network client may let through unwrapped that are worth retrying like a TransientError.
_TRANSIENT_EXCEPTIONS = (TransientError, TimeoutError, asyncio.TimeoutError, ConnectionError, OSError, EOFError,
                         asyncio.IncompleteReadError)
# The longest single wait a Retry-After may impose; beyond it the request is retried anyway (and may fail).
_MAX_RETRY_AFTER = 600.0


@dataclass
class Result:
    """The outcome of one request: `completion` when it succeeded (`ok`), else a one-line `error`."""

    request: ChatRequest
    completion: Completion | None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.completion is not None


def split_by_cache(requests: Sequence[ChatRequest], teacher_id: str, cache: RequestCache
                   ) -> tuple[list[str], dict[str, Completion], dict[str, ChatRequest]]:
    """(cache key per request, the cached completions, the requests to send: one per distinct key, in order)."""
    keys = [request.cache_key(teacher_id) for request in requests]
    cached = cache.get_many(keys)
    unique: dict[str, ChatRequest] = {}
    for key, request in zip(keys, requests):
        if key not in cached and key not in unique:
            unique[key] = request
    return keys, cached, unique


def assemble_results(requests: Sequence[ChatRequest], keys: Sequence[str], cached: dict[str, Completion],
                     outcomes: dict[str, Completion | str]) -> list[Result]:
    """One Result per request, in order: a cache hit, a completion, or an error (a request with no outcome was never
    sent: the budget ran out)."""
    results = []
    for key, request in zip(keys, requests):
        if key in cached:
            results.append(Result(request, cached[key], None, True))
            continue
        outcome = outcomes.get(key, BUDGET_EXHAUSTED)
        if isinstance(outcome, Completion):
            results.append(Result(request, outcome, None, False))
        else:
            results.append(Result(request, None, outcome, False))
    return results


def one_line_error(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters, with secrets removed (`gen.data.secrets`: any
    credential from the environment, credentials inside URLs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return scrub_text(line)[:300]


class Engine:
    """Run chat requests against `teacher` with caching, retries, adaptive concurrency, rate limits and budgets.

    Args:
        teacher: any `gen.teachers.base.Teacher`; the engine takes ownership and closes it in `close()` unless
            `own_teacher=False`. An optional `teacher.max_in_flight` (int) caps concurrency.
        cache_path: SQLite file of the request cache (None: an in-memory cache that dies with the engine).
        concurrency: requests in flight at the start; max_concurrency: the ceiling adaptive growth may reach.
        rpm, tpm: optional requests / tokens per minute limits.
        timeout: seconds one attempt may take. max_retries: retries after the first attempt.
        max_total_tokens, max_cost: budgets for what this engine sends (dollars need a known or given `price`).
        progress: draw a progress bar (only when stderr is a terminal).
        price: overrides the built-in price table (`gen.teachers.pricing`) for this teacher.
        backoff_base, backoff_cap: exponential backoff, seconds (attempt k waits U(0, min(cap, base * 2**k))).

    After each `run`: `stats` (cumulative over this engine's life) holds requests, sent, attempts, cache_hits,
    failures, skipped (budget), rate_limited, prompt_tokens, completion_tokens, cost (None without a price),
    seconds, and `endpoints` (per URL: requests, failures, ejections, in_flight, healthy) when the teacher has
    several endpoints; `exhausted` says a budget stopped it.
    """

    def __init__(
        self,
        teacher: Teacher,
        *,
        cache_path: str | os.PathLike | None = None,
        concurrency: int = 16,
        max_concurrency: int = 256,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        max_total_tokens: int | None = None,
        max_cost: float | None = None,
        progress: bool = True,
        price: Price | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        own_teacher: bool = True,
    ):
        _check_settings(concurrency=concurrency, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm, timeout=timeout,
                        max_retries=max_retries, max_total_tokens=max_total_tokens, max_cost=max_cost)
        self.teacher = teacher
        self.teacher_id = teacher.teacher_id
        self.price = price or price_for(self.teacher_id)
        # The budgets and the counters (`stats`, `exhausted`) they are checked against (shared with the Ray driver).
        self.budget = Budget(max_total_tokens=max_total_tokens, max_cost=max_cost, price=self.price,
                             teacher_id=self.teacher_id)
        self.stats: dict[str, Any] = self.budget.stats
        self.cache = RequestCache(cache_path)
        self.concurrency = int(concurrency)
        self.max_concurrency = max(int(max_concurrency), self.concurrency)
        # A backend that knows its capacity (e.g. a local server's slot count) may cap growth with `max_in_flight`:
        # past it, requests only queue inside the server and eat into their own timeouts.
        ceiling = getattr(teacher, "max_in_flight", None)
        if isinstance(ceiling, int) and ceiling > 0:
            self.max_concurrency = min(self.max_concurrency, ceiling)
            self.concurrency = min(self.concurrency, ceiling)
        self.limiter = AdaptiveConcurrency(self.concurrency, self.max_concurrency)
        self.rpm_bucket = TokenBucket(rpm) if rpm else None
        self.tpm_bucket = TokenBucket(tpm) if tpm else None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.progress = progress
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.own_teacher = own_teacher
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._budget_changed: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------------ public API

    @property
    def exhausted(self) -> bool:
        """A budget stopped this engine: nothing more is sent."""
        return self.budget.exhausted

    def run(self, requests: Sequence[ChatRequest], desc: str = "") -> list[Result]:
        """Complete `requests`; returns one `Result` per request, in the same order."""
        if self._closed:
            raise RuntimeError("Engine is closed")
        requests = list(requests)
        started = time.monotonic()
        keys, cached, unique = split_by_cache(requests, self.teacher_id, self.cache)
        outcomes: dict[str, Completion | str] = {}
        progress = Progress(len(requests), desc, enabled=self.progress)
        self._progress = progress
        self._cache_hits_now = sum(1 for key in keys if key in cached)
        self._done_now = self._cache_hits_now
        self._failed_now = 0
        self._sync_progress()
        try:
            if unique and not self.exhausted:
                items = list(unique.items())
                if self.teacher.takes_whole_batch:
                    self._run_whole_batch(items, outcomes)
                else:
                    self._run_coroutine(self._run_async(items, outcomes))
        finally:
            self.cache.flush()
            self._sync_progress()
            progress.close()
            self.stats["seconds"] += time.monotonic() - started
            # A teacher over several endpoints (gen.teachers.endpoints) reports each one's load and health.
            endpoint_stats = getattr(self.teacher, "endpoint_stats", None)
            if callable(endpoint_stats):
                self.stats["endpoints"] = endpoint_stats()

        results = assemble_results(requests, keys, cached, outcomes)
        self.budget.count_results(results)
        return results

    def close(self) -> None:
        """Commit the cache, close the teacher (if owned) and the event loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self.cache.close()
        finally:
            try:
                if self.own_teacher:
                    aclose = getattr(self.teacher, "aclose", None)
                    if aclose is not None and self._loop is not None:
                        self._run_coroutine(aclose())
                    self.teacher.close()
            finally:
                if self._loop is not None:
                    self._loop.close()
                    self._loop = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ event loop

    def _run_coroutine(self, coroutine: Awaitable[Any]) -> Any:
        """Run on the engine's own loop, kept for its whole life so that HTTP connection pools survive between
        `run` calls. Called from inside a running loop (a notebook), the engine loop runs in a helper thread."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coroutine)
        with ThreadPoolExecutor(1, thread_name_prefix="kdforge-engine") as pool:
            return pool.submit(self._loop.run_until_complete, coroutine).result()

    # ------------------------------------------------------------------------------------------------ budgets

    # What fits and what was spent is `self.budget`'s; the engine adds the reservations of requests in flight.

    def _nothing_reserved(self) -> bool:
        return self._reserved_tokens == 0 and self._reserved_cost <= 1e-12

    def _notify_budget(self) -> None:
        waiter, self._budget_changed = self._budget_changed, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _reserve(self, tokens: int, cost: float) -> bool:
        """Wait until the budget has room, then reserve this request's worst case. False: the budget is spent."""
        if not self.budget.limited:
            return True
        while not self.budget.has_room(self._reserved_tokens, self._reserved_cost):
            if self.exhausted or self._nothing_reserved():
                self.budget.exhausted = True
                return False
            # In-flight requests usually spend less than reserved: wait for one to finish and look again.
            if self._budget_changed is None:
                self._budget_changed = asyncio.get_running_loop().create_future()
            await self._budget_changed
        self._reserved_tokens += tokens
        self._reserved_cost += cost
        return True

    def _unreserve(self, tokens: int, cost: float) -> None:
        if not self.budget.limited:
            return
        self._reserved_tokens -= tokens
        self._reserved_cost -= cost
        self._notify_budget()

    # ------------------------------------------------------------------------------------------------ async path

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (spreads retries of a burst of failures)."""
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2 ** attempt)))

    async def _run_async(self, items: list[tuple[str, ChatRequest]], outcomes: dict[str, Completion | str]) -> None:
        iterator = iter(items)
        # More workers than slots: a worker sleeping in backoff holds no slot, so others keep the window full.
        n_workers = min(len(items), 2 * self.max_concurrency)
        loop = asyncio.get_running_loop()
        workers = [loop.create_task(self._worker(iterator, outcomes)) for _ in range(n_workers)]
        ticker = loop.create_task(self._tick())
        try:
            await asyncio.gather(*workers)
        finally:
            ticker.cancel()
            for task in workers:
                task.cancel()
            await asyncio.gather(ticker, *workers, return_exceptions=True)

    async def _tick(self) -> None:
        """Commit the cache and redraw the bar a few times a second (never per request)."""
        interval = self.cache.max_delay
        last_draw = 0.0
        while True:
            await asyncio.sleep(interval)
            self.cache.flush()
            now = time.monotonic()
            if now - last_draw >= 0.5:
                last_draw = now
                self._sync_progress()

    def _sync_progress(self) -> None:
        progress = self._progress
        if not progress.enabled:
            return
        progress.update(done=self._done_now, sent=self.stats["attempts"], cache_hits=self._cache_hits_now,
                        failures=self.stats["failures"] + self._failed_now, tokens=self.budget.spent_tokens(), cost=self.stats["cost"])
        progress.refresh()

    async def _worker(self, iterator, outcomes: dict[str, Completion | str]) -> None:
        for key, request in iterator:
            if self.exhausted:
                outcomes[key] = BUDGET_EXHAUSTED
                continue
            outcome = await self._complete_one(key, request)
            outcomes[key] = outcome
            self._done_now += 1
            if not isinstance(outcome, Completion) and outcome != BUDGET_EXHAUSTED:
                self._failed_now += 1

    async def _complete_one(self, key: str, request: ChatRequest) -> Completion | str:
        """One request, through retries, to a Completion (cached) or a one-line error."""
        est_tokens, est_cost = self.budget.estimate(request)
        limiter = self.limiter
        attempt = 0
        sent = False
        while True:
            if not await self._reserve(est_tokens, est_cost):
                return BUDGET_EXHAUSTED
            epoch = await limiter.acquire()
            try:
                if self.rpm_bucket is not None:
                    await self.rpm_bucket.acquire(1)
                if self.tpm_bucket is not None:
                    await self.tpm_bucket.acquire(est_tokens)
            except BaseException:
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                raise
            if not sent:
                sent = True
                self.stats["sent"] += 1
            self.stats["attempts"] += 1
            try:
                send = self.teacher.acomplete_text if isinstance(request, TextRequest) else self.teacher.acomplete
                completion = await _with_timeout(send(request, self.timeout), self.timeout)
            except RateLimited as exc:
                # Pause and shrink *before* giving the slot back, or release() hands it straight to a waiter.
                limiter.overloaded(epoch)
                if exc.retry_after is not None and exc.retry_after > 0:
                    wait = min(float(exc.retry_after), _MAX_RETRY_AFTER)
                    limiter.pause(wait)
                    # A little jitter past the pause so that the retried requests do not all land at once.
                    wait += random.uniform(0.0, min(1.0, 0.1 * wait + 0.05))
                else:
                    wait = self._backoff(attempt)
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                self._refund_tpm(est_tokens)
                self.stats["rate_limited"] += 1
                error = one_line_error(exc)
            except PermanentError as exc:
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                self._refund_tpm(est_tokens)
                return one_line_error(exc)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                limiter.overloaded(epoch)  # a timeout is also how an overloaded server looks
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                self._refund_tpm(est_tokens)
                error = f"timed out after {self.timeout:g} s" if not str(exc) else one_line_error(exc)
                wait = self._backoff(attempt)
            except _TRANSIENT_EXCEPTIONS as exc:
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                self._refund_tpm(est_tokens)
                error = one_line_error(exc)
                wait = self._backoff(attempt)
            except BaseException:
                limiter.release()
                self._unreserve(est_tokens, est_cost)
                raise
            else:
                limiter.release()
                limiter.succeeded()
                self.budget.charge(completion)
                self._unreserve(est_tokens, est_cost)
                if self.tpm_bucket is not None:
                    self.tpm_bucket.adjust(completion.prompt_tokens + completion.completion_tokens - est_tokens)
                self.cache.put(key, self.teacher_id, completion)
                return completion
            attempt += 1
            if attempt > self.max_retries:
                return f"failed after {attempt} attempts: {error}"
            await asyncio.sleep(wait)

    def _refund_tpm(self, est_tokens: int) -> None:
        if self.tpm_bucket is not None:
            self.tpm_bucket.adjust(-est_tokens)

    # ------------------------------------------------------------------------------------------------ whole batch

    def _run_whole_batch(self, items: list[tuple[str, ChatRequest]], outcomes: dict[str, Completion | str]) -> None:
        """All uncached requests in one `complete_batch` call; transient failures are retried in one more call each
        round. Under a budget, only the prefix whose worst case fits is sent (a batch cannot be stopped midway)."""
        pending = self.budget.fitting(items)
        self.stats["sent"] += len(pending)
        attempt = 0
        while pending:
            self.stats["attempts"] += len(pending)
            try:
                answers = self.teacher.complete_batch([request for _, request in pending])
            except PermanentError as exc:
                for key, _ in pending:
                    outcomes[key] = one_line_error(exc)
                return
            except (TeacherError, *_TRANSIENT_EXCEPTIONS) as exc:
                answers = [exc] * len(pending)
            retry = []
            for (key, request), answer in zip(pending, answers):
                if isinstance(answer, Completion):
                    self.budget.charge(answer)
                    self.cache.put(key, self.teacher_id, answer)
                    outcomes[key] = answer
                    self._done_now += 1
                elif isinstance(answer, PermanentError) or attempt >= self.max_retries:
                    outcomes[key] = (one_line_error(answer) if attempt == 0 or isinstance(answer, PermanentError)
                                     else f"failed after {attempt + 1} attempts: {one_line_error(answer)}")
                    self._done_now += 1
                    self._failed_now += 1
                else:
                    retry.append((key, request))
            self.cache.flush()
            self._sync_progress()
            pending = retry
            if pending:
                wait = max((a.retry_after or 0.0) for a in answers if isinstance(a, RateLimited)) if any(
                    isinstance(a, RateLimited) for a in answers) else 0.0
                time.sleep(max(wait, self._backoff(attempt)))
                attempt += 1


async def _with_timeout(awaitable: Awaitable[Completion], seconds: float) -> Completion:
    """Await with a hard deadline. `asyncio.timeout` (3.11+) costs one timer handle; `wait_for` an extra task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def _check_settings(*, concurrency: int, max_concurrency: int, rpm: float | None, tpm: float | None, timeout: float,
                    max_retries: int, max_total_tokens: int | None, max_cost: float | None) -> None:
    """Refuse settings the engine cannot honour, naming the setting (the CLI names its flag). Every number must be
    finite: a NaN budget compares false with everything and would silently turn the budget off."""
    for name, value in (("rpm", rpm), ("tpm", tpm), ("timeout", timeout), ("max_cost", max_cost)):
        if value is not None and not math.isfinite(value):
            raise InvalidSetting(name, f"{name} {value}: must be a finite number")
    if concurrency < 1:
        raise InvalidSetting("concurrency", f"concurrency {concurrency}: must be at least 1")
    if max_concurrency < 1:
        raise InvalidSetting("max_concurrency", f"max_concurrency {max_concurrency}: must be at least 1")
    if max_retries < 0:
        raise InvalidSetting("max_retries", f"max_retries {max_retries}: must be at least 0")
    if timeout <= 0:
        raise InvalidSetting("timeout", f"timeout {timeout}: must be positive")
    for name, value in (("rpm", rpm), ("tpm", tpm), ("max_total_tokens", max_total_tokens), ("max_cost", max_cost)):
        if value is not None and value <= 0:
            raise InvalidSetting(name, f"{name} {value}: must be positive")


def build_engine(teacher: TeacherSpec | Teacher, spec: EngineSpec, cache_path: str | os.PathLike | None = None
                 ) -> Engine:
    """An `Engine` configured by `spec` with its request cache at `cache_path` (in memory when None). `teacher` is a
    `TeacherSpec` to open, or a teacher already open; either way the engine owns it (`engine.close()` closes both),
    and it is closed here if the engine cannot be built."""
    from gen.teachers import load_teacher

    if isinstance(teacher, TeacherSpec):
        teacher = load_teacher(teacher)
    try:
        return Engine(teacher, cache_path=cache_path, concurrency=spec.concurrency,
                      max_concurrency=spec.max_concurrency, rpm=spec.rpm, tpm=spec.tpm, timeout=spec.timeout,
                      max_retries=spec.max_retries, max_total_tokens=spec.max_total_tokens, max_cost=spec.max_cost,
                      progress=spec.progress, price=spec.price)
    except BaseException:
        teacher.close()
        raise


def default_cache_path(out_dir: str | os.PathLike) -> Path:
    """Where a run directory keeps its request cache."""
    return Path(out_dir) / ".cache" / "requests.sqlite"


__all__ = ["Engine", "Result", "BUDGET_EXHAUSTED", "assemble_results", "build_engine", "default_cache_path",
           "split_by_cache", "estimate_prompt_tokens", "one_line_error"]
