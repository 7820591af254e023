"""The OpenAI-compatible and Anthropic teachers, over both transports (the default lean aiohttp one and the official
SDKs), against the real llama.cpp server, directly and through the fault proxy: what they send, what they return,
and how every failure maps onto the engine's three error classes."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import pytest

from gen.errors import UserError
from gen.teachers import load_teacher
from gen.teachers.base import (
    ChatRequest,
    Completion,
    PermanentError,
    RateLimited,
    SamplingParams,
    TeacherError,
    TransientError,
)
from gen.teachers.http_client import retry_after_seconds
from tests.faultproxy import Fault, FaultProxy, first
from tests.servers import llamacpp_server  # noqa: F401

BACKENDS = ["openai", "anthropic"]
# (backend, transport): every test below runs on both transports of both HTTP backends.
CLIENTS = [(backend, transport) for backend in BACKENDS for transport in ("aiohttp", "sdk")]
CLIENT_IDS = [f"{backend}-{transport}" for backend, transport in CLIENTS]
# Forwarded requests run on 2 shared CPU cores: generous timeouts, tiny generations.
SLOW_OK = 180.0


@pytest.fixture(scope="module")
def proxy(llamacpp_server):
    with FaultProxy(llamacpp_server.base_url) as running:
        yield running


def _teacher(backend: str, base_url: str, model: str = "gemma-3-270m-q4_k_m", transport: str | None = None):
    # The OpenAI API lives under /v1; the Anthropic teacher appends /v1/messages itself (as its SDK does).
    return load_teacher(f"{backend}:{model}", base_url=base_url + ("/v1" if backend == "openai" else ""),
                        transport=transport)


def _ask(teacher, request: ChatRequest, timeout: float = SLOW_OK):
    try:
        return asyncio.run(teacher.acomplete(request, timeout=timeout))
    finally:
        teacher.close()


def _request(max_tokens: int = 2, **params) -> ChatRequest:
    return ChatRequest.make([{"role": "user", "content": "Say hi."}], SamplingParams(max_tokens=max_tokens, **params))


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
def test_answers_from_the_real_server_with_system_stop_and_usage(backend, transport, proxy):
    proxy.reset()
    request = ChatRequest.make([{"role": "user", "content": "Name a colour."}],
                               SamplingParams(max_tokens=3, temperature=0.5, top_p=0.9, stop=("\n\n",), seed=7),
                               system="Answer in one word.")
    completion = _ask(_teacher(backend, proxy.base_url, transport=transport), request)
    assert isinstance(completion, Completion)
    assert completion.finish_reason in {"stop", "length"}
    assert 0 < completion.completion_tokens <= 3 and completion.prompt_tokens > 0
    assert proxy.counts["forwarded"] == 1
    sent = proxy.received[0].json()
    if backend == "openai":
        assert proxy.received[0].path == "/v1/chat/completions"
        assert sent["messages"][0] == {"role": "system", "content": "Answer in one word."}
        assert sent["max_tokens"] == 3 and sent["stop"] == ["\n\n"] and sent["seed"] == 7
        assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    else:
        assert proxy.received[0].path == "/v1/messages"
        assert sent["system"] == "Answer in one word."
        assert [m["role"] for m in sent["messages"]] == ["user"]
        assert sent["max_tokens"] == 3 and sent["stop_sequences"] == ["\n\n"]
        assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9 and sent["seed"] == 7


IN_THE_FUTURE = email.utils.formatdate(time.time() + 3600, usegmt=True)

# (fault, expected error class per backend, expected retry_after or None)
FAULTS = [
    ("429 seconds", Fault.rate_limit(7), {"openai": RateLimited, "anthropic": RateLimited}, 7.0),
    ("429 no header", Fault.rate_limit(None), {"openai": RateLimited, "anthropic": RateLimited}, None),
    ("500", Fault.server_error(500), {"openai": TransientError, "anthropic": TransientError}, None),
    ("503", Fault.server_error(503), {"openai": TransientError, "anthropic": TransientError}, None),
    ("529 overloaded", Fault.http_error(529), {"openai": TransientError, "anthropic": RateLimited}, None),
    ("408", Fault.http_error(408), {"openai": TransientError, "anthropic": TransientError}, None),
    ("400", Fault.http_error(400), {"openai": PermanentError, "anthropic": PermanentError}, None),
    ("401", Fault.http_error(401), {"openai": PermanentError, "anthropic": PermanentError}, None),
    ("404", Fault.http_error(404), {"openai": PermanentError, "anthropic": PermanentError}, None),
    ("reset", Fault.reset(), {"openai": TransientError, "anthropic": TransientError}, None),
]


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
@pytest.mark.parametrize("name, fault, expected, retry_after", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_injected_fault_maps_to_its_error_class(backend, transport, name, fault, expected, retry_after, proxy):
    proxy.reset(first(1, fault))
    with pytest.raises(TeacherError) as info:
        _ask(_teacher(backend, proxy.base_url, transport=transport), _request())
    error = info.value
    assert type(error) is expected[backend], f"{name}: got {type(error).__name__}: {error}"
    if fault.status:  # the status the server sent, and its own message, lead the error line
        assert str(error).startswith(f"{fault.status}: ")
    if transport == "sdk" or not fault.status:
        assert error.__cause__ is not None, "the client's own exception must be the cause (a real failure)"
    assert "\n" not in str(error)
    if isinstance(error, RateLimited):
        assert error.retry_after == retry_after
    assert proxy.counts[fault.kind] == 1 and proxy.counts["forwarded"] == 0


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
def test_retry_after_as_http_date(backend, transport, proxy):
    proxy.reset(first(1, Fault.rate_limit(IN_THE_FUTURE)))
    with pytest.raises(RateLimited) as info:
        _ask(_teacher(backend, proxy.base_url, transport=transport), _request())
    remaining = (email.utils.parsedate_to_datetime(IN_THE_FUTURE).timestamp() - time.time())
    assert remaining - 5 <= info.value.retry_after <= remaining + 1


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
def test_a_response_held_past_the_timeout_is_transient(backend, transport, proxy):
    proxy.reset(first(1, Fault.slow(60)))
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        _ask(_teacher(backend, proxy.base_url, transport=transport), _request(), timeout=0.5)
    assert time.monotonic() - started < 10, "the per-request timeout must cut the wait short"
    assert proxy.counts["slow"] == 1


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.reset(after_forward=True)], ids=["malformed", "lost"])
def test_answers_lost_after_the_server_did_the_work_are_transient(backend, transport, fault, proxy):
    proxy.reset(first(1, fault))
    with pytest.raises(TransientError):
        _ask(_teacher(backend, proxy.base_url, transport=transport), _request(max_tokens=1))
    assert proxy.counts["forwarded"] == 1 and proxy.counts[fault.kind] == 1


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
def test_a_real_400_from_the_server_is_permanent(backend, transport, llamacpp_server):
    too_long = ChatRequest.make([{"role": "user", "content": "word " * 3000}], SamplingParams(max_tokens=2))
    with pytest.raises(PermanentError, match="context"):
        _ask(_teacher(backend, llamacpp_server.base_url, transport=transport), too_long)


@pytest.mark.parametrize("backend, transport", CLIENTS, ids=CLIENT_IDS)
def test_connection_refused_is_transient(backend, transport):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientError, match="connection"):
        _ask(_teacher(backend, f"http://127.0.0.1:{port}", transport=transport), _request(), timeout=10)


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
@pytest.mark.parametrize("backend, env", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_the_key_comes_from_the_environment_and_never_into_errors(backend, transport, env, proxy, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv(env, secret)
    proxy.reset(first(1, Fault.http_error(401, "invalid key")))
    with pytest.raises(PermanentError) as info:
        _ask(_teacher(backend, proxy.base_url, transport=transport), _request())
    headers = proxy.received[0].headers
    assert headers.get("authorization") == f"Bearer {secret}" or headers.get("x-api-key") == secret
    assert secret not in str(info.value)


@pytest.mark.parametrize("spec, env", [("openai:gpt-4o-mini", "OPENAI_API_KEY"),
                                       ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY")])
def test_a_missing_key_for_the_official_api_is_a_one_line_user_error(spec, env, monkeypatch):
    for name in (env, "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError) as info:
        load_teacher(spec)
    assert env in str(info.value) and "\n" not in str(info.value)
    # A local server needs no key at all.
    load_teacher(spec, base_url="http://127.0.0.1:1/v1").close()


def test_official_openai_gets_max_completion_tokens_compatible_servers_max_tokens(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    official = load_teacher("openai:gpt-4o-mini")
    local = load_teacher("openai:m", base_url="http://127.0.0.1:1/v1")
    assert official.request_kwargs(_request(max_tokens=9))["max_completion_tokens"] == 9
    assert local.request_kwargs(_request(max_tokens=9))["max_tokens"] == 9
    official.close()
    local.close()


@pytest.mark.parametrize("spec, options, fragment", [
    ("gpt4", {}, "unknown backend 'gpt4'"),
    ("mistral:large", {}, "unknown backend 'mistral'"),
    ("openai:", {}, "missing model name"),
    ("openai:m", {"base_url": "http://127.0.0.1:1/v1", "n_parallel": 4}, "--n-parallel"),
    ("openai:m", {"base_url": "http://127.0.0.1:1/v1", "transport": "grpc"}, "--transport 'grpc'"),
    ("anthropic:m", {"base_url": "http://127.0.0.1:1", "transport": "requests"}, "--transport 'requests'"),
    ("openai:m", {"base_url": "127.0.0.1:8000/v1"}, "--base-url"),
])
def test_bad_teacher_specs_are_one_line_user_errors(spec, options, fragment):
    with pytest.raises(UserError) as info:
        load_teacher(spec, **options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
def test_keep_alive_pool_holds_hundreds_of_connections(transport, proxy):
    """Two bursts of 160 concurrent requests in one event loop: the second reuses all 160 connections (the SDK's
    default pool keeps only 100 alive and would reconnect 60 of them)."""
    proxy.reset(Fault.rate_limit(0))  # answered by the proxy itself: no model time
    teacher = _teacher("openai", proxy.base_url, transport=transport)

    async def burst():
        results = await asyncio.gather(*(teacher.acomplete(_request(), timeout=60) for _ in range(160)),
                                       return_exceptions=True)
        assert all(isinstance(r, RateLimited) for r in results), {type(r).__name__ for r in results}

    async def two_bursts():
        await burst()
        await burst()
        await teacher.aclose()

    asyncio.run(two_bursts())
    teacher.close()
    assert proxy.counts["requests"] == 320
    assert proxy.counts["connections"] == 160


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "12"}, 12.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: no wait
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-3"}, None),
    ({}, None),
])
def test_retry_after_parsing(headers, expected):
    assert retry_after_seconds(headers) == expected
