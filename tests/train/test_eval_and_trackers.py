"""`gen train` evaluation and trackers: the eval loss (KD and SFT parts) every --eval-steps, per loss token over the
whole eval set, the best checkpoint kept and loaded, early stopping, held-out teacher KL in train_summary.json, and
tensorboard event files with the loss scalars; missing trackers and bad settings are one-line errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from gen.cli import main
from train.config import LossConfig
from train.data import load_training_data
from train.evaluation import split_off_eval
from train.heldout import heldout_teacher_kl
from train.losses import batch_loss_sum

COMMON = ["--batch-size", "4", "--max-length", "128", "--logging-steps", "1", "--scheduler", "constant"]


def per_token_loss(model_dir, data) -> dict[str, float]:
    """Loss per loss token of the saved model over every example of `data`, KD and SFT apart (one padded batch)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = data.collator([data.dataset[i] for i in range(len(data.dataset))])
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        _, s = batch_loss_sum(hidden.last_hidden_state, model.get_output_embeddings().weight, None, batch,
                              LossConfig())
    return {"loss": (s["kd_loss_sum"] + s["sft_loss_sum"]) / (s["kd_tokens"] + s["sft_tokens"]),
            "kd": s["kd_loss_sum"] / s["kd_tokens"], "sft": s["sft_loss_sum"] / s["sft_tokens"]}


def test_eval_loss_split_best_checkpoint_heldout_kl_and_tensorboard(tiny_pair, conversations, logit_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokenizer, _, student_dir = tiny_pair
    out = tmp_path / "run"
    assert main(["train", "--student", str(student_dir), "--data", str(conversations), str(logit_shards),
                 "--out", str(out), "--max-steps", "4", "--lr", "3e-3", "--save-steps", "2", "--eval-steps", "2",
                 "--eval-data", str(logit_shards), str(conversations), "--report-to", "tensorboard", *COMMON]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    evals = summary["eval"]["history"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all({"eval_loss", "eval_kd_loss", "eval_sft_loss"} <= set(e) for e in evals)
    best = min(evals, key=lambda e: e["eval_loss"])
    assert summary["eval"]["best_eval_loss"] == pytest.approx(best["eval_loss"])
    assert summary["eval"]["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # The saved student is the best checkpoint, and the eval loss is its loss per token over the whole eval set.
    held = load_training_data([logit_shards, conversations], tokenizer, max_length=128, packing=False)
    expected = per_token_loss(out, held)
    assert best["eval_loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert best["eval_kd_loss"] == pytest.approx(expected["kd"], rel=1e-4)
    assert best["eval_sft_loss"] == pytest.approx(expected["sft"], rel=1e-4)
    # Held-out teacher KL of the final (best) student on the eval logit rows = its KD loss there (T = 1, kd_weight 1),
    # and the shared function gives the same from the shards' directory.
    heldout = summary["eval"]["heldout"]
    assert heldout["teacher_kl"] == pytest.approx(expected["kd"], rel=1e-4)
    assert heldout["rows"] == held.n_logit_rows and heldout["perplexity"] > 1
    again = heldout_teacher_kl(AutoModelForCausalLM.from_pretrained(out), logit_shards, max_length=128)
    assert again["teacher_kl"] == pytest.approx(heldout["teacher_kl"], rel=1e-5)
    # tensorboard: event files with the training and eval loss scalars, offline
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/kd_loss", "eval/loss", "eval/kd_loss", "eval/sft_loss"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_early_stopping_stops_at_the_first_evaluation_without_improvement(tiny_pair, logit_shards, tmp_path):
    _, _, student_dir = tiny_pair
    out = tmp_path / "early"
    # lr 0.3: the tiny student overshoots within a few steps, so some evaluation is not an improvement
    assert main(["train", "--student", str(student_dir), "--data", str(logit_shards), "--out", str(out),
                 "--max-steps", "12", "--lr", "0.3", "--save-steps", "1", "--eval-fraction", "0.25",
                 "--early-stopping-patience", "1", *COMMON]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    losses = [e["eval_loss"] for e in summary["eval"]["history"]]
    stop = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i]))  # patience 1
    assert summary["eval"]["early_stopped"] and summary["steps"] == stop + 1 < 12
    assert summary["eval"]["best_eval_loss"] == pytest.approx(min(losses))
    assert summary["examples"] + summary["eval"]["examples"] == summary["rows"]["logit"]


def test_split_off_eval_is_seeded_disjoint_and_never_everything():
    train, held = split_off_eval(list(range(20)), 0.25, seed=3)
    assert len(held) == 5 and sorted([*train.indices, *held.indices]) == list(range(20))
    assert split_off_eval(list(range(20)), 0.25, seed=3)[1].indices == held.indices
    assert split_off_eval(list(range(20)), 0.25, seed=4)[1].indices != held.indices
    from gen.errors import UserError

    with pytest.raises(UserError, match="holds out all 1 examples"):
        split_off_eval([0], 0.5, seed=0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--eval-steps", "3", "--save-steps", "10", "--eval-fraction", "0.2"],
     "--eval-steps 3: must divide save_steps 10 (the best checkpoint is kept among saved ones)"),
    (["--early-stopping-patience", "2"], "--early-stopping-patience: needs evaluation data (eval_data DIR or "
                                         "eval_fraction F)"),
    (["--eval-fraction", "0.2", "--eval-data", "x"], "--eval-fraction: give held-out data or a fraction to hold "
                                                     "out, not both"),
    (["--lora-merge"], "--lora-merge: needs a LoRA rank (lora R)"),
    (["--lora", "4", "--lora-target", "q_proj", "lm_head", "--lora-dropout", "0.1"],
     "--lora-dropout: not with lm_head among the LoRA targets (the fused op takes one merged head weight, so "
     "dropout on its input cannot apply)"),
])
def test_bad_settings_are_one_line_errors_before_anything_loads(conversations, tmp_path, capsys, flags, message):
    out = tmp_path / "o"
    assert main(["train", "--student", str(tmp_path / "nowhere"), "--data", str(conversations), "--out", str(out),
                 *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"gen train: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_a_tracker_that_is_not_installed_is_a_one_line_error(tiny_pair, conversations, tmp_path, capsys, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    _, _, student_dir = tiny_pair
    out = tmp_path / "o"
    assert main(["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(out),
                 "--report-to", tracker]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"gen train: error: --report-to {tracker}: the {tracker} package is not installed ("), line
    assert not out.exists()
