"""`gen train --dpo` (issue 13): DPO through TRL's DPOTrainer on preference shards, on a tiny random student.

The crafted rows prefer in-corpus sentences over nonsense; a few steps through the CLI must raise the reward margin
and the reward accuracy over the start (measured on the training rows before the first step and after the last),
write checkpoints, the loss curve and the summary, and resume from a checkpoint onto the straight run's losses."""

from __future__ import annotations

import json

import pytest

from gen.cli import main
from gen.data.preferences import PREFERENCE_SCHEMA, make_preference_row
from gen.data.records import make_row
from gen.data.shards import ShardWriter, write_manifest
from tests.servers import tiny_llama_dir  # noqa: F401

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France.", "The sea is wide and blue."),
    ("Count to five.", "1 2 3 4 5", "abc xyz ABC"),
    ("Write a short poem about the sea.", "The sea is wide and blue and deep.", "1 2 3 plus minus"),
    ("Explain distillation.", "Knowledge distillation trains a small student.", "lazy dog lazy dog"),
]


def preference_run(path):
    with ShardWriter(path, "train", schema=PREFERENCE_SCHEMA) as writer:
        for prompt, good, bad in PAIRS:
            writer.write(make_preference_row(
                prompt=[{"role": "user", "content": prompt}],
                candidates=[{"model": "good", "content": good, "score": 9.0},
                            {"model": "bad", "content": bad, "score": 2.0}],
                pair=(0, 1), judge="scripted", rubric="quality"))
    write_manifest(path, config={"method": "prefs"})
    return path


def dpo(student, data, out, *extra):
    return main(["train", "--dpo", "--student", str(student), "--data", str(data), "--out", str(out),
                 "--max-steps", "6", "--lr", "1e-3", "--scheduler", "constant", "--batch-size", "4",
                 "--logging-steps", "1", "--save-steps", "3", "--max-length", "128", *extra])


def logged_losses(out):
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


def test_dpo_raises_reward_margin_and_accuracy_and_resumes(tiny_llama_dir, tmp_path):  # noqa: F811
    data = preference_run(tmp_path / "prefs")
    out = tmp_path / "dpo"
    assert dpo(tiny_llama_dir, data, out) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    start, end = summary["start"], summary["end"]
    assert summary["objective"] == "dpo" and summary["steps"] == 6 and summary["rows"] == {"preference": 4}
    # before the first step the policy is the reference: every reward is 0, no pair is won
    assert start["reward_margin"] == pytest.approx(0.0, abs=1e-6) and start["reward_accuracy"] == 0.0
    assert end["reward_margin"] > start["reward_margin"] + 0.5, summary
    assert end["reward_accuracy"] >= 0.75, summary
    assert end["reward_chosen"] > end["reward_rejected"]
    assert end["loss"] < start["loss"]
    history = json.loads((out / "log_history.json").read_text())
    logged = [e for e in history if "loss" in e]
    assert len(logged) == 6 and all({"rewards/chosen", "rewards/rejected", "rewards/margins",
                                     "rewards/accuracies"} <= set(e) for e in logged)
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "model.safetensors").is_file()
    assert (out / "checkpoint-3").is_dir() and (out / "checkpoint-6").is_dir()

    # resume from the step-3 checkpoint: steps 4-6 repeat the straight run's losses
    resumed = tmp_path / "resumed"
    assert dpo(tiny_llama_dir, data, resumed, "--resume", str(out / "checkpoint-3")) == 0
    straight, again = logged_losses(out), logged_losses(resumed)
    assert sorted(again) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(straight[step], rel=1e-5), step


def test_dpo_refuses_a_run_without_preference_rows(tiny_llama_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "sft"
    with ShardWriter(run, "train") as writer:
        writer.write(make_row(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                              method="label"))
    write_manifest(run, config={})
    out = tmp_path / "out"
    assert dpo(tiny_llama_dir, run, out) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gen train: error: --data ") and "not preference rows" in err and str(run) in err
    assert not out.exists() or not any(out.iterdir())
    assert main(["train", "--dpo", "--dpo-beta", "0", "--student", str(tiny_llama_dir), "--data",
                 str(preference_run(tmp_path / "p")), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "gen train: error: --dpo-beta 0.0: must be > 0"


@pytest.mark.parametrize("flag,value", [("--sync-steps", "2"), ("--student-sampler", "transformers"),
                                        ("--gen-temperature", "0.5")])
def test_dpo_refuses_on_policy_sampling_flags(tiny_llama_dir, tmp_path, capsys, flag, value):  # noqa: F811
    out = tmp_path / "out"
    assert main(["train", "--dpo", flag, value, "--student", str(tiny_llama_dir), "--data",
                 str(preference_run(tmp_path / "p")), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gen train: error: {flag} ") and "on-policy sampling setting" in err, err
    assert not out.exists()
