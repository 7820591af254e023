"""`gen label` end to end on the real embedded model: Gemma-3-270M served by llama.cpp (xllamacpp), directly and
through the fault-injecting proxy."""

from __future__ import annotations

import json

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.faultproxy import Fault, FaultProxy
from tests.servers import llamacpp_server  # noqa: F401


def test_label_with_real_llamacpp_server_then_all_from_cache(llamacpp_server, tmp_path, capsys):  # noqa: F811
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in
                              ["What is the capital of France?", "Name a colour.", "Say hello."]))
    out = tmp_path / "run"
    argv = ["label", "--input", str(inputs), "--out", str(out), "--teacher", f"openai:{llamacpp_server.model}",
            "--base-url", llamacpp_server.openai_base_url, "--temperature", "0", "--max-new-tokens", "12",
            "--system", "You are a helpful assistant.", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    table = read_table(out)
    assert table.num_rows == 3
    rows = table.to_pylist()
    for row in rows:
        assert row["method"] == "label" and row["system"] == "You are a helpful assistant."
        assert row["teacher"] == f"openai:{llamacpp_server.model}"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["usage"]["completion_tokens"] > 0 and row["usage"]["prompt_tokens"] > 0
        assert json.loads(row["params"])["max_tokens"] == 12
    assert sum(len(r["messages"][1]["content"]) for r in rows) > 0  # the model wrote something
    manifest = read_manifest(out)
    assert manifest["funnel"]["engine"]["sent"] == 3

    assert main(argv) == 0  # rerun: everything from the cache, nothing sent, nothing duplicated
    manifest = read_manifest(out)
    assert manifest["funnel"]["engine"]["sent"] == 0 and manifest["funnel"]["engine"]["cache_hits"] == 3
    assert read_table(out).num_rows == 3


def test_label_through_fault_proxy_every_row_exactly_once(llamacpp_server, tmp_path, capsys):  # noqa: F811
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": f"Say the number {i}."}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    plan = {0: Fault.rate_limit(retry_after=1), 1: Fault.server_error(500), 2: Fault.reset(),
            3: Fault.malformed(), 4: Fault.slow(16.0), 5: Fault.reset(after_forward=True),
            6: Fault.server_error(503)}
    with FaultProxy(llamacpp_server.base_url, plan=plan) as proxy:
        argv = ["label", "--input", str(inputs), "--out", str(out), "--teacher", f"openai:{llamacpp_server.model}",
                "--base-url", proxy.base_url + "/v1", "--temperature", "0", "--max-new-tokens", "4",
                "--concurrency", "4", "--timeout", "15", "--no-progress"]  # the slow fault outlasts it
        assert main(argv) == 0, capsys.readouterr().err
        counts = proxy.counts
        for kind in ("rate_limit", "server_error", "reset", "malformed", "slow"):
            assert counts.get(kind, 0) >= 1, (kind, counts)
        table = read_table(out)
        ids = table.column("id").to_pylist()
        assert len(ids) == 8 and len(set(ids)) == 8  # no row lost, none duplicated
        asked = sorted(r["messages"][0]["content"] for r in table.to_pylist())
        assert asked == sorted(f"Say the number {i}." for i in range(8))
        assert read_manifest(out)["funnel"]["failed"] == 0

        proxy.reset()
        assert main(argv) == 0  # a rerun sends nothing: every answer is in the cache
        assert proxy.counts["requests"] == 0
        assert read_table(out).num_rows == 8
