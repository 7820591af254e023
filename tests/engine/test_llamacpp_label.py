"""`gen label` end to end on the real embedded model: Gemma-3-270M served by llama.cpp (xllamacpp)."""

from __future__ import annotations

import json

from gen.cli import main
from gen.shards import read_manifest, read_table
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
