"""`gen label`'s library part, `gen.methods.label`, used without the CLI: chunks committed as shards, the row's
own system message wins, a rerun is answered from the cache and writes no row twice, a budget stops it cleanly.
The teacher is a real OpenAI-compatible HTTP server with deterministic replies (tests/latency_server.py)."""

from __future__ import annotations

import json

import pytest

from gen.data.inputs import read_inputs
from gen.data.shards import read_manifest, read_table, shard_paths
from gen.engine.engine import Engine, default_cache_path
from gen.methods.label import label_to_shards
from gen.teachers import load_teacher
from gen.teachers.base import SamplingParams
from tests.latency_server import LatencyServer

PARAMS = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture
def server():
    server = LatencyServer("fixed:0").start()
    yield server
    server.stop()


def write_inputs(path, n: int):
    rows = [{"instruction": f"Explain item {i} in one sentence."} for i in range(n)]
    rows[1]["system"] = "Own system."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def label(server, out, inputs, **kwargs):
    engine = Engine(load_teacher(f"openai:{server.model}", base_url=server.v1_url), progress=False,
                    cache_path=default_cache_path(out), **kwargs.pop("engine", {}))
    try:
        return label_to_shards(engine, inputs, out, PARAMS, **kwargs), dict(engine.stats)
    finally:
        engine.close()


def test_chunks_become_shards_and_a_rerun_is_answered_from_the_cache(server, tmp_path):
    inputs = read_inputs(write_inputs(tmp_path / "in.jsonl", 5))
    out = tmp_path / "run"
    outcome, stats = label(server, out, inputs, system="Be brief.", chunk_size=2, config={"method": "label"})
    assert not outcome.exhausted and outcome.first_error is None and outcome.failed == 0
    assert len(shard_paths(out / "train")) == 3  # 5 inputs in chunks of 2: one committed shard per chunk
    rows = read_table(out, "train").to_pylist()
    assert [r["system"] for r in rows] == ["Be brief.", "Own system.", "Be brief.", "Be brief.", "Be brief."]
    assert all(r["method"] == "label" and r["messages"][-1]["role"] == "assistant" for r in rows)
    assert read_manifest(out)["funnel"]["rows_written"] == 5 and stats["sent"] == 5

    again, stats = label(server, out, inputs, system="Be brief.", chunk_size=2)
    assert again.funnel["rows_already_on_disk"] == 5 and again.funnel["rows_written"] == 0
    assert stats["sent"] == 0 and stats["cache_hits"] == 5


def test_a_budget_stops_after_its_chunk_and_counts_what_was_not_sent(server, tmp_path):
    inputs = read_inputs(write_inputs(tmp_path / "in.jsonl", 6))
    out = tmp_path / "run"
    outcome, _ = label(server, out, inputs, chunk_size=2, engine={"max_total_tokens": 40, "concurrency": 1})
    assert outcome.exhausted
    funnel = outcome.funnel
    assert funnel["answered"] + funnel["not_sent_budget"] == 6 and funnel["not_sent_budget"] > 0
    assert read_table(out, "train").num_rows == funnel["answered"]  # every answer is a committed row
