"""The Evol-Instruct round loop driven through every elimination reason.

Gemma-270M cannot be steered into each reason on demand (test_evol_llamacpp.py shows the reasons it hits on its
own), so here a scripted teacher — crafted replies keyed by the instruction — stands in for the model, while
everything under test is real: the engine and its cache, the round loop, the eliminator, the MinHash index and the
shards. Each reason must reach the `rejected` split, and each eliminated item must be evolved again next round."""

from __future__ import annotations

import json

from gen.data.records import content_id
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import Engine
from gen.methods import evol_instruct as evol
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem
from gen.teachers.base import Completion, SamplingParams, Teacher

# instruction marker -> (rewrite reply, answer reply, judge reply)
SCRIPT = {
    "LEAK": ("Here is the #Rewritten Prompt#: LEAK plus more", "An answer.", "Different"),
    "EMPTY": ("", "An answer.", "Different"),
    "DUP": (None, "An answer.", "Different"),  # None: echo the instruction unchanged
    "SAME": ("SAME task, reworded with other words entirely here", "A fine answer here.", "Same"),
    "SORRY": ("SORRY task with one added constraint about dates", "Sorry, I cannot answer that.", "Different"),
    "STOP": ("STOP task with an extra requirement on format", "... and the of it.", "Different"),
    "GOOD": ("GOOD task made harder with two additional steps", "A detailed, useful answer.", "Different"),
    # Degenerate answers (filters.repetition), each with its reason first.
    "REPEAT": ("REPEAT task asking for three distinct facts", "\n\n".join(
        ["The harbor opens at dawn and the boats leave for the northern banks, where the fishermen check their nets, "
         "count the catch and sail back before the afternoon wind turns against them on the long way home."] * 4),
        "Different"),
    "STUTTER": ("STUTTER task requiring a yes or no verdict", "The answer is yes. The answer is yes indeed. "
                "The answer is yes, yes. The answer is surely yes.", "Different"),
    "ENUM": ("ENUM task listing the steps in order", "1. 2. 3. 4. 5. 6. 7. 8.", "Different"),
    "LISTREP": ("LISTREP task that needs five writing prompts", "1. Write a sentence about hobbies.\n"
                "2. Name a color you like.\n3. Write a sentence about hobbies.\n4. Describe a rainy day.\n"
                "5. Write a sentence about hobbies.", "Different"),
}


class ScriptedTeacher(Teacher):
    backend = "scripted"

    def __init__(self):
        super().__init__("script")
        self.calls = 0
        self.systems: dict[str, str | None] = {}  # kind of request -> its system message

    async def acomplete(self, request, timeout):
        self.calls += 1
        prompt = request.messages[-1][1]
        marker = next(m for m in SCRIPT if m in prompt)
        rewrite, answer, judge = SCRIPT[marker]
        system = request.messages[0][1] if request.messages[0][0] == "system" else None
        if "Same or Different" in prompt:
            text = judge
            self.systems["judge"] = system
        elif "Harder version:" in prompt or "New instruction:" in prompt:
            original = prompt.split("<<<\n", 1)[1].split("\n>>>", 1)[0]
            text = original if rewrite is None else f"{rewrite} (from: {len(original)} chars)" if rewrite else ""
        else:
            text = answer
            self.systems["answer"] = system
        return Completion(text=text, finish_reason="stop", prompt_tokens=len(prompt) // 4,
                          completion_tokens=len(text) // 4)


def _items() -> list[SeedItem]:
    topics = ["the town library", "bee keeping", "tidal energy", "medieval bridges", "jazz in the 1920s",
              "volcanic soils", "chess openings", "desert caravans", "paper making", "lighthouses", "tea blending"]
    texts = {m: f"{m}: write a paragraph about {topic} for a school newsletter" for m, topic in zip(SCRIPT, topics)}
    return [SeedItem(id=content_id("seed", t), instruction=t, task_instruction=t) for t in texts.values()]


def test_every_reason_reaches_the_rejected_split_and_parents_stay_in_the_pool(tmp_path):
    teacher = ScriptedTeacher()
    engine = Engine(teacher, cache_path=tmp_path / ".cache" / "requests.sqlite", progress=False)
    run = MethodRun(engine, tmp_path, method=evol.METHOD, sampling=SamplingParams(max_tokens=32), seed=0,
                    log=lambda line: None, system="Answer briefly.")
    config = evol.EvolConfig(rounds=2, weights=evol.parse_weights("deepen=1"))
    evol.EvolInstruct(run, config).evolve(_items())
    engine.close()

    rejected = read_table(tmp_path, "rejected").to_pylist()
    train = read_table(tmp_path, "train").to_pylist()
    reasons_round1 = {r["filters"][0]: r for r in rejected if r["round"] == 1}
    assert set(reasons_round1) == set(evol.REASONS), sorted(reasons_round1)
    assert reasons_round1[evol.NEAR_DUPLICATE]["duplicate_of"] == reasons_round1[evol.NEAR_DUPLICATE]["parent_id"]
    assert json.loads(reasons_round1[evol.NO_INFORMATION_GAIN]["params"])["judge"] == "same"
    # Rejected before answering: only the evolved instruction; after answering: instruction and answer.
    for reason in (evol.PROMPT_LEAK, evol.EMPTY_EVOLUTION, evol.NEAR_DUPLICATE):
        assert len(reasons_round1[reason]["messages"]) == 1
    for reason in (evol.NO_INFORMATION_GAIN, evol.APOLOGY, evol.ONLY_PUNCTUATION_STOPWORDS, "repetition", "stutter",
                   "enumeration_without_content", "repeated_list_items"):
        assert [m["role"] for m in reasons_round1[reason]["messages"]] == ["user", "assistant"]

    # --system goes with the answer requests (not the rewrite/judge meta-prompts) and into the answered rows.
    assert teacher.systems == {"answer": "Answer briefly.", "judge": None}
    assert all(r["system"] == "Answer briefly." for r in train if r["round"] >= 1)
    assert reasons_round1[evol.APOLOGY]["system"] == "Answer briefly."
    assert reasons_round1[evol.PROMPT_LEAK]["system"] is None

    # Every eliminated item is still in the pool, unchanged, and is evolved again in round 2.
    round2_parents = {r["parent_id"] for r in train + rejected if r["round"] == 2}
    assert {r["parent_id"] for r in reasons_round1.values()} <= round2_parents
    good1 = [r for r in train if r["round"] == 1]
    assert len(good1) == 1 and good1[0]["messages"][0]["content"].startswith("GOOD task made harder")
    assert good1[0]["id"] in round2_parents  # the survivor replaced its parent
    manifest = read_manifest(tmp_path)
    assert manifest["funnel"]["rounds"]["1"]["carried_over_unchanged"] == len(SCRIPT) - 1
    assert manifest["stats"]["rejected"]["by_reason"][evol.PROMPT_LEAK] >= 2  # both rounds
