"""`openai:<model>`: any OpenAI-compatible chat-completions server — OpenAI itself, `vllm serve`, llama.cpp, ...

The key comes from `OPENAI_API_KEY` only (sent as `Authorization: Bearer`); the server from the `base_url` option,
else `OPENAI_BASE_URL`, else api.openai.com. Transports, credentials in the URL, the error mapping and several
endpoints (`URL1,URL2`) are `gen.teachers.http_base.HTTPTeacher`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gen.teachers.backend import Backend, Price, Terms
from gen.teachers.base import ChatRequest, Completion, PermanentError, TextRequest, TransientError
from gen.teachers.http_base import HTTPTeacher, reject_unknown_options
from gen.teachers.http_client import DEFAULT_MAX_CONNECTIONS, map_sdk_error, one_line

__all__ = ["BACKEND", "OpenAITeacher", "from_spec", "reject_unknown_options"]

OPENAI_TERMS_URL = "https://openai.com/policies/terms-of-use"
OPENAI_SERVICES_URL = "https://openai.com/policies/services-agreement"

BACKEND = Backend(
    prefix="openai",
    key_env=("OPENAI_API_KEY",),
    # Dollars per 1M tokens (input, output), standard (non-batch, non-cached) requests, as published by OpenAI.
    prices_checked="2025-11",
    prices={
        "gpt-5": Price(1.25, 10.00),
        "gpt-5-mini": Price(0.25, 2.00),
        "gpt-5-nano": Price(0.05, 0.40),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4-turbo": Price(10.00, 30.00),
        "gpt-3.5-turbo": Price(0.50, 1.50),
        "o3": Price(2.00, 8.00),
        "o3-mini": Price(1.10, 4.40),
        "o4-mini": Price(1.10, 4.40),
        "o1": Price(15.00, 60.00),
        "o1-mini": Price(1.10, 4.40),
    },
    terms=Terms(
        "OpenAI Terms of Use / Services Agreement", OPENAI_TERMS_URL,
        "OpenAI's terms forbid using output to develop models that compete with OpenAI "
        f"(see also the [Services Agreement]({OPENAI_SERVICES_URL}) for API customers). "
        "Check that your use of this data and of models trained on it is allowed.",
        "other", license_name="openai-terms-of-use"),
)


# The name OpenAI's structured output gives the schema (required by the API; shown to the model).
SCHEMA_NAME = "answer"


def response_format(json_schema: str) -> dict[str, Any]:
    """`SamplingParams.json_schema` as chat completions' structured output. OpenAI, vLLM serve and llama.cpp's
    server all take this form (llama.cpp turns the schema into a grammar; `strict` asks OpenAI to enforce it)."""
    return {"type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": json.loads(json_schema), "strict": True}}


def apply_template(root_url: str, messages: Sequence[Mapping[str, str]], headers: Mapping[str, str],
                   timeout: float = 30.0) -> str | None:
    """llama.cpp server's `POST /apply-template`: `messages` rendered by the model's chat template (with the
    generation prompt); None when the server has no such endpoint or does not answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(root_url + "/apply-template", data=json.dumps({"messages": list(messages)}).encode(),
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            prompt = json.loads(response.read()).get("prompt")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return prompt if isinstance(prompt, str) else None


class OpenAITeacher(HTTPTeacher):
    """Chat completions over HTTP, one request per `acomplete`; the engine keeps many in flight.

    `extra_stop` are stop strings this teacher always adds (the embedded llama.cpp teacher uses them to end a turn);
    `strip_text` trims surrounding whitespace from completions (for transcript-style templates).
    `transport`: "aiohttp" (default, lean) or "sdk" (the official SDK); see `gen.teachers.http_base`.
    """

    backend = BACKEND.prefix
    descriptor = BACKEND
    base_url_env = "OPENAI_BASE_URL"
    official_base_url = "https://api.openai.com/v1"
    official_host = "api.openai.com"
    path = "/chat/completions"
    sdk_name = "openai"
    sdk_error = "OpenAIError"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, extra_stop: Sequence[str] = (),
                 strip_text: bool = False, transport: str | None = None):
        self.extra_stop = tuple(extra_stop)
        self.strip_text = strip_text
        super().__init__(model, base_url=base_url, api_key=api_key, max_connections=max_connections,
                         transport=transport)

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
        if p.json_schema is not None:
            kwargs["response_format"] = response_format(p.json_schema)
        return kwargs

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return self.request_kwargs(request)

    # ------------------------------------------------------------------------------------------- raw completion
    # `/v1/completions` (a prompt in, text out, no chat template): what vLLM serve and llama.cpp's server offer for
    # any model. OpenAI's own API keeps it only for legacy models, so it is not offered there.

    @property
    def raw_completion(self) -> bool:  # type: ignore[override]
        return not self._official

    def why_no_raw_completion(self) -> str | None:
        if self.raw_completion:
            return None
        return ("OpenAI's hosted chat models have no raw-completion endpoint; point --base-url at an OpenAI-"
                "compatible server that has /v1/completions (vllm serve, llama.cpp)")

    def text_request_kwargs(self, request: TextRequest) -> dict[str, Any]:
        kwargs = self.request_kwargs(ChatRequest(messages=(), params=request.params))
        kwargs.pop("messages")
        kwargs.pop("response_format", None)
        kwargs.pop("max_completion_tokens", None)
        kwargs["max_tokens"] = request.params.max_tokens
        kwargs.pop("stop", None)  # a chat turn's extra stops (`extra_stop`) do not apply to raw text: only its own
        if request.params.stop:
            kwargs["stop"] = list(request.params.stop)
        kwargs["prompt"] = request.prompt
        return kwargs

    async def acomplete_text(self, request: TextRequest, timeout: float) -> Completion:
        if not self.raw_completion:
            raise PermanentError(self.why_no_raw_completion() or "no raw completion")
        kwargs = self.text_request_kwargs(request)
        if self._poster is not None:
            return self.text_from_json(await self.poster_for("/completions").post(kwargs, timeout))
        client = await self._clients.get()
        try:
            response = await client.completions.create(**kwargs, timeout=timeout)
        except (getattr(self._sdk, self.sdk_error), ValueError) as exc:
            raise map_sdk_error(self._sdk, exc, self.rate_limit_statuses) from exc
        return self.text_from_json(response.model_dump() if hasattr(response, "model_dump") else response)

    def text_from_json(self, response: Any) -> Completion:
        try:
            choice = response["choices"][0]
            text = choice.get("text") or ""
            usage = response.get("usage") or {}
            return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError(f"{self.backend}: malformed completions response (no choices): "
                                 f"{one_line(response, 120)}") from exc

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The server's own chat template applied to `messages`, from llama.cpp's `/apply-template` (vLLM serve and
        OpenAI have no such endpoint: None)."""
        if self._official or not self.base_url:
            return None
        root = self.base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        return apply_template(root, messages, self._poster_settings[1])

    def sdk_client(self, sdk: Any, **options: Any) -> Any:
        return sdk.AsyncOpenAI(**options)

    async def sdk_request(self, client: Any, request: ChatRequest, timeout: float) -> Any:
        return await client.chat.completions.create(**self.request_kwargs(request), timeout=timeout)

    def from_json(self, response: Any, request: ChatRequest) -> Completion:
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

    def from_sdk(self, response: Any, request: ChatRequest) -> Completion:
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


def from_spec(model: str, **options: Any):
    """`openai:<model>`; options: `base_url` (else $OPENAI_BASE_URL; `URL1,URL2,...`: replicas of one model behind
    an `EndpointPool`), `max_connections`, `transport` ("aiohttp" default, or "sdk")."""
    return OpenAITeacher.from_options(model, **options)
