"""One writer per run directory (issue 18 #2): two real `gen` processes on one --out. The second stops at once with a
one-line error naming the first one's pid and sends nothing; once the first is done, rerunning it resumes without a
duplicate row. A `gen dedup` during a `gen label` is refused the same way (it lost the label's manifest entry).
A lock held by a process that was SIGKILLed does not block the next run: the kernel drops it with the process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.engine.conftest import REPO, gen_command, gen_env, run_gen, write_instructions
from tests.servers import tiny_llama_dir  # noqa: F401  (session fixture)

N = 40


def label_argv(server, inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["label", "--input", str(inputs), "--out", str(out), "--teacher", "openai:test-model",
            "--base-url", server.v1_url, "--temperature", "0", "--max-new-tokens", "24", "--no-progress", *extra]


def start_gen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(gen_command(*argv), cwd=REPO, env=gen_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_until_locked_by(process: subprocess.Popen, out: Path, server=None, answered: int = 0) -> None:
    """Until `process` holds OUT's lock (its pid is in OUT/.lock) and the server answered `answered` requests."""
    deadline = time.monotonic() + 60
    lock = out / ".lock"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        held = lock.exists() and lock.read_text().split(" ")[0] == str(process.pid)
        if held and (server is None or sum(server.answered.values()) >= answered):
            return
        time.sleep(0.05)
    raise AssertionError("the first process never took the lock")


def assert_refused(result: subprocess.CompletedProcess, command: str, out: Path, pid: int) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith(f"gen {command}: error: {out}: in use by pid {pid} "), lines[0]


def test_second_label_on_one_out_is_refused_naming_the_pid_then_resumes_without_duplicates(start_server, tmp_path):
    server = start_server("fixed:0.2")
    inputs = write_instructions(tmp_path / "in.jsonl", N)
    out = tmp_path / "run"
    first = start_gen(label_argv(server, inputs, out, "--chunk-size", "7", "--concurrency", "2",
                                 "--max-concurrency", "2"))
    try:
        wait_until_locked_by(first, out, server, answered=2)
        second = run_gen(*label_argv(server, inputs, out, "--chunk-size", "11", "--concurrency", "2"))
        assert_refused(second, "label", out, first.pid)
        # A dedup during the label is refused too: it would have lost the label's rows and manifest entry.
        dedup = run_gen("dedup", str(out), "--minhash")
        assert_refused(dedup, "dedup", out, first.pid)
        assert first.poll() is None  # the refusals came while the first was still running
    finally:
        assert first.wait(timeout=120) == 0, first.stderr.read()
    # The refused commands sent nothing: every request reached the server once, all of them from the first.
    assert max(server.seen.values()) == 1
    assert server.requests == N

    server.reset_stats()
    assert main(label_argv(server, inputs, out, "--chunk-size", "11")) == 0  # the refused command, now alone
    assert server.requests == 0
    ids = read_table(out, "train").column("id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N
    assert read_manifest(out)["splits"]["train"]["rows"] == N


def test_a_lock_held_by_a_sigkilled_process_does_not_block_the_next_run(start_server, tmp_path):
    server = start_server("fixed:0.2")
    inputs = write_instructions(tmp_path / "in.jsonl", N)
    out = tmp_path / "run"
    killed = start_gen(label_argv(server, inputs, out, "--chunk-size", "5", "--concurrency", "2",
                                  "--max-concurrency", "2"))
    wait_until_locked_by(killed, out, server, answered=6)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (out / ".lock").read_text().startswith(f"{killed.pid} ")  # the stale file is still there ...
    result = run_gen(*label_argv(server, inputs, out, "--concurrency", "8"))  # ... and blocks nothing
    assert result.returncode == 0, result.stderr
    ids = read_table(out, "train").column("id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N


HOLD = """
import sys, time
from gen.data.lock import acquire
for run in sys.argv[1:]:
    acquire(run, "test holder")
print("locked", flush=True)
time.sleep(120)
"""


def test_every_writing_command_is_refused_while_another_process_holds_the_run(start_server, tiny_llama_dir,  # noqa: F811
                                                                              tmp_path):
    server = start_server("fixed:0")
    inputs = write_instructions(tmp_path / "in.jsonl", 4)
    run = tmp_path / "run"
    assert main(label_argv(server, inputs, run)) == 0
    logits = tmp_path / "logits"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(logits)], cwd=REPO, env=gen_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        server.reset_stats()
        commands = {
            "label": label_argv(server, inputs, run),
            "evol": ["evol", "--rounds", "1", "--input", str(inputs), "--out", str(run), "--teacher",
                     "openai:test-model", "--base-url", server.v1_url, "--no-progress"],
            "self-instruct": ["self-instruct", "--num-instructions", "2", "--out", str(run), "--teacher",
                              "openai:test-model", "--base-url", server.v1_url, "--no-progress"],
            "dedup": ["dedup", str(run)],
            "filter": ["filter", str(run)],
            "logits": ["logits", "--shards", str(run), "--teacher", f"hf:{tiny_llama_dir}", "--device", "cpu",
                       "--out", str(logits), "--no-progress"],
        }
        for command, argv in commands.items():
            result = run_gen(*argv)
            assert result.returncode == 2, (command, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"in use by pid {holder.pid} (test holder)" in lines[0], (command, lines)
        assert server.requests == 0  # refused before sending anything
        assert not (logits / "train").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: the same commands run.
    assert run_gen("filter", str(run)).returncode == 0
    assert json.loads((run / "manifest.json").read_text())["funnel"]["filter"]["rows_in"] == 4
