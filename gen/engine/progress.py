"""The engine's progress bar: requests/s, tokens/s, cache hits, failures and tokens (and dollars) spent.

The engine counts into plain integers; the bar is redrawn from a timer a few times a second, never per request,
so drawing costs nothing measurable at thousands of requests per second. Off when `enabled` is False or stderr is
not a terminal (CI logs stay clean).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """`update(done=, sent=, cache_hits=, failures=, tokens=, cost=)` sets absolute counters; `refresh()` redraws."""

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, interval: float = 0.5):
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self.counters: dict[str, Any] = {"done": 0, "sent": 0, "cache_hits": 0, "failures": 0, "tokens": 0,
                                         "cost": None}
        self._bar = None
        if enabled and total and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc or "requests", unit="req", dynamic_ncols=True, leave=True,
                             mininterval=interval)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, **counters: Any) -> None:
        self.counters.update(counters)

    def postfix(self) -> str:
        c = self.counters
        elapsed = max(1e-9, time.monotonic() - self.started)
        parts = [f"{c['sent'] / elapsed:.1f} req/s", f"{c['tokens'] / elapsed:.0f} tok/s",
                 f"hits {c['cache_hits']}", f"fail {c['failures']}", f"tokens {c['tokens']}"]
        if c.get("cost") is not None:
            parts.append(f"${c['cost']:.4f}")
        return ", ".join(parts)

    def refresh(self) -> None:
        if self._bar is None:
            return
        self._bar.n = self.counters["done"]
        self._bar.set_postfix_str(self.postfix(), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
