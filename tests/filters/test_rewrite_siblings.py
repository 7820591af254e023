"""What a killed `gen dedup`/`gen filter` leaves beside the run (issue 18 #5): its hidden staging sibling
(`.R.gen-dedup-PID`: the half-written new run, or after the swap a whole copy of the old one) and `.R.old-PID`.
The next rewrite of either command removes those whose pid is dead, never a live process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gen.cli import main
from gen.data.records import make_row
from gen.data.shards import ShardWriter, read_table, write_manifest
from tests.engine.conftest import REPO, gen_command, gen_env
from tests.filters.test_cli import build_run


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant(parent: Path, name: str) -> Path:
    sibling = parent / name
    (sibling / "train").mkdir(parents=True)
    (sibling / "train" / "train-00000.arrow").write_bytes(b"a leftover copy")
    return sibling


def test_next_rewrite_removes_siblings_of_dead_processes_and_keeps_a_live_ones(tmp_path):
    run = tmp_path / "run"
    rows = build_run(run)
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_staging = plant(tmp_path, f".run.gen-dedup-{dead}")
        dead_old = plant(tmp_path, f".run.old-{dead}")
        live_staging = plant(tmp_path, f".run.gen-filter-{live.pid}")
        unrelated = plant(tmp_path, f".other.gen-dedup-{dead}")  # another run's sibling: not ours to judge
        assert main(["filter", str(run)]) == 0
        assert not dead_staging.exists() and not dead_old.exists()
        assert live_staging.exists() and unrelated.exists()
        # gen dedup cleans up the same way.
        again = plant(tmp_path, f".run.gen-filter-{dead}")
        assert main(["dedup", str(run)]) == 0
        assert not again.exists() and live_staging.exists()
    finally:
        live.kill()
        live.wait()
    assert len(read_table(run, "train")) + len(read_table(run, "rejected")) == len(rows) + 1  # nothing lost


def test_a_run_left_at_old_by_a_kill_between_the_two_renames_is_put_back(tmp_path):
    run = tmp_path / "run"
    rows = build_run(run)
    dead = dead_pid()
    os.rename(run, tmp_path / f".run.old-{dead}")  # the non-atomic swap was killed between its two renames
    plant(tmp_path, f".run.gen-dedup-{dead}")
    assert main(["dedup", str(run)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert len(read_table(run, "train")) + len(read_table(run, "rejected")) == len(rows) + 1


def big_run(path: Path, n: int) -> None:
    filler = " ".join(f"word{i}" for i in range(150))
    with ShardWriter(path, "train", max_rows=5000) as writer:
        for i in range(n):
            writer.write(make_row(messages=[{"role": "user", "content": f"Question {i}: {filler}"},
                                            {"role": "assistant", "content": f"Answer {i}. {filler}"}],
                                  method="label"))
    write_manifest(path, config={"method": "label"})


def test_sigkill_of_a_dedup_mid_rewrite_leaves_a_sibling_that_the_next_filter_removes(tmp_path):
    run = tmp_path / "run"
    n = 8000
    big_run(run, n)
    for _attempt in range(3):
        process = subprocess.Popen(gen_command("dedup", str(run), "--threshold", "0.99"), cwd=REPO, env=gen_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        staging = tmp_path / f".run.gen-dedup-{process.pid}"
        deadline = time.monotonic() + 120
        while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and staging.exists():
            break
    else:
        raise AssertionError("the kill never landed while the staging sibling existed")
    assert main(["filter", str(run), "--copies-question", "0"]) == 0
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert len(read_table(run, "train")) + len(read_table(run, "rejected")) == n
