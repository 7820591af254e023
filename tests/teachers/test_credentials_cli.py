"""Credentials and sampling through the CLI, against the real llama.cpp server behind the fault proxy (which records
every request as it arrived): a password or key written into `--base-url` is used as the server expects but lands
in no file of the run and not in `gen card` (issue 18 #6); `anthropic:` sends temperature/top_p within the Messages
API's rules and the row says what was sent (issue 18 #16)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.engine.conftest import write_instructions
from tests.faultproxy import Fault, FaultProxy, first
from tests.servers import llamacpp_server  # noqa: F401

PASSWORD = "hunter2-PASS-9f8e7d"
QUERY_KEY = "qkey-SECRET-0a1b2c3d"
ENV_KEY = "sk-env-DO-NOT-LEAK-5566778899"


@pytest.fixture(scope="module")
def proxy(llamacpp_server):  # noqa: F811 - the session fixture imported above
    with FaultProxy(llamacpp_server.base_url) as running:
        yield running


def _files_containing(root, *needles: str) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(needle.encode() in path.read_bytes() for needle in needles)]


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
def test_a_password_in_base_url_is_used_as_basic_auth_and_written_nowhere(transport, proxy, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)  # with it set, aiohttp used to refuse the request outright
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    proxy.reset()
    host = proxy.base_url.split("://", 1)[1]
    base_url = f"http://alice:{PASSWORD}@{host}/v1?api_key={QUERY_KEY}"
    inputs = write_instructions(tmp_path / "in.jsonl", 2)
    run = tmp_path / "run"
    code = main(["label", "--input", str(inputs), "--out", str(run), "--teacher", "openai:gemma-3-270m",
                 "--base-url", base_url, "--transport", transport, "--temperature", "0", "--max-new-tokens", "4",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(read_table(run, "train")) == 2

    # The request used the credentials as the server expects: userinfo as Basic auth, the query as it was.
    basic = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert len(proxy.received) >= 2  # one per row, plus any retry the engine made on a busy machine
    for request in proxy.received:
        assert request.headers.get("authorization") == basic  # the URL's own credential wins over the variable
        assert request.path == f"/v1/chat/completions?api_key={QUERY_KEY}"

    # ...and is written nowhere: no shard, manifest, cache or card; not on the terminal.
    assert _files_containing(run, PASSWORD, QUERY_KEY, ENV_KEY) == []
    assert all(secret not in captured.out + captured.err for secret in (PASSWORD, QUERY_KEY, ENV_KEY))
    assert read_manifest(run)["config"]["base_url"] == f"http://<redacted>@{host}/v1?api_key=<redacted>"
    assert main(["card", str(run)]) == 0
    card = capsys.readouterr().out
    assert "<redacted>" in card and PASSWORD not in card and QUERY_KEY not in card and "alice" not in card
    export = tmp_path / "export"  # the published repo: card, Parquet files, plots
    assert main(["publish", str(run), "--repo", "alice/set", "--dry-run", str(export)]) == 0
    assert (export / "README.md").is_file() and _files_containing(export, PASSWORD, QUERY_KEY, ENV_KEY) == []


def _label_anthropic(proxy, tmp_path, model: str, *flags: str) -> tuple[int, str]:
    inputs = write_instructions(tmp_path / "in.jsonl", 1)
    code = main(["label", "--input", str(inputs), "--out", str(tmp_path / "run"), "--teacher", f"anthropic:{model}",
                 "--base-url", proxy.base_url, "--max-new-tokens", "4", "--no-progress", "--max-retries", "0",
                 *flags])
    return code, str(tmp_path / "run")


@pytest.mark.parametrize("model, sent", [
    ("claude-3-5-haiku-latest", {"temperature": 0.3, "top_p": 0.9}),
    # The 4.5 models refuse temperature and top_p together: temperature only, and the row says so.
    ("claude-sonnet-4-5", {"temperature": 0.3}),
])
def test_anthropic_sends_temperature_and_top_p_within_the_models_rules(model, sent, proxy, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    proxy.reset()
    code, run = _label_anthropic(proxy, tmp_path, model, "--temperature", "0.3", "--top-p", "0.9")
    assert code == 0
    body = proxy.received[0].json()
    assert proxy.received[0].path == "/v1/messages"
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == sent
    params = json.loads(read_table(run, "train").column("params")[0].as_py())
    assert params["temperature"] == 0.3 and params["top_p"] == 0.9  # what was asked (and cached by)
    assert params["sent"] == sent  # what was sent


def test_a_row_built_from_the_cache_says_what_was_sent_like_the_first(proxy, tmp_path, monkeypatch):
    """`sent` is cached with the answer: a row rebuilt from a cache hit (here: a second run directory started from
    the first one's cache, as after a kill between the answer and its row) records the same `params.sent`."""
    import shutil

    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    proxy.reset()
    first = tmp_path / "first"
    first.mkdir()
    code, run = _label_anthropic(proxy, first, "claude-sonnet-4-5", "--temperature", "0.3", "--top-p", "0.9")
    assert code == 0 and len(proxy.received) == 1
    second = tmp_path / "second"
    shutil.copytree(Path(run) / ".cache", second / "run" / ".cache")
    code, rerun = _label_anthropic(proxy, second, "claude-sonnet-4-5", "--temperature", "0.3", "--top-p", "0.9")
    assert code == 0 and len(proxy.received) == 1  # answered from the cache
    assert read_manifest(rerun)["funnel"]["engine"]["cache_hits"] == 1
    rows = [json.loads(read_table(r, "train").column("params")[0].as_py()) for r in (run, rerun)]
    assert rows[0]["sent"] == rows[1]["sent"] == {"temperature": 0.3}


def test_anthropic_refuses_a_temperature_above_one_without_sending_it(proxy, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    proxy.reset()
    code, _ = _label_anthropic(proxy, tmp_path, "claude-3-5-haiku-latest", "--temperature", "1.5")
    err = capsys.readouterr().err
    assert code == 4  # the request failed; nothing was written for it
    assert "temperature 1.5 is outside the Messages API's range 0-1" in err
    assert proxy.counts["requests"] == 0


def test_a_model_that_refuses_its_sampling_parameters_fails_with_the_servers_message(proxy, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    message = "`temperature` is deprecated for this model."
    proxy.reset(first(1, Fault.http_error(400, message)))
    code, _ = _label_anthropic(proxy, tmp_path, "claude-opus-4-7", "--temperature", "0")
    err = capsys.readouterr().err
    assert code == 4
    assert f"PermanentError: 400: {message}" in err
    assert proxy.received[0].json()["temperature"] == 0
