"""Backends declare themselves once (`BACKEND = Backend(...)`): the registry, `--max-cost` prices, the card's terms
and secret redaction read the descriptor; a new backend is its module plus one registry line; the endpoint pool
composes any HTTP backend."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest

from gen.data import secrets
from gen.errors import UserError
from gen.teachers import load_teacher, registry
from gen.teachers.anthropic_api import AnthropicTeacher
from gen.teachers.base import ChatRequest, SamplingParams
from gen.teachers.endpoints import EndpointPool
from gen.teachers.pricing import price_for
from gen.teachers.terms import terms_for
from tests.faultproxy import FaultProxy
from tests.servers import llamacpp_server  # noqa: F401


def test_every_backend_module_declares_its_prefix_keys_prices_and_terms():
    backends = registry.backends()
    assert list(backends) == ["openai", "anthropic", "vllm", "llamacpp", "hf"]
    for prefix, backend in backends.items():
        assert backend.prefix == prefix and registry.module(prefix).BACKEND is backend
    assert backends["openai"].key_env == ("OPENAI_API_KEY",)
    assert backends["anthropic"].key_env == ("ANTHROPIC_API_KEY",)
    assert price_for("openai:gpt-4o-mini-2024-07-18") == backends["openai"].prices["gpt-4o-mini"]
    assert price_for("anthropic:claude-haiku-4-5@x") == backends["anthropic"].prices["claude-haiku-4-5"]
    assert price_for("llamacpp:gemma-3-270m-q4_k_m@abc") is None and price_for("nope:x") is None
    assert terms_for("openai", "gpt-4o").title.startswith("OpenAI")
    assert terms_for("openai", "gemma-3-27b-it").title == "Gemma Terms of Use"  # the weights' license decides
    assert terms_for("anthropic", "claude-gemma-x").title.startswith("Anthropic")  # Anthropic serves only its own
    assert terms_for("llamacpp", "").hub_license == "gemma"  # the bundled default model
    assert terms_for("vllm", "Qwen/Qwen2.5-7B-Instruct") is None


ECHO_MODULE = '''
    """A throwaway backend: the whole of what adding one takes (plus one registry line)."""
    from gen.teachers.backend import Backend, Price, Terms
    from gen.teachers.base import Completion, Teacher

    BACKEND = Backend(prefix="echo", key_env=("ECHO_SERVICE_CREDENTIAL",), prices={"echo-1": Price(1.0, 2.0)},
                      terms=Terms("Echo Terms", "https://echo.example/terms", "Echo forbids nothing."))


    class EchoTeacher(Teacher):
        backend = BACKEND.prefix

        async def acomplete(self, request, timeout):
            return Completion(text=request.messages[-1][1])


    def from_spec(model, **options):
        return EchoTeacher(model)
'''


@pytest.fixture
def echo_backend(tmp_path, monkeypatch):
    (tmp_path / "kd_echo_backend.py").write_text(textwrap.dedent(ECHO_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BACKEND_MODULES", registry.BACKEND_MODULES + ("kd_echo_backend",))
    registry._load.cache_clear()
    yield
    registry._load.cache_clear()
    sys.modules.pop("kd_echo_backend", None)


def test_a_new_backend_is_its_module_plus_one_registry_line(echo_backend, monkeypatch):
    from gen.publish.card import teacher_terms

    teacher = load_teacher("echo:echo-1")
    request = ChatRequest.make([{"role": "user", "content": "ping"}], SamplingParams())
    assert teacher.teacher_id == "echo:echo-1" and asyncio.run(teacher.acomplete(request, 1)).text == "ping"
    assert price_for("echo:echo-1-2025").cost(1_000_000, 1_000_000) == 3.0
    assert teacher_terms("echo:echo-1").title == "Echo Terms"
    # Its key variable matches no generic pattern, yet it is redacted because the backend declared it.
    monkeypatch.setenv("ECHO_SERVICE_CREDENTIAL", "echo-credential-123456")
    assert secrets.redact({"note": "echo-credential-123456"}) == {"note": "<redacted>"}
    with pytest.raises(UserError, match="expected one of: openai, anthropic, vllm, llamacpp, hf, echo"):
        load_teacher("nope:x")


def test_the_endpoint_pool_composes_any_http_backend(llamacpp_server):  # noqa: F811
    """`anthropic:` over two replicas (two proxies in front of llama.cpp's /v1/messages); credentials in the URLs
    are used and never shown in the pool's stats (the engine's endpoint summary lines)."""
    with FaultProxy(llamacpp_server.base_url) as a, FaultProxy(llamacpp_server.base_url) as b:
        urls = [f"http://u:pw-SECRET-1@{p.base_url.split('://', 1)[1]}" for p in (a, b)]
        pool = load_teacher("anthropic:claude-3-5-haiku", base_url=",".join(urls))
        assert isinstance(pool, EndpointPool) and pool.teacher_id == "anthropic:claude-3-5-haiku"
        assert all(isinstance(e.teacher, AnthropicTeacher) for e in pool.endpoints)
        request = ChatRequest.make([{"role": "user", "content": "Hi."}], SamplingParams(max_tokens=2))

        async def two():
            results = await asyncio.gather(*(pool.acomplete(request, 120) for _ in range(2)))
            await pool.aclose()
            return results

        try:
            assert all(c.text is not None for c in asyncio.run(two()))
        finally:
            pool.close()
        assert [r.path for r in a.received + b.received] == ["/v1/messages", "/v1/messages"]
        assert all(r.headers["authorization"].startswith("Basic ") for r in a.received + b.received)
        stats = pool.endpoint_stats()
        assert all("pw-SECRET-1" not in url and "<redacted>@" in url for url in stats)
