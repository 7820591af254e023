"""`gen label` end to end through the CLI against a real local server: kill -9 of a real `gen` process and resume,
budget stop and resume, keys kept out of every artifact, and clear one-line errors. (Only the run that gets killed
is a subprocess: importing the OpenAI SDK costs seconds per process on this shared machine.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.engine.conftest import REPO, gen_command, gen_env, write_instructions


def label_args(server, inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["label", "--input", str(inputs), "--out", str(out), "--teacher", "openai:test-model",
            "--base-url", server.v1_url, "--temperature", "0", "--max-new-tokens", "24", "--no-progress", *extra]


def rows_by_id(out: Path) -> dict[str, dict]:
    table = read_table(out, "train")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate row ids"
    return {row["id"]: {k: row[k] for k in ("messages", "system", "teacher", "params", "usage", "finish_reason")}
            for row in table.to_pylist()}


def cached_count(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill9_midrun_then_rerun_sends_only_the_rest(start_server, tmp_path):
    server = start_server("fixed:0.15")
    inputs = write_instructions(tmp_path / "in.jsonl", 40)

    reference = tmp_path / "reference"
    assert main(label_args(server, inputs, reference, "--concurrency", "8")) == 0
    expected = rows_by_id(reference)
    assert len(expected) == 40

    server.reset_stats()
    out = tmp_path / "killed"
    cache = out / ".cache" / "requests.sqlite"
    # Concurrency 2: ~13 answers a second, so the kill lands mid-run.
    process = subprocess.Popen(gen_command(*label_args(server, inputs, out, "--concurrency", "2",
                                                       "--max-concurrency", "2")),
                               cwd=REPO, env=gen_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while cached_count(cache) < 8 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    committed = cached_count(cache)
    first_answers = sum(server.answered.values())
    assert 8 <= committed < 40, committed
    # The cache lost at most the requests in flight at the kill (2) plus the last fraction of a second.
    assert first_answers - committed <= 6

    server.reset_stats()
    assert main(label_args(server, inputs, out, "--concurrency", "8")) == 0
    assert server.requests == 40 - committed  # requests that completed before the kill were not sent again
    assert max(server.seen.values()) == 1
    assert rows_by_id(out) == expected  # same ids and contents as the uninterrupted run, no duplicates
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["rows"] == 40
    assert manifest["funnel"]["engine"]["cache_hits"] == committed

    server.reset_stats()  # a third run is all cache hits and writes nothing new
    assert main(label_args(server, inputs, out)) == 0
    assert server.requests == 0
    assert read_manifest(out)["funnel"]["rows_already_on_disk"] == 40


def test_token_budget_stops_with_rows_committed_and_resumes(start_server, tmp_path, capsys):
    server = start_server("fixed:0.01")
    inputs = write_instructions(tmp_path / "in.jsonl", 30)
    out = tmp_path / "run"
    assert main(label_args(server, inputs, out, "--concurrency", "4", "--max-tokens", "120")) == 3  # 3 = budget
    assert "budget exhausted" in capsys.readouterr().err
    kept = rows_by_id(out)
    assert 0 < len(kept) < 30
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["rows"] == len(kept)
    assert manifest["funnel"]["not_sent_budget"] == 30 - len(kept)
    assert manifest["config"]["max_tokens"] == 120

    server.reset_stats()
    assert main(label_args(server, inputs, out, "--concurrency", "4", "--max-tokens", "100000")) == 0
    assert server.requests == 30 - len(kept)
    final = rows_by_id(out)
    assert len(final) == 30 and all(final[i] == row for i, row in kept.items())


def test_api_key_reaches_the_server_but_no_artifact(start_server, tmp_path, capsys, monkeypatch):
    key = "sk-test-DO-NOT-LEAK-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    server = start_server("fixed:0", faults="500@0,400@3")
    inputs = write_instructions(tmp_path / "in.jsonl", 6)
    out = tmp_path / "run"
    assert main(label_args(server, inputs, out, "--max-retries", "1")) == 4  # 4 = some requests failed (the 400)
    captured = capsys.readouterr()
    assert f"Bearer {key}" in server.authorizations  # the key was used...
    leaked = [p for p in out.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == []  # ...and is in no shard, manifest or cache file
    assert key not in captured.out and key not in captured.err
    assert "1 requests failed" in captured.err
    assert len(rows_by_id(out)) == 5


@pytest.mark.parametrize("case", ["missing_input", "malformed_json", "no_instruction", "bad_messages",
                                  "unknown_teacher", "missing_key", "max_cost_unknown_price"])
def test_user_errors_are_one_line_and_name_the_culprit(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    good = write_instructions(tmp_path / "good.jsonl", 2)
    args = {"teacher": "openai:test-model", "base_url": "http://127.0.0.1:9/v1", "input": str(good), "extra": []}
    expect: str
    if case == "missing_input":
        args["input"] = str(tmp_path / "nope.jsonl")
        expect = "nope.jsonl: no such file"
    elif case == "malformed_json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"instruction": "fine"}\n\n{"instruction": "broken\n')
        args["input"] = str(bad)
        expect = "bad.jsonl:3: malformed JSON"
    elif case == "no_instruction":
        bad = tmp_path / "fields.jsonl"
        bad.write_text('{"instruction": "fine"}\n{"question": "what?"}\n')
        args["input"] = str(bad)
        expect = "fields.jsonl:2: no `instruction` or `messages` field"
    elif case == "bad_messages":
        bad = tmp_path / "messages.jsonl"
        bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
        args["input"] = str(bad)
        expect = "messages.jsonl:1: `messages` has no user turn"
    elif case == "unknown_teacher":
        args["teacher"] = "gpt9:model"
        expect = "--teacher 'gpt9:model': unknown backend"
    elif case == "missing_key":
        args["base_url"] = None
        expect = "OPENAI_API_KEY is not set"
    else:
        args["extra"] = ["--max-cost", "1"]
        expect = "--max-cost: no known price for teacher 'openai:test-model'"
    argv = ["label", "--input", args["input"], "--out", str(tmp_path / "out"), "--teacher", args["teacher"],
            "--no-progress", *args["extra"]]
    if args["base_url"]:
        argv += ["--base-url", args["base_url"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gen label: error: ") and expect in err, err
    assert not (tmp_path / "out" / "train").exists() or not list((tmp_path / "out" / "train").glob("*.arrow"))
