"""`gen score` end to end through the CLI against a scripted judge server (`tests.methods.judge_server`): exact
scores, `judge_unparseable` rejections after one retry, the funnel, a rerun that is all cache hits, old shards
without the `scores` column, and kill -9 of a real `gen score` process followed by a rerun that sends nothing
twice (counted at the server)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest

from gen.cli import main
from gen.data.records import ROW_SCHEMA, make_row
from gen.data.scores import parse_scores
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest
from tests.engine.conftest import REPO, gen_command, gen_env
from tests.latency_server import LatencyServer
from tests.methods import judge_server


@pytest.fixture
def scripted_judge():
    servers = []

    def start(latency: str = "fixed:0") -> LatencyServer:
        server = LatencyServer(latency, reply=judge_server.pointwise_judge).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def make_run(path: Path, answers: list[str], schema: pa.Schema = ROW_SCHEMA) -> list[dict]:
    rows = [make_row(messages=[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}],
                     method="label", teacher="llamacpp:test") for i, a in enumerate(answers)]
    if "scores" not in schema.names:
        rows = [{k: v for k, v in row.items() if k != "scores"} for row in rows]
    with ShardWriter(path, "train", schema=schema, max_rows=4) as writer:
        writer.write_many(rows)
    write_manifest(path, config={"method": "label"}, funnel={"generated": len(rows)})
    return rows


def score_args(server, run: Path, *extra: str) -> list[str]:
    return ["score", str(run), "--judge", "openai:scripted-judge", "--judge-base-url", server.v1_url,
            "--no-progress", *extra]


def test_score_writes_scores_rejects_unparseable_and_reruns_from_cache(scripted_judge, tmp_path, capsys):
    server = scripted_judge()
    run = tmp_path / "run"
    # Shards written before the `scores` column existed read as unscored rows.
    old_schema = pa.schema([f for f in ROW_SCHEMA if f.name != "scores"])
    rows = make_run(run, ["score 8", "late 3", "garbage", "score 10", "lines 5", "garbage"], schema=old_schema)
    ids = [r["id"] for r in rows]
    assert main(score_args(server, run)) == 0
    assert server.requests == 6 + 3  # one per row, one retry for each of the three refused first replies
    train = {r["id"]: r for r in read_table(run, "train").to_pylist()}
    rejected = {r["id"]: r for r in read_table(run, "rejected").to_pylist()}
    assert set(train) == {ids[0], ids[1], ids[3], ids[4]} and set(rejected) == {ids[2], ids[5]}
    values = {i: parse_scores(train[i]["scores"])["quality"]["value"] for i in train}
    assert values == {ids[0]: 8, ids[1]: 3, ids[3]: 10, ids[4]: 5}
    entry = parse_scores(train[ids[1]]["scores"])["quality"]
    assert entry["judge"] == "openai:scripted-judge" and entry["retried"] is True and entry["rationale"] == "second try"
    assert entry["rubric"] == "quality" and len(entry["template_hash"]) == 12
    for i in (ids[2], ids[5]):
        assert rejected[i]["filters"] == ["judge_unparseable"]
        assert parse_scores(rejected[i]["scores"])["quality"]["raw"] == "I cannot decide."
    manifest = read_manifest(run)
    assert manifest["funnel"]["generated"] == 6  # the run's own funnel is kept
    assert manifest["funnel"]["score"]["by_reason"] == {"judge_unparseable": 2}
    assert manifest["funnel"]["score"]["scorers"]["quality"]["retried"] == 3
    assert manifest["config"]["filters"]["score"]["quality"]["judge"] == "openai:scripted-judge"
    capsys.readouterr()
    assert main(["stats", str(run), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rejected_by_reason"] == {"judge_unparseable": 2}
    assert stats["scores"]["quality"]["histogram"] == {"3": 1, "5": 1, "8": 1, "10": 1}

    server.reset_stats()  # a rerun is all cache hits and changes nothing
    assert main(score_args(server, run)) == 0
    assert server.requests == 0
    assert {r["id"]: r["scores"] for r in read_table(run, "train").to_pylist()} == {i: train[i]["scores"] for i in train}
    assert "5 requests, 0 sent, 5 from cache" in capsys.readouterr().err  # row `late 3`: its first reply and retry


def test_score_flag_errors_name_the_flag_or_file(scripted_judge, tmp_path, capsys):
    server = scripted_judge()
    run = tmp_path / "run"
    make_run(run, ["score 1"])
    bad = tmp_path / "rubric.yaml"
    bad.write_text("name: x\naspects: []\ntemplate: '{{ verdict_format }}'\n")
    for extra, words in [(["--rubric", str(bad)], str(bad)), (["--rubric", "pairwise"], "--rubric pairwise"),
                         (["--judge-max-new-tokens", "0"], "--judge-max-new-tokens")]:
        assert main(score_args(server, run, *extra)) == 2
        assert words in capsys.readouterr().err
    assert server.requests == 0
    assert main(["score", str(tmp_path / "missing"), "--judge", "openai:j", "--judge-base-url", server.v1_url]) == 2


def committed(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill9_midrun_then_rerun_sends_nothing_twice(scripted_judge, tmp_path):
    server = scripted_judge("fixed:0.1")
    run = tmp_path / "run"
    answers = [f"score {1 + i % 10}" for i in range(24)] + ["late 6", "late 2"]
    rows = make_run(run, answers)
    distinct_requests = len(answers) + 2  # the two `late` rows need their retry
    cache = run / ".cache" / "requests.sqlite"
    process = subprocess.Popen(gen_command(*score_args(server, run, "--concurrency", "2", "--max-concurrency", "2")),
                               cwd=REPO, env=gen_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while committed(cache) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = committed(cache)
    assert 6 <= done < distinct_requests, done
    assert all(r["scores"] is None for r in read_table(run, "train").to_pylist())  # the run is not half-rewritten
    first_run = server.requests

    server.reset_stats()
    assert main(score_args(server, run)) == 0
    assert server.requests == distinct_requests - done  # what completed before the kill is not sent again
    assert max(server.seen.values()) == 1
    assert first_run - done <= 4  # at most what was in flight (2) and the last fraction of a second was lost
    train = read_table(run, "train").to_pylist()
    assert len(train) == len(rows) and all(parse_scores(r["scores"])["quality"]["value"] for r in train)
    assert sorted(parse_scores(r["scores"])["quality"]["value"] for r in train)[:3] == [1, 1, 1]
