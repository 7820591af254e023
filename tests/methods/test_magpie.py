"""`gen magpie`: the pre-query template, the query filters (before answers are paid for), the raw-completion path,
the backends that cannot, and end to end on a real aligned model (SmolLM2-135M-Instruct on llama.cpp) with a kill -9
and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from gen.engine.cache import RequestCache
from gen.methods.base import derive_seed
from gen.methods.magpie import PreQueryTemplate, query_reasons
from tests.faultproxy import FaultProxy
from tests.methods.conftest import run_gen
from tests.scripted_server import ScriptedServer, chat_reply, text_reply
from tests.servers import smollm2_server  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def chatml(messages) -> str:
    """ChatML as SmolLM2's template writes it (with the generation prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def test_pre_query_template_is_cut_from_the_chat_template():
    template = PreQueryTemplate.from_chat_template(chatml, system="Be a chemist.")
    assert template.prefix == "<|im_start|>system\nBe a chemist.<|im_end|>\n<|im_start|>user\n"
    assert template.user_end == "<|im_end|>\n<|im_start|>assistant\n"
    assert template.turn_end == "<|im_end|>\n<|im_start|>user\n"
    assert template.query_stop() == ("<|im_end|>",)
    assert template.continuation([("Q?", "A.")]) == template.prefix + "Q?" + template.user_end + "A." + \
        template.turn_end
    assert PreQueryTemplate.from_chat_template(lambda messages: None) is None
    assert PreQueryTemplate.from_chat_template(chatml).hash != template.hash


def test_query_filters():
    assert query_reasons("  ", "stop") == ["empty_query"]
    assert query_reasons("What is the boiling point of", "length") == ["truncated_query"]
    assert query_reasons("Sure! Here is a poem about cats.", "stop") == ["not_a_query"]
    assert query_reasons("The weather was nice.", "stop") == ["not_a_query"]
    assert query_reasons("Write a haiku about rain.", "stop") == []
    assert query_reasons("How do magnets work?", "stop") == []


QUERIES = {0: "How do plants make food?", 1: "how do plants make food", 2: "Sure, here is the answer.",
           3: "Write a poem about the sea.", 4: "", 5: "What is the capital of France and why",
           6: "Please write a poem about the sea."}


def _scripted():
    """Queries by draw: the server knows a draw by its per-request seed (`MethodRun.params_for`, run seed 0)."""
    draws = {derive_seed("magpie", 0, None, "query", i, 0): i for i in QUERIES}

    def answer(path: str, body: dict):
        if path == "/apply-template":
            return {"prompt": chatml(body["messages"])}
        if path == "/v1/completions":
            draw = draws[body["seed"]]
            return text_reply(QUERIES[draw], "length" if draw == 5 else "stop")
        return chat_reply(f"An answer to: {body['messages'][-1]['content']}")
    return answer


def test_magpie_on_scripted_server_filters_the_pool_before_answering(tmp_path):
    with ScriptedServer(_scripted()) as server:
        argv = ["magpie", "-n", "7", "--teacher", "openai:scripted", "--base-url", server.base_url + "/v1",
                "--concurrency", "1", "--no-progress", "--max-new-tokens", "20"]
        result = run_gen(argv, tmp_path / "run")
        assert result.rc == 0
        completions = server.bodies("/v1/completions")
        assert len(completions) == 7
        for body in completions:  # the pre-query template, sent raw, stopped at the end of the user turn
            assert body["prompt"] == "<|im_start|>user\n" and body["stop"] == ["<|im_end|>"]
            assert body["temperature"] == 1.0 and body["max_tokens"] == 128 and "messages" not in body
        asked = sorted(b["messages"][-1]["content"] for b in server.bodies("/v1/chat/completions"))
        assert asked == ["How do plants make food?", "Write a poem about the sea."]  # only these were paid for
        kept = read_table(result.out, "train").to_pylist()
        rejected = {r["messages"][0]["content"]: r["filters"] for r in read_table(result.out, "rejected").to_pylist()}
        assert sorted(r["messages"][0]["content"] for r in kept) == asked
        assert rejected == {"how do plants make food": ["repeated_query"], "Sure, here is the answer.": ["not_a_query"],
                            "": ["empty_query"], "What is the capital of France and why": ["truncated_query"],
                            "Please write a poem about the sea.": ["near_duplicate_query"]}
        for row in kept:
            params = json.loads(row["params"])
            assert row["method"] == "magpie" and params["pre_query_hash"] == PreQueryTemplate.from_chat_template(
                chatml).hash and params["query_temperature"] == 1.0 and params["temperature"] == 0.0
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]

        sent_before = len(server.requests)
        again = run_gen(argv, tmp_path / "run")  # rerun: every request from the cache
        assert again.rc == 0 and again.engine()["sent"] == 0 and again.engine()["cache_hits"] == 9
        assert len(server.requests) == sent_before + 1  # only the template is rendered again
        assert read_manifest(result.out)["splits"]["train"]["rows"] == 2


@pytest.mark.parametrize("teacher, message", [
    ("anthropic:claude-haiku-4-5", "the anthropic backend has no raw-completion endpoint"),
    ("openai:gpt-4o-mini", "OpenAI's hosted chat models have no raw-completion endpoint"),
])
def test_backends_without_raw_completion_stop_with_one_line(teacher, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    rc = main(["magpie", "-n", "2", "--teacher", teacher, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and err[0].startswith("gen magpie: error:")


def _cli(out: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "gen.cli", "magpie", "-n", "4", "--turns", "2", "--teacher", "openai:smollm2",
            "--base-url", base_url, "--query-max-tokens", "32", "--max-new-tokens", "24", "--concurrency", "1",
            "--no-progress", "--out", str(out)]


def test_magpie_on_smollm2_end_to_end_killed_run_resumes(smollm2_server, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    cache_path = out / ".cache" / "requests.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FaultProxy(smollm2_server.base_url) as proxy:
        proc = subprocess.Popen(_cli(out, proxy.base_url + "/v1"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if cache_path.exists():
                    with RequestCache(cache_path) as cache:
                        if cache.count() >= 3:  # some queries answered, the run not finished
                            break
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        sent_by_killed_run = sum(1 for r in proxy.received if r.path.endswith("completions"))
        with RequestCache(cache_path) as cache:
            done_before_kill = cache.count()
        assert done_before_kill >= 3
        rerun = subprocess.run(_cli(out, proxy.base_url + "/v1"), cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        bodies = [r.body for r in proxy.received if r.path.endswith("completions")]
    stats = {k: int(v) for k, v in (kv.split("=") for kv in next(
        line for line in rerun.stdout.splitlines() if line.startswith("engine: "))[8:].split())}
    assert stats["cache_hits"] >= done_before_kill and stats["sent"] == stats["requests"] - stats["cache_hits"]
    # Nothing that reached the cache before the kill is sent again: only requests of the killed run that were in
    # flight or not yet committed (the cache commits within ~0.2 s) are repeated.
    assert len(bodies) - len(set(bodies)) <= sent_by_killed_run - done_before_kill

    again = run_gen(["magpie", "-n", "4", "--turns", "2", "--teacher", "openai:smollm2", "--base-url",
                     smollm2_server.openai_base_url, "--query-max-tokens", "32", "--max-new-tokens", "24",
                     "--no-progress"], out)
    assert again.rc == 0 and again.engine()["sent"] == 0  # a rerun of the finished run: all cache hits
    kept = read_table(out, "train").to_pylist()
    rejected = read_table(out, "rejected").to_pylist()
    assert len(kept) + len(rejected) >= 1
    for row in kept:  # queries are user-side text and answers follow, turn by turn
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"].strip() and "<|im_" not in m["content"] for m in row["messages"])
        assert row["method"] == "magpie" and json.loads(row["params"])["pre_query_source"] == "chat_template"
