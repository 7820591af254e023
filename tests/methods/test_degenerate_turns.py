"""Degenerate text is stopped inside generation (issue 15): a looping Self-Instruct instruction never enters the
pool, and an UltraChat or self-chat dialogue stops at a looping turn (no request after it) and is rejected with the
turn's reason. The teacher is a real OpenAI-compatible HTTP server (tests/latency_server.py) whose replies are
scripted by the request, so each degenerate text arrives exactly where the test wants it."""

from __future__ import annotations

import json

import pytest

from filters import repetition as rep
from gen.data.records import content_id
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import Engine, default_cache_path
from gen.methods import self_instruct as si
from gen.methods import ultrachat
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem
from gen.teachers import load_teacher
from gen.teachers.base import SamplingParams
from tests.latency_server import LatencyServer
from tests.methods.conftest import run_gen

STUTTER_TURN = "I love tea I love tea I love tea I love tea I love tea"
ENUMERATION_TURN = "1.\n2.\n3.\n4.\n5.\n6."
LOOPING_INSTRUCTION = "Name a color. Name a color. Name a color. Name a color. Name a color."


def last_user(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def scripted_server(reply):
    return LatencyServer("fixed:0", reply=reply).start()


def method_run(server, out, method: str) -> tuple[Engine, MethodRun]:
    engine = Engine(load_teacher(f"openai:{server.model}", base_url=server.v1_url), progress=False,
                    cache_path=default_cache_path(out))
    return engine, MethodRun(engine, out, method=method, sampling=SamplingParams(max_tokens=64), seed=0,
                             log=lambda line: None)


# ------------------------------------------------------------------------------------------------ self-chat


def self_chat_reply(body: dict) -> str:
    prompt = last_user(body).rstrip()
    if prompt.endswith("[AI]"):  # the assistant's turn
        return STUTTER_TURN if "LOOPAI" in prompt else "Kites fly because the wind pushes up on them."
    if "LOOPHUMAN" in prompt:  # the person's follow-up
        return ENUMERATION_TURN
    return "[END]"


def test_self_chat_stops_at_a_looping_turn_of_either_side(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("LOOPAI: what is tea?\nLOOPHUMAN: how do kites fly?\nFINE: how do kites fly?\n")
    server = scripted_server(self_chat_reply)
    try:
        result = run_gen(["self-chat", "--seeds", str(seeds), "--max-turns", "3", "--teacher",
                          f"openai:{server.model}", "--base-url", server.v1_url, "--no-progress"], tmp_path / "run")
        prompts = list(server.prompts)
    finally:
        server.stop()
    assert result.rc == 0, result.stdout
    train = read_table(result.out, "train").to_pylist()
    rejected = {r["messages"][0]["content"].split(":")[0]: r for r in read_table(result.out, "rejected").to_pylist()}
    assert [r["messages"][0]["content"] for r in train] == ["FINE: how do kites fly?"]
    assert rejected["LOOPAI"]["filters"] == [rep.STUTTER]
    assert [m["content"] for m in rejected["LOOPAI"]["messages"]][1:] == [STUTTER_TURN]
    assert rejected["LOOPHUMAN"]["filters"] == [rep.ENUMERATION_WITHOUT_CONTENT]
    assert [m["role"] for m in rejected["LOOPHUMAN"]["messages"]] == ["user", "assistant", "user"]
    assert rejected["LOOPHUMAN"]["messages"][-1]["content"] == ENUMERATION_TURN
    assert all(json.loads(r["params"])["ended_by"] == "degenerate_turn" for r in rejected.values())
    # Stopped at the looping turn: one request for LOOPAI (its first assistant turn), two for LOOPHUMAN.
    assert sum("LOOPAI" in p for p in prompts) == 1 and sum("LOOPHUMAN" in p for p in prompts) == 2
    by_reason = read_manifest(result.out)["stats"]["rejected"]["by_reason"]
    assert by_reason == {rep.STUTTER: 1, rep.ENUMERATION_WITHOUT_CONTENT: 1}


# ------------------------------------------------------------------------------------------------ UltraChat


def ultrachat_reply(body: dict) -> str:
    prompt = last_user(body)
    if prompt.startswith("You are playing the part of a user"):  # the simulated user's follow-up
        return ENUMERATION_TURN if "LOOPUSER" in prompt else ultrachat.STOP_MARKER
    if "LOOPASSISTANT" in prompt:
        return "The answer is yes. The answer is yes indeed. The answer is yes, yes. The answer is surely yes."
    return "Bees make honey from nectar they collect from flowers."


def test_ultrachat_stops_at_a_looping_turn_of_either_side(tmp_path):
    out = tmp_path / "run"
    server = scripted_server(ultrachat_reply)
    try:
        engine, run = method_run(server, out, ultrachat.METHOD)
        method = ultrachat.UltraChat(run, ultrachat.UltraChatConfig(min_turns=3, max_turns=3), topics=["bees"],
                                     task_types=["poem"], documents=[], personas=["a curious student"])
        openings = [ultrachat.Opening(f"{tag}: how do bees make honey?", ultrachat.WORLD, "bees")
                    for tag in ("LOOPASSISTANT", "LOOPUSER", "FINE")]
        method.write(method.converse(openings))
        run.commit()
        engine.close()
        prompts = list(server.prompts)
    finally:
        server.stop()
    train = read_table(out, "train").to_pylist()
    rejected = {r["messages"][0]["content"].split(":")[0]: r for r in read_table(out, "rejected").to_pylist()}
    assert [r["messages"][0]["content"].split(":")[0] for r in train] == ["FINE"]
    assert rejected["LOOPASSISTANT"]["filters"] == [rep.STUTTER]
    assert [m["role"] for m in rejected["LOOPASSISTANT"]["messages"]] == ["user", "assistant"]
    assert rejected["LOOPUSER"]["filters"] == [rep.ENUMERATION_WITHOUT_CONTENT]
    assert [m["content"] for m in rejected["LOOPUSER"]["messages"]][-1] == ENUMERATION_TURN
    assert all(json.loads(r["params"])["ended_by"] == "degenerate_turn" for r in rejected.values())
    # No simulated user after the looping answer; no assistant answer to the looping follow-up.
    assert not any(p.startswith("You are playing") and "LOOPASSISTANT" in p for p in prompts)
    assert ENUMERATION_TURN not in prompts  # the assistant was never asked to answer it
    assert sum("LOOPUSER" in p for p in prompts) == 2  # its opening's answer and the follow-up request


# ------------------------------------------------------------------------------------------------ Self-Instruct

GOOD_NEW = ["Explain why the sky is blue to a child.", "Suggest three names for a bakery by the sea.",
            "Summarize a fairy tale you know in two sentences.", "Give a packing list for a rainy hike."]


def self_instruct_replies():
    """Replies to the instruction-generation prompts, in order: the first loops on one task and offers one good
    task, the second offers one more, the third two more (by then the pool's two machine tasks are shown)."""
    replies = iter([[LOOPING_INSTRUCTION, GOOD_NEW[0]], [GOOD_NEW[1]], GOOD_NEW[2:]])

    def reply(body: dict) -> str:
        first = int(last_user(body).rstrip().rsplit("\n", 1)[-1].rstrip("."))  # the prompt ends with "9."
        items = next(replies)
        return items[0] + "".join(f"\n{first + i}. {text}" for i, text in enumerate(items[1:], 1))

    return reply


@pytest.fixture(scope="module")
def seed_items():
    texts = ["Write a haiku about autumn leaves.", "Translate 'good morning' into French.",
             "Classify the animal as a mammal or a bird: eagle.", "Give two tips for a job interview.",
             "Explain what photosynthesis is in one sentence.", "Suggest a title for a story about a lost key.",
             "Rewrite the sentence in the past tense: I walk home.", "List three uses of a paper clip.",
             "Describe the taste of a lemon to someone who never had one."]
    return [SeedItem(id=content_id("seed", t), instruction=t, task_instruction=t) for t in texts]


def test_self_instruct_rejects_a_looping_instruction_before_the_pool(tmp_path, seed_items):
    out = tmp_path / "run"
    server = scripted_server(self_instruct_replies())
    try:
        engine, run = method_run(server, out, si.METHOD)
        method = si.SelfInstruct(run, si.SelfInstructConfig(num_instructions=4, requests_per_step=1, max_steps=3),
                                 SamplingParams(max_tokens=64))
        machine = method.bootstrap(seed_items)
        run.commit()
        engine.close()
        prompts = list(server.prompts)
    finally:
        server.stop()
    assert [m.text for m in machine] == GOOD_NEW, read_table(out, "rejected").to_pylist()
    rejected = read_table(out, "rejected").to_pylist()
    assert [(r["messages"][0]["content"], r["filters"]) for r in rejected] == [(LOOPING_INSTRUCTION, [rep.STUTTER])]
    assert rejected[0]["operation"] == "instruction"
    # Never shown as an example to the teacher: the third prompt shows the pool's two machine tasks, not it.
    assert len(prompts) == 3 and GOOD_NEW[0] in prompts[2] and GOOD_NEW[1] in prompts[2]
    assert not any(LOOPING_INSTRUCTION in p for p in prompts)
    assert si.first_degeneration_reason("Explain why the sky is blue to a child.") is None
