"""A commit reads only the shards added since the last one (issue 12, defect: every commit re-hashed every shard,
so a long run was quadratic). A recorded hash is trusted only while the file's size and mtime are the recorded ones;
a shard rewritten or altered in place is hashed again."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pyarrow as pa

import gen.data.shards as shards
from gen.data.records import make_row, rows_to_table
from gen.data.shards import ShardWriter, read_manifest, write_manifest, write_shard_file

N = 12


def row(i: int, answer: str = "an answer") -> dict:
    return make_row(messages=[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer}],
                    method="label", usage={"prompt_tokens": 3, "completion_tokens": 2})


def assert_manifest_matches_disk(run) -> dict:
    manifest = read_manifest(run)
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            data = (run / entry["file"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["file"]
            assert entry["bytes"] == len(data)
            assert entry["rows"] == pa.ipc.open_file(pa.BufferReader(data)).read_all().num_rows
    return manifest


def test_n_commits_hash_each_shard_once_and_a_rewritten_shard_again(tmp_path, monkeypatch):
    hashed: list[str] = []
    opened: list[str] = []
    real_sha256, real_open = shards.sha256_file, shards.open_shard
    monkeypatch.setattr(shards, "sha256_file", lambda path: hashed.append(path.name) or real_sha256(path))
    monkeypatch.setattr(shards, "open_shard", lambda path: opened.append(str(path)) or real_open(path))

    run = tmp_path / "run"
    writer = ShardWriter(run, "train")
    for i in range(N):  # a long run: one shard and one manifest per commit
        writer.write(row(i))
        writer.flush()
        write_manifest(run, config={"method": "label"})
    assert len(hashed) == N  # was N * (N + 1) / 2: every commit re-hashed every shard
    assert len(set(hashed)) == N
    assert len(opened) <= 2 * N  # the stats are read once per shard too (was quadratic as well)
    manifest = assert_manifest_matches_disk(run)
    assert manifest["splits"]["train"]["rows"] == N
    assert manifest["stats"]["train"]["prompt_tokens"] == 3 * N

    # A shard rewritten in place (same name, atomically replaced) gets its new hash and counts.
    target = run / "train" / "train-00003.arrow"
    old_hash = real_sha256(target)
    write_shard_file(target, rows_to_table([row(3, "a different answer"), row(100)]))
    hashed.clear()
    manifest = write_manifest(run)
    assert hashed == ["train-00003.arrow"]
    entry = next(e for e in manifest["splits"]["train"]["shards"] if e["file"] == "train/train-00003.arrow")
    assert entry["sha256"] != old_hash and entry["rows"] == 2
    assert manifest["splits"]["train"]["rows"] == N + 1
    assert manifest["stats"]["train"]["prompt_tokens"] == 3 * (N + 1)
    assert_manifest_matches_disk(run)

    # Bytes altered inside a shard (same size, same file): its mtime moved, so it is hashed again.
    time.sleep(0.05)
    target = run / "train" / "train-00007.arrow"
    data = bytearray(target.read_bytes())
    position = data.index(b"question 7")
    data[position:position + 10] = b"QUESTION 7"
    with open(target, "r+b") as f:
        f.write(data)
    hashed.clear()
    write_manifest(run)
    assert hashed == ["train-00007.arrow"]
    assert_manifest_matches_disk(run)


def test_a_manifest_temp_file_of_a_dead_writer_is_removed_a_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    with ShardWriter(run, "train") as writer:
        writer.write(row(0))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / f".manifest.json.tmp-{dead.pid}").write_text("{half a manif")
        (run / f".manifest.json.tmp-{live.pid}").write_text("{being written")
        write_manifest(run)
        assert sorted(p.name for p in run.iterdir() if p.name.startswith(".manifest")) == \
            [f".manifest.json.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()
