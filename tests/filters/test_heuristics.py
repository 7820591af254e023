"""Heuristic quality filters: every named reason fires on its case and stays quiet on a good row."""

from __future__ import annotations

import pytest

from filters.heuristics import (
    QualityConfig,
    copies_question,
    is_refusal,
    mentions_non_text,
    only_punctuation_and_stopwords,
    quality_reasons,
    row_quality_reasons,
)

GOOD_ANSWER = "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in the chloroplasts."


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I am sorry, I cannot provide that information.",
    "As an AI language model, I do not have personal opinions.",
    "I apologize, but I am unable to browse the internet.",
    "Sorry, I can't do that.",
    "I cannot assist with this request.",
    "I must respectfully decline to answer.",
    "Apologies, but that is not something I can do.",
])
def test_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    GOOD_ANSWER,
    "I cannot stress enough how much practice matters: write every day, read widely and ask for feedback.",
    "Sorry for the confusion! Here is the corrected function: " + "def add(a, b): return a + b. " * 12,
    "The word 'sorry' comes from Old English sārig, meaning distressed.",
    "",
])
def test_not_refusals(text):
    assert not is_refusal(text)


def test_only_punctuation_and_stopwords():
    assert only_punctuation_and_stopwords("")
    assert only_punctuation_and_stopwords("... and the, of it?!")
    assert not only_punctuation_and_stopwords("Name three rivers.")


def test_non_text_and_copies_question():
    assert mentions_non_text("Describe the picture above")
    assert mentions_non_text("Draw a diagram of the water cycle")
    assert not mentions_non_text("Write a paragraph about graphite pencils")
    assert copies_question("What is the capital of France?", "What is the capital of France")
    assert not copies_question("What is the capital of France?", "Paris is the capital of France.")


def test_each_reason_by_name():
    question = "Explain how photosynthesis works in plants."
    assert quality_reasons(question, [GOOD_ANSWER], "stop") == []
    assert quality_reasons(question, [""], "stop") == ["empty_answer"]
    assert quality_reasons(question, [GOOD_ANSWER], "length") == ["truncated"]
    assert quality_reasons(question, ["I'm sorry, but I cannot help with that."]) == ["refusal"]
    assert quality_reasons(question, [question]) == ["copies_question"]
    assert quality_reasons(question, ["Yes."], config=QualityConfig(min_chars=10)) == ["too_short"]
    assert quality_reasons(question, [GOOD_ANSWER], config=QualityConfig(max_chars=20)) == ["too_long"]
    assert quality_reasons("Describe this image in detail.", [GOOD_ANSWER]) == ["non_text_task"]
    assert quality_reasons("What is it?", [GOOD_ANSWER]) == ["trivial_instruction"]
    # Several failures are all named.
    assert quality_reasons("Describe the photo.", ["Sorry, I can't see photos."], "length") == [
        "truncated", "refusal", "non_text_task"]
    # Switched-off checks stay quiet.
    off = QualityConfig(truncated=False, refusal=False, copies_question=None, non_text_task=False,
                        trivial_instruction=False)
    assert quality_reasons("Describe the photo.", ["Sorry, I can't see photos."], "length", off) == []


def test_multi_turn_rows():
    row = {"messages": [{"role": "user", "content": "Plan a trip to Rome."},
                        {"role": "assistant", "content": ""},
                        {"role": "user", "content": "And Florence?"},
                        {"role": "assistant", "content": "Spend two days at the Uffizi and the Duomo."}],
           "finish_reason": "stop"}
    assert row_quality_reasons(row) == ["empty_answer"]
