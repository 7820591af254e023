"""Preference rows (`gen prefs`, read by `gen train --dpo`): one prompt, a chosen and a rejected answer, their ratings.

The columns TRL's `DPOTrainer` reads as they are -- `prompt`, `chosen`, `rejected`, each a conversation
(list<struct<role, content>>: the prompt's messages, system message included; then the one assistant message of
each answer) -- plus what made the pair: `score_chosen` / `score_rejected` (the judge's overall rating, the names
UltraFeedback-binarized uses), which model wrote each answer, every rated candidate of the group (`candidates`:
model, text, rating, per-aspect scores and the judge's raw verdict), the judge and its rubric (name and template
hash). The lineage and cost columns (`method`, `round`, `parent_id`, `root_id`, `teacher`, `params`, `usage`,
`filters`, `duplicate_of`) are the conversational rows' own, so the shard writer, the manifest's stats, `gen stats`,
the rejected split with its reasons and `gen publish` treat a preference run like any other run.

A group that yields no pair still leaves a row, in the `rejected` split with its reason: `preference_tie` (every
rated answer got the same score), `too_few_rated` (fewer than two answers were rated).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from gen.data.records import MESSAGE, USAGE, content_id

METHOD = "prefs"
# Reasons a group of rated answers is not a preference pair.
TIE = "preference_tie"
TOO_FEW_RATED = "too_few_rated"

CANDIDATE = pa.struct([
    ("model", pa.string()),          # the candidate spec that wrote it
    ("content", pa.string()),        # the answer
    ("score", pa.float64()),         # the judge's overall rating; null when the verdict could not be parsed
    ("scores", pa.string()),         # JSON: per-aspect scores and rationale, as the judge parsed them
    ("verdict", pa.string()),        # the judge's raw verdict text
    ("finish_reason", pa.string()),
])

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE), nullable=False),
        pa.field("chosen", pa.list_(MESSAGE)),
        pa.field("rejected", pa.list_(MESSAGE)),
        pa.field("score_chosen", pa.float64()),
        pa.field("score_rejected", pa.float64()),
        pa.field("chosen_model", pa.string()),
        pa.field("rejected_model", pa.string()),
        pa.field("candidates", pa.list_(CANDIDATE)),
        pa.field("judge", pa.string()),
        pa.field("rubric", pa.string()),
        pa.field("rubric_hash", pa.string()),
        pa.field("method", pa.string(), nullable=False),
        pa.field("operation", pa.string()),
        pa.field("round", pa.int32()),
        pa.field("parent_id", pa.string()),
        pa.field("root_id", pa.string()),
        pa.field("teacher", pa.string()),
        pa.field("params", pa.string()),
        pa.field("usage", USAGE),
        pa.field("finish_reason", pa.string()),
        pa.field("filters", pa.list_(pa.string())),
        pa.field("duplicate_of", pa.string()),
    ]
)

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def is_preference_table(table: pa.Table | pa.Schema) -> bool:
    """Whether shards hold preference rows (the DPO columns) rather than conversations (`messages`)."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return all(name in names for name in PREFERENCE_COLUMNS) and "messages" not in names


def answer(text: str) -> list[dict[str, str]]:
    """An answer as the one-message conversation the `chosen`/`rejected` columns hold."""
    return [{"role": "assistant", "content": str(text)}]


def pick_pair(scores: Sequence[float | None]) -> tuple[int, int] | str:
    """(best, worst) positions among the rated answers (`None`: unrated), or the reason there is no pair.

    Chosen is the highest score, rejected the lowest (UltraFeedback-binarized takes a random lower one; the lowest
    gives the widest margin and is reproducible without a seed). Equal scores keep the earlier answer, so the pick
    does not depend on anything but the order the candidates were asked in."""
    rated = [(i, s) for i, s in enumerate(scores) if s is not None]
    if len(rated) < 2:
        return TOO_FEW_RATED
    best = max(rated, key=lambda item: (item[1], -item[0]))
    worst = min(rated, key=lambda item: (item[1], item[0]))
    if best[1] == worst[1]:
        return TIE
    return best[0], worst[0]


def make_preference_row(
    *,
    prompt: Sequence[Mapping[str, str]],
    candidates: Sequence[Mapping[str, Any]],
    judge: str | None,
    rubric: str | None,
    rubric_hash: str | None = None,
    pair: tuple[int, int] | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    teacher: str | None = None,
    params: Mapping[str, Any] | str | None = None,
    usage: Mapping[str, int] | None = None,
    filters: Iterable[str] = (),
    id: str | None = None,
) -> dict[str, Any]:
    """A row in PREFERENCE_SCHEMA's shape. `candidates`: dicts with model, content, score (None: unrated), scores
    (a dict or JSON text), verdict, finish_reason. `pair` = (chosen, rejected) positions in `candidates`; without
    it (a tie, too few rated) `chosen`/`rejected` hold the first and last candidate so the row still shows what
    was compared. The id, unless given, hashes the prompt and the candidates' models and texts."""
    prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    cands = []
    for c in candidates:
        scores = c.get("scores")
        if scores is not None and not isinstance(scores, str):
            scores = json.dumps(scores, sort_keys=True, ensure_ascii=False)
        score = c.get("score")
        cands.append({"model": c.get("model"), "content": str(c.get("content") or ""),
                      "score": float(score) if score is not None else None, "scores": scores,
                      "verdict": c.get("verdict"), "finish_reason": c.get("finish_reason")})
    if id is None:
        id = content_id(METHOD, prompt, [(c["model"], c["content"]) for c in cands])
    if params is not None and not isinstance(params, str):
        params = json.dumps(params, sort_keys=True, ensure_ascii=False)
    chosen_i, rejected_i = pair if pair is not None else (0, len(cands) - 1)
    chosen = cands[chosen_i] if cands else None
    rejected = cands[rejected_i] if cands else None
    usage = usage or {}
    return {
        "id": id,
        "prompt": prompt,
        "chosen": answer(chosen["content"]) if chosen else None,
        "rejected": answer(rejected["content"]) if rejected else None,
        "score_chosen": chosen["score"] if chosen else None,
        "score_rejected": rejected["score"] if rejected else None,
        "chosen_model": chosen["model"] if chosen else None,
        "rejected_model": rejected["model"] if rejected else None,
        "candidates": cands,
        "judge": judge,
        "rubric": rubric,
        "rubric_hash": rubric_hash,
        "method": METHOD,
        "operation": None,
        "round": None,
        "parent_id": parent_id,
        "root_id": root_id if root_id is not None else parent_id,
        "teacher": teacher,
        "params": params,
        "usage": {"prompt_tokens": int(usage.get("prompt_tokens", 0) or 0),
                  "completion_tokens": int(usage.get("completion_tokens", 0) or 0)},
        "finish_reason": chosen.get("finish_reason") if chosen else None,
        "filters": list(filters),
        "duplicate_of": None,
    }


def preference_rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with PREFERENCE_SCHEMA's columns; missing nullable columns are nulls) to a table."""
    columns = {name: [row.get(name) for row in rows] for name in PREFERENCE_SCHEMA.names}
    columns["filters"] = [list(v or []) for v in columns["filters"]]
    return pa.Table.from_pydict(columns, schema=PREFERENCE_SCHEMA)


def chosen_conversations(table: pa.Table) -> pa.Table:
    """A conversational view of preference rows: `messages` = prompt + chosen answer (what an SFT pass on the
    preferred answers would read; the card's length plot counts it). Other columns are kept."""
    prompts = table.column("prompt").to_pylist()
    chosen = table.column("chosen").to_pylist()
    messages = pa.array([(p or []) + (c or []) for p, c in zip(prompts, chosen)], pa.list_(MESSAGE))
    return table.append_column("messages", messages)
