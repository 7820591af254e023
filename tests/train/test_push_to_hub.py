"""`gen train --push-to-hub` against the local Hub server of the publish tests: the student, its card and loss curve
in ONE commit to a model repo; the card links the training data's Hub dataset (published with `gen publish`, found
through the logit shards' source run), names teacher, loss, temperature, steps and tokens, and shows `gen eval`'s
results; the token is in no file and no request body; no token = a one-line error before any training."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import constants as hub_constants

from gen.cli import main
from gen.data.shards import write_manifest
from gen.publish.card import split_front_matter
from gen.publish.pipeline import publish
from tests.publish.hub_server import HubServer
from tests.train.conftest import synthetic_conversations, write_conversations

TOKEN = "hf_kdforgeFAKEtoken0123456789abcdefXYZ"
DATASET = "alice/count-convs"
MODEL = "alice/tiny-student"


@pytest.fixture
def hub(monkeypatch):
    """The local Hub as HF_ENDPOINT would point at it, the token in the environment, Xet off (LFS path)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(TOKEN) as server:
        monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
        yield server


def test_push_to_hub_sends_the_student_and_a_card_written_from_the_run(tiny_pair, tmp_path, hub, capsys):
    _, teacher_dir, student_dir = tiny_pair
    conv, logits, out, evaluated = (tmp_path / name for name in ("conv", "logits", "student", "eval"))
    write_conversations(conv, synthetic_conversations(8, seed=5))
    write_manifest(conv, config={"command": "test"})
    publish(conv, DATASET, endpoint=hub.url)
    assert json.loads((conv / "published.json").read_text())["repo_id"] == DATASET
    assert main(["logits", "--shards", str(conv), "--teacher", f"hf:{teacher_dir}", "-k", "8", "--out", str(logits),
                 "--max-length", "128", "--temperature", "2.0", "--no-progress"]) == 0
    evaluated.mkdir()
    (evaluated / "eval.json").write_text(json.dumps({"n": 8, "wins": 5, "ties": 1, "losses": 2, "win_rate": 0.6875,
                                                     "win_rate_ci": [0.41, 0.9], "judge": "llamacpp"}))
    capsys.readouterr()
    assert main(["train", "--student", str(student_dir), "--data", str(logits), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--max-length", "128", "--logging-steps", "1", "--temperature", "2.0",
                 "--push-to-hub", MODEL, "--hub-eval", str(evaluated)]) == 0
    assert "gen train: pushed to " in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    repo = hub.repo(MODEL, "model")
    commits = hub.requests_to("POST", rf"^/api/models/{MODEL}/commit/main$")
    assert len(commits) == 1 and len(repo.commits) == 2  # the Hub's initial commit + ours
    pushed = {p: d for p, d in repo.files.items() if p != ".gitattributes"}
    local = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "loss_curve.png"} <= set(pushed)
    assert not {"train_summary.json", "log_history.json", "training_args.bin"} & set(pushed)
    assert not any(p.startswith(("checkpoint-", "runs/")) for p in pushed)
    assert all(pushed[p] == local[p] for p in pushed if p != "README.md")  # the saved student, byte for byte
    front, body = split_front_matter(pushed["README.md"].decode())
    assert front["library_name"] == "transformers" and front["datasets"] == [DATASET]
    assert {"kdforge", "distillation"} <= set(front["tags"]) and "base_model" not in front  # a local student dir
    assert f"[{DATASET}](https://huggingface.co/datasets/{DATASET})" in body
    assert f"`hf:{teacher_dir}`" in body and "top-8 KD" in body
    assert "| temperature | 2.0 |" in body and "| optimizer steps | 2 |" in body
    assert f"| tokens trained on | {summary['tokens']:,} |" in body and summary["tokens"] > 0
    assert "![training loss per token](loss_curve.png)" in body
    assert "| win_rate | 0.6875 |" in body and "| win_rate_ci | [0.41, 0.9] |" in body
    assert yaml.safe_load(yaml.safe_dump(front)) == front
    # The token authenticated every call but is in no pushed file and no request body.
    assert all(TOKEN.encode() not in data for data in repo.files.values())
    assert all(TOKEN.encode() not in r.body for r in hub.requests)


def test_push_to_hub_without_a_token_stops_before_training(tiny_pair, conversations, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    _, _, student_dir = tiny_pair
    out = tmp_path / "o"
    assert main(["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(out),
                 "--push-to-hub", MODEL]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "gen train: error: --push-to-hub no Hugging Face token: set HF_TOKEN or run `hf auth login` (gen train takes "
        "no --token)")
    assert not out.exists()


def test_a_credential_in_a_file_to_push_is_refused_before_any_upload(tmp_path, hub, monkeypatch):
    from gen.errors import UserError
    from gen.publish.model_card import push_student

    secret = "sk-kdforgeFAKEkey0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    out = tmp_path / "student"
    out.mkdir()
    (out / "train_summary.json").write_text(json.dumps({"steps": 1, "student": "s", "data": [], "loss": {
        "loss": "forward_kl_tail", "temperature": 1.0, "kd_weight": 1.0}}))
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "tokenizer_config.json").write_text(json.dumps({"note": f"key {secret}"}))
    with pytest.raises(UserError, match=r"tokenizer_config.json: contains the value of OPENAI_API_KEY; refusing"):
        push_student(out, MODEL)
    assert hub.requests == []  # refused before the first request
