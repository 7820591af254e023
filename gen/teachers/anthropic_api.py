"""`anthropic:<model>`: Anthropic's native Messages API (also spoken by llama.cpp's server at `/v1/messages`).

Same contract as the OpenAI backend: the SDK never retries (`max_retries=0`), every failure is raised as one of
`RateLimited` (429, and 529 "overloaded"), `TransientError` (other 5xx, 408, timeouts, connection errors, malformed
bodies) or `PermanentError` (other 4xx). The key comes from `ANTHROPIC_API_KEY` only; the server from the `base_url`
option, else `ANTHROPIC_BASE_URL`, else api.anthropic.com.

Differences from chat completions that matter here: the system prompt is a separate `system=` argument (several
system messages are joined), stop strings are `stop_sequences`, `stop_reason` is mapped to the OpenAI words
(end_turn/stop_sequence -> "stop", max_tokens -> "length"), and the API takes no sampling parameters: temperature,
top_p and seed are sent only to other servers (as extra body fields), penalties never (all stay in the cache key).

Transports, as for `openai:` (see `gen.teachers.openai_api`): `aiohttp` (default; `gen.teachers.lean_http`, the
key in `x-api-key`, `anthropic-version` pinned) or `sdk` (`transport="sdk"`: the official `anthropic` SDK).
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
from gen.teachers.openai_api import reject_unknown_options

OFFICIAL_HOST = "api.anthropic.com"
KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
OFFICIAL_BASE_URL = "https://api.anthropic.com"
# The Messages API version the request and response shapes below follow (the SDK pins the same one).
API_VERSION = "2023-06-01"

# 529 is Anthropic's "overloaded": like a 429 it asks for less pressure, not a blind retry.
OVERLOADED_STATUSES = frozenset({429, 529})

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _import_anthropic() -> Any:
    try:
        import anthropic
    except ImportError as exc:
        raise UserError("the anthropic backend needs the 'anthropic' package: pip install anthropic") from exc
    return anthropic


class AnthropicTeacher(Teacher):
    """Messages API over HTTP, one request per `acomplete`; the engine keeps many in flight."""

    backend = "anthropic"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, extra_stop: Sequence[str] = (),
                 transport: str | None = None):
        super().__init__(model)
        self.transport = check_transport(self.backend, transport)
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self._api_key = api_key if api_key is not None else resolve_key(KEY_ENV, self.base_url, OFFICIAL_HOST)
        self.extra_stop = tuple(extra_stop)
        self._official = self.base_url is None or OFFICIAL_HOST in self.base_url
        if self.transport == "aiohttp":
            headers = {"anthropic-version": API_VERSION}
            if self._api_key != PLACEHOLDER_KEY:  # a local server needs no key: send none
                headers["x-api-key"] = self._api_key
            self._poster: JSONPoster | None = JSONPoster(
                (self.base_url or OFFICIAL_BASE_URL).rstrip("/") + "/v1/messages", headers,
                max_connections=max_connections, backend=self.backend, rate_limit_statuses=OVERLOADED_STATUSES)
            return
        self._poster = None
        anthropic = _import_anthropic()
        self._anthropic = anthropic
        shards = shard_count(max_connections)
        self._clients = LoopLocalClient(lambda: anthropic.AsyncAnthropic(
            api_key=self._api_key, base_url=self.base_url, max_retries=0,
            http_client=pooled_http_client(anthropic, -(-max_connections // shards))), shards=shards)

    def request_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """The `messages.create` arguments for `request` (without the timeout)."""
        p = request.params
        system = "\n\n".join(content for role, content in request.messages if role == "system")
        messages = [{"role": role, "content": content} for role, content in request.messages if role != "system"]
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "messages": messages}
        if system:
            kwargs["system"] = system
        stop = list(dict.fromkeys(list(p.stop) + list(self.extra_stop)))
        if stop:
            kwargs["stop_sequences"] = stop
        if not self._official:
            # Anthropic's current API (and SDK) has no sampling knobs; compatible servers such as llama.cpp still
            # read them, so they travel as extra body fields there.
            extra: dict[str, Any] = {"temperature": p.temperature}
            if p.top_p < 1.0:
                extra["top_p"] = p.top_p
            if p.seed is not None:
                extra["seed"] = p.seed
            kwargs["extra_body"] = extra
        return kwargs

    async def acomplete(self, request: ChatRequest, timeout: float) -> Completion:
        if self._poster is not None:
            body = self.request_kwargs(request)
            body.update(body.pop("extra_body", {}))  # what the SDK does with extra_body: top-level fields
            return self._from_json(await self._poster.post(body, timeout))
        client = await self._clients.get()
        try:
            message = await client.messages.create(**self.request_kwargs(request), timeout=timeout)
            return self._to_completion(message)
        except TeacherError:
            raise
        except (self._anthropic.AnthropicError, ValueError) as exc:
            raise map_anthropic_error(self._anthropic, exc) from exc

    def _from_json(self, message: Any) -> Completion:
        """A Messages JSON body (decoded) -> Completion; a body of any other shape is transient."""
        try:
            blocks = message["content"]
            text = "".join(block.get("text") or "" for block in blocks if block.get("type") == "text")
            reason = message.get("stop_reason") or "stop"
            usage = message.get("usage") or {}
            prompt_tokens = int(usage.get("input_tokens") or 0)
            completion_tokens = int(usage.get("output_tokens") or 0)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError(f"anthropic: malformed response (no content): {one_line(message, 120)}") from exc
        return Completion(text=text, finish_reason=STOP_REASONS.get(reason, reason),
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def _to_completion(self, message: Any) -> Completion:
        blocks = getattr(message, "content", None)
        if blocks is None or isinstance(message, (str, bytes)):
            raise TransientError(f"anthropic: malformed response (no content): {one_line(message, 120)}")
        text = "".join(getattr(block, "text", "") or "" for block in blocks if getattr(block, "type", "") == "text")
        reason = message.stop_reason or "stop"
        usage = getattr(message, "usage", None)
        return Completion(text=text, finish_reason=STOP_REASONS.get(reason, reason),
                          prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "output_tokens", 0) or 0))

    async def aclose(self) -> None:
        await (self._poster or self._clients).aclose()

    def close(self) -> None:
        (self._poster or self._clients).close()


def map_anthropic_error(anthropic: Any, exc: BaseException) -> TeacherError:
    """An exception from the anthropic SDK (or the JSON decoding under it) -> the engine's error class."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        text = status_message(exc)
        if status in OVERLOADED_STATUSES:
            return RateLimited(text, retry_after=retry_after_seconds(exc.response.headers))
        if status >= 500 or status in TRANSIENT_4XX:
            return TransientError(text)
        return PermanentError(text)
    if isinstance(exc, anthropic.APITimeoutError):
        return TransientError("request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return TransientError(f"connection error: {one_line(cause or exc, 160)}")
    return TransientError(f"malformed response: {type(exc).__name__}: {one_line(exc, 160)}")


def from_spec(model: str, *, base_url: str | None = None, max_connections: int | None = None,
              transport: str | None = None, **unknown: Any) -> AnthropicTeacher:
    """`anthropic:<model>`; options: `base_url` (else $ANTHROPIC_BASE_URL), `max_connections`, `transport`
    ("aiohttp" default, or "sdk")."""
    reject_unknown_options("anthropic", unknown)
    return AnthropicTeacher(model, base_url=base_url, max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
                            transport=transport)
