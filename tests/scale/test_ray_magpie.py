"""`gen magpie --ray`: the query pool and the answers made by Ray workers are those of a one-process run (same
kept queries, same rejected queries with the same reasons), on a scripted OpenAI-compatible server with a raw
completion endpoint; a rerun on Ray sends nothing."""

from __future__ import annotations

import json

from gen.data.shards import read_manifest, read_table
from tests.methods.test_magpie import _scripted
from tests.scale.conftest import run_gen
from tests.scripted_server import ScriptedServer


def _argv(server: ScriptedServer, out, *extra: str) -> list[str]:
    return ["magpie", "-n", "7", "--teacher", "openai:scripted", "--base-url", server.base_url + "/v1",
            "--no-progress", "--max-new-tokens", "20", "--out", str(out), *extra]


def _outcome(out) -> tuple[list, dict]:
    kept = sorted((r["messages"][0]["content"], r["messages"][1]["content"]) for r in read_table(out, "train").to_pylist())
    rejected = {r["messages"][0]["content"]: r["filters"] for r in read_table(out, "rejected").to_pylist()}
    return kept, rejected


def test_magpie_on_ray_matches_one_process(ray_cluster, tmp_path):
    with ScriptedServer(_scripted()) as server:
        local = run_gen(_argv(server, tmp_path / "local"))
        assert local.rc == 0, local.stderr
        ray_argv = _argv(server, tmp_path / "ray", "--ray", ray_cluster, "--workers", "2", "--unit-size", "3")
        on_ray = run_gen(ray_argv)
        assert on_ray.rc == 0, on_ray.stderr
        assert _outcome(tmp_path / "ray") == _outcome(tmp_path / "local")
        kept, rejected = _outcome(tmp_path / "ray")
        assert len(kept) == 2 and rejected["Please write a poem about the sea."] == ["near_duplicate_query"]
        engine = read_manifest(tmp_path / "ray")["engine"]  # the requests really went through Ray units
        assert engine["workers"] == 2 and engine["units"] == 4 and engine["sent"] == 9  # 7 queries, 2 answers
        sent_before = len(server.bodies("/v1/chat/completions")) + len(server.bodies("/v1/completions"))
        again = run_gen(ray_argv)
        assert again.rc == 0, again.stderr
        assert len(server.bodies("/v1/chat/completions")) + len(server.bodies("/v1/completions")) == sent_before
        assert read_manifest(tmp_path / "ray")["splits"]["train"]["rows"] == 2
        assert json.loads(read_table(tmp_path / "ray", "train").to_pylist()[0]["params"])["pre_query_hash"]
