"""`gen self-instruct` end to end on the real Gemma-270M: the pool grows, no pool pair reaches ROUGE-L 0.7,
classification tasks are generated output-first and the others input-first, and every rejection has its reason."""

from __future__ import annotations

import itertools
import json

from filters import repetition
from filters.rouge import rouge_l
from gen.data.shards import read_manifest, read_table
from gen.methods import self_instruct as si
from gen.methods.inputs import default_seed_tasks, load_items
from gen.methods.templates import load_template

REASONS = {si.UNPARSEABLE, si.TOO_SHORT, si.TOO_LONG, si.BLACKLISTED, si.ROUGE_SIMILAR, si.DUPLICATE_INSTANCE,
           si.CONFLICTING_INSTANCE, *repetition.REASONS}


def test_pool_grows_and_stays_novel(self_instruct_run):
    assert self_instruct_run.rc == 0, self_instruct_run.stdout
    manifest = read_manifest(self_instruct_run.out)
    pool = manifest["self_instruct"]["pool"]
    assert len(pool) >= 1, manifest["funnel"]  # the pool grew
    seeds = [s.task_instruction for s in load_items(default_seed_tasks())]
    assert manifest["self_instruct"]["pool_human"] == len(seeds) == 175
    # The paper's rule: no pair in the pool (seeds + new) with ROUGE-L >= 0.7. Seeds among themselves are human.
    for new in pool:
        assert max(rouge_l(new, s) for s in seeds) < 0.7, new
    for a, b in itertools.combinations(pool, 2):
        assert rouge_l(a, b) < 0.7, (a, b)
    for text in pool:  # the heuristics passed
        assert si.instruction_filter(text, si._blacklist_pattern(si.load_blacklist())) is None


def test_instances_follow_the_classification_decision(self_instruct_run):
    train = read_table(self_instruct_run.out, "train").to_pylist()
    rejected = read_table(self_instruct_run.out, "rejected").to_pylist()
    pool = read_manifest(self_instruct_run.out)["self_instruct"]["pool"]
    output_first = load_template("self_instruct_output_first").hash
    input_first = load_template("self_instruct_input_first").hash
    instance_rows = [r for r in train + rejected if r["operation"] in ("classification", "generation")]
    assert instance_rows, "no instance generation happened"
    for row in instance_rows:
        params = json.loads(row["params"])
        if params["is_classification"]:
            assert row["operation"] == "classification" and params["instance_order"] == "output_first"
            assert params["template_hash"] == output_first
        else:
            assert row["operation"] == "generation" and params["instance_order"] == "input_first"
            assert params["template_hash"] == input_first
        assert row["messages"][0]["content"].split("\n\n")[0] in pool  # user turn = pool instruction (+ input)
        assert row["parent_id"] == row["root_id"] and row["round"] >= 1
    for row in train:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"][1]["content"]
    # No kept instance duplicates or contradicts another of the same instruction.
    by_instruction: dict = {}
    for row in train:
        key = (row["parent_id"], row["messages"][0]["content"])
        by_instruction.setdefault(key, set()).add(row["messages"][1]["content"].strip().lower())
    assert all(len(outputs) == 1 for outputs in by_instruction.values())
    for row in rejected:
        assert row["filters"] and set(row["filters"]) <= REASONS


def test_classification_detection_uses_the_papers_prompt(self_instruct_run):
    """Every new instruction got a classification decision (recorded with its instances), from real replies."""
    funnel = read_manifest(self_instruct_run.out)["funnel"]["total"]
    pool = read_manifest(self_instruct_run.out)["self_instruct"]["pool"]
    assert funnel.get("classification", 0) + funnel.get("non_classification", 0) == len(pool)
