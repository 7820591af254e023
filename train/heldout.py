"""Held-out teacher KL: how far the student's next-token distribution is from the teacher's on logit shards it did
not train on -- KL(teacher || student) at temperature 1 over the teacher's top-k plus the tail bucket (the
`forward_kl_tail` divergence of kernels/losses.py, the same quantity the KD loss minimizes at T = 1, kd_weight = 1),
averaged over the tokens with teacher data. The student's cross-entropy on the hard labels of the same tokens and
its perplexity come with it.

    heldout_teacher_kl(model, "heldout-logits/")  -> {"teacher_kl", "student_ce", "perplexity", "tokens", "rows"}

Computed like the training loss (final hidden states + the lm_head weight through the fused op, so [tokens, vocab]
logits never exist), on one process with an unsharded model; a LoRA-adapted head counts with its adapter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from train.config import LossConfig
from train.lora import adapted_head_weight
from train.losses import batch_loss_sum

KL = LossConfig(loss="forward_kl_tail", temperature=1.0, kd_weight=1.0)
CE = LossConfig(loss="forward_kl_tail", temperature=1.0, kd_weight=0.0)  # kd_weight 0: every token as hard-label CE


def _final_hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's final hidden states [B, L, H] (the lm_head's input), caught with a forward hook."""
    caught: list[torch.Tensor] = []

    def keep(module, args, output):
        caught.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        forward = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
        model(**forward, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return caught[-1]


@torch.no_grad()
def heldout_teacher_kl_of_items(model, items: Sequence[dict[str, Any]], collator, *,
                                batch_size: int = 8) -> dict[str, float] | None:
    """The held-out numbers over `items` (train.data examples; those without teacher data are skipped), batched by
    `collator` (train.data.DistillCollator with the shards' K). None when no item has teacher data."""
    items = [item for item in items if "topk_ids" in item]
    if not items:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    totals = {"kl": 0.0, "ce": 0.0, "tokens": 0.0}
    try:
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collator(items[start:start + batch_size]).items()}
            hidden = _final_hidden(model, batch)
            weight = adapted_head_weight(head, head.weight)
            bias = getattr(head, "bias", None)
            _, kl = batch_loss_sum(hidden, weight, bias, batch, KL)
            # CE on the same tokens: only the positions with teacher data
            ce_batch = {**batch, "labels": batch["labels"].masked_fill(~batch["teacher_mask"], -100)}
            _, ce = batch_loss_sum(hidden, weight, bias, ce_batch, CE)
            totals["kl"] += kl["kd_loss_sum"]
            totals["tokens"] += kl["kd_tokens"]
            totals["ce"] += ce["sft_loss_sum"]
    finally:
        model.train(was_training)
    tokens = max(totals["tokens"], 1.0)
    ce = totals["ce"] / tokens
    return {"teacher_kl": totals["kl"] / tokens, "student_ce": ce, "perplexity": math.exp(min(ce, 700.0)),
            "tokens": int(totals["tokens"]), "rows": len(items)}


def heldout_teacher_kl(model, logit_dir: str | os.PathLike, *, max_length: int = 2048, split: str = "train",
                       batch_size: int = 8) -> dict[str, float] | None:
    """The held-out numbers of `model` (a transformers or PEFT causal LM) on the logit shards in `logit_dir`."""
    from train.data import DistillCollator, LogitDataset

    dataset = LogitDataset(logit_dir, max_length, split)
    collator = DistillCollator(pad_id=0, k=dataset.k)
    return heldout_teacher_kl_of_items(model, [dataset[i] for i in range(len(dataset))], collator,
                                       batch_size=batch_size)
