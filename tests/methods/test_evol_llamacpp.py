"""`gen evol` end to end on the real Gemma-270M (llama.cpp server, OpenAI backend): rounds, lineage, carry-over of
eliminated items, resume from the cache — and a kill -9 in round 3 followed by a rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gen.data.shards import read_manifest, read_table
from gen.engine.cache import RequestCache
from gen.methods import evol_instruct as evol
from gen.methods.inputs import default_seed_tasks, load_items
from tests.faultproxy import Fault, FaultProxy
from tests.methods.conftest import EVOL_ARGV, run_gen, teacher_argv

REPO = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    return read_table(out, "train").to_pylist(), read_table(out, "rejected").to_pylist()


def test_rounds_lineage_and_eliminated_items_carried_over(evol_run):
    assert evol_run.rc == 0, evol_run.stdout
    assert "train" in evol_run.stdout and "| stage |" in evol_run.stdout  # where the shards are + the funnel
    train, rejected = _rows(evol_run.out)
    inputs = load_items(default_seed_tasks(), limit=3)
    input_ids = {i.id for i in inputs}

    # Round 0: the inputs with their human answers; rounds 1-2: evolutions answered by the teacher.
    assert {r["id"] for r in train if r["round"] == 0} == input_ids
    assert all(r["teacher"] == "input" for r in train if r["round"] == 0)
    ids_by_round = {0: set(input_ids)}
    for rnd in (1, 2):
        kept = [r for r in train if r["round"] == rnd]
        dropped = [r for r in rejected if r["round"] == rnd]
        # No request failed, so every live instruction produced exactly one evolution this round.
        assert len(kept) + len(dropped) == len(inputs), (rnd, len(kept), len(dropped))
        earlier = set().union(*ids_by_round.values())
        for row in kept + dropped:
            assert row["method"] == "evol_instruct" and row["operation"] in evol.OPERATIONS
            assert row["parent_id"] in earlier and row["root_id"] in input_ids
            params = json.loads(row["params"])
            assert params["template_hash"] == evol.rewrite_messages(row["operation"], "x")[1]
            assert row["teacher"].startswith("openai:")
        for row in kept:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and not row["filters"]
        for row in dropped:
            assert row["filters"] and set(row["filters"]) <= set(evol.REASONS)
        ids_by_round[rnd] = {r["id"] for r in kept}

    # The pool of round 2 = round-1 survivors + the parents of round-1 rejections, unchanged.
    round2_parents = {r["parent_id"] for r in train + rejected if r["round"] == 2}
    round1_rejected_parents = {r["parent_id"] for r in rejected if r["round"] == 1}
    assert round2_parents == ids_by_round[1] | round1_rejected_parents
    for rnd_row in (r for r in train if r["round"] == 1):
        assert rnd_row["parent_id"] not in round2_parents  # a kept evolution replaced its parent in the pool

    manifest = read_manifest(evol_run.out)
    assert manifest["evol"]["completed_round"] == 2
    assert set(manifest["funnel"]["rounds"]) == {"0", "1", "2"}
    assert manifest["stats"]["rejected"]["by_reason"] == {
        reason: sum(reason in r["filters"] for r in rejected) for reason in manifest["stats"]["rejected"]["by_reason"]}


def test_rerun_sends_nothing_and_writes_no_new_row(evol_run, llamacpp_server):
    before = {split: sorted(r["id"] for r in rows) for split, rows in zip(("train", "rejected"), _rows(evol_run.out))}
    again = run_gen(EVOL_ARGV + teacher_argv(llamacpp_server), evol_run.out)
    assert again.rc == 0
    stats = again.engine()
    assert stats["sent"] == 0 and stats["cache_hits"] == stats["requests"] > 0
    after = {split: sorted(r["id"] for r in rows) for split, rows in zip(("train", "rejected"), _rows(evol_run.out))}
    assert after == before


def _cli(out: Path, server, base_url: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "gen.cli", "evol", "--rounds", "4", "--limit", "2", "--max-new-tokens", "16",
            "--rewrite-max-tokens", "32", "--concurrency", "4", "--out", str(out)] + teacher_argv(server)
    return argv + (["--base-url", base_url] if base_url else [])


def _hold_round_3_open(proxy: FaultProxy) -> None:
    """Called the moment the run logs "round 3/4": from now on at most one request reaches the teacher, every later
    one is held far past the kill. With one request in flight at a time (--concurrency 1) round 3 has then either
    a request in flight (its first rewrite: it completes, the next is held) or none yet (the first one is let
    through, the next is held). Either way some round-3 answer reaches the cache and round 3 cannot finish, however
    loaded the machine, which is what a kill "inside round 3" needs."""
    counts = proxy.counts
    switched_at = counts["requests"]
    in_flight = counts["requests"] - counts["forwarded"]
    let_through = 0 if in_flight else 1
    hold = Fault.slow(3600)
    proxy.plan = lambda n, _request: None if n < switched_at + let_through else hold


def test_kill_during_round_3_then_rerun_completes_without_resending(llamacpp_server, tmp_path):
    out = tmp_path / "run"
    cache_path = out / ".cache" / "requests.sqlite"
    with FaultProxy(llamacpp_server.openai_base_url) as proxy:
        killed_argv = _cli(out, llamacpp_server, base_url=proxy.base_url) + ["--concurrency", "1"]
        proc = subprocess.Popen(killed_argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ))
        round3 = threading.Event()
        at_round3: list[int] = []

        def watch():
            for line in proc.stderr:
                if line.startswith("round 3/4") and not round3.is_set():
                    with RequestCache(cache_path) as cache:  # rounds 1-2 are all in it (flushed before the log)
                        at_round3.append(cache.count())
                    _hold_round_3_open(proxy)
                    round3.set()

        threading.Thread(target=watch, daemon=True).start()
        try:
            assert round3.wait(timeout=600), "the run never reached round 3"
            with RequestCache(cache_path) as cache:
                deadline = time.monotonic() + 300
                while cache.count() == at_round3[0] and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.05)  # until the round-3 answer let through is in the cache
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                completed_before_kill = cache.count()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proxy.counts.get("slow", 0) >= 1  # a round-3 request was held: the round was still open at the kill
    at_round3 = at_round3[0]
    assert completed_before_kill > at_round3
    killed_manifest = read_manifest(out)
    assert killed_manifest["evol"]["completed_round"] == 2  # killed inside round 3
    killed_train = {r["id"]: r for r in read_table(out, "train").to_pylist()}
    assert {r["round"] for r in killed_train.values()} <= {0, 1, 2}

    rerun = subprocess.run(_cli(out, llamacpp_server), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = {k: int(v) for k, v in (kv.split("=") for kv in
                                     next(line for line in rerun.stdout.splitlines() if line.startswith("engine: "))[8:].split())}
    # Everything completed before the kill comes from the cache: none of it is sent again.
    assert stats["cache_hits"] >= completed_before_kill
    assert stats["sent"] == stats["requests"] - stats["cache_hits"]
    final_manifest = read_manifest(out)
    assert final_manifest["evol"]["completed_round"] == 4
    final_train = {r["id"]: r for r in read_table(out, "train").to_pylist()}
    for row_id, row in killed_train.items():  # the killed run's rows survive unchanged, none duplicated
        assert final_train[row_id] == row
    assert len(final_train) == final_manifest["splits"]["train"]["rows"]
    final_rejected = read_table(out, "rejected").to_pylist()
    assert {r["round"] for r in list(final_train.values()) + final_rejected} == {0, 1, 2, 3, 4}

    # The same rows as an uninterrupted run that gets the same teacher answers: a fresh directory with the
    # finished cache sends nothing and writes exactly these rows.
    fresh = tmp_path / "fresh"
    (fresh / ".cache").mkdir(parents=True)
    shutil.copy(cache_path, fresh / ".cache" / "requests.sqlite")
    for suffix in ("-wal", "-shm"):
        if Path(str(cache_path) + suffix).exists():
            shutil.copy(str(cache_path) + suffix, str(fresh / ".cache" / "requests.sqlite") + suffix)
    clean = subprocess.run(_cli(fresh, llamacpp_server), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert "sent=0 " in clean.stdout
    for split in ("train", "rejected"):
        assert sorted(r["id"] for r in read_table(fresh, split).to_pylist()) == \
            sorted(r["id"] for r in read_table(out, split).to_pylist())
