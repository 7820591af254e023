"""The one small interface every teacher backend implements, and the errors the engine reacts to.

A teacher turns chat requests into completions. HTTP backends (OpenAI-compatible, Anthropic) implement
`acomplete` for one request at a time and the engine keeps many in flight; in-process engines (vLLM) set
`takes_whole_batch` and implement `complete_batch`, which receives a whole round at once (continuous batching does
the rest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings sent with a request; part of the cache key."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Structured output: a JSON schema the answer must follow, as canonical JSON text (`canonical_schema`), so the
    # params stay hashable and the cache key names the schema. Each backend sends it its own way (OpenAI
    # `response_format`, llama.cpp `json_schema`, vLLM guided decoding, Anthropic tool use); None: free text.
    json_schema: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Built field by field: `dataclasses.asdict` deep-copies every value and was about half the cost of
        # `ChatRequest.cache_key`, which the engine computes for every request. Same dict, same cache keys.
        d = {name: getattr(self, name) for name in _SAMPLING_FIELDS}
        d["stop"] = list(self.stop)
        # Optional fields added after caches existed appear only when set: an older cache's keys stay valid.
        for name in _OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    def replace(self, **changes: Any) -> SamplingParams:
        if "stop" in changes and changes["stop"] is not None:
            changes["stop"] = tuple(changes["stop"])
        return dataclasses.replace(self, **changes)


_SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
_OPTIONAL_FIELDS = ("json_schema",)


def canonical_schema(schema: Mapping[str, Any]) -> str:
    """A JSON schema as the canonical text `SamplingParams.json_schema` holds (same schema, same cache key)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. `messages` are [{"role", "content"}]; a system message, if any, comes first."""

    messages: tuple[tuple[str, str], ...]
    params: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def make(cls, messages: Sequence[Mapping[str, str]], params: SamplingParams | None = None,
             system: str | None = None) -> ChatRequest:
        pairs = tuple((str(m["role"]), str(m["content"])) for m in messages)
        if system:
            pairs = (("system", system),) + pairs
        return cls(messages=pairs, params=params or SamplingParams())

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_key(self, teacher_id: str) -> str:
        """(teacher, model, messages, params) -> a hex digest; the request cache's key."""
        blob = json.dumps([teacher_id, self.messages, self.params.to_dict()], ensure_ascii=False,
                          separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TextRequest:
    """One raw-completion request: `prompt` is sent as it is, no chat template applied (OpenAI-compatible
    `/v1/completions`, vLLM `generate`). For methods that write the template themselves, e.g. Magpie's pre-query
    template. The engine runs it like a `ChatRequest` (cache, retries, budgets) on a teacher whose `raw_completion`
    is True; its cache key can never equal a chat request's."""

    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)

    @property
    def messages(self) -> tuple[tuple[str, str], ...]:
        """The prompt as one pseudo-message, for what only needs its size (the budget's token estimate)."""
        return (("text", self.prompt),)

    def cache_key(self, teacher_id: str) -> str:
        blob = json.dumps([teacher_id, "text", self.prompt, self.params.to_dict()], ensure_ascii=False,
                          separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Completion:
    """One answer. `sent`: the sampling parameters the backend actually sent, when it cannot send the request's
    as they are (Anthropic: no penalties, temperature only for some models); None: sent as asked. Rows record it in
    `params["sent"]`."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sent: Mapping[str, Any] | None = None

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class TeacherError(Exception):
    """Base of the errors a backend raises; the engine decides what to do from the subclass."""


class RateLimited(TeacherError):
    """HTTP 429 (or an overloaded signal): back off, shrink concurrency, honour `retry_after` seconds when given."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(TeacherError):
    """5xx, timeouts, connection resets, malformed bodies: retry with exponential backoff and jitter."""


class PermanentError(TeacherError):
    """4xx other than 429 (bad request, auth): retrying the same request will not help."""


class Teacher:
    """Base class of the backends. `spec` is what the user typed (e.g. `openai:gpt-4o-mini`)."""

    backend: str = "?"
    takes_whole_batch: bool = False
    # Whether `acomplete_text` / `complete_batch` take a `TextRequest` (a raw completion, no chat template).
    raw_completion: bool = False

    def __init__(self, model: str):
        self.model = model

    @property
    def teacher_id(self) -> str:
        """`backend:model@revision` as written in every row's `teacher` column (and part of the cache key)."""
        return f"{self.backend}:{self.model}"

    async def acomplete(self, request: ChatRequest, timeout: float) -> Completion:
        raise NotImplementedError(f"{type(self).__name__} takes whole batches: use complete_batch")

    async def acomplete_text(self, request: TextRequest, timeout: float) -> Completion:
        raise PermanentError(f"{self.backend}: this backend cannot do raw completion (no chat template)")

    def complete_batch(self, requests: Sequence[ChatRequest]) -> list[Completion | TeacherError]:
        raise NotImplementedError(f"{type(self).__name__} takes one request at a time: use acomplete")

    def why_no_raw_completion(self) -> str | None:
        """None when raw completion works here; else one sentence saying why not (shown to the user)."""
        if self.raw_completion:
            return None
        return f"the {self.backend} backend has no raw-completion endpoint (only chat)"

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """`messages` through the model's own chat template, with the generation prompt, as text; None when this
        teacher cannot tell (the caller then needs the template from elsewhere)."""
        return None

    def close(self) -> None:
        """Release servers, engines, connections."""

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
