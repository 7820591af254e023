"""A small real OpenAI-compatible HTTP server with a configurable latency, for engine tests and `bench/engine.py`.

It is a real asyncio TCP server speaking HTTP/1.1 with keep-alive (not a patched client): clients go through their
whole network stack. It answers `POST /v1/chat/completions` with a deterministic reply (the same request always gets
the same text and usage), `GET /v1/models`, and two test endpoints: `GET /_stats` (requests seen, latencies drawn)
and `POST /_reset`.

Latency per request (`latency=`):
- `fixed:S`              every request waits S seconds;
- `lognormal:MEDIAN:SIGMA` heavy-tailed: exp(N(log MEDIAN, SIGMA)) seconds.
The draw is a function of the request's content and `seed` (not of arrival order), so every client sees the same
latency for the same request, and the ideal schedule can be computed from the request set alone (`latency_for`).

Faults (`faults=`): a callable `(arrival_number, body) -> str | None` or a spec string such as `429:2@0,500@3,reset@5`
(`KIND@N`: request number N gets the fault; `KIND%P`: each request with probability P, seeded). Kinds: `429[:S]`
(with `Retry-After: S`), `400`, `500`, `slow:S` (S extra seconds), `reset` (connection dropped with a TCP RST), `malformed`
(a 200 with a truncated JSON body).

Not the bottleneck by construction: listen backlog 4096, TCP_NODELAY on every connection, one small JSON encode per
request. Run standalone (for the benchmark, in its own process so its CPU is not billed to the client):
`python -m tests.latency_server --latency lognormal:0.3:1.0 --port 0` prints `PORT <n>` and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

FaultFn = Callable[[int, dict], "str | None"]


def request_key(body: dict) -> str:
    """A short hash of what makes a chat request distinct (messages + sampling), as the server sees it."""
    blob = json.dumps([body.get("messages"), body.get("max_tokens"), body.get("temperature"), body.get("seed")],
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_latency(spec: str) -> Callable[[random.Random], float]:
    kind, _, rest = spec.partition(":")
    if kind == "fixed":
        seconds = float(rest or 0.0)
        return lambda rng: seconds
    if kind == "lognormal":
        median, sigma = (float(x) for x in rest.split(":"))
        mu = math.log(median)
        return lambda rng: rng.lognormvariate(mu, sigma)
    raise ValueError(f"latency spec {spec!r}: expected fixed:S or lognormal:MEDIAN:SIGMA")


def latency_for(spec: str, seed: int, messages: list[dict]) -> float:
    """The latency the server draws for a request with these messages (same as it will actually wait)."""
    draw = parse_latency(spec)
    digest = hashlib.sha256(json.dumps([seed, messages], sort_keys=True).encode()).digest()
    return draw(random.Random(int.from_bytes(digest[:8], "big")))


def parse_faults(spec: str | None, seed: int = 0) -> FaultFn | None:
    if not spec:
        return None
    at: dict[int, str] = {}
    rates: list[tuple[str, float]] = []
    for part in spec.split(","):
        if "@" in part:
            kind, n = part.rsplit("@", 1)
            at[int(n)] = kind
        elif "%" in part:
            kind, p = part.rsplit("%", 1)
            rates.append((kind, float(p)))
        else:
            raise ValueError(f"fault spec {part!r}: expected KIND@N or KIND%P")
    rng = random.Random(seed)

    def fault(n: int, body: dict) -> str | None:
        if n in at:
            return at[n]
        for kind, p in rates:
            if rng.random() < p:
                return kind
        return None

    return fault


def reply_for(body: dict) -> tuple[str, str, int, int]:
    """Deterministic answer: (text, finish_reason, prompt_tokens, completion_tokens); words count as tokens."""
    messages = body.get("messages") or []
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    words = ("answer to: " + str(last_user)).split()
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
    finish = "stop"
    if len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    prompt_tokens = sum(len(str(m.get("content", "")).split()) + 3 for m in messages)
    return " ".join(words), finish, prompt_tokens, len(words)


class LatencyServer:
    """Start with `start()` (a background thread with its own loop) or use as a context manager.

    Attributes: `base_url` (`http://127.0.0.1:PORT`), `v1_url` (`.../v1`), `model`, `requests` (total chat requests
    received, faults included), `answered` (Counter: request key -> successful answers), `seen` (Counter: request key
    -> requests received), `latencies` (drawn latency per answered request), `max_in_flight`.
    """

    def __init__(self, latency: str = "fixed:0", *, seed: int = 0, faults: FaultFn | str | None = None,
                 model: str = "latency-test", host: str = "127.0.0.1", port: int = 0,
                 reply: Callable[[dict], str | None] | None = None):
        self.latency_spec = latency
        # `reply(body) -> text | None`: a scripted teacher (tests that need particular texts, e.g. two workers
        # producing near-duplicates); None falls back to the deterministic `reply_for`.
        self.reply = reply
        self.seed = seed
        parse_latency(latency)  # validate now
        self.faults = parse_faults(faults, seed) if isinstance(faults, str) else faults
        self.model = model
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.reset_stats()

    # ------------------------------------------------------------------------------------------------ stats

    def reset_stats(self) -> None:
        self.requests = 0
        self.prompts: list[str] = []  # the last user message of every answered request, in order
        self.answered: collections.Counter[str] = collections.Counter()
        self.seen: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.faults_served: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []  # time.monotonic() of every chat request, in arrival order
        self.authorizations: set[str] = set()  # Authorization headers seen (tests check a key was sent, not stored)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "answered": sum(self.answered.values()), "latencies": self.latencies,
                "faults": dict(self.faults_served), "max_in_flight": self.max_in_flight}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def v1_url(self) -> str:
        return self.base_url + "/v1"

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Bind (big backlog) and serve until cancelled; sets `self.port`."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=4096,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> LatencyServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.serve())
            except BaseException as exc:  # surface bind errors to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._server.close()
            # Connection handlers still waiting on idle keep-alive sockets: cancel them before the loop closes.
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=main, name="latency-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> LatencyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on small responses
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = (lines[0].split(" ") + ["", "", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                keep_alive = headers.get("connection", "").lower() != "close"
                if "authorization" in headers:
                    self.authorizations.add(headers["authorization"])
                dropped = await self._route(method, path, body, writer)
                if dropped or not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # server shutting down: end quietly (asyncio logs a cancelled handler as an error)
        finally:
            if not writer.is_closing():
                writer.close()

    async def _route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        path = path.split("?", 1)[0]
        if method == "GET" and path.endswith("/models"):
            self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model",
                                                                 "owned_by": "tests"}]})
        elif method == "GET" and path == "/_stats":
            self._send(writer, 200, self.stats())
        elif method == "POST" and path == "/_reset":
            self.reset_stats()
            self._send(writer, 200, {"ok": True})
        elif method == "POST" and path.endswith("/chat/completions"):
            return await self._chat(body, writer)
        else:
            self._send(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
        return False

    async def _chat(self, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(writer, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return False
        with self._lock:
            number = self.requests
            self.requests += 1
        key = request_key(body)
        self.seen[key] += 1
        self.arrivals.append(time.monotonic())
        fault = self.faults(number, body) if self.faults else None
        if fault:
            kind, _, arg = fault.partition(":")
            self.faults_served[kind] += 1
            if kind == "429":
                retry_after = arg or "1"
                self._send(writer, 429, {"error": {"message": "rate limited (test)", "type": "rate_limit_error"}},
                           extra=f"Retry-After: {retry_after}\r\n")
                return False
            if kind == "400":
                self._send(writer, 400, {"error": {"message": "bad request (test)", "type": "invalid_request_error"}})
                return False
            if kind == "500":
                self._send(writer, 500, {"error": {"message": "internal error (test)", "type": "server_error"}})
                return False
            if kind == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close() sends RST, the client sees "connection reset"
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return True
            if kind == "slow":
                await asyncio.sleep(float(arg or 5.0))
            elif kind != "malformed":
                raise ValueError(f"unknown fault {fault!r}")
        delay = latency_for(self.latency_spec, self.seed, body.get("messages") or [])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        text, finish, prompt_tokens, completion_tokens = reply_for(body)
        scripted = self.reply(body) if self.reply is not None else None
        if scripted is not None:
            text, finish, completion_tokens = scripted, "stop", len(scripted.split())
        messages = body.get("messages") or []
        self.prompts.append(next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""))
        response = {
            "id": "chatcmpl-" + key,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if fault and fault.startswith("malformed"):
            data = json.dumps(response).encode()
            self._send_bytes(writer, 200, data[: len(data) // 2])
            return False
        self.latencies.append(delay)
        self.answered[key] += 1
        self._send(writer, 200, response)
        return False

    def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any, extra: str = "") -> None:
        self._send_bytes(writer, status, json.dumps(payload).encode(), extra)

    @staticmethod
    def _send_bytes(writer: asyncio.StreamWriter, status: int, data: bytes, extra: str = "") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Status")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"{extra}\r\n").encode()
        writer.write(head + data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", default="fixed:0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = LatencyServer(args.latency, seed=args.seed, faults=args.faults, host=args.host, port=args.port)

    async def run() -> None:
        await server.serve()
        print(f"PORT {server.port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
