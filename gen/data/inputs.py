"""Read the instructions a command should answer from a file or another run: JSONL, JSON, Arrow, Parquet, run dirs.

One row is one prompt. Per row, in this order:
- `messages`: a list of {role, content}; a leading `system` message becomes the row's system message, trailing
  `assistant` turns are dropped (the teacher answers the last user turn), and it must contain a user turn;
- `instruction` (+ optional `input`, appended after a blank line, as in Alpaca-style files);
- or the field named by `field=` (e.g. `--field question`).
A row may carry its own `system` string. Rows from a kdforge run (a run directory or one of its `.arrow` shards)
keep their lineage: `parent_id` is the source row's id, `root_id` its root.

Errors are `UserError`s that name the file and the line (JSONL), index (JSON) or row number (Arrow/Parquet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen.errors import UserError

SUFFIXES = (".jsonl", ".ndjson", ".json", ".arrow", ".parquet")


@dataclass(frozen=True)
class InputRow:
    """One prompt to answer.

    messages: [{"role", "content"}, ...] ending with a user turn, without the system message.
    system: the row's own system message (None if it has none). location: `file:line` for error messages.
    parent_id / root_id: lineage when the row came from a kdforge run. extra: the row's other fields.
    """

    messages: tuple[Mapping[str, str], ...]
    system: str | None
    location: str
    parent_id: str | None = None
    root_id: str | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def instruction(self) -> str:
        """The first user turn."""
        return next(m["content"] for m in self.messages if m["role"] == "user")


def iter_records(path: str | Path, *, flag: str = "--input") -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """Yield (location, row dict, from_kdforge_run) for every row of `path`; malformed rows raise UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file or directory")
    if path.is_dir():
        yield from _iter_run_dir(path, flag)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix in (".arrow", ".parquet"):
        table = _read_table_file(path)
        kdforge = "messages" in table.column_names and "method" in table.column_names
        for index, row in enumerate(_table_rows(table)):
            yield f"{path} row {index}", row, kdforge
    else:
        raise UserError(f"{flag} {path}: unsupported file type {suffix or '(none)'!r} (expected one of "
                        f"{', '.join(SUFFIXES)} or a kdforge run directory)")


def read_inputs(path: str | Path, *, field: str | None = None, limit: int | None = None,
                flag: str = "--input") -> list[InputRow]:
    """All prompts of `path` (the first `limit`), validated; an empty input is a UserError."""
    rows: list[InputRow] = []
    for location, record, from_run in iter_records(path, flag=flag):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(_to_input_row(location, record, from_run, field))
    if not rows:
        raise UserError(f"{flag} {path}: no rows")
    return rows


def read_instructions(path: str | Path, *, field: str | None = None, limit: int | None = None,
                      flag: str = "--input") -> list[str]:
    """Just the instruction text (first user turn) of every row."""
    return [row.instruction for row in read_inputs(path, field=field, limit=limit, flag=flag)]


# ---------------------------------------------------------------------------------------------------- row parsing


def _to_input_row(location: str, record: Mapping[str, Any], from_run: bool, field: str | None) -> InputRow:
    if not isinstance(record, Mapping):
        raise UserError(f"{location}: expected an object with `instruction` or `messages`, got {type(record).__name__}")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{location}: `system` must be a string")
    if field is not None:
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{location}: missing or empty field {field!r}")
        messages: list[dict[str, str]] = [{"role": "user", "content": value}]
    elif record.get("messages") is not None:
        messages, own_system = _parse_messages(location, record["messages"])
        system = system or own_system
    elif record.get("instruction") is not None:
        instruction = record["instruction"]
        extra_input = record.get("input")
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{location}: `instruction` must be a non-empty string")
        if extra_input is not None and not isinstance(extra_input, str):
            raise UserError(f"{location}: `input` must be a string")
        text = f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction
        messages = [{"role": "user", "content": text}]
    else:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise UserError(f"{location}: no `instruction` or `messages` field (fields: {fields}; use --field NAME)")
    parent_id = root_id = None
    if from_run and isinstance(record.get("id"), str):
        parent_id = record["id"]
        root_id = record.get("root_id") or parent_id
    extra = {k: v for k, v in record.items() if k not in ("messages", "instruction", "input", "system")}
    return InputRow(tuple(messages), system or None, location, parent_id, root_id, extra)


def _parse_messages(location: str, messages: Any) -> tuple[list[dict[str, str]], str | None]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{location}: `messages` must be a non-empty list of {{role, content}}")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise UserError(f"{location}: messages[{i}] must be an object with string `role` and `content`")
        if message["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{location}: messages[{i}] has unknown role {message['role']!r}")
        parsed.append({"role": message["role"], "content": message["content"]})
    system = None
    if parsed[0]["role"] == "system":
        system = parsed.pop(0)["content"]
    while parsed and parsed[-1]["role"] == "assistant":
        parsed.pop()  # answer the last user turn again; the old answer is not part of the prompt
    if not parsed or not any(m["role"] == "user" for m in parsed):
        raise UserError(f"{location}: `messages` has no user turn to answer")
    return parsed, system


# ---------------------------------------------------------------------------------------------------- file formats


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for each non-blank line; a malformed line is a UserError naming file:line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    for number, record in iter_jsonl(path):
        yield f"{path}:{number}", record, False


def _iter_json(path: Path) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, Mapping):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    for index, record in enumerate(data):
        yield f"{path}[{index}]", record, False


def _read_table_file(path: Path):
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        try:
            return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise UserError(f"{path}: not a readable {path.suffix[1:]} file ({str(exc).splitlines()[0]})") from None


def _table_rows(table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=2048):
        yield from batch.to_pylist()


def _iter_run_dir(path: Path, flag: str) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    from gen.data.shards import open_shard, shard_paths

    shards = shard_paths(path, "train")
    if not shards:
        raise UserError(f"{flag} {path}: a directory but not a kdforge run (no train/*.arrow shards)")
    for shard in shards:
        for index, row in enumerate(_table_rows(open_shard(shard))):
            yield f"{shard} row {index}", row, True
