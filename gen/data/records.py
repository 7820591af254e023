"""The row every method writes, as one pyarrow schema, and the helpers that build rows.

Conversational rows (`messages` = [{role, content}, ...]) so that `datasets` and TRL's `SFTTrainer` read the shards
as they are. Every row carries its lineage (`method`, `operation`, `round`, `parent_id`, `root_id`) and what it cost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
USAGE = pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])

ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("system", pa.string()),
        pa.field("method", pa.string(), nullable=False),
        pa.field("operation", pa.string()),
        pa.field("round", pa.int32()),
        pa.field("parent_id", pa.string()),
        pa.field("root_id", pa.string()),
        pa.field("teacher", pa.string()),
        pa.field("params", pa.string()),
        pa.field("usage", USAGE),
        pa.field("finish_reason", pa.string()),
        # Reasons the row was rejected; empty for kept rows. Rejected rows go to the `rejected` split.
        pa.field("filters", pa.list_(pa.string())),
        # For a row rejected as a duplicate: the id of the row that was kept in its place.
        pa.field("duplicate_of", pa.string()),
        # Scores of the row, JSON text {scorer: {"value": float, ...details}} (`gen.data.scores`): a judge's rubric
        # (`gen score --judge`), IFD, ... Null when nothing scored it; shards written before it existed read as null.
        pa.field("scores", pa.string()),
    ]
)

COLUMNS = tuple(ROW_SCHEMA.names)


def content_id(*parts: Any) -> str:
    """A stable id from JSON-serialisable parts: the same input gives the same id on every rerun."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def make_row(
    *,
    messages: list[Mapping[str, str]],
    method: str,
    operation: str | None = None,
    round: int | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    system: str | None = None,
    teacher: str | None = None,
    params: Mapping[str, Any] | str | None = None,
    usage: Mapping[str, int] | None = None,
    finish_reason: str | None = None,
    filters: Iterable[str] = (),
    duplicate_of: str | None = None,
    id: str | None = None,
    scores: Mapping[str, Any] | str | None = None,
) -> dict[str, Any]:
    """Build a row in ROW_SCHEMA's shape. The id, unless given, hashes what makes the row what it is:
    method, operation, round, lineage, system and messages (not cost or teacher timing)."""
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if id is None:
        id = content_id(method, operation, round, parent_id, system, messages)
    if params is not None and not isinstance(params, str):
        params = json.dumps(params, sort_keys=True, ensure_ascii=False)
    if scores is not None and not isinstance(scores, str):
        scores = json.dumps(scores, sort_keys=True, ensure_ascii=False) if scores else None
    usage = usage or {}
    return {
        "id": id,
        "messages": messages,
        "system": system,
        "method": method,
        "operation": operation,
        "round": round,
        "parent_id": parent_id,
        "root_id": root_id if root_id is not None else parent_id,
        "teacher": teacher,
        "params": params,
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens", 0) or 0),
            "completion_tokens": int(usage.get("completion_tokens", 0) or 0),
        },
        "finish_reason": finish_reason,
        "filters": list(filters),
        "duplicate_of": duplicate_of,
        "scores": scores,
    }


def rows_to_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with ROW_SCHEMA's columns; missing nullable columns are filled with nulls) to a table."""
    columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
    columns["filters"] = [list(v or []) for v in columns["filters"]]
    return pa.Table.from_pydict(columns, schema=ROW_SCHEMA)


def first_user_text(row: Mapping[str, Any]) -> str:
    """The instruction of a row: its first user message."""
    for message in row["messages"]:
        if message["role"] == "user":
            return message["content"]
    return ""


def row_text(messages: Sequence[dict] | None, on: str) -> str:
    """The text a filter compares: the first user message (`instruction`), the assistant turns (`answer`) or all
    messages (`conversation`)."""
    messages = messages or []
    if on == "instruction":
        return next((m["content"] or "" for m in messages if m["role"] == "user"), "")
    if on == "answer":
        return "\n".join(m["content"] or "" for m in messages if m["role"] == "assistant")
    return "\n".join(m["content"] or "" for m in messages)
