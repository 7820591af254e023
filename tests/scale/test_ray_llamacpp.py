"""`gen label --ray` on a local Ray cluster with 2 workers against TWO real llama.cpp servers (Gemma-270M), each
behind a counting proxy, given as `--base-url URL1,URL2`: every input answered once, both endpoints used; and a
worker process killed mid-run costs only its unit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections import Counter

import pytest

from gen.records import first_user_text
from gen.shards import read_table
from tests.faultproxy import FaultProxy
from tests.scale.conftest import run_gen, start_gen, wait_for_line


@pytest.fixture(scope="module")
def second_llamacpp_server():
    """A second llama.cpp server process-in-process on the same GGUF: a replica of the session's server."""
    from gen.teachers.llamacpp import BUNDLED_MODEL, EmbeddedServer, bundled_gguf_path

    server = EmbeddedServer(bundled_gguf_path(), BUNDLED_MODEL, "transcript", n_parallel=4, ctx_per_slot=1024)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def endpoints(llamacpp_server, second_llamacpp_server):
    """Two counting proxies, one in front of each server: (proxies, "URL1,URL2")."""
    proxies = [FaultProxy(s.openai_base_url).start() for s in (llamacpp_server, second_llamacpp_server)]
    try:
        yield proxies, ",".join(p.base_url for p in proxies)
    finally:
        for proxy in proxies:
            proxy.stop()


def write_questions(path, n: int):
    topics = ["rivers", "bread", "violins", "glaciers", "kites", "owls", "tides", "bridges", "comets", "tea",
              "maps", "bees", "salt", "clocks", "ferns", "wool"]
    path.write_text("".join(json.dumps({"instruction": f"Name one fact about {topics[k]}."}) + "\n"
                            for k in range(n)))
    return [f"Name one fact about {topics[k]}." for k in range(n)]


def label_argv(server, urls: str, inputs, out, *extra: str) -> list[str]:
    return ["label", "--input", str(inputs), "--teacher", f"openai:{server.model}", "--base-url", urls,
            "--max-new-tokens", "8", "--temperature", "0", "--no-progress", "--out", str(out), *extra]


def answered_once(out, questions) -> None:
    table = read_table(out, "train")
    asked = Counter(first_user_text(row) for row in table.to_pylist())
    assert asked == Counter(questions), asked
    assert all(row["messages"][-1]["role"] == "assistant" for row in table.to_pylist())


def test_two_workers_two_llamacpp_endpoints_answer_every_input_once(ray_cluster, llamacpp_server, endpoints,
                                                                     tmp_path):
    proxies, urls = endpoints
    questions = write_questions(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out"
    done = run_gen(label_argv(llamacpp_server, urls, tmp_path / "in.jsonl", out, "--ray", ray_cluster,
                              "--workers", "2", "--unit-size", "3", "--concurrency", "4"))
    assert done.rc == 0, done.stderr
    answered_once(out, questions)
    assert all(p.counts["forwarded"] > 0 for p in proxies), [p.counts for p in proxies]  # both endpoints used
    assert sum(p.counts["forwarded"] for p in proxies) == 12  # each request sent once
    assert "started on worker 0" in done.stderr and "started on worker 1" in done.stderr
    with sqlite3.connect(out / ".cache" / "requests.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 4  # 12 requests in units of 3, once each


def test_killing_a_worker_process_mid_run_still_answers_every_input_once(ray_cluster, llamacpp_server, endpoints,
                                                                           tmp_path):
    _, urls = endpoints
    questions = write_questions(tmp_path / "in.jsonl", 16)
    out = tmp_path / "out"
    proc = start_gen(label_argv(llamacpp_server, urls, tmp_path / "in.jsonl", out, "--ray", ray_cluster,
                                "--workers", "2", "--unit-size", "2", "--concurrency", "2"))
    try:
        match, _ = wait_for_line(proc, r"started on worker 1 \(pid (\d+)\)")
        os.kill(int(match.group(1)), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "died running unit" in stderr
    answered_once(out, questions)
    with sqlite3.connect(out / ".cache" / "requests.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 8
