"""`vllm:<path>`: the in-process vLLM teacher on a tiny random Llama. Runs in the vLLM venv (`make test-vllm`);
imports nothing that only the main venv has."""

from __future__ import annotations

import pytest

from gen.teachers.base import ChatRequest, Completion, PermanentError, SamplingParams
from tests.servers import tiny_llama_dir, vllm_teacher  # noqa: F401

pytestmark = pytest.mark.vllm


def _round() -> list[ChatRequest]:
    """Requests whose sampling parameters all differ (seeded, so each answer is a function of its own request)."""
    return [ChatRequest.make([{"role": "user", "content": f"Tell me about number {i}."}],
                             SamplingParams(max_tokens=4 + i, temperature=0.5 + 0.1 * i, top_p=0.95, seed=100 + i))
            for i in range(6)]


def test_whole_round_goes_to_one_chat_call_and_answers_keep_their_order(vllm_teacher, monkeypatch):  # noqa: F811
    assert vllm_teacher.takes_whole_batch is True
    real_chat = vllm_teacher.llm.chat
    calls = []

    def counting_chat(conversations, **kwargs):  # counts the calls; the real engine does the work
        calls.append(len(conversations))
        return real_chat(conversations, **kwargs)

    monkeypatch.setattr(vllm_teacher.llm, "chat", counting_chat)
    requests = _round()
    answers = vllm_teacher.complete_batch(requests)
    assert calls == [len(requests)], "the whole round must go to one LLM.chat call"
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers):
        assert isinstance(answer, Completion)
        assert answer.prompt_tokens == vllm_teacher.prompt_length(request) > 0
        limit = request.params.max_tokens
        assert answer.completion_tokens == limit if answer.finish_reason == "length" else answer.completion_tokens < limit
        assert answer.finish_reason in {"stop", "length"}
    # Pairing: the same requests in reverse order get the same answers, so each request ran with its own params.
    backwards = vllm_teacher.complete_batch(list(reversed(requests)))
    assert list(reversed(backwards)) == answers
    assert len({a.text for a in answers}) > 1


def test_a_prompt_longer_than_the_context_fails_alone(vllm_teacher):  # noqa: F811
    requests = _round()[:2]
    too_long = ChatRequest.make([{"role": "user", "content": "number " * 2000}], SamplingParams(max_tokens=2))
    answers = vllm_teacher.complete_batch([requests[0], too_long, requests[1]])
    assert isinstance(answers[1], PermanentError) and "max_model_len" in str(answers[1])
    assert isinstance(answers[0], Completion) and isinstance(answers[2], Completion)
    assert answers[0] == vllm_teacher.complete_batch([requests[0]])[0]


def test_the_engine_sends_a_round_through_the_vllm_teacher(vllm_teacher, tmp_path):  # noqa: F811
    from gen.engine.engine import Engine

    requests = _round()[:3]
    with Engine(vllm_teacher, cache_path=tmp_path / "cache.sqlite", progress=False, own_teacher=False) as engine:
        results = engine.run(requests)
        assert [r.ok for r in results] == [True, True, True]
        again = engine.run(requests)
    assert all(r.cached for r in again)
    assert [r.completion for r in again] == [r.completion for r in results]
    assert vllm_teacher.teacher_id.startswith("vllm:")
