"""Client-side flow control for the request engine: token buckets (RPM, TPM) and AIMD adaptive concurrency.

Everything here runs on the engine's single asyncio loop, so no locks: state changes happen between awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class TokenBucket:
    """A token bucket refilled at `rate_per_minute / 60` per second, holding at most `capacity`.

    `acquire(cost)` waits until the bucket holds `min(cost, capacity)` and then takes the whole `cost`, so the level
    may go negative ("debt"): a request larger than the bucket still gets through once the debt is paid back, and the
    long-run rate never exceeds `rate_per_minute`. `adjust(delta)` corrects an estimate after the fact (the TPM bucket
    is charged an estimate before sending and the true usage once the completion arrives); a refund wakes the
    waiter at once instead of at the end of the wait computed before it.

    Waiters queue behind one lock (first come, first served), so only the head of the line holds a timer.
    """

    def __init__(self, rate_per_minute: float, capacity: float | None = None):
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        # One second of burst by default: providers enforce per-minute limits on finer windows than a minute.
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate)
        self.level = self.capacity
        self._stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None
        self._wakeup: asyncio.Future | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, cost: float) -> float:
        """Seconds until `cost` could be taken (0 if now)."""
        self._refill()
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.level -= cost

    def adjust(self, delta: float) -> None:
        """Charge `delta` more (negative: refund) without waiting."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)
        if delta < 0 and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def acquire(self, cost: float = 1.0) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                delay = self.wait_time(cost)
                if delay <= 0:
                    self.take(cost)
                    return
                loop = asyncio.get_running_loop()
                self._wakeup = wakeup = loop.create_future()
                timer = loop.call_later(delay, _resolve, wakeup)
                try:
                    await wakeup
                finally:
                    timer.cancel()
                    self._wakeup = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class AdaptiveConcurrency:
    """How many requests may be in flight: additive increase while healthy, multiplicative decrease on overload (AIMD,
    as TCP congestion avoidance), plus a global pause that honours `Retry-After`.

    - `limit` starts at `initial` and stays within [1, maximum].
    - Each success adds `1 / limit` (about +1 per round trip of the whole window).
    - An overload signal (429, timeout) halves the limit, at most once per window: requests that were already in
      flight when the limit was cut carry an older `epoch` and do not cut it again, so a burst of 64 simultaneous 429s
      halves the window once rather than collapsing it to 1.
    - `pause(seconds)` stops *new* sends until then (Retry-After is a statement about the server, not one request).

    Slots are acquired with `await acquire()` (returns the epoch to pass back to `overloaded`) and given back with
    `release()`. Waiters are served first-come first-served.
    """

    def __init__(self, initial: int = 16, maximum: int = 256, *, decrease: float = 0.5):
        self.maximum = max(1, int(maximum))
        self.limit = float(min(max(1, int(initial)), self.maximum))
        self.decrease = decrease
        self.in_flight = 0
        self.epoch = 0
        self.paused_until = 0.0
        self._waiters: deque[asyncio.Future] = deque()
        self._wake_handle: asyncio.TimerHandle | None = None

    def _can_start(self) -> bool:
        return self.in_flight < int(self.limit) and time.monotonic() >= self.paused_until

    async def acquire(self) -> int:
        if not self._waiters and self._can_start():
            self.in_flight += 1
            return self.epoch
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake()  # nothing may be in flight to release a slot later (e.g. all paused): arm the pause timer
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.in_flight -= 1  # we were handed a slot just as we were cancelled: give it back
                self._wake()
            else:
                self._waiters.remove(future)
            raise
        return self.epoch

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def succeeded(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
            self._wake()

    def overloaded(self, epoch: int) -> None:
        """A congestion signal from a request that acquired its slot in `epoch`."""
        if epoch == self.epoch:
            self.limit = max(1.0, self.limit * self.decrease)
            self.epoch += 1

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until

    def _wake(self) -> None:
        """Hand free slots to waiters (or schedule a wake-up at the end of a pause)."""
        now = time.monotonic()
        if now < self.paused_until:
            if self._waiters and self._wake_handle is None:
                loop = asyncio.get_running_loop()
                self._wake_handle = loop.call_later(self.paused_until - now, self._wake_after_pause)
            return
        while self._waiters and self.in_flight < int(self.limit):
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def _wake_after_pause(self) -> None:
        self._wake_handle = None
        self._wake()
