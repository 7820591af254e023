"""Input readers (`gen/inputs.py`), `gen stats`, shard atomicity under kill -9, and the whole-batch engine path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen.cli import main
from gen.data.inputs import read_inputs, read_instructions
from gen.data.records import make_row
from gen.data.shards import ShardWriter, read_table, shard_paths, write_manifest
from gen.engine.engine import Engine
from gen.errors import UserError
from gen.teachers.base import ChatRequest, Completion, PermanentError, SamplingParams, Teacher, TransientError
from gen.teachers.pricing import parse_price, price_for
from tests.engine.conftest import REPO, gen_env


def test_readers_agree_across_formats(tmp_path):
    rows = [{"instruction": "Name a prime.", "input": ""},
            {"instruction": "Translate.", "input": "bonjour"},
            {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "old answer"}]},
            {"instruction": "Own system.", "system": "Speak like a pirate."}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    table = pa.Table.from_pylist([{"instruction": "Name a prime."}, {"instruction": "Translate.\n\nbonjour"}])
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)

    from_jsonl = read_inputs(tmp_path / "a.jsonl")
    assert [r.messages for r in from_jsonl] == [r.messages for r in read_inputs(tmp_path / "a.json")]
    assert from_jsonl[1].instruction == "Translate.\n\nbonjour"
    assert from_jsonl[2].system == "Be terse." and from_jsonl[2].messages == ({"role": "user", "content": "Hi?"},)
    assert from_jsonl[3].system == "Speak like a pirate."
    assert from_jsonl[0].location.endswith("a.jsonl:1")
    expected = ["Name a prime.", "Translate.\n\nbonjour"]
    assert read_instructions(tmp_path / "a.parquet") == expected
    assert read_instructions(tmp_path / "a.arrow") == expected
    assert read_instructions(tmp_path / "a.jsonl", limit=2) == expected
    (tmp_path / "q.jsonl").write_text('{"question": "Why?"}\n')
    assert read_instructions(tmp_path / "q.jsonl", field="question") == ["Why?"]


def test_reading_a_run_keeps_lineage(tmp_path):
    run = tmp_path / "run"
    row = make_row(messages=[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
                   method="evol_instruct", round=2, parent_id="p0", root_id="r0")
    with ShardWriter(run) as writer:
        writer.write(row)
    [item] = read_inputs(run)
    assert item.messages == ({"role": "user", "content": "Q1"},)
    assert (item.parent_id, item.root_id) == (row["id"], "r0")
    assert "row 0" in item.location


@pytest.mark.parametrize("content, message", [
    ("", "no rows"),
    ('{"instruction": 3}\n', "a.jsonl:1: `instruction` must be a non-empty string"),
    ('[1, 2]\n', "a.jsonl:1: expected an object"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', "messages[0] has unknown role 'robot'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, content, message):
    (tmp_path / "a.jsonl").write_text(content)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_inputs(tmp_path / "a.jsonl")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "a.csv").write_text("instruction\nhi\n")
    with pytest.raises(UserError, match="unsupported file type '.csv'"):
        read_inputs(tmp_path / "a.csv")


def test_stats_table_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    kept = [make_row(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                     method="evol_instruct", round=i % 2, usage={"prompt_tokens": 10, "completion_tokens": 5})
            for i in range(5)]
    rejected = [make_row(messages=[{"role": "user", "content": "dup"}, {"role": "assistant", "content": "a"}],
                         method="evol_instruct", round=1, filters=["minhash_duplicate"],
                         usage={"prompt_tokens": 3, "completion_tokens": 1})]
    with ShardWriter(run, "train") as writer:
        writer.write_many(kept)
    with ShardWriter(run, "rejected") as writer:
        writer.write_many(rejected)
    write_manifest(run, config={"teacher": "openai:x"}, funnel={"generated": 6, "kept": 5})

    assert main(["stats", str(run), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totals"] == {"rows": 5, "rejected": 1, "prompt_tokens": 53, "completion_tokens": 26}
    assert stats["by_method_round"] == {"evol_instruct / round 0": {"train": 3},
                                        "evol_instruct / round 1": {"train": 2, "rejected": 1}}
    assert stats["rejected_by_reason"] == {"minhash_duplicate": 1}
    assert stats["funnel"] == {"generated": 6, "kept": 5} and stats["teacher"] == "openai:x"

    assert main(["stats", str(run)]) == 0
    table = capsys.readouterr().out
    assert "| evol_instruct / round 1 |" in table and "minhash_duplicate" in table
    assert main(["stats", str(tmp_path / "missing")]) == 2


_WRITER = """
import sys
from gen.data.records import make_row
from gen.data.shards import ShardWriter
out = sys.argv[1]
with ShardWriter(out, max_rows=2000) as writer:
    for i in range(10**9):
        writer.write(make_row(messages=[{"role": "user", "content": "x" * 200 + str(i)}], method="label"))
"""


def test_a_reader_never_sees_a_partial_shard(tmp_path):
    """kill -9 a writer while it streams shards: every listed shard reads whole; the next writer cleans up."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=REPO, env=gen_env())
    seen = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and seen < 4:
        if (out / "train").exists():
            table = read_table(out)  # concurrent reads while shards are being written
            assert table.num_rows % 2000 == 0
            seen = table.num_rows // 2000
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert seen >= 4
    total = read_table(out).num_rows
    assert total % 2000 == 0 and total >= seen * 2000
    ShardWriter(out)  # removes any temp file the killed writer left
    assert [p.name for p in (out / "train").iterdir() if p.name.startswith(".")] == []
    assert len(shard_paths(out, "train")) == total // 2000


class CountingBatchTeacher(Teacher):
    """A deterministic in-process whole-batch teacher (the shape of the vLLM backend): answers by echoing, fails
    the listed prompts transiently once, and records every `complete_batch` call."""

    backend = "batch"
    takes_whole_batch = True

    def __init__(self, flaky: set[str] = frozenset(), broken: set[str] = frozenset()):
        super().__init__("echo")
        self.calls: list[int] = []
        self.flaky = set(flaky)
        self.broken = set(broken)

    def complete_batch(self, requests):
        self.calls.append(len(requests))
        out = []
        for request in requests:
            prompt = request.messages[-1][1]
            if prompt in self.broken:
                out.append(PermanentError("400: bad prompt"))
            elif prompt in self.flaky:
                self.flaky.discard(prompt)
                out.append(TransientError("engine hiccup"))
            else:
                out.append(Completion(f"echo {prompt}", "stop", 3, 2))
        return out


def test_whole_batch_teacher_gets_all_uncached_requests_in_one_call(tmp_path):
    params = SamplingParams(max_tokens=8)
    requests = [ChatRequest.make([{"role": "user", "content": f"p{i}"}], params) for i in range(50)]
    teacher = CountingBatchTeacher(flaky={"p3", "p7"}, broken={"p9"})
    cache = tmp_path / "c.sqlite"
    with Engine(teacher, cache_path=cache, progress=False, backoff_base=0.01, own_teacher=False) as engine:
        results = engine.run(requests[:30])
    assert teacher.calls == [30, 2]  # one call for the round, one for the two transient failures
    assert [r.ok for r in results].count(False) == 1 and results[9].error == "PermanentError: 400: bad prompt"
    with Engine(teacher, cache_path=cache, progress=False, own_teacher=False) as engine:
        results = engine.run(requests)
        assert engine.stats["cache_hits"] == 29
    assert teacher.calls[2:] == [21]  # the 20 new ones and the failed one, together
    assert sum(r.ok for r in results) == 49


def test_prices():
    assert price_for("openai:gpt-4o-mini-2024-07-18").input_per_million == 0.15
    assert price_for("openai:gpt-4o").output_per_million == 10.0
    assert price_for("anthropic:claude-3-5-haiku-latest").cost(1_000_000, 0) == pytest.approx(0.8)
    assert price_for("openai:my-local-model") is None and price_for("llamacpp:") is None
    assert parse_price("0.5:1.5").cost(2_000_000, 1_000_000) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        parse_price("3")


def test_progress_postfix_reports_rates_hits_failures_and_spend():
    from gen.engine.progress import Progress

    progress = Progress(100, "label", enabled=False)
    progress.started -= 2.0  # two seconds in
    progress.update(done=50, sent=40, cache_hits=10, failures=3, tokens=1000, cost=0.0123)
    text = progress.postfix()
    assert "20.0 req/s" in text and "500 tok/s" in text and "hits 10" in text and "fail 3" in text
    assert "tokens 1000" in text and "$0.0123" in text
    assert not progress.enabled  # off when asked (and whenever stderr is not a terminal)
