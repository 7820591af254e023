"""`hf:<path>`: a local transformers model generating through the engine, on the tiny random Llama: whole rounds in
batched `generate` calls, per-request sampling, stop strings, the request cache."""

from __future__ import annotations

import pytest

from gen.errors import UserError
from gen.teachers import load_teacher
from gen.teachers.base import ChatRequest, Completion, PermanentError, SamplingParams
from tests.servers import tiny_llama_dir  # noqa: F401


@pytest.fixture(scope="module")
def hf_teacher(tiny_llama_dir):  # noqa: F811
    teacher = load_teacher(f"hf:{tiny_llama_dir}")
    yield teacher
    teacher.close()


def _round(n: int = 6, **params) -> list[ChatRequest]:
    """Same-length prompts; even rows greedy, odd rows sampled with their own seed."""
    return [ChatRequest.make([{"role": "user", "content": f"Tell me about number {i}."}],
                             SamplingParams(max_tokens=10, temperature=0.0 if i % 2 == 0 else 0.9, top_p=0.9,
                                            seed=100 + i, **params))
            for i in range(n)]


def test_a_round_is_one_batched_generate_and_each_answer_depends_on_its_request_alone(hf_teacher, tiny_llama_dir,
                                                                                   monkeypatch):  # noqa: F811
    assert hf_teacher.takes_whole_batch is True
    assert hf_teacher.teacher_id.startswith(f"hf:{tiny_llama_dir}@")
    real_generate = hf_teacher.llm.generate
    calls = []

    def counting_generate(**kwargs):  # counts the calls; the real model does the work
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(**kwargs)

    monkeypatch.setattr(hf_teacher.llm, "generate", counting_generate)
    requests = _round()
    answers = hf_teacher.complete_batch(requests)
    assert calls == [6], "requests sharing max_tokens and stop go to one generate call"
    for request, answer in zip(requests, answers):
        assert isinstance(answer, Completion)
        assert answer.prompt_tokens == len(hf_teacher.prompt_ids(request)) > 0
        assert 0 < answer.completion_tokens <= 10
        assert (answer.finish_reason == "length") == (answer.completion_tokens == 10)
    # Each row sampled with its own generator: reversed order, or two batches of 3, give the same answers.
    assert list(reversed(hf_teacher.complete_batch(list(reversed(requests))))) == answers
    hf_teacher.batch_size = 3
    try:
        assert hf_teacher.complete_batch(requests) == answers
        assert calls == [6, 6, 3, 3]
    finally:
        hf_teacher.batch_size = 16
    # Seeds matter only when sampling: greedy rows ignore them, sampled rows follow them.
    reseeded = hf_teacher.complete_batch([ChatRequest(r.messages, r.params.replace(seed=7)) for r in requests])
    assert [a.text for a in reseeded[0::2]] == [a.text for a in answers[0::2]]
    assert [a.text for a in reseeded[1::2]] != [a.text for a in answers[1::2]]


def test_stop_strings_end_the_answer_before_the_stop_and_long_prompts_fail_alone(hf_teacher):
    free = hf_teacher.complete_batch(_round(1, ))[0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    stopped = hf_teacher.complete_batch(_round(1, stop=(stop,)))[0]
    assert stopped.text == free.text[:free.text.index(stop)] and stopped.finish_reason == "stop"
    too_long = ChatRequest.make([{"role": "user", "content": "number " * 600}], SamplingParams(max_tokens=2))
    answers = hf_teacher.complete_batch([_round(1)[0], too_long])
    assert isinstance(answers[1], PermanentError) and "context" in str(answers[1])
    assert answers[0] == free


def test_the_engine_batches_and_caches_hf_answers(hf_teacher, tmp_path):
    from gen.engine.engine import Engine

    requests = _round(4)
    with Engine(hf_teacher, cache_path=tmp_path / "cache.sqlite", progress=False, own_teacher=False) as engine:
        first = engine.run(requests)
        again = engine.run(requests)
        assert engine.stats["sent"] == 4
    assert [r.ok for r in first] == [True] * 4 and not any(r.cached for r in first)
    assert all(r.cached for r in again) and [r.completion for r in again] == [r.completion for r in first]


def test_hf_spec_errors_name_what_is_wrong(tiny_llama_dir, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="--base-url do not apply"):
        load_teacher(f"hf:{tiny_llama_dir}", base_url="http://x")
    with pytest.raises(UserError, match="no such local model"):
        load_teacher(f"hf:{tmp_path / 'missing'}")


def test_a_retrained_checkpoint_at_the_same_path_is_a_new_teacher_id(tmp_path):
    from gen.teachers.hf_local import weights_fingerprint
    from tests.tiny_models import build_tiny_llama

    before = weights_fingerprint(build_tiny_llama(tmp_path / "m", seed=0))
    assert weights_fingerprint(tmp_path / "m") == before
    assert weights_fingerprint(build_tiny_llama(tmp_path / "m", seed=1)) != before
