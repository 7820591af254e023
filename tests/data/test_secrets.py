"""One list of secrets for every writer (`gen.data.secrets`): what counts as a secret, and, through the CLI, that
the manifest, `gen card` and `gen publish` agree (issue 12 "Secrets", issue 18 #7)."""

from __future__ import annotations

import json

import pytest

from gen.cli import main
from gen.data import secrets
from gen.data.shards import read_manifest, read_table, write_manifest
from tests.engine.conftest import write_instructions
from tests.servers import llamacpp_server  # noqa: F401
from tests.train.conftest import synthetic_conversations, tiny_pair, tiny_tokenizer, write_conversations  # noqa: F401

GEMINI_KEY = "AIza-gemini-DO-NOT-LEAK-31415926"


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("API-Key", True), ("token", True), ("hf_token", True), ("password", True),
    ("openai_api_key", True), ("mistral_api_key", True), ("client_secret", True), ("authorization", True),
    ("max_tokens", False), ("bytes_per_token", False), ("prompt_tokens", False), ("tokenizer_hash", False),
    ("max_new_tokens", False), ("rewrite_max_tokens", False), ("top_k", False), ("keep", False),
    ("monkey", False), ("author", False), ("token_count", False),
])
def test_config_keys_are_secret_by_exact_name_never_by_substring(name, secret):
    assert secrets.is_secret_key(name) is secret


@pytest.mark.parametrize("name, secret", [
    ("OPENAI_API_KEY", True), ("GEMINI_API_KEY", True), ("MISTRAL_API_KEY", True), ("HF_TOKEN", True),
    ("GITHUB_TOKEN", True), ("DB_PASSWORD", True), ("AWS_SECRET_ACCESS_KEY", True), ("MY_SECRET", True),
    ("PATH", False), ("HOME", False), ("TOKENIZERS_PARALLELISM", False), ("KDFORGE_CACHE", False),
])
def test_environment_variables_are_secret_by_name(name, secret):
    assert secrets.is_secret_env_name(name) is secret


def test_every_backends_key_variable_is_a_secret():
    from gen.teachers import registry

    declared = [name for backend in registry.backends().values() for name in backend.key_env]
    assert "OPENAI_API_KEY" in declared and "ANTHROPIC_API_KEY" in declared
    assert all(secrets.is_secret_env_name(name) for name in declared)


def test_redact_by_value_exact_name_and_url_credentials(monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", "mistral-secret-2718281828")
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to mean anything: left alone
    config = {
        "note": "key mistral-secret-2718281828 inside", "api_key": "anything", "max_tokens": 512,
        "logits": {"bytes_per_token": 198.5, "tokens": 1024}, "seed": 1,
        "base_url": "https://bob:pw123456@host.example/v1?key=abc&api-version=2024",
        "urls": ["http://host/v1", "see http://u:p@h:1/x?token=t ok"],
    }
    assert secrets.redact(config) == {
        "note": "key <redacted> inside", "api_key": "<redacted>", "max_tokens": 512,
        "logits": {"bytes_per_token": 198.5, "tokens": 1024}, "seed": 1,
        "base_url": "https://<redacted>@host.example/v1?key=<redacted>&api-version=2024",
        "urls": ["http://host/v1", "see http://<redacted>@h:1/x?token=<redacted> ok"],
    }


def test_the_manifest_keeps_numbers_whose_name_holds_token(tmp_path):
    write_manifest(tmp_path, config={"max_tokens": 7}, extra={"logits": {"bytes_per_token": 198.5, "k": 8}})
    manifest = read_manifest(tmp_path)
    assert manifest["logits"]["bytes_per_token"] == 198.5 and manifest["config"]["max_tokens"] == 7


def test_gen_logits_writes_bytes_per_token_as_a_number(tiny_pair, tmp_path):  # noqa: F811
    _, teacher_dir, _ = tiny_pair
    source, out = tmp_path / "conversations", tmp_path / "logits"
    write_conversations(source, synthetic_conversations(3, seed=5))
    assert main(["logits", "--shards", str(source), "--teacher", f"hf:{teacher_dir}", "-k", "4", "--out", str(out),
                 "--no-progress"]) == 0
    stats = json.loads((out / "manifest.json").read_text())["logits"]
    assert isinstance(stats["bytes_per_token"], float) and stats["bytes_per_token"] > 0


def test_a_key_in_a_row_the_manifest_card_and_publish_agree(llamacpp_server, tmp_path, capsys,  # noqa: F811
                                                            monkeypatch):
    """GEMINI_API_KEY is no key the manifest used to know: its value went into manifest.json and `gen card` printed
    it, while `gen publish` refused the same run. Now the manifest redacts it and both refuse, naming the row."""
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    inputs = write_instructions(tmp_path / "in.jsonl", 1)
    run = tmp_path / "run"
    assert main(["label", "--input", str(inputs), "--out", str(run), "--teacher", "openai:gemma",
                 "--base-url", llamacpp_server.openai_base_url, "--system", f"Use the key {GEMINI_KEY}.",
                 "--max-new-tokens", "2", "--temperature", "0", "--no-progress"]) == 0
    manifest_text = (run / "manifest.json").read_text()
    assert GEMINI_KEY not in manifest_text
    assert read_manifest(run)["config"]["system"] == "Use the key <redacted>."
    capsys.readouterr()

    assert main(["card", str(run)]) == 2
    card_err = capsys.readouterr()
    assert GEMINI_KEY not in card_err.out + card_err.err
    assert main(["publish", str(run), "--repo", "alice/set", "--dry-run", str(tmp_path / "export")]) == 2
    publish_err = capsys.readouterr().err
    row_id = read_table(run, "train").column("id")[0].as_py()
    for err, command in ((card_err.err, "card"), (publish_err, "publish")):
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"gen {command}: error: {run}/train: row {row_id} (system) contains the value of "
                              "GEMINI_API_KEY"), err
    assert not (tmp_path / "export" / "README.md").exists()


def test_a_teacher_spec_never_shows_url_credentials_in_its_repr():
    from gen.teachers.spec import TeacherSpec

    spec = TeacherSpec("openai:m", base_url="http://alice:S3cretPass@h1/v1?api_key=K3yValue,http://h2/v1")
    text = repr(spec)
    assert "S3cretPass" not in text and "K3yValue" not in text
    assert "h1/v1" in text and "http://h2/v1" in text
    assert spec.base_url.startswith("http://alice:S3cretPass@")  # the request still gets them
