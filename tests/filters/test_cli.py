"""`gen dedup` and `gen filter` end to end on real shards: rejected split with reasons and duplicate_of, existing
rejections kept, manifest funnel and config, identical reruns, in-place rewrite, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa

from gen.cli import main
from gen.data.records import ROW_SCHEMA, make_row
from gen.data.shards import ShardWriter, read_manifest, read_table, shard_paths, write_manifest

LONG_Q = ("Explain step by step how photosynthesis converts light energy into chemical energy stored in glucose "
          "molecules inside the chloroplasts of green plant cells during the day")


def conversation(question: str, answer: str, finish_reason: str = "stop", **extra):
    return make_row(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    method="label", finish_reason=finish_reason, teacher="llamacpp:test", **extra)


def build_run(path: Path, schema: pa.Schema = ROW_SCHEMA, scores: list[float] | None = None) -> list[dict]:
    rows = [
        conversation(LONG_Q, "Chlorophyll absorbs light; the Calvin cycle fixes CO2 into sugar."),              # 0
        conversation(LONG_Q.upper() + "!!", "Light is absorbed by chlorophyll and turned into glucose, "
                                            "with oxygen released as a by-product of splitting water."),    # 1 dup of 0
        conversation(LONG_Q.replace("the day", "daytime"), "Short."),                                         # 2 dup of 0
        conversation("How do I reverse a list in Python?", "Use reversed(x) or x[::-1]."),                 # 3
        conversation("What is the way to reverse a Python list?", "Call x.reverse() to do it in place."),  # 4 para of 3
        conversation("Write a limerick about a cat who loves jazz.", "A cat with a taste for the blues..."),  # 5
        conversation("Name three rivers in Africa.", "The Nile, the Congo and the Niger."),                 # 6
    ]
    if scores is not None:
        for row, score in zip(rows, scores):
            row["score"] = score
    with ShardWriter(path, "train", schema=schema, max_rows=3) as writer:
        writer.write_many(rows)
    old_rejection = conversation("Describe this photo.", "I can't see photos.", filters=["refusal"])
    with ShardWriter(path, "rejected", schema=schema) as writer:
        writer.write(old_rejection)
    write_manifest(path, config={"method": "label", "teacher": "llamacpp:test"}, funnel={"generated": 8})
    return rows


def rows_by_id(run: Path, split: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_table(run, split).to_pylist()}


def test_dedup_minhash_and_embedding_end_to_end(tmp_path, capsys):
    source = tmp_path / "run"
    rows = build_run(source)
    ids = [r["id"] for r in rows]
    out = tmp_path / "deduped"
    assert main(["dedup", str(source), "--minhash", "--embedding", "--embedding-threshold", "0.8",
                 "--out", str(out)]) == 0
    train, rejected = rows_by_id(out, "train"), rows_by_id(out, "rejected")
    # Cluster {0, 1, 2}: the longest answer (row 1) is kept; cluster {3, 4}: row 4's answer is longer.
    assert set(train) == {ids[1], ids[4], ids[5], ids[6]}
    # Rows 0 and 2 are lexical near-duplicates of row 1 (the embeddings may agree too: one cluster either way).
    assert "minhash_duplicate" in rejected[ids[0]]["filters"] and rejected[ids[0]]["duplicate_of"] == ids[1]
    assert "minhash_duplicate" in rejected[ids[2]]["filters"] and rejected[ids[2]]["duplicate_of"] == ids[1]
    assert rejected[ids[3]]["filters"] == ["embedding_duplicate"] and rejected[ids[3]]["duplicate_of"] == ids[4]
    assert len(train) + len(rejected) == len(rows) + 1  # nothing lost; the old rejection is still there
    assert any(r["filters"] == ["refusal"] for r in rejected.values())
    manifest = read_manifest(out)
    assert manifest["funnel"]["generated"] == 8  # the run's own funnel is kept ...
    by_reason = manifest["funnel"]["dedup"]["by_reason"]
    assert by_reason["minhash_duplicate"] == 2
    assert by_reason["embedding_duplicate"] == sum("embedding_duplicate" in r["filters"] for r in rejected.values())
    assert manifest["config"]["method"] == "label"  # ... and its config, with the settings added
    assert manifest["config"]["filters"]["dedup"]["minhash"]["threshold"] == 0.7
    assert manifest["config"]["filters"]["dedup"]["embedding"]["threshold"] == 0.8
    assert manifest["splits"]["train"]["rows"] == 4
    # The source run is untouched.
    assert len(read_table(source, "train")) == len(rows)
    # gen stats shows the counts per reason.
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rejected_by_reason"]["minhash_duplicate"] == 2
    assert stats["rejected_by_reason"]["embedding_duplicate"] == by_reason["embedding_duplicate"]


def test_rerun_identical_and_in_place(tmp_path):
    source = tmp_path / "run"
    build_run(source)
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    assert main(["dedup", str(source), "--out", str(tmp_path / "a")]) == 0
    assert main(["dedup", str(copy), "--out", str(tmp_path / "b")]) == 0
    assert read_manifest(tmp_path / "a")["funnel"]["dedup"]["rejected"] == 2
    for split in ("train", "rejected"):
        assert read_table(tmp_path / "a", split).to_pylist() == read_table(tmp_path / "b", split).to_pylist()
    # In place: DIR is rewritten, nothing is left beside it, and a second pass changes nothing.
    assert main(["dedup", str(copy)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "copy", "run"]
    first = {s: read_table(copy, s).to_pylist() for s in ("train", "rejected")}
    assert first["train"] == read_table(tmp_path / "a", "train").to_pylist()
    assert main(["dedup", str(copy)]) == 0
    assert {s: read_table(copy, s).to_pylist() for s in ("train", "rejected")} == first
    assert read_manifest(copy)["funnel"]["dedup"]["rejected"] == 0


def test_keep_score_uses_the_column_and_keeps_extra_columns(tmp_path):
    schema = ROW_SCHEMA.append(pa.field("score", pa.float64()))
    source = tmp_path / "run"
    rows = build_run(source, schema=schema, scores=[0.9, 0.1, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert main(["dedup", str(source), "--keep", "score", "--out", str(tmp_path / "out")]) == 0
    train = rows_by_id(tmp_path / "out", "train")
    assert rows[0]["id"] in train and rows[1]["id"] not in train and rows[2]["id"] not in train
    assert train[rows[0]["id"]]["score"] == 0.9
    assert main(["dedup", str(source), "--keep", "score", "--score-column", "nope"]) == 2


def test_filter_end_to_end(tmp_path):
    source = tmp_path / "run"
    rows = [
        conversation("Explain how tides work.", "The Moon's gravity pulls the oceans into two bulges."),
        conversation("Explain how tides work!", "", finish_reason="stop"),
        conversation("Write a story about a lighthouse keeper.", "Once upon a time", finish_reason="length"),
        conversation("Tell me about volcanoes.", "I'm sorry, but I cannot help with that."),
        conversation("Describe the image below.", "It shows a cat."),
        conversation("Explain how the tides work on Earth.", "Gravity from the Moon and Sun raises the sea."),
    ]
    with ShardWriter(source, "train") as writer:
        writer.write_many(rows)
    assert main(["filter", str(source), "--rouge-l", "0.7"]) == 0
    train, rejected = rows_by_id(source, "train"), rows_by_id(source, "rejected")
    assert set(train) == {rows[0]["id"]}
    assert rejected[rows[1]["id"]]["filters"] == ["empty_answer"]
    assert rejected[rows[2]["id"]]["filters"] == ["truncated"]
    assert rejected[rows[3]["id"]]["filters"] == ["refusal"]
    assert rejected[rows[4]["id"]]["filters"] == ["non_text_task"]
    assert rejected[rows[5]["id"]]["filters"] == ["rouge_l_duplicate"]
    assert rejected[rows[5]["id"]]["duplicate_of"] == rows[0]["id"]
    funnel = read_manifest(source)["funnel"]["filter"]
    assert funnel["by_reason"] == {"empty_answer": 1, "non_text_task": 1, "refusal": 1, "rouge_l_duplicate": 1,
                                   "truncated": 1}
    assert funnel["kept"] == 1 and funnel["rows_in"] == 6


def test_corrupted_shard_is_a_clear_error(tmp_path, capsys):
    source = tmp_path / "run"
    build_run(source)
    victim = shard_paths(source, "train")[1]
    victim.write_bytes(victim.read_bytes()[:100])
    before = sorted(p.name for p in (source / "train").iterdir())
    for command in ("dedup", "filter"):
        capsys.readouterr()
        assert main([command, str(source)]) == 2
        err = capsys.readouterr().err
        assert str(victim) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (source / "train").iterdir()) == before  # nothing rewritten
    assert main(["dedup", str(tmp_path / "missing")]) == 2


def test_bad_flags_are_user_errors(tmp_path, capsys):
    source = tmp_path / "run"
    build_run(source)
    for argv, flag in ((["--bands", "64", "4"], "--bands"), (["--threshold", "1.5"], "--threshold"),
                       (["--embedding", "--embedding-model", str(tmp_path / "no-model")], "--embedding-model")):
        capsys.readouterr()
        assert main(["dedup", str(source), *argv]) == 2
        assert flag in capsys.readouterr().err
