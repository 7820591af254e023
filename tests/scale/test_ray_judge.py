"""The judge's commands on Ray (`gen prefs --ray`, `gen score --ray`) on a local Ray cluster with 2 workers, against
the session's real llama.cpp server (Gemma-270M) behind a counting proxy, with the verdict's JSON schema as
llama.cpp's structured output: the requests run as units on both workers; the same command without --ray, on a
copy of the Ray run's request cache, sends nothing and writes exactly the same rows (the rows follow from the
verdicts alone, wherever they were asked); and a rerun on Ray sends nothing."""

from __future__ import annotations

import json
import sqlite3

import pytest

from gen.data.scores import parse_scores
from gen.data.shards import read_manifest, read_table
from tests.faultproxy import FaultProxy
from tests.methods.test_prefs_llamacpp import follows_the_verdict_grammar
from tests.qa_runs import write_qa_run
from tests.scale.conftest import run_gen

PROMPTS = ["What is the capital of France?", "Name a primary colour."]
QA = [("What is the capital of France?", "Paris."), ("What is 2 + 2?", "5.")]


@pytest.fixture()
def proxy(llamacpp_server):
    """A counting proxy in front of the session's llama.cpp server."""
    with FaultProxy(llamacpp_server.base_url) as counting:
        yield counting


def copy_cache(source, destination) -> None:
    """`source`'s request cache into run directory `destination`, through SQLite's backup (what is still in the
    write-ahead log comes along: the Ray workers' connections end with their processes)."""
    (destination / ".cache").mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source / ".cache" / "requests.sqlite") as src, \
            sqlite3.connect(destination / ".cache" / "requests.sqlite") as dst:
        src.backup(dst)


def units_committed(out) -> int:
    with sqlite3.connect(out / ".cache" / "requests.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM units").fetchone()[0]


def both_workers_ran_units(stderr: str) -> bool:
    return "started on worker 0" in stderr and "started on worker 1" in stderr


def test_gen_prefs_on_ray_matches_one_process(ray_cluster, llamacpp_server, proxy, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    model = f"openai:{llamacpp_server.model}"

    def argv(out, *extra: str) -> list[str]:
        return ["prefs", "--input", str(prompts), "--candidates", model, "-n", "2", "--base-url",
                proxy.base_url + "/v1", "--judge", model, "--judge-base-url", proxy.base_url + "/v1",
                "--max-new-tokens", "8", "--judge-max-new-tokens", "24", "--out", str(out), "--no-progress", *extra]

    on_ray = tmp_path / "ray"
    ray_argv = argv(on_ray, "--ray", ray_cluster, "--workers", "2", "--unit-size", "2")
    done = run_gen(ray_argv)
    assert done.rc == 0, done.stderr
    assert both_workers_ran_units(done.stderr), done.stderr
    sent = proxy.counts["forwarded"]
    engines = read_manifest(on_ray)["engines"]
    assert sum(s["sent"] for s in engines.values()) == sent >= 8  # 4 answers, 4 verdicts (+ retries)
    assert all(s.get("workers") == 2 and s.get("units", 0) >= 2 for s in engines.values()), engines
    assert units_committed(on_ray) == sum(s["units"] for s in engines.values())
    train, rejected = read_table(on_ray, "train").to_pylist(), read_table(on_ray, "rejected").to_pylist()
    assert len(train) + len(rejected) == len(PROMPTS)
    funnel = read_manifest(on_ray)["funnel"]["total"]
    assert funnel["answers"] == funnel["judged"] == 4 and funnel.get("kept", 0) == len(train)
    verdicts = [c["verdict"] for row in train + rejected for c in row["candidates"]]
    assert follows_the_verdict_grammar(verdicts), verdicts  # the verdict's JSON schema reached llama.cpp from Ray
    for row in train:
        assert 1 <= row["score_rejected"] < row["score_chosen"] <= 10

    local = tmp_path / "local"  # one process, the Ray run's verdicts: the same rows, nothing sent
    copy_cache(on_ray, local)
    done = run_gen(argv(local))
    assert done.rc == 0, done.stderr
    assert proxy.counts["forwarded"] == sent
    assert read_table(local, "train").to_pylist() == train and read_table(local, "rejected").to_pylist() == rejected
    assert read_manifest(local)["funnel"] == read_manifest(on_ray)["funnel"]

    again = run_gen(ray_argv)  # a rerun on Ray: all cache hits
    assert again.rc == 0, again.stderr
    assert proxy.counts["forwarded"] == sent
    assert all(s["sent"] == 0 for s in read_manifest(on_ray)["engines"].values())
    assert read_table(on_ray, "train").to_pylist() == train


def test_gen_score_on_ray_matches_one_process(ray_cluster, llamacpp_server, proxy, tmp_path):
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    write_qa_run(on_ray, QA)

    def argv(run, *extra: str) -> list[str]:
        return ["score", str(run), "--judge", f"openai:{llamacpp_server.model}", "--judge-base-url",
                proxy.base_url + "/v1", "--judge-max-new-tokens", "24", "--no-progress", *extra]

    ray_argv = argv(on_ray, "--ray", ray_cluster, "--workers", "2", "--unit-size", "1")
    done = run_gen(ray_argv)
    assert done.rc == 0, done.stderr
    assert both_workers_ran_units(done.stderr), done.stderr
    sent = proxy.counts["forwarded"]
    counts = read_manifest(on_ray)["funnel"]["score"]["scorers"]["quality"]
    assert counts["engine"]["sent"] == sent == len(QA) + counts["retried"]
    assert counts["engine"]["workers"] == 2 and counts["engine"]["units"] == units_committed(on_ray) >= 2
    assert counts["scored"] + counts["unparseable"] == len(QA)
    train, rejected = read_table(on_ray, "train").to_pylist(), read_table(on_ray, "rejected").to_pylist()
    assert len(train) == counts["scored"] and all(r["filters"] == ["judge_unparseable"] for r in rejected)
    for row in train:
        entry = parse_scores(row["scores"])["quality"]
        assert 1 <= entry["value"] <= 10 and entry["judge"] == f"openai:{llamacpp_server.model}"

    write_qa_run(local, QA)  # one process, the Ray run's verdicts: the same scores, nothing sent
    copy_cache(on_ray, local)
    done = run_gen(argv(local))
    assert done.rc == 0, done.stderr
    assert proxy.counts["forwarded"] == sent
    assert read_table(local, "train").to_pylist() == train and read_table(local, "rejected").to_pylist() == rejected

    if train:  # a rerun on Ray: all cache hits (a run whose every row was rejected has nothing left to score)
        again = run_gen(ray_argv)
        assert again.rc == 0, again.stderr
        assert proxy.counts["forwarded"] == sent
        assert read_manifest(on_ray)["funnel"]["score"]["scorers"]["quality"]["engine"]["sent"] == 0
        assert [r["scores"] for r in read_table(on_ray, "train").to_pylist()] == [r["scores"] for r in train]
