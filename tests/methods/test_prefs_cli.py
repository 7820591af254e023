"""`gen prefs` end to end through the CLI against one scripted server (the real local OpenAI-compatible server of
`tests.latency_server`) that plays both the candidates and the judge, for exact expectations: the best-rated answer
is `chosen` and the worst `rejected`, ties and all-same groups go to `rejected` with `preference_tie`, unreadable
verdicts give `judge_unparseable`, the funnel in the manifest, one-line flag errors, the rows feed TRL's DPO
(`gen train --dpo`, with LoRA), and kill -9 mid-run then a rerun sends nothing twice (counted at the server).

The script: each prompt is a JSON object {candidate model: answer kind}; a candidate's answer is its kind plus the
request's seed (`score 8 ~123`: every sample is a distinct text). The judge (a request showing "Answer to grade:")
grades `score N ...` with N and never reads `garbage ...`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.engine.conftest import REPO, gen_command, gen_env
from tests.latency_server import LatencyServer
from tests.methods.test_score_cli import committed
from tests.servers import tiny_llama_dir  # noqa: F401

_ANSWER = re.compile(r"Answer to grade:\n<<<\n(.*?)\n>>>", re.S)


def _last_user(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def scripted(body: dict) -> str:
    prompt = _last_user(body)
    graded = _ANSWER.search(prompt)
    if graded:  # the judge
        score = re.match(r"score (\d+)", graded.group(1))
        return json.dumps({"rationale": "scripted", "quality": int(score.group(1))}) if score else "I cannot decide."
    script = json.loads(prompt)  # a candidate
    return f"{script[body['model']]} ~{body.get('seed')}"


@pytest.fixture
def server():
    servers = []

    def start(latency: str = "fixed:0") -> LatencyServer:
        servers.append(LatencyServer(latency, reply=scripted).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def write_prompts(path: Path, scripts: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"instruction": json.dumps(s)}) + "\n" for s in scripts))
    return path


def prefs_args(server, prompts: Path, out: Path, *extra: str, candidates: str = "openai:a,openai:b") -> list[str]:
    return ["prefs", "--input", str(prompts), "--candidates", candidates, "--base-url", server.v1_url,
            "--judge", "openai:judge", "--judge-base-url", server.v1_url, "--out", str(out), "--no-progress",
            "--max-new-tokens", "16", *extra]


SCRIPTS = [
    {"a": "score 9", "b": "score 2", "c": "score 5"},    # a pair: a (9) over b (2)
    {"a": "score 3", "b": "score 3", "c": "score 3"},    # all the same: a tie
    {"a": "garbage", "b": "score 7", "c": "garbage"},    # one rated answer: too few, judge_unparseable
    {"a": "score 4", "b": "garbage", "c": "score 8"},    # a pair among the rated: c (8) over a (4)
]


def test_prefs_pairs_ties_unparseable_funnel_and_rerun_from_cache(server, tmp_path, capsys):
    srv = server()
    prompts = write_prompts(tmp_path / "prompts.jsonl", SCRIPTS)
    out = tmp_path / "prefs"
    assert main(prefs_args(srv, prompts, out, "-n", "1", candidates="openai:a,openai:b,openai:c")) == 0
    # 12 answers, 12 verdicts, one retry for each of the 3 unreadable ones
    assert srv.requests == 12 + 12 + 3
    train = read_table(out, "train").to_pylist()
    rejected = {json.loads(r["prompt"][0]["content"])["a"]: r for r in read_table(out, "rejected").to_pylist()}
    assert [(r["score_chosen"], r["score_rejected"], r["chosen_model"], r["rejected_model"]) for r in train] == [
        (9.0, 2.0, "openai:a", "openai:b"), (8.0, 4.0, "openai:c", "openai:a")]
    first = train[0]
    assert first["prompt"] == [{"role": "user", "content": json.dumps(SCRIPTS[0])}]
    assert first["chosen"][0]["role"] == "assistant" and first["chosen"][0]["content"].startswith("score 9 ~")
    assert first["rejected"][0]["content"].startswith("score 2 ~")
    assert [c["score"] for c in first["candidates"]] == [9.0, 2.0, 5.0]
    assert first["judge"] == "openai:judge" and first["rubric"] == "quality" and first["filters"] == []
    assert [c["score"] for c in train[1]["candidates"]] == [4.0, None, 8.0]  # the unreadable one is left unrated
    assert json.loads(train[1]["candidates"][1]["scores"])["rejected"] == "judge_unparseable"
    assert rejected["score 3"]["filters"] == ["preference_tie"]
    assert rejected["score 3"]["score_chosen"] == rejected["score 3"]["score_rejected"] == 3.0
    assert rejected["garbage"]["filters"] == ["too_few_rated", "judge_unparseable"]
    assert [c["verdict"] for c in rejected["garbage"]["candidates"]] == ["I cannot decide.", '{"rationale": "scripted", '
                                                                         '"quality": 7}', "I cannot decide."]
    funnel = read_manifest(out)["funnel"]["total"]
    assert funnel == {"prompts": 4, "requests": 12, "answers": 12, "judged": 12, "judge_unparseable": 3, "kept": 2,
                      "rejected:preference_tie": 1, "rejected:too_few_rated": 1, "rejected:judge_unparseable": 1}
    manifest = read_manifest(out)
    assert manifest["candidates"] == ["openai:a", "openai:b", "openai:c"] and manifest["judge"] == "openai:judge"
    assert manifest["splits"]["train"]["rows"] == 2 and manifest["splits"]["rejected"]["rows"] == 2
    printed = capsys.readouterr().out
    assert "2 pairs in" in printed and "| rejected:preference_tie | 1 |" in printed

    # DPOTrainer's own dataset type takes the train split as it is
    from datasets import Dataset

    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train])
    assert dataset[0]["chosen"] == first["chosen"] and dataset.column_names == ["prompt", "chosen", "rejected"]

    srv.reset_stats()  # a rerun is all cache hits and writes nothing twice
    assert main(prefs_args(srv, prompts, out, "-n", "1", candidates="openai:a,openai:b,openai:c")) == 0
    assert srv.requests == 0
    assert read_table(out, "train").to_pylist() == train and read_manifest(out)["funnel"]["total"] == funnel


def test_prefs_flag_errors_are_one_line_naming_the_flag(server, tmp_path, capsys):
    from gen.commands import prefs as command
    from gen.methods import prefs as method

    assert command.DEFAULT_CHUNK == method.DEFAULT_CHUNK
    srv = server()
    prompts = write_prompts(tmp_path / "prompts.jsonl", SCRIPTS[:1])
    out = tmp_path / "prefs"
    cases = [(["-n", "0"], "-n 0: must be at least 1"),
             (["--rubric", "pairwise"], "--rubric pairwise"),
             (["--rubric", "complexity"], "--rubric complexity"),
             (["--judge", "nope:x"], "--judge 'nope:x'"),
             (["--candidates", "openai:a,openai:a"], "--candidates: openai:a named twice"),
             (["--candidates", "openai:a,,openai:b"], "an empty spec"),
             (["--candidates", "bogus:m"], "--candidates 'bogus:m'"),
             (["--candidates", f"openai:a,hf:{tmp_path / 'no-student'}"], "--candidates hf:")]
    for extra, words in cases:
        assert main(prefs_args(srv, prompts, out, *extra)) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gen prefs: error: ") and words in err[0], (extra, err)
    assert main(prefs_args(srv, tmp_path / "missing.jsonl", out)) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["prefs", "--input", str(prompts), "--out", str(out), "--candidates", "llamacpp",
                 "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--base-url: no candidate it applies to" in capsys.readouterr().err
    assert srv.requests == 0 and not (out / "train").exists()


def test_prefs_output_trains_with_dpo_and_lora(server, tiny_llama_dir, tmp_path):  # noqa: F811
    """The train split of a `gen prefs` run goes to `gen train --dpo` as it is (here with a LoRA adapter, TRL's
    peft_config: the reference is the student with its adapter off)."""
    srv = server()
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"a": "score 9", "b": "score 2"}, {"a": "score 1", "b": "score 6"}])
    data = tmp_path / "prefs"
    assert main(prefs_args(srv, prompts, data, "-n", "2")) == 0
    assert read_manifest(data)["funnel"]["total"]["kept"] == 2
    out = tmp_path / "dpo"
    assert main(["train", "--dpo", "--student", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
                 "--max-steps", "2", "--lr", "1e-2", "--batch-size", "2", "--logging-steps", "1", "--save-steps", "2",
                 "--max-length", "96", "--lora", "4", "--lora-merge"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["objective"] == "dpo" and summary["steps"] == 2 and summary["rows"] == {"preference": 2}
    assert summary["lora"]["r"] == 4 and summary["lora"]["parameters"]["trainable"] < summary["lora"]["parameters"]["total"]
    assert summary["start"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # the reference is the student as it starts
    assert summary["end"]["reward_margin"] > summary["start"]["reward_margin"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "config.json").is_file()


@pytest.mark.parametrize("extra, words", [
    (["--on-policy", "0.5", "--teacher", "hf:x"], "--on-policy"),
    (["--kd-weight", "0.5"], "--kd-weight"),
    (["--loss", "jsd"], "--loss"),
    (["--eval-fraction", "0.2"], "--eval-fraction"),
    (["--packing"], "--packing"),
    (["--qlora", "--lora", "4"], "--qlora"),
])
def test_dpo_refuses_settings_it_does_not_use(extra, words, tmp_path, capsys):
    data = tmp_path / "prefs"
    out = tmp_path / "out"
    assert main(["train", "--dpo", "--student", str(tmp_path / "no-model"), "--data", str(data), "--out", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gen train: error: {words}") and "DPO" in err[0], err
    assert not out.exists()


def test_kill9_midrun_then_rerun_sends_nothing_twice(server, tmp_path):
    srv = server("fixed:0.1")
    scripts = [{"a": f"score {1 + i % 9}", "b": f"score {9 - i % 9}", "i": i} for i in range(10)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", scripts)
    out = tmp_path / "prefs"
    args = prefs_args(srv, prompts, out, "-n", "2")
    distinct = 10 * 2 * 2 * 2  # every answer is a distinct text, then one verdict each
    cache = out / ".cache" / "requests.sqlite"
    process = subprocess.Popen(gen_command(*args, "--concurrency", "2", "--max-concurrency", "2"), cwd=REPO,
                               env=gen_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while committed(cache) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = committed(cache)
    assert 6 <= done < distinct, done
    first_run = srv.requests

    srv.reset_stats()
    assert main(args) == 0
    assert srv.requests == distinct - done  # what completed before the kill is not sent again
    assert max(srv.seen.values()) == 1
    assert first_run - done <= 4  # at most what was in flight (2) and the last fraction of a second was lost
    train = read_table(out, "train").to_pylist()
    rejected = read_table(out, "rejected").to_pylist()
    assert len(train) + len(rejected) == 10 and len({r["id"] for r in train + rejected}) == 10
    assert all(r["filters"] == ["preference_tie"] for r in rejected)  # i % 9 == 4: both score 5
    assert len(rejected) == 1
