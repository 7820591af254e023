"""`gen train --dpo`: Direct Preference Optimization (Rafailov et al. 2023) of the student on preference rows.

Preference runs (`gen prefs`, schema `gen.data.preferences.PREFERENCE_SCHEMA`) already hold the columns TRL's
`DPOTrainer` reads -- `prompt`, `chosen`, `rejected` as conversations -- so the rows go to it as they are, tokenized
with the student's chat template. The reference model is a second copy of the student as it starts (loaded from
the same files before any step), as in the paper; TRL keeps it frozen. With `--lora R` only a PEFT adapter trains
and the reference is the same model with the adapter switched off (no second copy); `--lora-merge` also saves the
merged student. Settings DPO would silently ignore (the KD loss's knobs, `--on-policy`, `--packing`, `--qlora`,
`--eval-data`/`--eval-fraction`) are refused before anything loads (`check_dpo_settings`).

Everything else is `gen train`'s: the same settings (train/config.py; `--lr`, `--batch-size`, `--grad-accum`,
`--max-length`, `--save-steps`, `--resume`, `--bf16`, ...) fill TRL's `DPOConfig` (a `TrainingArguments`) through
`train.trainer.training_arguments`, so checkpoints, resume, `accelerate launch` configs, `log_history.json`,
`loss_curve.png` and `train_summary.json` are where `gen train` puts them.

What is logged (TRL's names, every `--logging-steps`): `loss`, `rewards/chosen`, `rewards/rejected` (beta x the
policy-to-reference log-ratio of each answer), `rewards/margins` (their difference), `rewards/accuracies` (how often
chosen out-rewards rejected). The summary also measures the margin and accuracy over the training rows before the
first step and after the last (`start` / `end`): at the start the policy is the reference, so every reward is 0;
training should raise both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from gen.data.preferences import PREFERENCE_COLUMNS, is_preference_table
from gen.data.shards import read_table
from gen.errors import InvalidSetting, UserError
from train.config import LossConfig, TrainConfig, check_settings

# TRL's metric names -> the names train_summary.json uses
_MEASURES = {"loss": "loss", "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
             "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
             "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected"}


def load_preference_rows(paths: Sequence[str | os.PathLike], split: str = "train") -> list[dict[str, Any]]:
    """The `prompt`/`chosen`/`rejected` conversations of every preference run in `paths` (a UserError names a dir
    that holds no preference rows: conversational runs and logit shards are for SFT/KD, not DPO)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        table = read_table(path, split)
        if table.num_rows == 0:
            raise UserError(f"--data {path}: no rows in split '{split}'")
        if not is_preference_table(table):
            raise UserError(f"--data {path}: not preference rows (no prompt/chosen/rejected columns); --dpo trains on "
                            f"`gen prefs` runs")
        for row in table.select(list(PREFERENCE_COLUMNS)).to_pylist():
            if row["chosen"] and row["rejected"] and row["prompt"]:
                rows.append(row)
    if not rows:
        raise UserError("--data: no complete preference pair (prompt, chosen and rejected) to train on")
    return rows


def _measure(trainer, dataset, prefix: str) -> dict[str, float]:
    """DPO's loss, rewards, margin and accuracy over `dataset` with the current weights (one evaluation pass)."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    found = {}
    for trl_name, name in _MEASURES.items():
        for key in (f"{prefix}_{trl_name}", f"eval_{trl_name}"):
            if key in metrics:
                found[name] = float(metrics[key])
                break
    return found


def _last_logged(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last training log's DPO metrics (not an evaluation's)."""
    for entry in reversed(history):
        if "loss" in entry and "rewards/margins" in entry:
            return {name: float(entry[key]) for key, name in _MEASURES.items() if key in entry}
    return {}


# gen train's settings that have no meaning for DPO on preference rows (refused before anything loads): the KD loss
# and its knobs, on-policy distillation, packing, QLoRA and held-out evaluation (not wired to DPOTrainer here).
_KD_ONLY = [f.name for f in fields(LossConfig) if f.metadata.get("cli", True)]
_NOT_FOR_DPO = {
    "on_policy": "on-policy distillation samples the student and scores it with a teacher; DPO trains on fixed pairs",
    "teacher": "DPO's reference model is the student as it starts; there is no teacher to score with",
    "teacher_base_url": "there is no teacher in DPO training",
    "teacher_tokenizer": "there is no teacher in DPO training",
    "teacher_k": "there is no teacher in DPO training",
    "packing": "DPO scores each prompt's chosen and rejected answers as separate sequences; rows cannot be packed",
    "force_temperature": "preference rows have no logit shards",
    "qlora": "not wired for DPO here; use lora R (LoRA over full-precision weights)",
    "eval_data": "held-out evaluation is not wired for DPO; the summary measures margin and accuracy at start and end",
    "eval_fraction": "held-out evaluation is not wired for DPO; the summary measures margin and accuracy at start and "
                     "end",
    "eval_steps": "held-out evaluation is not wired for DPO",
    "early_stopping_patience": "held-out evaluation is not wired for DPO",
}
# Settings of on-policy sampling: they have non-empty defaults, so they are refused when they differ from them.
_ON_POLICY_ONLY = ("on_policy_loss", "gen_temperature", "gen_max_new_tokens", "student_sampler", "sync_steps",
                   "vllm_gpu_memory_utilization")


def check_dpo_settings(config: TrainConfig) -> None:
    """Refuse, with the setting's name, every setting DPO would silently ignore (a KD loss knob, on-policy, ...)."""
    defaults = LossConfig()
    for name in _KD_ONLY:
        value = getattr(config.loss, name)
        if value != getattr(defaults, name):
            raise InvalidSetting(name, f"{name} {value}: a KD loss setting; DPO training (dpo) uses the DPO loss "
                                       f"(dpo_loss, dpo_beta) on preference pairs")
    for name, why in _NOT_FOR_DPO.items():
        value = getattr(config, name)
        if value:
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            raise InvalidSetting(name, f"{name} {shown}: not with DPO training (dpo): {why}")
    on_policy_defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in _ON_POLICY_ONLY}
    for name, default in on_policy_defaults.items():
        value = getattr(config, name)
        if value != default:
            raise InvalidSetting(name, f"{name} {value}: an on-policy sampling setting; DPO training (dpo) trains on "
                                       f"fixed preference pairs")


def train_dpo(config: TrainConfig) -> dict[str, Any]:
    """Train `config.student` with DPO on the preference runs of `config.data`; save the model, the loss curve,
    `log_history.json` and `train_summary.json` in `config.out`. Returns the summary. A refused configuration
    writes nothing."""
    from train.trainer import deepspeed_hidden_unless_used

    check_settings(config)
    check_dpo_settings(config)
    with deepspeed_hidden_unless_used():
        return _train_dpo(config)


def _train_dpo(config: TrainConfig) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from train.lora import apply_lora, lora_summary, save_merged
    from train.plot import plot_loss_curve
    from train.trainer import load_student, resolve_resume, training_arguments

    out = Path(config.out)
    resume = resolve_resume(config)
    rows = load_preference_rows(config.data, config.split)
    model, tokenizer = load_student(config.student, config.chat_template)
    if not tokenizer.chat_template:
        raise UserError(f"--student {config.student}: its tokenizer has no chat template; give one with "
                        f"--chat-template FILE (preference rows are conversations)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.lora is None:
        reference, _ = load_student(config.student, config.chat_template)  # the student as it starts, kept frozen
    else:
        # LoRA: only the adapter trains, and TRL scores the reference with the adapter switched off -- the student
        # as it starts, without a second copy in memory.
        model, reference = apply_lora(model, config), None
    dataset = Dataset.from_list(rows)
    settings = config.preference
    args = training_arguments(config, DPOConfig, beta=settings.dpo_beta, loss_type=[settings.dpo_loss],
                              max_length=config.max_length, per_device_eval_batch_size=config.batch_size,
                              # the run's dataloader order and dropout come from --seed, as in `gen train`
                              disable_dropout=True)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=list(config.extra_callbacks))
    start = _measure(trainer, dataset, "start")
    result = trainer.train(resume_from_checkpoint=resume)
    end = _measure(trainer, dataset, "end")
    history = trainer.state.log_history
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        (out / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
        plot_loss_curve(history, out / "loss_curve.png", title="DPO loss")
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = {
        "out": str(out), "objective": "dpo", "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
        "rows": {"preference": len(rows)}, "examples": len(trainer.train_dataset), "bf16": args.bf16,
        "dpo": asdict(settings), "reference_model": config.student,
        "start": start, "end": end, "last_logged": _last_logged(history),
        "loss_curve": str(out / "loss_curve.png"), "resumed_from": resume,
        "lora": lora_summary(trainer.accelerator.unwrap_model(trainer.model), config),
    }
    if config.lora_merge and trainer.is_world_process_zero():
        summary["merged"] = save_merged(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out / "merged")
    if trainer.is_world_process_zero():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
