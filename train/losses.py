"""The training loss of a batch from the student's final hidden states and its `lm_head`, through the fused top-k
KL op of kernels/topk_kl.py (or, for comparison, the same loss on materialized full logits).

Per loss token t (labels[t+1] != -100, the causal-LM shift):
- positions with teacher data (logit shards): ``kd_weight * T^2 * D(teacher || student) + (1 - kd_weight) * CE``,
  D = the chosen divergence over the teacher's top-k plus the tail bucket;
- positions without (conversational rows, SFT): ``CE``, computed by the same op with a one-hot "teacher" (the label
  with log p = 0 and an empty tail): forward KL against a one-hot distribution is exactly -log q(label), so SFT never
  materializes [N, V] logits either.

The function returns the *sum* over loss tokens; the trainer divides by the number of loss tokens of the whole
accumulated batch (all micro-batches and devices), so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import torch

from kernels.losses import PARAMS
from kernels.topk_kl import topk_kl_loss, topk_kl_reference
from train.config import LossConfig

IGNORE_INDEX = -100


def _op(impl: str):
    return topk_kl_loss if impl == "fused" else topk_kl_reference


def batch_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   batch: dict[str, torch.Tensor], cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """hidden [B, L, H] (final hidden states, the lm_head's input), weight [V, H], bias [V] or None; batch from
    train.data.DistillCollator. Returns (sum of per-token losses (scalar), stats: kd_tokens, sft_tokens,
    kd_loss_sum, sft_loss_sum)."""
    H = hidden.shape[-1]
    h = hidden[:, :-1].reshape(-1, H)
    y = batch["labels"][:, 1:].reshape(-1)
    keep = y != IGNORE_INDEX
    if "teacher_mask" in batch and cfg.kd_weight > 0:
        teacher = batch["teacher_mask"][:, :-1].reshape(-1)
    else:
        teacher = torch.zeros_like(keep)
    kd_rows = (keep & teacher).nonzero().squeeze(1)
    sft_rows = (keep & ~teacher).nonzero().squeeze(1)
    op = _op(cfg.impl)
    common = {"ignore_index": IGNORE_INDEX, "reduction": "sum"}
    if cfg.impl == "fused":
        common["memory_budget_bytes"] = cfg.memory_budget_bytes
    total = hidden.new_zeros((), dtype=torch.float32)
    stats = {"kd_tokens": float(kd_rows.numel()), "sft_tokens": float(sft_rows.numel()), "kd_loss_sum": 0.0,
             "sft_loss_sum": 0.0}
    if kd_rows.numel():
        K = batch["teacher_topk_ids"].shape[-1]
        pick = lambda t, *shape: t[:, :-1].reshape(-1, *shape).index_select(0, kd_rows)  # noqa: E731
        # loss = kd * (T^2 D + ((1 - kd) / kd) CE): the op mixes CE in as `ce_weight * CE`
        kd_loss = cfg.kd_weight * op(
            h.index_select(0, kd_rows), weight, pick(batch["teacher_topk_ids"], K),
            pick(batch["teacher_topk_logprobs"], K), pick(batch["teacher_tail_logmass"]), y.index_select(0, kd_rows),
            bias, loss=cfg.loss, temperature=cfg.temperature, ce_weight=(1.0 - cfg.kd_weight) / cfg.kd_weight,
            **{name: getattr(cfg, name) for name in PARAMS}, **common)
        total = total + kd_loss
        stats["kd_loss_sum"] = float(kd_loss.detach())
    if sft_rows.numel():
        labels = y.index_select(0, sft_rows)
        one_hot_ids = labels[:, None]
        one_hot_logprobs = torch.zeros(one_hot_ids.shape, dtype=torch.float32, device=h.device)
        empty_tail = torch.full(labels.shape, float("-inf"), dtype=torch.float32, device=h.device)
        sft_loss = op(h.index_select(0, sft_rows), weight, one_hot_ids, one_hot_logprobs, empty_tail, labels, bias,
                      loss="forward_kl_tail", **common)
        total = total + sft_loss
        stats["sft_loss_sum"] = float(sft_loss.detach())
    return total, stats
