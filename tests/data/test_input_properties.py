"""Every input reader (the one reader and each command's adapter) on random bytes, random JSON and random Arrow
tables: it returns a well-formed result or raises a one-line UserError naming the file, never another exception.
And on random *valid* inputs, every format gives the same instructions back.

Deterministic (`derandomize=True`): CI sees the same examples on every run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.data.inputs import InputRow, iter_records, read_inputs, read_instructions
from gen.data.records import make_row
from gen.data.shards import ShardWriter
from gen.errors import UserError
from gen.methods.inputs import SeedItem, load_documents, load_items, load_lines

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------------ what "correct" is


def _check_prompts(rows: list[InputRow]) -> None:
    assert rows and all(isinstance(r, InputRow) for r in rows)
    for row in rows:
        assert row.messages and row.messages[-1]["role"] == "user"
        assert all(m["role"] in ("user", "assistant") and isinstance(m["content"], str) for m in row.messages)
        assert isinstance(row.instruction, str)
        assert row.system is None or isinstance(row.system, str)
        assert row.parent_id is None or isinstance(row.parent_id, str)
        assert row.root_id is None or isinstance(row.root_id, str)


def _check_items(items: list[SeedItem]) -> None:
    assert items and all(isinstance(i, SeedItem) for i in items)
    assert len({i.id for i in items}) == len(items)
    for item in items:
        assert isinstance(item.instruction, str) and item.instruction.strip()
        assert item.response is None or isinstance(item.response, str)
        assert item.is_classification in (None, True, False)
        assert item.source_id is None or isinstance(item.source_id, str)
        json.dumps([item.id, item.instruction, item.response]).encode("utf-8")  # writable into a row


def _check_documents(docs: list[dict[str, str]]) -> None:
    assert docs
    for doc in docs:
        assert isinstance(doc["id"], str) and doc["id"]
        assert isinstance(doc["text"], str) and doc["text"].strip()


def _check_lines(lines: list[str]) -> None:
    assert lines and all(isinstance(line, str) and line and "\n" not in line for line in lines)


def _check_records(records: list) -> None:
    assert all(isinstance(r.location, str) for r in records)


# name -> (reader, check): every reader a command uses on a user's file
READERS: dict[str, tuple[Callable[[Path], Any], Callable[[Any], None]]] = {
    "iter_records (the one reader)": (lambda p: list(iter_records(p)), _check_records),
    "label --input": (read_inputs, _check_prompts),
    "label --input --field question": (lambda p: read_inputs(p, field="question"), _check_prompts),
    "evol --input / self-instruct, self-chat --seeds": (load_items, _check_items),
    "ultrachat --documents": (load_documents, _check_documents),
    "ultrachat --topics/--personas/--task-types": (load_lines, _check_lines),
}


def assert_every_reader_behaves(path: Path) -> None:
    """Each reader: a correct result, or a UserError of one line that names the file. Anything else fails."""
    for name, (reader, check) in READERS.items():
        try:
            result = reader(path)
        except UserError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, (name, message)
            assert str(path) in message, (name, message)
            continue
        check(result)


# ------------------------------------------------------------------------------------------------------ random bytes

SUFFIXES = [".jsonl", ".json", ".txt", ".arrow", ".parquet", ".csv", ""]
MAGIC_PREFIXES = [b"", b"PAR1", b"ARROW1\x00\x00", b"\xff\xff\xff\xff", b"\xef\xbb\xbf", b'{"instruction": "',
                  b'[{"text": "']


@SETTINGS
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(prefix, body, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(prefix + body)
        assert_every_reader_behaves(path)


# ------------------------------------------------------------------------------------------------------- random JSON

KEYS = ["instruction", "input", "output", "response", "messages", "role", "content", "text", "id", "system",
        "question", "prompt", "instances", "is_classification", "name", "root_id", "method"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["", "  ", "user", "assistant", "system", "#comment", "Name a prime."]))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                       children, max_size=5),
    max_leaves=25,
)
# rows shaped like inputs, with values of any type: they reach each adapter's field checks
ROWS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=5)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", 3]),
                                           "content": SCALARS}), max_size=3)


@SETTINGS
@given(value=JSON_VALUES | st.lists(ROWS | st.builds(lambda m: {"messages": m}, MESSAGES), max_size=5),
       suffix=st.sampled_from([".json", ".jsonl"]))
def test_random_json(value, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        if suffix == ".jsonl" and isinstance(value, list):
            path.write_text("".join(json.dumps(v) + "\n" for v in value))
        else:
            path.write_text(json.dumps(value))
        assert_every_reader_behaves(path)


@SETTINGS
@given(text=st.sampled_from(['{"instruction": "\\ud800"}', '{"instruction": "ok", "x": "\\udfff"}',
                             "[" * 100_000, '{"instruction": ' + "1" * 5000 + "}", '{"instruction": NaN}',
                             '{"instruction": "\\ud83d\\ude00 fine"}']),
       suffix=st.sampled_from([".json", ".jsonl"]))
def test_hostile_json_text(text, suffix):
    """Lone surrogate escapes, nesting past the recursion limit, integers past Python's digit limit."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_text(text + "\n")
        assert_every_reader_behaves(path)


# ------------------------------------------------------------------------------------------------ random Arrow tables

_TEXT = st.none() | st.text(max_size=10) | st.sampled_from(["", " ", "Name a prime."])
_INSTANCE = pa.struct([("input", pa.string()), ("output", pa.string())])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
ARROW_TYPES: list[tuple[pa.DataType, st.SearchStrategy]] = [
    (pa.string(), _TEXT),
    (pa.large_string(), _TEXT),
    (pa.int64(), st.none() | st.integers(-2**63, 2**63 - 1)),
    (pa.float64(), st.none() | st.floats()),
    (pa.bool_(), st.none() | st.booleans()),
    (pa.binary(), st.none() | st.binary(max_size=8)),
    (pa.null(), st.none()),
    (pa.list_(pa.string()), st.none() | st.lists(_TEXT, max_size=3)),
    (pa.list_(_MESSAGE), st.none() | st.lists(st.none() | st.fixed_dictionaries(
        {"role": st.none() | st.sampled_from(["user", "assistant", "system", "robot"]), "content": _TEXT}),
        max_size=3)),
    (_INSTANCE, st.none() | st.fixed_dictionaries({"input": _TEXT, "output": _TEXT})),
    (pa.list_(_INSTANCE), st.none() | st.lists(st.fixed_dictionaries({"input": _TEXT, "output": _TEXT}),
                                               max_size=2)),
    (pa.list_(pa.list_(pa.int64())), st.none() | st.lists(st.none() | st.lists(st.integers(0, 9), max_size=2),
                                                           max_size=2)),
    (pa.timestamp("s"), st.none() | st.integers(-2**40, 2**40)),  # most of these are years Python has no date for
    (pa.map_(pa.string(), pa.int64()), st.none() | st.lists(st.tuples(st.text(max_size=3), st.integers(0, 9)),
                                                            max_size=2)),
]


@st.composite
def arrow_tables(draw) -> pa.Table:
    rows = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(KEYS) | st.text(max_size=5), max_size=5))
    arrays = []
    for _ in names:
        arrow_type, values = draw(st.sampled_from(ARROW_TYPES))
        arrays.append(pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), type=arrow_type))
    if draw(st.booleans()) and names:  # sometimes a dictionary-encoded string column
        arrays[0] = pa.array(draw(st.lists(_TEXT, min_size=rows, max_size=rows)), type=pa.string()).dictionary_encode()
    return pa.Table.from_arrays(arrays, names=names) if names else pa.table({})


def _write_arrow(table: pa.Table, path: Path, stream: bool = False) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table)


@SETTINGS
@given(table=arrow_tables(), layout=st.sampled_from(["arrow", "arrow-stream", "parquet", "parquet-as-jsonl",
                                                     "run-dir"]))
def test_random_arrow_tables(table, layout):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if layout == "arrow":
            path = tmp / "input.arrow"
            _write_arrow(table, path)
        elif layout == "arrow-stream":
            path = tmp / "input.arrow"
            _write_arrow(table, path, stream=True)
        elif layout == "run-dir":
            path = tmp / "run"
            (path / "train").mkdir(parents=True)
            _write_arrow(table, path / "train" / "train-00000.arrow")
        else:
            path = tmp / ("input.parquet" if layout == "parquet" else "input.jsonl")
            pq.write_table(table, path)
        assert_every_reader_behaves(path)


@SETTINGS
@given(table=arrow_tables(), fmt=st.sampled_from(["arrow", "parquet"]), data=st.data())
def test_damaged_table_files(table, fmt, data):
    """A valid file with a few bytes overwritten: an error naming it (or rows that still read), never a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input.{fmt}"
        if fmt == "arrow":
            _write_arrow(table, path)
        else:
            pq.write_table(table, path)
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
        assert_every_reader_behaves(path)


# ------------------------------------------------------------------------------------------- valid inputs round-trip

INSTRUCTION = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30).map(
    str.strip).filter(lambda s: s and not s.startswith("#"))


@SETTINGS
@given(instructions=st.lists(INSTRUCTION, min_size=1, max_size=6, unique=True),
       fmt=st.sampled_from(["jsonl", "json", "txt", "parquet", "arrow", "arrow-stream", "parquet-as-jsonl",
                            "run-dir"]))
def test_every_format_reads_back_the_same_instructions(instructions, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = pa.table({"instruction": instructions})
        if fmt == "jsonl":
            path = tmp / "in.jsonl"
            path.write_text("".join(json.dumps({"instruction": i}) + "\n" for i in instructions))
        elif fmt == "json":
            path = tmp / "in.json"
            path.write_text(json.dumps([{"instruction": i} for i in instructions]))
        elif fmt == "txt":
            path = tmp / "in.txt"
            path.write_text("".join(f"{i}\n" for i in instructions), encoding="utf-8")
        elif fmt == "parquet":
            path = tmp / "in.parquet"
            pq.write_table(table, path)
        elif fmt == "parquet-as-jsonl":
            path = tmp / "in.jsonl"
            pq.write_table(table, path)
        elif fmt == "run-dir":
            path = tmp / "run"
            with ShardWriter(path) as writer:
                for i in instructions:
                    writer.write(make_row(messages=[{"role": "user", "content": i},
                                                    {"role": "assistant", "content": "ok"}], method="label"))
        else:
            path = tmp / "in.arrow"
            _write_arrow(table, path, stream=fmt == "arrow-stream")
        assert read_instructions(path) == instructions
        assert [item.instruction for item in load_items(path)] == instructions
        if fmt == "run-dir":
            assert [item.response for item in load_items(path)] == ["ok"] * len(instructions)


def test_checks_are_not_vacuous(tmp_path):
    """The property tests above would pass a reader that refused everything: these inputs must be read."""
    (tmp_path / "docs.txt").write_text("first paragraph\nstill first\n\nsecond\n")
    assert [d["text"] for d in load_documents(tmp_path / "docs.txt")] == ["first paragraph\nstill first", "second"]
    (tmp_path / "topics.txt").write_text("# comment\nPhysics\n\nHistory\n")
    assert load_lines(tmp_path / "topics.txt") == ["Physics", "History"]
    (tmp_path / "q.jsonl").write_text('{"question": "Why?", "id": 7}\n')
    [item] = load_items(tmp_path / "q.jsonl")
    assert (item.instruction, item.source_id) == ("Why?", "7")
