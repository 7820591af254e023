"""Degeneration filters (filters/repetition.py): each reason on crafted texts (a hit and a near miss), Gopher's
measures on texts whose values can be counted by hand, good short answers and every shipped seed-task output
surviving, the labelled calibration set, the methods' check functions, and `gen filter` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filters import repetition as rep
from filters.heuristics import QualityConfig, row_quality_reasons
from gen.data.records import content_id, make_row
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest
from gen.engine.engine import Engine
from gen.methods import evol_instruct as evol
from gen.methods import self_chat, ultrachat
from gen.methods import self_instruct as si
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem, shipped_data_path
from gen.teachers.base import Completion, SamplingParams, Teacher

ROOT = Path(__file__).resolve().parents[2]
LABELLED = Path(__file__).parent / "data" / "degeneration_labelled.jsonl"

# A varied paragraph of 60+ distinct words: no rule may fire on it alone.
PROSE = ("Lighthouses guided ships along dangerous coasts for centuries. Early keepers burned wood or coal in open "
         "fires, later replaced by oil lamps and, in the nineteenth century, by Fresnel lenses that focused a weak "
         "flame into a beam visible twenty miles out. Electrification arrived slowly; remote stations kept their "
         "keepers until automation in the 1980s, when radio beacons and satellite navigation made most towers a "
         "backup rather than a lifeline.")
GOOD_SHORT = ["Positive", "42", "Paris", "Yes.", "No", "B", "3.14159", "True", "Negative sentiment.",
              "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.",
              "1, 2, 3, 4, 5, 6, 7, 8, 9, 10", "0 0 0\n0 1 0\n0 0 0", "ha ha", "Very, very good.",
              "x = 3.5. y = 4.5. z = 5.5. w = 6.5.", "Positive\nNegative\nPositive\nPositive",
              "```python\nfor x in xs:\n    print(x)\n```\n\n```python\nfor y in ys:\n    print(y)\n```"]


def reasons(text: str, **config) -> list[str]:
    return rep.degeneration_reasons(text, rep.RepetitionConfig(**config))


# ------------------------------------------------------------------------------------------------ Gopher measures


def test_duplicate_line_and_paragraph_fractions_are_counted_like_gopher():
    text = "alpha one\nbeta two\nalpha one\ngamma three"
    line_frac, line_chars = rep.duplicate_fractions(rep.lines_of(text), len(text))
    assert line_frac == pytest.approx(1 / 4) and line_chars == pytest.approx(len("alpha one") / len(text))
    text = "para one here\n\npara two here\n\npara one here"
    para_frac, para_chars = rep.duplicate_fractions(rep.paragraphs_of(text), len(text))
    assert para_frac == pytest.approx(1 / 3) and para_chars == pytest.approx(len("para one here") / len(text))
    # Only lines of 2+ words with a letter count: not code braces, fences, number rows or single labels.
    assert rep.duplicate_fractions(["}", "}", "```", "```", "0 0 0", "0 0 0", "Yes", "Yes", "x = 1"], 100) == (0, 0)


def test_ngram_measures_by_hand():
    tokens = "a b c a b c a b".split()  # 8 tokens, "a b" x3
    assert rep.top_ngram_fraction(tokens, 2, 100) == pytest.approx(3 * len("a b") / 100)
    assert rep.top_ngram_fraction("a b c d".split(), 2, 100) == 0.0  # nothing occurs twice
    # 5-grams of "p q r s t p q r s t": the second "p q r s t" repeats the first -> its 5 token characters.
    tokens = "p q r s t p q r s t".split()
    assert rep.duplicate_ngram_fraction(tokens, 5, 19) == pytest.approx(5 / 19)
    # Overlapping repeats count each token once: "a a a a a a a" has 5-grams at 0..2, those at 1 and 2 repeat.
    assert rep.duplicate_ngram_fraction(list("aaaaaaa"), 5, 13) == pytest.approx(6 / 13)


def test_gopher_rules_hit_long_loops_and_spare_long_prose():
    loop = " ".join([PROSE.split(". ")[0] + "."] * 16)  # one 7-word sentence, 16 times: > 100 words
    assert "top_2_gram_char_fraction" in rep.gopher_violations(loop) and rep.REPETITION in reasons(loop)
    assert rep.REPETITION in reasons(PROSE + " " + PROSE)  # one line, 140 words: the duplicated n-grams
    assert rep.REPETITION in reasons(PROSE + "\n\n" + PROSE + "\n\n" + PROSE)  # duplicate paragraphs
    assert reasons(PROSE) == []


def test_paragraphs_of_numbers_said_again_are_repetition_but_a_matrix_is_not():
    # Gemma-270M's reply to a seed task: the same block of dates, again and again.
    loop = "1.3.2004\n1.3.2004\n\n" + "\n\n".join(["1.2.2005\n1.3.2005"] * 8)
    assert rep.REPETITION in reasons(loop)
    assert reasons("0 0 0\n0 1 0\n0 0 0") == [] and reasons("1 2\n\n3 4\n\n5 6") == []


def test_ngram_rules_need_the_minimum_length():
    # 2 sentences sharing a frame: the top 4-gram covers > 16% of the characters, but the text is short.
    text = ("Yes, you can have 1 oatmeal banana protein shake and bacon. The oatmeal banana protein shake has "
            "about 550 calories.")
    tokens = rep.word_tokens(text)
    assert rep.top_ngram_fraction(tokens, 4, len(text)) > 0.16
    assert reasons(text) == []
    assert rep.REPETITION in reasons(text, min_ngram_words=5)  # the same text is caught when the floor is lowered


# ------------------------------------------------------------------------------------------- the small-model rules


@pytest.mark.parametrize("text", [
    "The cat is happy. The cat is very happy. The cat is so happy. The cat is happy happy.",
    "She likes to read books, she likes to read many books, she likes to read books every day, she likes to read.",
    "the the the the the answer",
    "I love you I love you I love you I love you I love you",
    "<input>\n<output>\n<value>\n<answer>\n" * 6,  # Gemma-270M's evolved "instruction" (tags only, no clause)
])
def test_stutter_hits(text):
    assert rep.STUTTER in reasons(text)


@pytest.mark.parametrize("text", [
    "The cat is happy. The cat is very happy. The dog is asleep by the fire.",  # only 1 near repeat
    "Step 1: Add the flour. Step 2: Add the sugar. Step 3: Beat the eggs. Step 4: Bake for an hour.",
    "1. What is your favorite food?\n2. What is your favorite restaurant?\n3. What is your favorite drink?\n"
    "4. What is your favorite dessert?",  # a swapped word in a frame: 0.8 similar, but new content each time
    "no no no no",  # 4 in a row: under the run of 5
    "0 0 0 0 0 0 0 0",  # numbers are content (a matrix)
])
def test_stutter_near_misses(text):
    assert rep.STUTTER not in reasons(text)


@pytest.mark.parametrize("text", [
    "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. ... 26.",
    "Here is the list:\n1.\n2.\n3.\n4.\n5.",
    "(1) (2) (3) (4) (5) Done.",
    "Write an opening scene for a horror movie.\n\n* Write an opening scene.\n" + "*\n" * 30,  # Gemma-270M's
    # Gemma-270M's own, asked to "Enumerate the letters of the alphabet" (the labelled set has the whole reply).
    "Write the alphabet.\n\n<blockquote><b><i>The Alphabet.</i></b>\n<i>1.</i>\n<i>2.</i>\n<i>3.</i>\n<i>4.</i>\n"
    "<i>5.</i>\n<i>6.</i>",
    # A kept `make demo` evolution of Gemma-270M's before filler lines counted: a placeholder, then only "...".
    "[person name]\n...\n...\n...\n\n...\n\n...\n\n...\n\n...\n\n...",
])
def test_enumeration_without_content_hits(text):
    assert rep.ENUMERATION_WITHOUT_CONTENT in reasons(text)


@pytest.mark.parametrize("text", [
    "1. Preheat the oven. 2. Mix the flour. 3. Add eggs. 4. Bake.",  # every item has content
    "1. 2. 3. Three empty items.",  # under 4 empty items
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",  # counting: no list markers
    "1. Apples\n2.\n3. Pears\n4.\n5. Plums\n6.\n7. Figs\n8.",  # 4 empty of 8: not more than half
    "int f() {\n  if (a) {\n    if (b) {\n      g();\n    }\n  }\n}\n};",  # closing braces are code, not filler
    "Name | Age\n--- | ---\nAnn | 3\n\n---\n\nSee above.\n...\nThe end.",  # a table, a rule, one ellipsis
])
def test_enumeration_without_content_near_misses(text):
    assert rep.ENUMERATION_WITHOUT_CONTENT not in reasons(text)


def test_repeated_list_items_hit_and_near_miss():
    hobby = "Write a sentence describing the person's hobbies."
    numbered = "\n".join(f"{i}. {hobby}" for i in range(1, 9))
    bullets = "\n".join(f"- {hobby}" for _ in range(8))
    inline = "1. Name a color. 2. name a color 3. Name a color! 4. Name a fruit."
    for text in (numbered, bullets, inline):
        assert rep.REPEATED_LIST_ITEMS in reasons(text), text
    # The numbered list is invisible to Gopher's line rule: every line differs by its number.
    assert rep.duplicate_fractions(rep.lines_of(numbered), len(numbered)) == (0.0, 0.0)
    # Near misses: one repeat only; items that merely share a frame.
    assert rep.REPEATED_LIST_ITEMS not in reasons("- red\n- green\n- red\n- blue\n- yellow\n- black\n- white")
    assert rep.REPEATED_LIST_ITEMS not in reasons(
        "1. What is your favorite food?\n2. What is your favorite restaurant?\n3. What is your favorite drink?")


def test_good_short_answers_survive():
    for text in GOOD_SHORT:
        assert reasons(text) == [], text


def test_every_seed_task_output_survives():
    """All 175 shipped Self-Instruct seed outputs pass. One seed *input* is degenerate by design (a knock-knock joke
    whose lines repeat); it is the one known exception, and it is an input, not an answer."""
    flagged_inputs = []
    for line in shipped_data_path("self_instruct_seed_tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            assert rep.degeneration_reasons(instance["output"]) == [], (task["id"], instance["output"])
            assert rep.degeneration_reasons(task["instruction"]) == [], task["id"]
            if rep.degeneration_reasons(instance["input"]):
                flagged_inputs.append(task["id"])
    assert flagged_inputs == ["seed_task_104"]


def test_scale_and_switches():
    text = "The cat is happy. The cat is very happy. The cat is so happy. The cat is happy happy."
    assert rep.STUTTER not in reasons(text, scale=2.5, stutter_run=None)  # a fraction > 1 can never be exceeded
    assert rep.STUTTER not in reasons(text, stutter_fraction=None, stutter_run=None)
    with pytest.raises(ValueError, match="scale"):
        rep.RepetitionConfig(scale=0)


# --------------------------------------------------------------------------------------------- the calibration set


def test_labelled_set_is_well_formed_and_separated():
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    assert {r["label"] for r in rows} == {"good", "degenerate"}
    for r in rows:
        assert set(r) == {"text", "label", "reasons", "source"}
        assert (r["label"] == "degenerate") == bool(r["reasons"]) and set(r["reasons"]) <= set(rep.REASONS)
    good = [r for r in rows if r["label"] == "good"]
    bad = [r for r in rows if r["label"] == "degenerate"]
    assert len(good) >= 175 and len(bad) >= 10
    false_positives = [r["text"][:80] for r in good if rep.degeneration_reasons(r["text"])]
    missed = [r["text"][:80] for r in bad if not rep.degeneration_reasons(r["text"])]
    assert len(false_positives) <= 0.02 * len(good), false_positives
    assert len(missed) <= 0.2 * len(bad), missed


def test_bench_prints_a_table():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "degeneration.py")], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| reason |" in result.stdout and rep.STUTTER in result.stdout


# -------------------------------------------------------------------------------------------- inside generation


def test_method_check_functions_reject_degenerate_text():
    hobby_list = "\n".join(f"{i}. Write a sentence describing the person's hobbies." for i in range(1, 9))
    assert evol.check_evolution("1. 2. 3. 4. 5. 6.") == rep.ENUMERATION_WITHOUT_CONTENT
    assert evol.check_evolution("Write a poem about the sea, with three stanzas.") is None
    assert rep.REPEATED_LIST_ITEMS in evol.check_answer(hobby_list)
    assert evol.check_answer("Paris") == []
    verdicts = dict(si.filter_instances([("", "Positive"), ("Review: great", "The the the the the the"),
                                         ("Review: bad", "Negative")]))
    assert verdicts == {("", "Positive"): None, ("Review: great", "The the the the the the"): rep.STUTTER,
                        ("Review: bad", "Negative"): None}
    opening = {"role": "user", "content": "Knock knock!\nWho's there?\nKnock knock!\nWho's there?"}
    loop = {"role": "assistant", "content": "I love you I love you I love you I love you I love you"}
    fine = {"role": "assistant", "content": "Who is it?"}
    assert rep.dialogue_degeneration_reasons([opening, fine]) == []  # the opening is not the teacher's
    assert rep.dialogue_degeneration_reasons([opening, fine, {"role": "user", "content": "Hm."}, loop]) == \
        [rep.STUTTER]


# ------------------------------------------------------------------------------------------------- gen filter


def _row(question: str, answer: str) -> dict:
    return make_row(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    method="label", finish_reason="stop", teacher="llamacpp:test")


PLANTED = {
    "good_long": ("Tell me about lighthouses.", PROSE),
    "good_short": ("Is this review positive or negative? 'Loved it!'", "Positive"),
    "good_number": ("What is 6 times 7?", "42"),
    "repetition": ("Describe a harbor.", "\n\n".join([PROSE] * 3)),
    "stutter": ("Is the sky blue?", "The sky is blue. The sky is very blue. The sky is so blue. The sky is blue blue."),
    "enumeration": ("List the letters of the alphabet.", "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. ... 26."),
    "list": ("Give me writing prompts about a person.",
             "\n".join(f"{i}. Write a sentence describing the person's hobbies." for i in range(1, 9))),
}


def _planted_run(path: Path) -> dict[str, str]:
    rows = {name: _row(*pair) for name, pair in PLANTED.items()}
    with ShardWriter(path, "train", max_rows=4) as writer:
        writer.write_many(list(rows.values()))
    write_manifest(path, config={"method": "label", "teacher": "llamacpp:test"}, funnel={"generated": len(rows)})
    return {name: row["id"] for name, row in rows.items()}


def _gen_filter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gen.cli", "filter", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_gen_filter_rejects_planted_degenerate_rows_by_default(tmp_path):
    run = tmp_path / "run"
    ids = _planted_run(run)
    result = _gen_filter(str(run))
    assert result.returncode == 0, result.stderr
    train = {r["id"] for r in read_table(run, "train").to_pylist()}
    rejected = {r["id"]: r["filters"] for r in read_table(run, "rejected").to_pylist()}
    assert train == {ids["good_long"], ids["good_short"], ids["good_number"]}
    assert rep.REPETITION in rejected[ids["repetition"]]
    assert rejected[ids["stutter"]] == [rep.STUTTER]
    assert rejected[ids["enumeration"]] == [rep.ENUMERATION_WITHOUT_CONTENT]
    assert rep.REPEATED_LIST_ITEMS in rejected[ids["list"]]
    manifest = read_manifest(run)
    by_reason = manifest["funnel"]["filter"]["by_reason"]
    for reason in rep.REASONS:
        assert by_reason[reason] == sum(reason in f for f in rejected.values()), reason
    assert manifest["config"]["filters"]["filter"]["repetition"]["scale"] == 1.0


def test_gen_filter_keep_repetitive_and_scale(tmp_path):
    run = tmp_path / "run"
    ids = _planted_run(run)
    out = tmp_path / "kept"
    result = _gen_filter(str(run), "--keep-repetitive", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {r["id"] for r in read_table(out, "train").to_pylist()} == set(ids.values())
    # Scale 2 doubles every fraction threshold: the stutter (3 near repeats in 4 clauses: 0.75, not above 0.5 x 2) is
    # kept; three copies of a paragraph (2/3 duplicate paragraphs, above 0.3 x 2) are still rejected.
    out2 = tmp_path / "loose"
    assert _gen_filter(str(run), "--repetition-scale", "2", "--out", str(out2)).returncode == 0
    loose = {r["id"] for r in read_table(out2, "train").to_pylist()}
    assert ids["stutter"] in loose and ids["repetition"] not in loose
    bad = _gen_filter(str(run), "--repetition-scale", "0")
    assert bad.returncode != 0 and "--repetition-scale" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    nan = _gen_filter(str(run), "--repetition-scale", "nan")
    assert nan.returncode != 0 and "--repetition-scale" in nan.stderr


def test_row_quality_reasons_include_degeneration_by_default():
    row = _row(*PLANTED["stutter"])
    assert rep.STUTTER in row_quality_reasons(row)
    assert rep.STUTTER not in row_quality_reasons(row, QualityConfig(repetition=None))


class _LoopingTeacher(Teacher):
    """A scripted teacher for the self-chat loop: the assistant (asked for an [AI] turn) loops, the person asks a
    plain question; the seed marked FINE gets a fine assistant instead."""

    backend = "scripted"

    def __init__(self):
        super().__init__("script")

    async def acomplete(self, request, timeout):
        prompt = request.messages[-1][1]
        if prompt.rstrip().endswith(self_chat.AI):
            text = "Tea is a drink made from leaves." if "FINE" in prompt else "I love tea I love tea " * 5
        else:
            text = "Tell me more, please."
        return Completion(text=text, finish_reason="stop", prompt_tokens=len(prompt) // 4,
                          completion_tokens=len(text) // 4)


def test_self_chat_rejects_a_dialogue_whose_turn_loops(tmp_path):
    engine = Engine(_LoopingTeacher(), cache_path=tmp_path / ".cache" / "requests.sqlite", progress=False)
    run = MethodRun(engine, tmp_path, method=self_chat.METHOD, sampling=SamplingParams(max_tokens=64), seed=0,
                    log=lambda line: None)
    seeds = [SeedItem(id=content_id("seed", t), instruction=t, task_instruction=t)
             for t in ("LOOP: what is tea?", "FINE: what is tea?")]
    self_chat.SelfChat(run, self_chat.SelfChatConfig(max_turns=2, max_tokens_per_dialog=4096)).generate(seeds)
    engine.close()
    train, rejected = read_table(tmp_path, "train").to_pylist(), read_table(tmp_path, "rejected").to_pylist()
    assert [r["parent_id"] for r in train] == [seeds[1].id]
    assert [(r["parent_id"], r["filters"]) for r in rejected] == [(seeds[0].id, [rep.STUTTER])]
    assert read_manifest(tmp_path)["stats"]["rejected"]["by_reason"] == {rep.STUTTER: 1}


class _UltraChatTeacher(Teacher):
    """The assistant of an UltraChat dialogue: loops on the opening marked LOOP, answers the others."""

    backend = "scripted"

    def __init__(self):
        super().__init__("script")

    async def acomplete(self, request, timeout):
        prompt = request.messages[-1][1]
        text = "1.\n2.\n3.\n4.\n5.\n6." if "LOOP" in prompt else "Bees make honey from nectar."
        return Completion(text=text, finish_reason="stop", prompt_tokens=len(prompt) // 4,
                          completion_tokens=len(text) // 4)


def test_ultrachat_rejects_a_dialogue_whose_assistant_turn_is_junk(tmp_path):
    engine = Engine(_UltraChatTeacher(), cache_path=tmp_path / ".cache" / "requests.sqlite", progress=False)
    run = MethodRun(engine, tmp_path, method=ultrachat.METHOD, sampling=SamplingParams(max_tokens=64), seed=0,
                    log=lambda line: None)
    method = ultrachat.UltraChat(run, ultrachat.UltraChatConfig(min_turns=1, max_turns=1), topics=["bees"],
                                 task_types=["poem"], documents=[], personas=["a curious student"])
    openings = [ultrachat.Opening("LOOP: list the steps bees take to make honey", ultrachat.WORLD, "bees"),
                ultrachat.Opening("How do bees make honey?", ultrachat.WORLD, "bees")]
    method.write(method.converse(openings))
    run.commit()
    engine.close()
    train, rejected = read_table(tmp_path, "train").to_pylist(), read_table(tmp_path, "rejected").to_pylist()
    assert [r["parent_id"] for r in train] == [openings[1].id]
    assert [(r["parent_id"], r["filters"]) for r in rejected] == [(openings[0].id, [rep.ENUMERATION_WITHOUT_CONTENT])]
