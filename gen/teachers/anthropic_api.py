"""`anthropic:<model>`: Anthropic's native Messages API (also spoken by llama.cpp's server at `/v1/messages`).

The key comes from `ANTHROPIC_API_KEY` only (sent as `x-api-key`, `anthropic-version` pinned); the server from the
`base_url` option, else `ANTHROPIC_BASE_URL`, else api.anthropic.com. Transports, credentials in the URL and the
error mapping are `gen.teachers.http_base.HTTPTeacher`'s; 529 "overloaded" counts as a rate limit, like 429.

Differences from chat completions that matter here: the system prompt is a separate `system=` argument (several
system messages are joined), stop strings are `stop_sequences`, `stop_reason` is mapped to the OpenAI words
(end_turn/stop_sequence -> "stop", max_tokens -> "length").

Sampling (`sampling_sent`): the Messages API takes `temperature` in [0, 1] and `top_p` on the models that support
sampling options; the Claude 4.5 family (and Opus 4.1) refuse the two together ("`temperature` and `top_p` cannot
both be specified for this model"), and some newer models refuse `temperature` altogether. The SDK dropped these
keyword arguments in anthropic 1.0 (the API kept them), so they travel as body fields (`extra_body`) on both
transports. So:
- `temperature` is always sent; outside [0, 1] the request fails at once with a `PermanentError` that says so (the
  API would refuse it; rescaling it silently would make a different dataset than the one asked for);
- `top_p` is sent when below 1 (1 is the API's default), except to a model known to refuse both
  (`ONE_SAMPLING_PARAMETER_MODELS`), which gets temperature only;
- a model that refuses what was sent answers 400, raised as a `PermanentError` with the server's own message;
- penalties are never sent (the API has none); `seed` only to other servers than Anthropic's (llama.cpp reads it,
  Anthropic refuses unknown fields).
Structured output (`SamplingParams.json_schema`): one tool whose `input_schema` is the schema and `tool_choice`
forcing it (`schema_tool`); the completion's text is the tool call's input as JSON (`tool_answer`).

What was sent is reported in `Completion.sent` and lands in the row's `params` (`"sent"`); all requested parameters
stay in the cache key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gen.teachers.backend import Backend, Price, Terms
from gen.teachers.base import ChatRequest, Completion, PermanentError, SamplingParams, TransientError
from gen.teachers.http_base import HTTPTeacher
from gen.teachers.http_client import DEFAULT_MAX_CONNECTIONS, one_line

ANTHROPIC_TERMS_URL = "https://www.anthropic.com/legal/commercial-terms"

BACKEND = Backend(
    prefix="anthropic",
    key_env=("ANTHROPIC_API_KEY",),
    # Dollars per 1M tokens (input, output), standard (non-batch, non-cached) requests, as published by Anthropic.
    prices_checked="2025-11",
    prices={
        "claude-opus-4-5": Price(5.00, 25.00),
        "claude-opus-4": Price(15.00, 75.00),
        "claude-sonnet-4": Price(3.00, 15.00),
        "claude-haiku-4-5": Price(1.00, 5.00),
        "claude-3-7-sonnet": Price(3.00, 15.00),
        "claude-3-5-sonnet": Price(3.00, 15.00),
        "claude-3-5-haiku": Price(0.80, 4.00),
        "claude-3-opus": Price(15.00, 75.00),
        "claude-3-haiku": Price(0.25, 1.25),
    },
    terms=Terms(
        "Anthropic Commercial Terms of Service", ANTHROPIC_TERMS_URL,
        "Anthropic's terms forbid using the services to build a competing product or service, including to "
        "train competing AI models. Check that your use of this data and of models trained on it is allowed.",
        "other", license_name="anthropic-commercial-terms"),
    terms_cover_every_model=True,  # api.anthropic.com serves only Anthropic's models
)

# The Messages API version the request and response shapes below follow (the SDK pins the same one).
API_VERSION = "2023-06-01"
OFFICIAL_HOST = "api.anthropic.com"

# 529 is Anthropic's "overloaded": like a 429 it asks for less pressure, not a blind retry.
OVERLOADED_STATUSES = frozenset({429, 529})

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

MAX_TEMPERATURE = 1.0
# Models that answer 400 "`temperature` and `top_p` cannot both be specified for this model" (Anthropic's
# migration guide to Claude 4.5 and Opus 4.1; reported for the 4.6 models too), by model-name prefix: they get
# temperature only.
ONE_SAMPLING_PARAMETER_MODELS = ("claude-opus-4-1", "claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5",
                                 "claude-opus-4-6", "claude-sonnet-4-6")


def refuses_temperature_with_top_p(model: str) -> bool:
    return any(model == prefix or model.startswith(prefix + "-") for prefix in ONE_SAMPLING_PARAMETER_MODELS)


# Structured output on the Messages API is tool use: one tool whose `input_schema` is the schema, and `tool_choice`
# forcing the model to call it; the answer is the tool call's input, as JSON text (what the other backends return).
SCHEMA_TOOL = "answer"


def schema_tool(json_schema: str) -> dict[str, Any]:
    """The `tools` and `tool_choice` arguments that make the answer follow `json_schema` (canonical JSON text)."""
    return {"tools": [{"name": SCHEMA_TOOL, "description": "Give the answer in this structure.",
                       "input_schema": json.loads(json_schema)}],
            "tool_choice": {"type": "tool", "name": SCHEMA_TOOL}}


def tool_answer(blocks: Sequence[tuple[Any, Any, Any]], text: str) -> str:
    """The forced tool call's input as compact JSON text, from (type, name, input) per content block; a reply
    without the call (a server that ignores `tool_choice`) keeps its text, which the caller's validation judges."""
    for kind, name, arguments in blocks:
        if kind == "tool_use" and name == SCHEMA_TOOL:
            return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return text


class AnthropicTeacher(HTTPTeacher):
    """Messages API over HTTP, one request per `acomplete`; the engine keeps many in flight."""

    backend = BACKEND.prefix
    descriptor = BACKEND
    base_url_env = "ANTHROPIC_BASE_URL"
    official_base_url = "https://api.anthropic.com"
    official_host = OFFICIAL_HOST
    path = "/v1/messages"
    sdk_name = "anthropic"
    sdk_error = "AnthropicError"
    rate_limit_statuses = OVERLOADED_STATUSES

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, extra_stop: Sequence[str] = (),
                 transport: str | None = None):
        self.extra_stop = tuple(extra_stop)
        super().__init__(model, base_url=base_url, api_key=api_key, max_connections=max_connections,
                         transport=transport)

    def key_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def fixed_headers(self) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    def sampling_sent(self, params: SamplingParams) -> dict[str, Any]:
        """The sampling fields this request sends (see the module docstring); PermanentError for a temperature the
        API cannot take."""
        if not 0.0 <= params.temperature <= MAX_TEMPERATURE:
            raise PermanentError(f"anthropic: temperature {params.temperature:g} is outside the Messages API's range "
                                 f"0-{MAX_TEMPERATURE:g}; ask for a temperature in that range")
        sent: dict[str, Any] = {"temperature": params.temperature}
        if params.top_p < 1.0 and not refuses_temperature_with_top_p(self.model):
            sent["top_p"] = params.top_p
        if params.seed is not None and not self._official:
            sent["seed"] = params.seed
        return sent

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
        # Body fields, not SDK keyword arguments: anthropic>=1.0 has no sampling arguments (see the docstring); the
        # SDK sends `extra_body` as top-level fields, the aiohttp transport merges them (`request_body`).
        kwargs["extra_body"] = self.sampling_sent(p)
        if p.json_schema is not None:
            kwargs.update(schema_tool(p.json_schema))
        return kwargs

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        body = self.request_kwargs(request)
        body.update(body.pop("extra_body", {}))  # what the SDK does with extra_body: top-level fields
        return body

    def sdk_client(self, sdk: Any, **options: Any) -> Any:
        return sdk.AsyncAnthropic(**options)

    async def sdk_request(self, client: Any, request: ChatRequest, timeout: float) -> Any:
        return await client.messages.create(**self.request_kwargs(request), timeout=timeout)

    def from_json(self, message: Any, request: ChatRequest) -> Completion:
        """A Messages JSON body (decoded) -> Completion; a body of any other shape is transient."""
        try:
            blocks = message["content"]
            text = "".join(block.get("text") or "" for block in blocks if block.get("type") == "text")
            if request.params.json_schema is not None:
                text = tool_answer([(b.get("type"), b.get("name"), b.get("input")) for b in blocks], text)
            reason = message.get("stop_reason") or "stop"
            usage = message.get("usage") or {}
            prompt_tokens = int(usage.get("input_tokens") or 0)
            completion_tokens = int(usage.get("output_tokens") or 0)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError(f"anthropic: malformed response (no content): {one_line(message, 120)}") from exc
        return Completion(text=text, finish_reason=STOP_REASONS.get(reason, reason),
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          sent=self.sampling_sent(request.params))

    def from_sdk(self, message: Any, request: ChatRequest) -> Completion:
        blocks = getattr(message, "content", None)
        if blocks is None or isinstance(message, (str, bytes)):
            raise TransientError(f"anthropic: malformed response (no content): {one_line(message, 120)}")
        text = "".join(getattr(block, "text", "") or "" for block in blocks if getattr(block, "type", "") == "text")
        if request.params.json_schema is not None:
            text = tool_answer([(getattr(b, "type", None), getattr(b, "name", None), getattr(b, "input", None))
                                for b in blocks], text)
        reason = message.stop_reason or "stop"
        usage = getattr(message, "usage", None)
        return Completion(text=text, finish_reason=STOP_REASONS.get(reason, reason),
                          prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                          sent=self.sampling_sent(request.params))


def from_spec(model: str, **options: Any):
    """`anthropic:<model>`; options: `base_url` (else $ANTHROPIC_BASE_URL; `URL1,URL2,...`: replicas behind an
    `EndpointPool`), `max_connections`, `transport` ("aiohttp" default, or "sdk")."""
    return AnthropicTeacher.from_options(model, **options)
