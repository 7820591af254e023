"""`gen eval` end to end through the CLI: the tiny random student (hf:) answers, a baseline run supplies the
teacher's answers, and a scripted judge (a real OpenAI-compatible HTTP server whose replies follow a script) gives
known verdicts, so wins, ties, losses, the flip rate and the rejected prompts have exact expected values. One run
with the real llama.cpp judge (JSON schema through llama.cpp) checks the whole path on a real model."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.records import make_row
from gen.data.shards import ShardWriter
from tests.latency_server import LatencyServer
from tests.servers import llamacpp_server, tiny_llama_dir  # noqa: F401

# What the scripted judge does with each prompt (the prompt's text names it).
SCRIPT = ("student", "baseline", "tie", "first", "garbage", "student")


def baseline_answer(i: int) -> str:
    return f"Baseline answer number {i}, a little longer than needed."


def _blocks(text: str) -> tuple[str, str]:
    """The two answers of a pairwise judge prompt, in the order shown."""
    a = re.search(r"Answer A:\s*<<<\n(.*?)\n>>>", text, re.S)
    b = re.search(r"Answer B:\s*<<<\n(.*?)\n>>>", text, re.S)
    assert a and b, text
    return a.group(1), b.group(1)


def scripted_judge(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    task = re.search(r"task (\w+)", prompt).group(1)
    first, second = _blocks(prompt)
    baseline_shown = "A" if first.startswith("Baseline answer") else "B"
    student_shown = "B" if baseline_shown == "A" else "A"
    winner = {"student": student_shown, "baseline": baseline_shown, "tie": "tie", "first": "A"}.get(task)
    if winner is None:
        return "I cannot decide, sorry."  # no JSON, no 'winner' line: unparseable, also on the retry
    return json.dumps({"rationale": f"scripted: {task}", "winner": winner})


def always_a(body: dict) -> str:
    return json.dumps({"rationale": "the first one", "winner": "A"})


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """(prompts.jsonl, baseline run dir): prompt i says `task SCRIPT[i]`; the run's rows answer them."""
    root = tmp_path_factory.mktemp("eval-inputs")
    prompts = root / "prompts.jsonl"
    texts = [f"Please do task {task} number {i}." for i, task in enumerate(SCRIPT)]
    prompts.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    run = root / "teacher-run"
    with ShardWriter(run) as writer:
        writer.write_many([make_row(messages=[{"role": "user", "content": t},
                                              {"role": "assistant", "content": baseline_answer(i)}],
                                    method="label", teacher="openai:teacher-model") for i, t in enumerate(texts)])
    return prompts, run


def eval_args(student, prompts, baseline, out, judge_url, *extra) -> list[str]:
    return ["eval", "--student", f"hf:{student}", "--prompts", str(prompts), "--baseline", str(baseline),
            "--out", str(out), "--judge", "openai:judge-model", "--judge-base-url", judge_url,
            "--max-new-tokens", "8", "--no-progress", "--bootstrap", "200", *extra]


def cache_rows(out: Path) -> int:
    with sqlite3.connect(out / ".cache" / "requests.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def test_scripted_judge_gives_exact_counts_and_a_rerun_sends_nothing(eval_inputs, tiny_llama_dir, tmp_path,
                                                                   capsys):  # noqa: F811
    prompts, run = eval_inputs
    out = tmp_path / "eval"
    with LatencyServer(reply=scripted_judge) as judge:
        assert main(eval_args(tiny_llama_dir, prompts, run, out, judge.v1_url)) == 0
        sent = judge.requests
        summary = json.loads((out / "eval.json").read_text())
        # 6 prompts x 2 orders, plus one retry per order of the unparseable one.
        assert sent == 14
        assert {k: summary[k] for k in ("n", "wins", "ties", "losses")} == {"n": 5, "wins": 2, "ties": 2, "losses": 1}
        assert summary["win_rate"] == pytest.approx(3 / 5)
        assert summary["position_flip_rate"] == pytest.approx(1 / 5)  # the "first" judge flipped with the order
        assert summary["rejected"] == {"count": 1, "reasons": {"judge_unparseable": 1}}
        low, high = summary["win_rate_ci"]
        assert 0.0 <= low <= summary["win_rate"] <= high <= 1.0
        assert 0.0 < summary["lc_win_rate"] < 1.0
        assert summary["judge"] == "openai:judge-model" and summary["rubric"]["name"] == "pairwise"
        assert summary["student"].startswith(f"hf:{tiny_llama_dir}@")
        assert summary["baseline"] == f"run {run} (openai:teacher-model)"
        assert summary["mean_length"]["baseline"] == pytest.approx(
            sum(len(baseline_answer(i)) for i in range(6) if SCRIPT[i] != "garbage") / 5)
        rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
        assert [r["rejected"] for r in rejected] == ["judge_unparseable"]
        assert "task garbage" in rejected[0]["messages"][0]["content"]
        assert len(rejected[0]["verdict"]["raw"]) == 2
        pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
        assert [p["outcome"] for p in pairs] == [1.0, 0.0, 0.5, 0.5, 1.0]
        assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG" and "eval.png" in (out / "eval.md").read_text()
        printed = capsys.readouterr().out
        assert "| win rate (ties half)" in printed and "60.0%" in printed

        # A rerun: every answer and verdict from the cache; nothing reaches the judge, the same report.
        cached = cache_rows(out)
        assert main(eval_args(tiny_llama_dir, prompts, run, out, judge.v1_url)) == 0
        assert judge.requests == sent and cache_rows(out) == cached
        assert json.loads((out / "eval.json").read_text()) == summary


def test_an_always_A_judge_gives_only_ties_and_a_flip_rate_of_one(eval_inputs, tiny_llama_dir, tmp_path,
                                                                 capsys):  # noqa: F811
    from gen.logits.capture import HFLogitTeacher, capture_logits

    prompts, run = eval_inputs
    # Held-out logit shards whose teacher is the student itself: its teacher KL is 0 up to the fp16 log-probs.
    logits = tmp_path / "logits"
    capture_logits(run, logits, HFLogitTeacher(str(tiny_llama_dir)), 8, progress=False)
    out = tmp_path / "eval-a"
    with LatencyServer(reply=always_a) as judge:
        assert main(eval_args(tiny_llama_dir, prompts, run, out, judge.v1_url, "--limit", "4",
                              "--logits", str(logits))) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert {k: summary[k] for k in ("n", "wins", "ties", "losses")} == {"n": 4, "wins": 0, "ties": 4, "losses": 0}
    assert summary["position_flip_rate"] == 1.0 and summary["win_rate"] == 0.5
    assert summary["win_rate_ci"] == [0.5, 0.5] and summary["lc_win_rate"] == 0.5
    heldout = summary["heldout"]
    assert heldout["rows"] == len(SCRIPT) and heldout["tokens"] > 0
    assert abs(heldout["teacher_kl"]) < 1e-3
    # A random model over a 384-token vocabulary: perplexity near the vocabulary size.
    assert 100 < heldout["perplexity"] < 1000
    assert "held-out teacher KL" in capsys.readouterr().out


def test_kill9_while_judging_then_rerun_sends_nothing_twice(eval_inputs, tiny_llama_dir, tmp_path):  # noqa: F811
    import os
    import signal
    import subprocess
    import time

    from tests.engine.conftest import REPO, gen_command, gen_env

    prompts, run = eval_inputs
    out = tmp_path / "killed"
    with LatencyServer("fixed:0.3", reply=scripted_judge) as judge:
        # Judge concurrency 1 at 0.3 s a verdict: the kill lands after a few verdicts, long before the 14th.
        process = subprocess.Popen(gen_command(*eval_args(tiny_llama_dir, prompts, run, out, judge.v1_url,
                                                          "--concurrency", "1", "--max-concurrency", "1")),
                                   cwd=REPO, env=gen_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while sum(judge.answered.values()) < 4 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL and not (out / "eval.json").exists()
        committed = cache_rows(out) - len(SCRIPT)  # the student's answers are cached before the judge starts
        # some verdicts committed, not all (answers the kill landed on may not be committed yet)
        assert 1 <= committed < 14, committed
        received = len(judge.seen)
        before = judge.requests
        assert main(eval_args(tiny_llama_dir, prompts, run, out, judge.v1_url)) == 0
        # Every verdict cached before the kill is not asked again; the rest are asked once each.
        assert judge.requests - before == 14 - committed
        # asked twice: only verdicts received before the kill and not committed by then
        assert sum(n > 1 for n in judge.seen.values()) <= received - committed
    summary = json.loads((out / "eval.json").read_text())
    assert {k: summary[k] for k in ("n", "wins", "ties", "losses")} == {"n": 5, "wins": 2, "ties": 2, "losses": 1}


def test_eval_errors_name_the_flag(eval_inputs, tiny_llama_dir, tmp_path, capsys):  # noqa: F811
    prompts, run = eval_inputs
    out = tmp_path / "bad"
    assert main(eval_args(tmp_path / "nope", prompts, run, out, "http://127.0.0.1:9/v1")) == 2
    assert "--student" in capsys.readouterr().err
    assert main(eval_args(tiny_llama_dir, prompts, tmp_path / "missing-run", out, "http://127.0.0.1:9/v1")) == 2
    assert "--baseline" in capsys.readouterr().err
    assert main(eval_args(tiny_llama_dir, prompts, run, out, "http://127.0.0.1:9/v1", "--rubric", "quality")) == 2
    assert "pairwise rubric" in capsys.readouterr().err
    assert not out.exists(), "nothing is written before the flags are checked"


def test_eval_with_the_real_llamacpp_judge(eval_inputs, tiny_llama_dir, llamacpp_server, tmp_path):  # noqa: F811
    prompts, run = eval_inputs
    out = tmp_path / "eval-llamacpp"
    argv = ["eval", "--student", f"hf:{tiny_llama_dir}", "--prompts", str(prompts), "--baseline", str(run),
            "--out", str(out), "--judge", f"openai:{llamacpp_server.model}",
            "--judge-base-url", llamacpp_server.openai_base_url, "--judge-max-new-tokens", "32",
            "--max-new-tokens", "8", "--limit", "3", "--no-progress", "--bootstrap", "200"]
    assert main(argv) == 0
    summary = json.loads((out / "eval.json").read_text())
    # Whatever a 270M judge says, every prompt is a verdict or a rejection with its reason, never lost.
    assert summary["n"] + summary["rejected"]["count"] == 3
    assert summary["wins"] + summary["ties"] + summary["losses"] == summary["n"]
    assert set(summary["rejected"]["reasons"]) <= {"judge_unparseable"}
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    for pair in pairs:
        assert pair["verdict"]["first"] in ("A", "B", "tie") and pair["verdict"]["second"] in ("A", "B", "tie")
    assert summary["judge"] == f"openai:{llamacpp_server.model}"
