"""`gen ultrachat` and `gen self-chat` end to end on the real Gemma-270M: alternating roles, turn counts within
their budgets, sectors and lineage recorded."""

from __future__ import annotations

import json

from filters import repetition
from gen.data.shards import read_manifest, read_table
from gen.methods import self_chat, ultrachat


def _alternates(messages) -> bool:
    roles = [m["role"] for m in messages]
    return roles[0] == "user" and roles[-1] == "assistant" and all(
        role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles))


def test_ultrachat_three_sectors_alternating_turns_in_range(ultrachat_run):
    assert ultrachat_run.rc == 0, ultrachat_run.stdout
    train = read_table(ultrachat_run.out, "train").to_pylist()
    rejected = read_table(ultrachat_run.out, "rejected").to_pylist()
    assert train, "no dialogue was kept"
    # Each sector produced a dialogue or a recorded rejection (an unusable topic list, an empty reply): no sector is
    # skipped silently.
    assert {r["operation"] for r in train + rejected} == {ultrachat.WORLD, ultrachat.WRITING, ultrachat.MATERIALS}
    assert all(r["filters"] and set(r["filters"]) <= {ultrachat.UNPARSEABLE, ultrachat.DUPLICATE_QUESTION,
                                                      ultrachat.EMPTY_REPLY, *repetition.REASONS} for r in rejected)
    for row in train:
        params = json.loads(row["params"])
        assert _alternates(row["messages"]) and all(m["content"].strip() for m in row["messages"])
        assert 3 <= params["turn_budget"] <= 4  # --min-turns 3 --max-turns 4
        turns = sum(m["role"] == "assistant" for m in row["messages"])
        assert turns == params["turns"] and 1 <= turns <= params["turn_budget"]
        assert params["ended_by"] in ("budget", "user_done")
        if params["ended_by"] == "budget":
            assert turns == params["turn_budget"]
        else:  # the simulated user had nothing more to ask before the budget was reached
            assert turns < params["turn_budget"]
        assert params["persona"] and row["parent_id"] and row["root_id"] and row["method"] == "ultrachat"
        if row["operation"] == ultrachat.MATERIALS:  # the document travels with the opening request
            assert params["task"] in ultrachat.MATERIAL_TASKS and len(row["messages"][0]["content"]) > 200
        if row["operation"] == ultrachat.WORLD:
            assert params["meta_topic"] and params["sub_topic"]
    assert read_manifest(ultrachat_run.out)["funnel"]["total"]["openings"] >= len(train)


def test_self_chat_alternates_and_respects_turn_and_token_budgets(self_chat_run):
    assert self_chat_run.rc == 0, self_chat_run.stdout
    train = read_table(self_chat_run.out, "train").to_pylist()
    rejected = read_table(self_chat_run.out, "rejected").to_pylist()
    assert len(train) + len(rejected) == 3 and train  # --limit 3 seeds: each a dialogue or a recorded rejection
    for row in train:
        params = json.loads(row["params"])
        assert _alternates(row["messages"])
        assert 1 <= params["turns"] <= 3 and params["dialog_tokens"] <= 64  # --max-turns 3, 64 tokens per dialog
        assert params["ended_by"] in ("end_marker", "max_turns", "token_budget")
        assert row["operation"] == "self_chat" and row["parent_id"] == row["root_id"]
        for m in row["messages"]:
            assert self_chat.HUMAN not in m["content"] and self_chat.AI not in m["content"]
        assert row["usage"]["completion_tokens"] == params["dialog_tokens"]
    for row in rejected:
        assert row["filters"] == [self_chat.EMPTY_REPLY] or set(row["filters"]) <= set(repetition.REASONS)
