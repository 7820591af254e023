"""Parsing and the paper-prescribed filters of Self-Instruct, UltraChat and self-chat, on crafted texts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gen.methods import self_chat, ultrachat
from gen.methods import self_instruct as si
from gen.methods.inputs import default_seed_tasks, load_items
from gen.methods.parsing import parse_numbered_list
from gen.methods.templates import load_template


def test_numbered_list_continuation_skips_repeats_and_joins_lines():
    text = "9. Write a haiku.\n10) Name three cats\n   and dogs\n3. repeated old task\n11. Sort the list."
    assert parse_numbered_list(text, first_number=9) == ["Write a haiku.", "Name three cats\nand dogs",
                                                          "Sort the list."]


def test_new_instructions_accept_a_missing_first_number():
    assert si.parse_new_instructions("Translate the sentence.\n10. Count the vowels.", 9) == [
        "Translate the sentence.", "Count the vowels."]


@pytest.mark.parametrize("text,reason", [
    ("Draw a picture of a cat sitting on a mat.", si.BLACKLISTED),
    ("Create a flowchart of the signup process.", si.BLACKLISTED),
    ("Listen to the audio clip and transcribe it.", si.BLACKLISTED),
    ("Write a program that sorts numbers.", si.BLACKLISTED),
    ("Go to the website and list its sections.", si.BLACKLISTED),
    ("Hi there", si.TOO_SHORT),
    (" ".join(["word"] * 151), si.TOO_LONG),
    ("- List three colours that go well together.", si.UNPARSEABLE),
    ("12 things to do in spring", si.UNPARSEABLE),
    ("Explain why the sea is salty.", None),
    ("Summarize the profile of a customer.", None),  # 'profile' contains 'file' but is not the word 'file'
])
def test_instruction_filters(text, reason):
    assert si.instruction_filter(text, si._blacklist_pattern(si.load_blacklist())) == reason


def test_classification_prompt_has_12_classification_and_19_other_seed_tasks():
    examples = si.classification_examples(load_items(default_seed_tasks()))
    assert sum(e["is_classification"] for e in examples) == 12
    assert sum(not e["is_classification"] for e in examples) == 19
    rendered = load_template("self_instruct_is_classification").render(examples=examples, instruction="X?")
    assert rendered.count("Classification task: Yes") == 12 and rendered.endswith("Task: X?\nClassification task:")


def test_output_first_and_input_first_parsing():
    assert si.parse_output_first(" positive\nInput: Great food.\nLabel: negative\nInput: Cold soup.") == [
        ("Great food.", "positive"), ("Cold soup.", "negative")]
    assert si.parse_input_first("Input: 3\nOutput: odd\nExample 2\nInput: none\nOutput: Any number.") == [
        ("3", "odd"), ("", "Any number.")]
    # The paper's fallback: a reply without "Output:" is one input-less instance whose output is the reply.
    assert si.parse_input_first("Paris is the capital of France.\nTask: next") == [("", "Paris is the capital of France.")]
    assert si.parse_input_first("\n\nAssistant: hi") is None and si.parse_input_first("") is None
    assert si.parse_output_first("") is None


def test_duplicate_and_conflicting_instances_are_rejected_with_their_reason():
    pairs = [("Great food.", "positive"), ("Great food.", "positive"), ("Cold soup.", "negative"),
             ("Cold soup.", "positive"), ("Nice staff.", "")]
    verdicts = [reason for _, reason in si.filter_instances(pairs)]
    assert verdicts == [None, si.DUPLICATE_INSTANCE, si.CONFLICTING_INSTANCE, si.CONFLICTING_INSTANCE,
                        si.UNPARSEABLE]


def test_ultrachat_sector_split_and_documents():
    assert ultrachat.split_counts(7, ("a", "b", "c")) == {"a": 3, "b": 2, "c": 2}
    docs = ultrachat.load_documents(None)
    assert len(docs) >= 5 and all(len(d["text"].split()) > 40 for d in docs)


def test_self_chat_turn_cleaning_and_messages():
    assert self_chat.clean_turn("[AI] Sure, here it is. [Human] thanks", self_chat.AI) == ("Sure, here it is.", False)
    assert self_chat.clean_turn("Thanks, that's all. [END]", self_chat.HUMAN) == ("Thanks, that's all.", True)
    transcript = [(self_chat.HUMAN, "q"), (self_chat.AI, "a"), (self_chat.HUMAN, "q2")]
    assert [m["role"] for m in self_chat.to_messages(transcript)] == ["user", "assistant"]


def test_templates_have_distinct_hashes():
    names = sorted(p.stem for p in Path(si.__file__).parent.joinpath("templates").glob("*.txt"))
    assert len(names) >= 15
    hashes = {load_template(n).hash for n in names}
    assert len(hashes) == len(names) and all(re.fullmatch(r"[0-9a-f]{12}", h) for h in hashes)
