"""`gen score` end to end on the real embedded model (Gemma-3-270M served by llama.cpp, the session server) through
the CLI and the OpenAI-compatible backend, on a handful of rows: every row ends either scored within the rubric's
range (with the judge, rubric and raw reply recorded) or in `rejected` with reason `judge_unparseable` (a 270M base
model often writes no verdict: it is retried once, never given a default score), and a rerun is all cache hits."""

from __future__ import annotations

from gen.cli import main
from gen.data.records import make_row
from gen.data.scores import parse_scores
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest
from tests.servers import llamacpp_server  # noqa: F401

QA = [("What is the capital of France?", "Paris is the capital of France."),
      ("What is 2 + 2?", "2 + 2 = 5.")]


def test_gen_score_on_llamacpp(llamacpp_server, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    rows = [make_row(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], method="label")
            for q, a in QA]
    with ShardWriter(run, "train") as writer:
        writer.write_many(rows)
    write_manifest(run, config={}, funnel={})
    argv = ["score", str(run), "--judge", f"openai:{llamacpp_server.model}", "--judge-base-url",
            llamacpp_server.openai_base_url, "--judge-max-new-tokens", "24", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    train, rejected = read_table(run, "train").to_pylist(), read_table(run, "rejected").to_pylist()
    assert len(train) + len(rejected) == len(rows)
    for row in train:
        entry = parse_scores(row["scores"])["quality"]
        assert 1 <= entry["value"] <= 10 and entry["judge"] == f"openai:{llamacpp_server.model}"
        assert entry["rubric"] == "quality" and entry["raw"]
    for row in rejected:
        assert row["filters"] == ["judge_unparseable"]
        assert parse_scores(row["scores"])["quality"]["value"] is None
    funnel = read_manifest(run)["funnel"]["score"]
    assert funnel["by_reason"] == ({"judge_unparseable": len(rejected)} if rejected else {})
    counts = funnel["scorers"]["quality"]
    assert counts["scored"] == len(train) and counts["engine"]["sent"] == len(rows) + counts["retried"]
    capsys.readouterr()
    before = read_manifest(run)
    assert main(argv) == 0  # a rerun: all cache hits
    if train:
        assert read_manifest(run)["funnel"]["score"]["scorers"]["quality"]["engine"]["sent"] == 0
    else:  # every row was rejected: the rerun has nothing to score and leaves the run as it was
        assert "no kept rows to score" in capsys.readouterr().out and read_manifest(run) == before
    assert [r["scores"] for r in read_table(run, "train").to_pylist()] == [r["scores"] for r in train]
