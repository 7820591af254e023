"""What the HTTP teachers (OpenAI-compatible, Anthropic) share below `gen.teachers.http_base`: a connection pool
sized for many requests in flight, one SDK client per event loop, `Retry-After` parsing, the status -> error
mapping of both transports.

Why a client per event loop: an SDK client holds an httpx pool whose sockets belong to the loop that opened them.
The engine may call `asyncio.run` once per round, so a pool opened in round 1 must not be reused in round 2.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from gen.teachers.base import PermanentError, RateLimited, TeacherError, TransientError

# The engine keeps up to 256 requests in flight; the pool must hold that many *kept-alive* connections, or every
# burst closes and reopens the surplus (the SDK default keeps only 100 alive), paying a TCP connect each time and
# hitting small listen backlogs (llama.cpp's HTTP server listens with a backlog of a few connections).
DEFAULT_MAX_CONNECTIONS = 512

# Connections per SDK client (pool); more are spread over several clients (see LoopLocalClient).
CONNECTIONS_PER_SHARD = 64

# How long an idle connection is kept. A round's fastest requests idle until its slowest one ends (seconds to
# minutes for an LLM), and reopening costs a TLS handshake on a real API. A connection the server has closed in the
# meantime (uvicorn and llama.cpp drop idle ones after ~5 s) is noticed when it is taken from the pool and replaced.
KEEPALIVE_EXPIRY_S = 60.0

# A local server needs no key, but the SDKs refuse to start without one.
PLACEHOLDER_KEY = "no-key-needed"


def shard_count(max_connections: int) -> int:
    """How many pools of at most CONNECTIONS_PER_SHARD connections hold `max_connections`."""
    return max(1, -(-max_connections // CONNECTIONS_PER_SHARD))


def pooled_http_client(sdk: Any, max_connections: int = CONNECTIONS_PER_SHARD) -> Any:
    """An httpx AsyncClient for `sdk` (the `openai` or `anthropic` module), keeping `max_connections` alive.

    Built from the SDK's own default client class so its timeouts and redirect rules stay as the SDK expects.
    TCP_NODELAY is already set on every socket by the async transport, so small request bodies are not held back
    by Nagle's algorithm.
    """
    import httpx2  # the HTTP library both SDKs are built on (a fork of httpx)

    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                           keepalive_expiry=KEEPALIVE_EXPIRY_S)
    return sdk.DefaultAsyncHttpxClient(limits=limits, verify=_shared_ssl_context())


@functools.lru_cache(maxsize=1)
def _shared_ssl_context() -> Any:
    """One TLS context for every pool: building one loads the CA bundle (~0.1 s of CPU each)."""
    import httpx2

    return httpx2.create_ssl_context()


class LoopLocalClient:
    """Hands out SDK clients for the running event loop (`await clients.get()`), round-robin over `shards` clients
    built by `factory()` (each with its own connection pool).

    Why shards: httpx's pool scans every connection it holds (and polls each idle socket) on every request it
    assigns, so one pool of 256+ connections spends more CPU per request than the request itself on a local server
    (profiled: ~35% of client time). Several small pools keep each scan short while the whole client still keeps
    hundreds of connections alive.

    Why per loop: a pool's sockets belong to the loop that opened them, and the engine may call `asyncio.run` once
    per round. Each loop's clients are closed inside that loop before it ends: they are tied to a started async
    generator, and `asyncio.run` finalizes the async generators of its loop (`loop.shutdown_asyncgens()`) before
    closing it, which runs the generator's `finally`. Without this a pool opened in one `asyncio.run` leaks sockets.
    """

    def __init__(self, factory: Callable[[], Any], shards: int = 1):
        self._factory = factory
        self._shards = max(1, shards)
        self._loop_ref: weakref.ref | None = None
        self._clients: list[Any] = []
        self._next = 0
        self._lifetime: Any = None  # the async generator that owns the current clients

    async def get(self) -> Any:
        loop = asyncio.get_running_loop()
        if not self._clients or self._loop_ref is None or self._loop_ref() is not loop:
            clients = [self._factory() for _ in range(self._shards)]
            lifetime = _clients_lifetime(clients)
            await lifetime.__anext__()  # started: the loop now tracks it and will finalize it
            self._clients, self._lifetime, self._loop_ref = clients, lifetime, weakref.ref(loop)
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    async def aclose(self) -> None:
        """Close the pools of the running loop (call from inside that loop)."""
        lifetime, loop = self._lifetime, self._loop_ref() if self._loop_ref else None
        if lifetime is not None and loop is asyncio.get_running_loop():
            self._clients, self._lifetime, self._loop_ref = [], None, None
            await lifetime.aclose()

    def close(self) -> None:
        """Close the current pools now when their loop can still run; otherwise that loop's end closes them."""
        lifetime, loop = self._lifetime, self._loop_ref() if self._loop_ref else None
        self._clients, self._lifetime, self._loop_ref = [], None, None
        if lifetime is None or loop is None or loop.is_closed() or loop.is_running():
            return
        try:
            loop.run_until_complete(lifetime.aclose())
        except Exception:  # closing is best effort; the connections die with the process anyway
            pass


async def _clients_lifetime(clients: list[Any]) -> AsyncIterator[list[Any]]:
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from a 429/503 response's headers, or None when it names none.

    `retry-after-ms` (milliseconds, sent by OpenAI) wins over `Retry-After`, which is either delay-seconds or an
    HTTP-date (RFC 9110 §10.2.3). Negative or unparseable values count as absent.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# Statuses that say "try again" although they are 4xx: request timeout, and "too early" / lock conflicts.
TRANSIENT_4XX = frozenset({408, 409, 425})


def error_for_status(status: int, message: str, headers: Mapping[str, str] | None,
                     rate_limit_statuses: frozenset[int] = frozenset({429})) -> TeacherError:
    """An HTTP error status -> the engine's error class, the same for every HTTP backend and transport:

    | status                                                              | raised as                          |
    | ------------------------------------------------------------------- | ---------------------------------- |
    | 429 (and any status in `rate_limit_statuses`, e.g. Anthropic's 529) | `RateLimited` (with `Retry-After`) |
    | 5xx, 408, 409, 425                                                  | `TransientError`                   |
    | any other 4xx (bad request, auth, unknown model, refused parameter) | `PermanentError` (server's message) |
    """
    text = f"{status}: {message}"
    if status in rate_limit_statuses:
        return RateLimited(text, retry_after=retry_after_seconds(headers))
    if status >= 500 or status in TRANSIENT_4XX:
        return TransientError(text)
    return PermanentError(text)


def map_sdk_error(sdk: Any, exc: BaseException, rate_limit_statuses: frozenset[int] = frozenset({429})
                  ) -> TeacherError:
    """An exception from the `openai` or `anthropic` SDK (same class names in both), or from the JSON decoding under
    it, -> the engine's error class (`error_for_status` for HTTP statuses)."""
    if isinstance(exc, sdk.APIStatusError):
        return error_for_status(exc.status_code, sdk_error_message(exc), exc.response.headers, rate_limit_statuses)
    if isinstance(exc, sdk.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return TransientError(f"connection error: {one_line(cause or exc, 160)}")
    # Malformed bodies: invalid JSON (ValueError/JSONDecodeError), JSON of the wrong shape (validation errors).
    return TransientError(f"malformed response: {type(exc).__name__}: {one_line(exc, 160)}")


def sdk_error_message(exc: Any) -> str:
    """The server's own message of an SDK status error, on one line.

    Both OpenAI's and Anthropic's error bodies carry `error.message`; the SDKs' own `.message` sometimes embeds the
    whole body instead."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return one_line(message or getattr(exc, "message", exc))


def one_line(text: object, limit: int = 300) -> str:
    """A server's error text squeezed onto one line (the engine and CLI print errors as one line)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
