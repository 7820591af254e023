"""The one input reader of every command: JSONL, JSON, text, Arrow, Parquet files and kdforge run directories.

`iter_records(path)` turns any of them into `Record`s: (location, value, from_run). The value is the parsed row:
a dict for table rows and JSON objects, whatever JSON holds otherwise, `{"instruction": line}` for a line of a text
file (or `{"text": paragraph}` when a caller reads paragraphs). What a command makes of a record is a thin adapter:
`read_inputs` below (the prompts `gen label` answers), `gen.methods.inputs` (seed tasks, questions, documents).

The format comes from the file's first bytes where they say it (Parquet's `PAR1`, Arrow's `ARROW1`), so a Parquet
file named `.jsonl` is read as Parquet; otherwise from the suffix. Text must be UTF-8 without NUL bytes. Every
problem is a one-line `UserError` naming the file and, where there is one, the line (JSONL, text), index (JSON) or
row (Arrow/Parquet): never a decoder's traceback.

`read_inputs` reads one prompt per row, in this order:
- `messages`: a list of {role, content}; a leading `system` message becomes the row's system message, trailing
  `assistant` turns are dropped (the teacher answers the last user turn), and it must contain a user turn;
- `instruction` (+ optional `input`, appended after a blank line, as in Alpaca-style files);
- or the field named by `field=` (e.g. `--field question`).
A row may carry its own `system` string. Rows from a kdforge run (a run directory or one of its `.arrow` shards)
keep their lineage: `parent_id` is the source row's id, `root_id` its root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gen.errors import UserError

# suffix -> format, when the first bytes do not say
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".txt": "text", ".text": "text", ".md": "text",
            ".arrow": "arrow", ".parquet": "parquet"}
SUFFIXES = tuple(_FORMATS)
_MAGIC = ((b"PAR1", "parquet"), (b"ARROW1", "arrow"))
ROLES = ("system", "user", "assistant")


class Record(NamedTuple):
    """One row of an input. location: `file:line`, `file[index]` or `file row N`, for messages. value: the parsed
    row (see the module doc). from_run: the row comes from a kdforge run (its `id` is lineage)."""

    location: str
    value: Any
    from_run: bool = False


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


def iter_records(path: str | Path, *, flag: str | None = None, text: str = "lines") -> Iterator[Record]:
    """Every row of `path` (file or run directory) as a `Record`. `text="paragraphs"` reads a text file as
    blank-line-separated paragraphs (`{"text": ...}`) instead of one instruction per line. `flag` prefixes the
    messages about the file as a whole (`--input PATH: no such file or directory`)."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if not path.exists():
        raise UserError(f"{where}: no such file or directory")
    if path.is_dir():
        yield from _iter_run_dir(path, where)
        return
    kind = sniff_format(path, where)
    if kind == "jsonl":
        for number, value in iter_jsonl(path):
            yield Record(f"{path}:{number}", value)
    elif kind == "json":
        yield from _iter_json(path)
    elif kind == "text":
        yield from (_iter_paragraphs(path) if text == "paragraphs" else _iter_text_items(path))
    else:
        table = _read_table_file(path, kind, where)
        from_run = "messages" in table.column_names and "method" in table.column_names
        for index, row in enumerate(table_rows(table, path)):
            yield Record(f"{path} row {index}", row, from_run)


def sniff_format(path: Path, where: str | None = None) -> str:
    """jsonl | json | text | arrow | parquet: the first bytes where they are a table format's magic, else the
    suffix; an unknown suffix is a UserError."""
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror or exc})") from None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise UserError(f"{where}: unsupported file type {suffix or '(none)'!r} (expected one of "
                        f"{', '.join(SUFFIXES)} or a kdforge run directory)")
    return _FORMATS[suffix]


def read_inputs(path: str | Path, *, field: str | None = None, limit: int | None = None,
                flag: str = "--input") -> list[InputRow]:
    """All prompts of `path` (the first `limit`), validated; an empty input is a UserError."""
    rows: list[InputRow] = []
    for record in iter_records(path, flag=flag):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(_to_input_row(record, field))
    if not rows:
        raise UserError(f"{flag} {path}: no rows")
    return rows


def read_instructions(path: str | Path, *, field: str | None = None, limit: int | None = None,
                      flag: str = "--input") -> list[str]:
    """Just the instruction text (first user turn) of every row."""
    return [row.instruction for row in read_inputs(path, field=field, limit=limit, flag=flag)]


# ---------------------------------------------------------------------------------------------------- row parsing


def _to_input_row(record: Record, field: str | None) -> InputRow:
    location, row = record.location, record.value
    if not isinstance(row, Mapping):
        raise UserError(f"{location}: expected an object with `instruction` or `messages`, got {type(row).__name__}")
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{location}: `system` must be a string")
    if field is not None:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{location}: missing or empty field {field!r}")
        messages: list[dict[str, str]] = [{"role": "user", "content": value}]
    elif row.get("messages") is not None:
        messages, own_system = _prompt_messages(location, row["messages"])
        system = system or own_system
    elif row.get("instruction") is not None:
        instruction = row["instruction"]
        extra_input = row.get("input")
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{location}: `instruction` must be a non-empty string")
        if extra_input is not None and not isinstance(extra_input, str):
            raise UserError(f"{location}: `input` must be a string")
        text = f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction
        messages = [{"role": "user", "content": text}]
    else:
        raise UserError(f"{location}: no `instruction` or `messages` field (fields: {field_names(row)}; "
                        "use --field NAME)")
    parent_id = root_id = None
    if record.from_run and isinstance(row.get("id"), str):
        parent_id = row["id"]
        root_id = row["root_id"] if isinstance(row.get("root_id"), str) and row["root_id"] else parent_id
    extra = {k: v for k, v in row.items() if k not in ("messages", "instruction", "input", "system")}
    return InputRow(tuple(messages), system or None, location, parent_id, root_id, extra)


def field_names(row: Mapping[str, Any]) -> str:
    """The row's field names for a one-line message (a name may hold a newline: it is escaped)."""
    return ", ".join(sorted(str(k).encode("unicode_escape").decode("ascii") for k in row)) or "none"


def parse_messages(location: str, messages: Any) -> list[dict[str, str]]:
    """A validated copy of a `messages` value: a non-empty list of {role, content} strings with known roles."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{location}: `messages` must be a non-empty list of {{role, content}}")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise UserError(f"{location}: messages[{i}] must be an object with string `role` and `content`")
        if message["role"] not in ROLES:
            raise UserError(f"{location}: messages[{i}] has unknown role {message['role']!r}")
        parsed.append({"role": message["role"], "content": message["content"]})
    return parsed


def _prompt_messages(location: str, messages: Any) -> tuple[list[dict[str, str]], str | None]:
    """The turns to answer (system message apart, trailing answers dropped) and the leading system message."""
    parsed = parse_messages(location, messages)
    system = None
    if parsed[0]["role"] == "system":
        system = parsed.pop(0)["content"]
    while parsed and parsed[-1]["role"] == "assistant":
        parsed.pop()  # answer the last user turn again; the old answer is not part of the prompt
    if not parsed or not any(m["role"] == "user" for m in parsed):
        raise UserError(f"{location}: `messages` has no user turn to answer")
    return parsed, system


# ---------------------------------------------------------------------------------------------------- text formats


def _decode(raw: bytes, location: str) -> str:
    """UTF-8 text or a UserError at `location` (a binary file, another encoding)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise UserError(f"{location}: binary data (a NUL byte at column {nul + 1}), not UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{location}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}; "
                        "binary, or another encoding?)") from None


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for every line of a UTF-8 text file; bad bytes are a UserError
    naming file:line. A leading byte-order mark is dropped."""
    path = Path(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, _decode(raw, f"{path}:{number}").rstrip("\r\n")


def _loads(text: str, location: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{location}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{location}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise UserError(f"{location}: unreadable JSON ({str(exc).splitlines()[0]})") from None
    _check_no_lone_surrogates(text, value, location)
    return value


def _check_no_lone_surrogates(text: str, value: Any, location: str) -> None:
    """JSON may escape half a UTF-16 pair (`"\\ud800"`): Python reads it into a string that cannot be written as
    UTF-8 (ids, shards, the cache all do). Checked only when the text holds such an escape."""
    if "\\ud" not in text.lower():
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{location}: a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a malformed line is a UserError naming file:line."""
    for number, line in iter_text_lines(path):
        if line.strip():
            yield number, _loads(line, f"{path}:{number}")


def _iter_json(path: Path) -> Iterator[Record]:
    lines = [line for _, line in iter_text_lines(path)]
    text = "\n".join(lines)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except (RecursionError, ValueError):
        data = _loads(text, str(path))  # raises the one-line error
    _check_no_lone_surrogates(text, data, str(path))
    if isinstance(data, Mapping):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    for index, value in enumerate(data):
        yield Record(f"{path}[{index}]", value)


def _iter_text_items(path: Path) -> Iterator[Record]:
    """One instruction per non-blank line; lines starting with '#' are comments."""
    for number, line in iter_text_lines(path):
        item = line.strip()
        if item and not item.startswith("#"):
            yield Record(f"{path}:{number}", {"instruction": item})


def _iter_paragraphs(path: Path) -> Iterator[Record]:
    """Blank-line-separated paragraphs, located at their first line."""
    block: list[str] = []
    start = 0
    for number, line in iter_text_lines(path):
        if line.strip():
            start = start or number
            block.append(line)
        elif block:
            yield Record(f"{path}:{start}", {"text": "\n".join(block).strip()})
            block, start = [], 0
    if block:
        yield Record(f"{path}:{start}", {"text": "\n".join(block).strip()})


# ---------------------------------------------------------------------------------------------------- table formats


def _read_table_file(path: Path, kind: str, where: str):
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            try:
                table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
        return _validated(table)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{where}: not a readable {kind} file ({_first_line(exc)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a readable {kind} file (a column name is not UTF-8)") from None


def _validated(table):
    """`table` after a full check of its buffers and names. Arrow IPC is read without checking them: a damaged
    offset would make reading rows touch memory outside the file, a damaged name fails deep inside pyarrow."""
    table.validate(full=True)
    _ = table.column_names  # decodes every name (UnicodeDecodeError here, not while reading rows)
    return table


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def table_rows(table, path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of an Arrow table as dicts; values Python cannot hold (a timestamp out of range) are a UserError
    naming the rows."""
    import pyarrow as pa

    offset = 0
    for batch in table.to_batches(max_chunksize=2048):
        try:
            rows = batch.to_pylist()
        except (pa.ArrowException, ValueError, OverflowError) as exc:
            raise UserError(f"{path} rows {offset}-{offset + batch.num_rows - 1}: unreadable values "
                            f"({_first_line(exc)})") from None
        yield from rows
        offset += batch.num_rows


def _iter_run_dir(path: Path, where: str) -> Iterator[Record]:
    from gen.data.shards import open_shard, shard_paths

    shards = shard_paths(path, "train")
    if not shards:
        raise UserError(f"{where}: a directory but not a kdforge run (no train/*.arrow shards)")
    import pyarrow as pa

    for shard in shards:
        try:
            table = _validated(open_shard(shard))  # as for an .arrow input: damage is an error, not a bad read
        except pa.ArrowException as exc:
            raise UserError(f"{shard}: not a readable Arrow shard ({_first_line(exc)})") from None
        except UnicodeDecodeError:
            raise UserError(f"{shard}: not a readable Arrow shard (a column name is not UTF-8)") from None
        for index, row in enumerate(table_rows(table, shard)):
            yield Record(f"{shard} row {index}", row, True)
