"""Evol-Instruct's eliminator and operation weights on crafted texts: every elimination reason, through the very
functions the round loop calls (the real-teacher runs in test_evol_llamacpp.py show which reasons a real model hits)."""

from __future__ import annotations

import re

import pytest

from filters.minhash import MinHashIndex
from gen.errors import UserError
from gen.methods import evol_instruct as evol
from gen.methods.templates import load_template


def test_empty_and_marker_only_evolutions_are_empty_evolution():
    assert evol.check_evolution("") == evol.EMPTY_EVOLUTION
    assert evol.check_evolution(evol.clean_evolution("Harder version:")) == evol.EMPTY_EVOLUTION
    assert evol.check_evolution("  ...  ") == evol.EMPTY_EVOLUTION


@pytest.mark.parametrize("text", [
    "Here is the #Rewritten Prompt#: list three rivers.",
    "The given prompt asks for three rivers; name them.",
    "Rewritten prompt - list three rivers and their lengths.",
    "Name three rivers.\n>>>\n\nOld instruction:",
    "As the sample instruction says, write a poem.",
])
def test_evolutions_that_copy_the_rewriting_prompt_are_prompt_leaks(text):
    assert evol.check_evolution(evol.clean_evolution(text)) == evol.PROMPT_LEAK


def test_a_leading_label_alone_is_not_a_leak():
    cleaned = evol.clean_evolution("Harder version: <<<Name three rivers in Europe longer than 1000 km.>>>")
    assert cleaned == "Name three rivers in Europe longer than 1000 km."
    assert evol.check_evolution(cleaned) is None


def test_every_marker_our_templates_forbid_is_checked():
    """The words each rewriting template tells the teacher not to use are exactly what the leak check looks for."""
    for name in ("evol_in_depth", "evol_in_breadth"):
        source = load_template(name).source
        forbidden = re.findall(r'"([^"]+)"', source.split("do not use the words", 1)[1].split("\n")[0])
        assert forbidden, name
        for phrase in forbidden:
            assert phrase.lower() in evol.LEAK_MARKERS, (name, phrase)


def test_short_answers_with_sorry_are_apologies_long_ones_are_not():
    assert evol.check_answer("I'm sorry, but I cannot help with that request.") == [evol.APOLOGY]
    long_answer = "Sorry for the wait. " + " ".join(f"step{i}" for i in range(90))
    assert evol.APOLOGY not in evol.check_answer(long_answer)
    assert evol.check_answer("Paris is the capital of France.") == []


def test_answers_of_only_punctuation_and_stop_words():
    assert evol.ONLY_PUNCTUATION_STOPWORDS in evol.check_answer("... the of and, it is!")
    assert evol.ONLY_PUNCTUATION_STOPWORDS in evol.check_answer("?!")
    assert evol.check_answer("The Danube flows through ten countries.") == []


@pytest.mark.parametrize("reply,verdict", [
    ("Same", True), (" Yes, it is", True), ("Equal.", True), ("not different", True),
    ("Different", False), ("No.", False), ("They are not the same", False), ("Not equal", False),
    ("I think the weather is nice", None), ("", None),
])
def test_judge_verdicts(reply, verdict):
    assert evol.parse_equality(reply) is verdict


def test_near_duplicates_of_inputs_are_caught_before_answering():
    """The round loop puts every input into one MinHash index and checks each evolution against it."""
    index = MinHashIndex(threshold=0.7)
    original = "Write a short story about a lighthouse keeper who finds a message in a bottle on the beach."
    assert index.check_and_add("input", original) is None
    assert index.check_and_add("r1", original + " Please.") == "input"
    assert index.check_and_add("r1b", "Explain how tides are caused by the moon and the sun, with one example.") is None


def test_default_weights_give_in_depth_five_sixths():
    weights = evol.parse_weights(None)
    assert set(weights) == set(evol.OPERATIONS) and len(evol.DEPTH_OPERATIONS) == 5
    assert "complicate_input" in evol.DEPTH_OPERATIONS
    assert evol.depth_share(weights) == pytest.approx(5 / 6)


def test_ops_flag_parses_and_rejects_bad_specs():
    weights = evol.parse_weights("deepen=2,in_breadth=1")
    assert weights["deepen"] == 2 and weights["in_breadth"] == 1 and weights["add_constraints"] == 0
    assert evol.depth_share(weights) == pytest.approx(2 / 3)
    for bad in ("deepen=x", "shorten=1", "deepen=-1", "deepen=0"):
        with pytest.raises(UserError):
            evol.parse_weights(bad)


def test_every_operation_has_its_own_rewrite_prompt_and_hash():
    hashes = set()
    for op in evol.OPERATIONS:
        messages, template_hash = evol.rewrite_messages(op, "Name three rivers.")
        assert "Name three rivers." in messages[0]["content"]
        hashes.add(template_hash)
    assert len(hashes) == len(evol.OPERATIONS)
