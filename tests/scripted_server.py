"""A small real HTTP server whose answers a test scripts: OpenAI chat/completions, `/v1/completions` and Anthropic
`/v1/messages`, with every request body it received kept in order (`requests`), so a test can assert on exactly
what a backend sent and how many times.

    def answer(path, body):            # -> the JSON body to send back (200), or (status, body)
        return chat_reply("not json")
    with ScriptedServer(answer) as server:
        teacher = OpenAITeacher("m", base_url=server.base_url + "/v1")
        ...
        server.requests                # [(path, body), ...]

Real sockets and HTTP/1.1 keep-alive (stdlib `ThreadingHTTPServer`), not a patched client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[str, dict], "dict | tuple[int, dict]"]


def chat_reply(text: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat-completions body answering `text`."""
    return {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": finish_reason,
                                                      "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": max(1, len(text) // 4)}}


def text_reply(text: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A `/v1/completions` body answering `text`."""
    return {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 5, "completion_tokens": max(1, len(text) // 4)}}


class ScriptedServer:
    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append((self.path, body))
                reply = server.answer(self.path, body)
                status, payload = reply if isinstance(reply, tuple) else (200, reply)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self, path: str) -> list[dict]:
        with self._lock:
            return [body for p, body in self.requests if p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
