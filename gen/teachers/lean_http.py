"""The lean HTTP transport of the HTTP teachers: JSON POSTs over one keep-alive aiohttp session per event loop.

Why not the official SDKs by default: at hundreds of requests in flight their client stack (httpx pool scans,
pydantic models for every request and response, per-request option merging) costs 5–12 ms of CPU per request —
more than the engine's own ~0.4 ms by an order of magnitude, so a fast local server (vllm serve, llama.cpp) is
limited by the client, not by itself. This transport does only what a chat request needs: serialize the body once,
POST it on a kept-alive connection (aiohttp's C HTTP parser, TCP_NODELAY set by aiohttp on every socket), decode the
JSON answer, and map every failure onto the engine's three error classes exactly as the SDK transports do
(statuses by `gen.teachers.http_client.error_for_status`; timeouts, refused/reset connections, truncated or invalid
JSON are `TransientError`).

Keys travel only in the headers given to `JSONPoster` (never in an error message or a log line); the URL it is
given carries no userinfo (`gen.teachers.http_base` turns that into a header first).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

from gen.data.secrets import redact_url
from gen.errors import UserError
from gen.teachers.base import TeacherError, TransientError
from gen.teachers.http_client import KEEPALIVE_EXPIRY_S, LoopLocalClient, error_for_status, one_line

try:  # ~3x faster decoding when present; the bodies are small, so stdlib json is a fine fallback
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def encode_json(body: Any) -> bytes:
    """A request body as compact UTF-8 JSON (what every OpenAI-compatible server and Anthropic accept)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class JSONPoster:
    """POSTs JSON to one URL and returns the decoded JSON answer, raising the engine's error classes.

    Args:
        url: the endpoint, e.g. `http://127.0.0.1:8000/v1/chat/completions`.
        headers: sent with every request (auth headers live here and nowhere else).
        max_connections: connections kept alive per event loop (the engine keeps up to 256 requests in flight;
            fewer connections would queue requests inside the pool and reconnect the surplus after each burst).
        rate_limit_statuses: statuses that mean "less pressure" (429; Anthropic adds 529 "overloaded").
        backend: names the backend in error messages.
    """

    def __init__(self, url: str, headers: Mapping[str, str], *, max_connections: int, backend: str,
                 rate_limit_statuses: frozenset[int] = frozenset({429})):
        import aiohttp
        import yarl

        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UserError(f"--base-url {redact_url(url)!r}: expected an http:// or https:// URL")
        self._aiohttp = aiohttp
        self.url = parsed  # parsed once: aiohttp takes a yarl.URL as is
        self.backend = backend
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._max_connections = max_connections
        self._rate_limit_statuses = rate_limit_statuses
        self._sessions = LoopLocalClient(self._new_session)

    def _new_session(self) -> Any:
        """A session for the running loop: one connector holding `max_connections` kept-alive connections."""
        aiohttp = self._aiohttp
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                         keepalive_timeout=KEEPALIVE_EXPIRY_S, ttl_dns_cache=300)
        return aiohttp.ClientSession(
            connector=connector, headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API needs no cookies; the jar costs CPU per request
            skip_auto_headers=("Accept-Encoding",),  # small JSON bodies: compressing them only costs CPU
            timeout=aiohttp.ClientTimeout(total=None),  # the caller's deadline applies (see `post`)
            # Honour HTTP(S)_PROXY like the SDKs do, but only when one is set: checking costs CPU per request.
            trust_env=any(os.environ.get(name) for name in _PROXY_ENV))

    async def post(self, body: Any, timeout: float) -> Any:
        """POST `body` (JSON-serializable) and return the decoded JSON of a 2xx answer within `timeout` seconds."""
        aiohttp = self._aiohttp
        session = await self._sessions.get()
        payload = encode_json(body)
        try:
            status, headers, raw = await _within(timeout, self._exchange(session, payload))
        except (TimeoutError, asyncio.TimeoutError) as exc:  # our deadline, or aiohttp's socket timeouts (a TimeoutError subclass)
            raise TransientError("request timed out") from exc
        except aiohttp.ClientError as exc:
            # Refused, reset, server disconnected, truncated body, unparseable HTTP: the request may or may not
            # have run; retrying is the only useful reaction.
            raise TransientError(f"connection error: {type(exc).__name__}: {one_line(exc, 160)}") from exc
        except OSError as exc:
            raise TransientError(f"connection error: {type(exc).__name__}: {one_line(exc, 160)}") from exc
        if status >= 400:
            raise self._status_error(status, headers, raw)
        try:
            return _loads(raw)
        except ValueError as exc:
            raise TransientError(f"{self.backend}: malformed response: {type(exc).__name__}: "
                                 f"{one_line(raw[:120].decode('utf-8', 'replace'), 160)}") from exc

    async def _exchange(self, session: Any, payload: bytes) -> tuple[int, Any, bytes]:
        async with session.post(self.url, data=payload) as response:
            status = response.status
            raw = await response.read()
            return status, (response.headers if status >= 400 else None), raw

    def _status_error(self, status: int, headers: Any, raw: bytes) -> TeacherError:
        return error_for_status(status, error_message(raw), headers, self._rate_limit_statuses)

    async def aclose(self) -> None:
        """Close the running loop's session (from inside that loop)."""
        await self._sessions.aclose()

    def close(self) -> None:
        self._sessions.close()


async def _within(seconds: float, awaitable: Any) -> Any:
    """Await with a deadline: `asyncio.timeout` (3.11+) costs one timer handle, `wait_for` (3.10) an extra task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def error_message(raw: bytes) -> str:
    """The server's own message from an error body on one line: OpenAI, Anthropic, vLLM and llama.cpp all send
    `{"error": {"message": ...}}` (vLLM sometimes `{"message": ...}`); anything else is shown as text."""
    try:
        body = _loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
        message = message or body.get("message")
        if message:
            return one_line(message)
    return one_line(raw.decode("utf-8", "replace")) or "(empty body)"
