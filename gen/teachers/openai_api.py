"""`openai:<model>`: any OpenAI-compatible chat-completions server — OpenAI itself, `vllm serve`, llama.cpp, ...

The SDK never retries (`max_retries=0`): the engine owns retries, backoff and concurrency, and needs every failure
reported as one of the error classes of `gen.teachers.base`:

| what came back                                              | raised as          |
| ----------------------------------------------------------- | ------------------ |
| 429                                                         | `RateLimited` (with `Retry-After`) |
| 5xx, 408, timeout, connection refused/reset, malformed body | `TransientError`   |
| any other 4xx (bad request, auth, unknown model)            | `PermanentError`   |

The key comes from `OPENAI_API_KEY` only (sent as `Authorization: Bearer`); the server from the `base_url` option,
else `OPENAI_BASE_URL`, else api.openai.com.

Two transports, the same requests, completions and error classes:
- `aiohttp` (default): `gen.teachers.lean_http` — ~0.2 ms of client CPU per request, so a fast vLLM or llama.cpp
  server is not limited by the client at 64–256 requests in flight;
- `sdk` (`transport="sdk"`, `--transport sdk`): the official `openai` SDK over httpx — 5–12 ms of CPU per request
  at high concurrency, but whatever the SDK adds (its headers, its proxy and TLS handling) comes with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gen.errors import UserError
from gen.teachers.base import (
    ChatRequest,
    Completion,
    PermanentError,
    RateLimited,
    Teacher,
    TeacherError,
    TransientError,
)
from gen.teachers.http_client import (
    DEFAULT_MAX_CONNECTIONS,
    PLACEHOLDER_KEY,
    LoopLocalClient,
    one_line,
    pooled_http_client,
    resolve_key,
    retry_after_seconds,
    shard_count,
    status_message,
)
from gen.teachers.lean_http import TRANSIENT_4XX, JSONPoster, check_transport

OFFICIAL_HOST = "api.openai.com"
KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OFFICIAL_BASE_URL = "https://api.openai.com/v1"


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:  # a core dependency, but say which one if a trimmed install lacks it
        raise UserError("the openai backend needs the 'openai' package: pip install openai") from exc
    return openai


class OpenAITeacher(Teacher):
    """Chat completions over HTTP, one request per `acomplete`; the engine keeps many in flight.

    `extra_stop` are stop strings this teacher always adds (the embedded llama.cpp teacher uses them to end a turn);
    `strip_text` trims surrounding whitespace from completions (for transcript-style templates).
    `transport`: "aiohttp" (default, lean) or "sdk" (the official SDK); see the module docstring.
    """

    backend = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, extra_stop: Sequence[str] = (),
                 strip_text: bool = False, transport: str | None = None):
        super().__init__(model)
        self.transport = check_transport(self.backend, transport)
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self._api_key = api_key if api_key is not None else resolve_key(KEY_ENV, self.base_url, OFFICIAL_HOST)
        self.extra_stop = tuple(extra_stop)
        self.strip_text = strip_text
        # OpenAI's own API wants `max_completion_tokens` (reasoning models reject `max_tokens`); compatible
        # servers (llama.cpp, older vLLM) know only `max_tokens`.
        self._official = self.base_url is None or OFFICIAL_HOST in self.base_url
        if self.transport == "aiohttp":
            # A local server needs no key: send none rather than the SDKs' placeholder.
            auth = {} if self._api_key == PLACEHOLDER_KEY else {"Authorization": f"Bearer {self._api_key}"}
            self._poster: JSONPoster | None = JSONPoster(
                (self.base_url or OFFICIAL_BASE_URL).rstrip("/") + "/chat/completions", auth,
                max_connections=max_connections, backend=self.backend)
            return
        self._poster = None
        openai = _import_openai()
        self._openai = openai
        shards = shard_count(max_connections)
        self._clients = LoopLocalClient(lambda: openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=0,
            http_client=pooled_http_client(openai, -(-max_connections // shards))), shards=shards)

    def request_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions arguments for `request` (without the timeout)."""
        p = request.params
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.message_dicts(),
                                  "temperature": p.temperature, "top_p": p.top_p}
        kwargs["max_completion_tokens" if self._official else "max_tokens"] = p.max_tokens
        # Zero penalties are the API default; leaving them out keeps requests valid on servers that lack them.
        if p.presence_penalty:
            kwargs["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            kwargs["frequency_penalty"] = p.frequency_penalty
        stop = list(dict.fromkeys(list(p.stop) + list(self.extra_stop)))
        if stop:
            kwargs["stop"] = stop
        if p.seed is not None:
            kwargs["seed"] = p.seed
        return kwargs

    async def acomplete(self, request: ChatRequest, timeout: float) -> Completion:
        if self._poster is not None:
            return self._from_json(await self._poster.post(self.request_kwargs(request), timeout))
        client = await self._clients.get()
        try:
            response = await client.chat.completions.create(**self.request_kwargs(request), timeout=timeout)
            return self._to_completion(response)
        except TeacherError:
            raise
        # Every SDK/transport failure and every undecodable body becomes one of the engine's three classes;
        # anything else is a bug here and must surface, not be retried.
        except (self._openai.OpenAIError, ValueError) as exc:
            raise map_openai_error(self._openai, exc) from exc

    def _from_json(self, response: Any) -> Completion:
        """A chat-completions JSON body (decoded) -> Completion; a body of any other shape is transient."""
        try:
            choice = response["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            usage = response.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError(f"{self.backend}: malformed response (no choices): "
                                 f"{one_line(response, 120)}") from exc
        if self.strip_text:
            text = text.strip()
        return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def _to_completion(self, response: Any) -> Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            # A 200 whose body is not a chat completion (the SDK hands back a str for non-JSON bodies).
            raise TransientError(f"{self.backend}: malformed response (no choices): {one_line(response, 120)}")
        choice = choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        if self.strip_text:
            text = text.strip()
        usage = getattr(response, "usage", None)
        return Completion(text=text, finish_reason=choice.finish_reason or "stop",
                          prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))

    async def aclose(self) -> None:
        """Close the connection pool from inside the event loop that used it (the engine calls this last)."""
        await (self._poster or self._clients).aclose()

    def close(self) -> None:
        (self._poster or self._clients).close()


def map_openai_error(openai: Any, exc: BaseException) -> TeacherError:
    """An exception from the openai SDK (or the JSON decoding under it) -> the engine's error class."""
    if isinstance(exc, openai.RateLimitError):
        return RateLimited(status_message(exc),
                           retry_after=retry_after_seconds(exc.response.headers))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        text = status_message(exc)
        if status >= 500 or status in TRANSIENT_4XX:
            return TransientError(text)
        return PermanentError(text)
    if isinstance(exc, openai.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return TransientError(f"connection error: {one_line(cause or exc, 160)}")
    # Malformed bodies: invalid JSON (ValueError/JSONDecodeError), JSON of the wrong shape (validation errors).
    return TransientError(f"malformed response: {type(exc).__name__}: {one_line(exc, 160)}")


def from_spec(model: str, *, base_url: str | None = None, max_connections: int | None = None,
              transport: str | None = None, **unknown: Any) -> Teacher:
    """`openai:<model>`; options: `base_url` (else $OPENAI_BASE_URL), `max_connections`, `transport`
    ("aiohttp" default, or "sdk"). A `base_url` listing several URLs (`URL1,URL2,...`: replicas of one model)
    gives a `gen.teachers.endpoints.EndpointPool` balancing over them."""
    reject_unknown_options("openai", unknown)
    urls = base_url or os.environ.get(BASE_URL_ENV) or ""
    if "," in urls:
        from gen.teachers.endpoints import from_spec as pool_from_spec
        from gen.teachers.endpoints import split_base_urls

        return pool_from_spec(model, split_base_urls(urls), max_connections=max_connections, transport=transport)
    return OpenAITeacher(model, base_url=base_url, max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
                         transport=transport)


def reject_unknown_options(backend: str, options: dict[str, Any]) -> None:
    """Options left unset (None) are fine; any other option this backend does not know is a user error."""
    given = sorted(name for name, value in options.items() if value is not None)
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"--teacher {backend}:...: option(s) {flags} do not apply to the {backend} backend")
