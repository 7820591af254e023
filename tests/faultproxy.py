"""A real HTTP/1.1 proxy on 127.0.0.1 that injects faults in front of a real server (the llama.cpp test server).

Faults a healthy local server never produces on demand — 429 with `Retry-After`, 5xx, a response held past the
client's timeout, a connection reset, a truncated JSON body — come from here, over real sockets, so every client
runs its whole network stack; nothing is patched.

    from tests.faultproxy import Fault, FaultProxy, first, every

    with FaultProxy(llamacpp_server.base_url, plan=first(2, Fault.rate_limit(retry_after=1))) as proxy:
        teacher = load_teacher("openai:m", base_url=proxy.base_url + "/v1")
        ...
        assert proxy.counts["rate_limit"] == 2 and proxy.counts["forwarded"] == ...

A plan decides, for the n-th request the proxy receives (0-based, in arrival order), which fault it gets (None:
forward it untouched). It is any callable `(n, request) -> Fault | None`, or for short: a `Fault` (every request),
a list (request n gets `plan[n]`, later ones none) or a dict `{n: Fault}`. Helpers: `first(m, fault)`,
`every(k, fault)`, `always(fault)`. `proxy.plan` can be replaced while it runs.

`proxy.counts` (a snapshot dict): `requests` received, `forwarded` (answered by the upstream server),
`connections` accepted from clients, and one count per fault kind injected. `proxy.received` lists the requests as
they arrived (method, path, headers, body), to check what a client really sent. The proxy runs its own event loop in a daemon thread, so synchronous and asynchronous
tests drive it alike.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "content-length"}


@dataclass(frozen=True)
class Fault:
    """One injected fault. Build with the class methods."""

    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    after_forward: bool = False
    body: bytes = b""

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 1) -> Fault:
        """429 with `Retry-After` (seconds, or an HTTP-date string; None sends no header). Not forwarded."""
        return cls("rate_limit", status=429, retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx JSON error. Not forwarded."""
        return cls("server_error", status=status)

    @classmethod
    def http_error(cls, status: int, message: str = "injected by FaultProxy") -> Fault:
        """Any status with a JSON error body (e.g. 400, 401, 529). Not forwarded."""
        return cls("http_error", status=status, body=_error_body(status, message))

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Hold the request `seconds` before forwarding it (past the client's timeout, typically)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def reset(cls, after_forward: bool = False) -> Fault:
        """Drop the connection with a TCP RST — before forwarding, or after the upstream answered (work done,
        answer lost)."""
        return cls("reset", after_forward=after_forward)

    @classmethod
    def malformed(cls) -> Fault:
        """Forward, then return a 200 whose JSON body is cut in half (valid HTTP framing, invalid JSON)."""
        return cls("malformed")


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Plan = Callable[[int, ProxyRequest], "Fault | None"]


def first(m: int, fault: Fault) -> Plan:
    """The first `m` requests get `fault`, the rest are forwarded."""
    return lambda n, request: fault if n < m else None


def every(k: int, fault: Fault, offset: int = 0) -> Plan:
    """Requests offset, offset+k, offset+2k, ... get `fault`."""
    return lambda n, request: fault if n >= offset and (n - offset) % k == 0 else None


def always(fault: Fault) -> Plan:
    return lambda n, request: fault


def as_plan(plan: Plan | Fault | list | dict | None) -> Plan:
    if plan is None:
        return lambda n, request: None
    if isinstance(plan, Fault):
        return always(plan)
    if isinstance(plan, (list, tuple)):
        items = list(plan)
        return lambda n, request: items[n] if n < len(items) else None
    if isinstance(plan, dict):
        table = dict(plan)
        return lambda n, request: table.get(n)
    return plan


def _error_body(status: int, message: str) -> bytes:
    # Both SDKs read `error.message`; Anthropic's also reads `type` (`{"type": "error", "error": {...}}`).
    kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error" if status >= 500
                                                                   else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 529: "Overloaded"}


class FaultProxy:
    """See the module docstring. `upstream` is a base URL such as `http://127.0.0.1:8080` (a path prefix, if any,
    is kept: `proxy.base_url` ends with the same path)."""

    def __init__(self, upstream: str, plan: Plan | Fault | list | dict | None = None, *,
                 max_upstream_connections: int = 64):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"FaultProxy needs an http://host:port upstream, got {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self.plan = plan
        self.max_upstream_connections = max_upstream_connections
        self.base_url = ""
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._arrivals = 0
        self._received: list[ProxyRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ------------------------------------------------------------------------------------------------ public API

    @property
    def plan(self) -> Plan:
        return self._plan

    @plan.setter
    def plan(self, plan: Plan | Fault | list | dict | None) -> None:
        self._plan = as_plan(plan)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            snapshot = collections.Counter({"requests": 0, "forwarded": 0, "connections": 0})
            snapshot.update(self._counts)
            return dict(snapshot)

    @property
    def received(self) -> list[ProxyRequest]:
        with self._lock:
            return list(self._received)

    def reset(self, plan: Plan | Fault | list | dict | None = None) -> None:
        """New plan, counts and arrival numbers back to zero."""
        with self._lock:
            self._counts.clear()
            self._arrivals = 0
            self._received.clear()
        self.plan = plan

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise self._startup_error
        if not self._ready.is_set():
            raise RuntimeError("FaultProxy did not start")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._shutdown.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ the loop

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() if it happens before the server listens
            self._startup_error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._upstream_slots = asyncio.Semaphore(self.max_upstream_connections)
        self._handlers: set[asyncio.Task] = set()
        # A deep accept queue: a burst of hundreds of connects must not have SYNs dropped (1 s retransmit stalls).
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}{self._prefix}"
        self._ready.set()
        try:
            await self._shutdown.wait()
        finally:
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            for _, writer in self._idle:
                writer.close()
            await server.wait_closed()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _next_arrival(self, request: ProxyRequest) -> int:
        with self._lock:
            n = self._arrivals
            self._arrivals += 1
            self._counts["requests"] += 1
            if len(self._received) < 100_000:
                self._received.append(request)
            return n

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        self._count("connections")
        _nodelay(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                n = self._next_arrival(request)
                fault = self._plan(n, request)
                keep_open = await self._answer(request, fault, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _answer(self, request: ProxyRequest, fault: Fault | None, writer: asyncio.StreamWriter) -> bool:
        """Answer one request (forwarded or faulted); False when the client connection must end."""
        if fault is None:
            status, headers, body = await self._forward(request)
            return await _respond(writer, status, headers, body)
        self._count(fault.kind)
        if fault.kind == "rate_limit":
            headers = [("Content-Type", "application/json")]
            if fault.retry_after is not None:
                headers.append(("Retry-After", fault.retry_after))
            return await _respond(writer, 429, headers, _error_body(429, "rate limited (injected by FaultProxy)"))
        if fault.kind == "server_error":
            return await _respond(writer, fault.status, [("Content-Type", "application/json")],
                                  _error_body(fault.status, "server error (injected by FaultProxy)"))
        if fault.kind == "http_error":
            return await _respond(writer, fault.status, [("Content-Type", "application/json")], fault.body)
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            status, headers, body = await self._forward(request)
            return await _respond(writer, status, headers, body)
        if fault.kind == "reset":
            if fault.after_forward:
                await self._forward(request)
            _reset(writer)
            return False
        if fault.kind == "malformed":
            status, headers, body = await self._forward(request)
            return await _respond(writer, 200, headers, body[: len(body) // 2])
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    async def _forward(self, request: ProxyRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send `request` upstream over a pooled keep-alive connection; the whole response comes back buffered."""
        head = [f"{request.method} {request.path} HTTP/1.1",
                f"Host: {self.upstream_host}:{self.upstream_port}"]
        head += [f"{k}: {v}" for k, v in request.headers.items() if k not in HOP_BY_HOP and k != "host"]
        head += [f"Content-Length: {len(request.body)}", "Connection: keep-alive"]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body
        async with self._upstream_slots:
            for attempt in range(2):
                reused = bool(self._idle)
                if reused:
                    reader, writer = self._idle.pop()
                else:
                    reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                    _nodelay(writer)
                try:
                    writer.write(payload)
                    await writer.drain()
                    status, headers, body, reusable = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: retry once on a fresh one
                    raise
                if reusable:
                    self._idle.append((reader, writer))
                else:
                    writer.close()
                self._count("forwarded")
                return status, headers, body
        raise ConnectionError("upstream unreachable")


# ---------------------------------------------------------------------------------------------------- HTTP I/O

async def _read_head(reader: asyncio.StreamReader) -> list[str] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None  # a clean close between requests
        raise
    return raw.decode("latin-1").split("\r\n")[:-2]


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The message body and whether the connection can carry another message afterwards."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by the servers we front
                return b"".join(chunks), True
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"])), True
    return b"", True


async def _read_request(reader: asyncio.StreamReader) -> ProxyRequest | None:
    lines = await _read_head(reader)
    if lines is None:
        return None
    method, path, _ = lines[0].split(" ", 2)
    headers = _parse_headers(lines[1:])
    body, _ = await _read_body(reader, headers)
    return ProxyRequest(method, path, headers, body)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    lines = await _read_head(reader)
    if lines is None:
        raise ConnectionError("upstream closed the connection")
    status = int(lines[0].split(" ", 2)[1])
    headers = _parse_headers(lines[1:])
    if "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower():
        body, reusable = await _read_body(reader, headers)
    else:  # framed by the end of the connection
        body, reusable = await reader.read(), False
    reusable = reusable and headers.get("connection", "").lower() != "close"
    kept = [(name, value) for name, value in headers.items() if name not in HOP_BY_HOP]
    return status, kept, body, reusable


async def _respond(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes) -> bool:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive"]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
    except ConnectionError:
        return False  # the client gave up (e.g. timed out while we held the response)
    return True


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN: the client sees 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
