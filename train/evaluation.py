"""Evaluation during `gen train`: the held-out set (`--eval-data DIR` or `--eval-fraction F` of `--data`), the
TrainingArguments that evaluate every `--eval-steps` and keep the best checkpoint (lowest eval loss), and early
stopping (`--early-stopping-patience`).

The eval loss is the training loss on held-out examples, per loss token over the whole eval set (not a mean of
per-batch means), split like the training log into `eval_kd_loss` (teacher positions) and `eval_sft_loss` (hard-label
positions): DistillTrainer.evaluation_loop sums them. The held-out teacher KL of the final student on the eval logit
rows (train/heldout.py) goes into train_summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gen.errors import UserError
from train.config import TrainConfig


@dataclass
class EvalData:
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset | None
    source: str | None  # what the eval set is, for the summary


def evaluating(config: TrainConfig) -> bool:
    return bool(config.eval_data or config.eval_fraction)


def split_off_eval(dataset: torch.utils.data.Dataset, fraction: float, seed: int):
    """(train, eval) subsets: a seeded random `fraction` of the examples (at least one, never all) held out."""
    n = len(dataset)
    n_eval = max(1, round(n * fraction))
    if n_eval >= n:
        raise UserError(f"--eval-fraction {fraction}: holds out all {n} examples; lower it or add --data")
    order = np.random.default_rng(seed).permutation(n)
    return (torch.utils.data.Subset(dataset, sorted(order[n_eval:].tolist())),
            torch.utils.data.Subset(dataset, sorted(order[:n_eval].tolist())))


def evaluation_data(config: TrainConfig, data, tokenizer) -> EvalData:
    """The train and eval datasets of the run (`data`: train.data.TrainingData of `--data`, whose collator then
    also serves the eval batches)."""
    from train.data import load_training_data

    if config.eval_fraction:
        train, held = split_off_eval(data.dataset, config.eval_fraction, config.seed)
        return EvalData(train, held, f"{len(held)} of {len(data.dataset)} --data examples (eval_fraction "
                                     f"{config.eval_fraction}, seed {config.seed})")
    if not config.eval_data:
        return EvalData(data.dataset, None, None)
    held = load_training_data(config.eval_data, tokenizer, max_length=config.max_length, packing=config.packing,
                              split=config.split)
    if held.logit_metadata and data.logit_metadata:
        ours, theirs = data.logit_metadata, held.logit_metadata
        if (ours["tokenizer_hash"], ours["k"]) != (theirs["tokenizer_hash"], theirs["k"]):
            raise UserError(f"--eval-data {' '.join(map(str, config.eval_data))}: logit shards disagree with --data "
                            f"on the teacher's tokenizer or K")
    if held.logit_metadata and data.collator.k is None:  # SFT-only training: the collator must still carry K
        data.collator.k = held.logit_metadata["k"]
    return EvalData(data.dataset, held.dataset, " ".join(map(str, config.eval_data)))


def evaluation_arguments(config: TrainConfig) -> dict[str, Any]:
    """TrainingArguments fields for evaluation: every eval_steps (default save_steps), the best checkpoint by eval
    loss kept and loaded at the end. Empty without evaluation data."""
    if not evaluating(config):
        return {}
    return {"eval_strategy": "steps", "eval_steps": config.eval_steps or config.save_steps,
            "per_device_eval_batch_size": config.batch_size, "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss", "greater_is_better": False, "prediction_loss_only": True}


def evaluation_callbacks(config: TrainConfig) -> list:
    if config.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]


def evaluation_summary(trainer, config: TrainConfig, eval_set: EvalData, collator) -> dict[str, Any] | None:
    """train_summary.json's "eval": the eval logs, the best checkpoint and metric, whether training stopped early,
    and the held-out teacher KL of the final (best) student on the eval set's logit rows."""
    if eval_set.eval is None:
        return None
    from train.heldout import heldout_teacher_kl_of_items

    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    state = trainer.state
    planned = state.max_steps
    summary = {"data": eval_set.source, "examples": len(eval_set.eval), "every_steps": trainer.args.eval_steps,
               "history": history, "best_checkpoint": state.best_model_checkpoint, "best_eval_loss": state.best_metric,
               "early_stopped": config.early_stopping_patience is not None and state.global_step < planned}
    if trainer.accelerator.num_processes == 1:
        model = trainer.accelerator.unwrap_model(trainer.model)
        items = [eval_set.eval[i] for i in range(len(eval_set.eval))]
        summary["heldout"] = heldout_teacher_kl_of_items(model, items, collator, batch_size=config.batch_size)
    return summary
