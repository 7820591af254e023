"""The `scores` column (written by `gen score`) read by `gen filter --min-score`, `gen dedup --keep score`, `gen stats`
and the dataset card, on crafted runs with known scores."""

from __future__ import annotations

import json
from pathlib import Path

from gen.cli import main
from gen.data.records import make_row
from gen.data.scores import merge_entry
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest


def uf_scores(honesty: float, helpfulness: float) -> str:
    aspects = {"honesty": honesty, "helpfulness": helpfulness}
    text = merge_entry(None, "ultrafeedback", {"value": (honesty + helpfulness) / 2, "aspects": aspects,
                                               "judge": "openai:j", "rubric": "ultrafeedback"})
    return merge_entry(text, "ifd", {"value": helpfulness / 10, "model": "hf:student"})


def build(path: Path, specs: list[tuple[str, str, str | None]]) -> list[dict]:
    rows = [make_row(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], method="label",
                     teacher="llamacpp:test", scores=scores) for q, a, scores in specs]
    with ShardWriter(path, "train", max_rows=2) as writer:
        writer.write_many(rows)
    write_manifest(path, config={"method": "label"}, funnel={})
    return rows


def test_min_score_by_scorer_and_aspect(tmp_path, capsys):
    run = tmp_path / "run"
    rows = build(run, [(f"Question number {i} about rivers?", f"Answer {i}.", uf_scores(h, p))
                       for i, (h, p) in enumerate([(5, 5), (1, 5), (4, 2), (2, 1)])]
                 + [("An unscored question?", "Answer.", None)])
    ids = [r["id"] for r in rows]
    # Two scorers in the run: --min-score needs to be told which.
    assert main(["filter", str(run), "--min-score", "3"]) == 2
    assert "several scorers (ifd, ultrafeedback)" in capsys.readouterr().err
    assert main(["filter", str(run), "--min-score", "3", "--score-name", "ultrafeedback.truthfulness"]) == 2
    assert "no aspect 'truthfulness'" in capsys.readouterr().err
    assert main(["filter", str(run), "--min-score", "3", "--score-name", "ultrafeedback"]) == 0
    kept = read_table(run, "train").column("id").to_pylist()
    assert kept == [ids[0], ids[1], ids[2], ids[4]]  # means 5, 3, 3, 1.5: only row 3 is below; unscored row 4 kept
    rejected = {r["id"]: r["filters"] for r in read_table(run, "rejected").to_pylist()}
    assert rejected == {ids[3]: ["score_below_min"]}
    manifest = read_manifest(run)
    assert manifest["funnel"]["filter"]["by_reason"] == {"score_below_min": 1}
    assert manifest["funnel"]["filter"]["unscored_kept"] == 1
    assert manifest["config"]["filters"]["filter"]["score_name"] == "ultrafeedback"
    # One aspect of a scorer: honesty >= 2 drops row 1 (honesty 1).
    assert main(["filter", str(run), "--min-score", "2", "--score-name", "ultrafeedback.honesty"]) == 0
    assert read_table(run, "train").column("id").to_pylist() == [ids[0], ids[2], ids[4]]


def test_keep_score_keeps_the_best_scored_row_of_a_cluster(tmp_path, capsys):
    question = "Explain in a few sentences why the sky looks blue on a clear day at noon"
    run = tmp_path / "run"
    rows = build(run, [
        (question, "A long but poor answer " * 5, uf_scores(1, 1)),
        (question + " please", "Rayleigh scattering.", uf_scores(5, 4)),     # best mean
        (question + " now", "Short.", uf_scores(3, 3)),
        ("How do rainbows form after rain?", "Refraction.", uf_scores(2, 2)),
    ])
    ids = [r["id"] for r in rows]
    assert main(["dedup", str(run), "--keep", "score"]) == 2  # two scorers: which one?
    assert "--score-name" in capsys.readouterr().err
    assert main(["dedup", str(run), "--keep", "score", "--score-name", "ultrafeedback", "--out",
                 str(tmp_path / "by_mean")]) == 0
    assert read_table(tmp_path / "by_mean", "train").column("id").to_pylist() == [ids[1], ids[3]]
    duplicates = {r["id"]: r["duplicate_of"] for r in read_table(tmp_path / "by_mean", "rejected").to_pylist()}
    assert duplicates == {ids[0]: ids[1], ids[2]: ids[1]}
    # By the other scorer (ifd: 0.1, 0.4, 0.3) the same row wins; by the longest answer, row 0 would.
    assert main(["dedup", str(run), "--keep", "score", "--score-name", "ifd", "--out", str(tmp_path / "ifd")]) == 0
    assert read_table(tmp_path / "ifd", "train").column("id").to_pylist() == [ids[1], ids[3]]
    assert main(["dedup", str(run), "--out", str(tmp_path / "longest")]) == 0
    assert read_table(tmp_path / "longest", "train").column("id").to_pylist()[0] == ids[0]


def test_stats_and_card_show_the_score_distribution(tmp_path, capsys):
    run = tmp_path / "run"
    build(run, [(f"Question {i}?", f"Answer {i}.", merge_entry(None, "quality", {"value": float(v), "judge": "openai:j"}))
                for i, v in enumerate([7, 7, 9, 3])])
    assert main(["stats", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| quality |    4 |        0 |  6.5 |   3 |      7 |   9 | 3:1 7:2 9:1" in out
    assert main(["stats", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"]["quality"]["median"] == 7
    folder = tmp_path / "export"
    assert main(["publish", str(run), "--repo", "me/scored", "--dry-run", str(folder)]) == 0
    card = (folder / "README.md").read_text()
    assert "![Score distribution of kept rows](assets/score_distribution.png)" in card
    assert "| quality | 4 | 6.50 | 7 | 3 | 9 | openai:j |" in card
    png = (folder / "assets" / "score_distribution.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # Deterministic bytes: a second export writes the same plot.
    assert main(["publish", str(run), "--repo", "me/scored", "--dry-run", str(folder)]) == 0
    assert (folder / "assets" / "score_distribution.png").read_bytes() == png
