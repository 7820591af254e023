"""A student's held-out teacher KL and perplexity on logit shards (`gen logits` output it was not trained on).

Per loss token (labels != -100 after the causal shift: the assistant tokens the logit shards mark), with the same
fused op and the same buckets as training (`train.losses.batch_loss_sum`, kernels/topk_kl.py):

- teacher KL: forward KL(teacher || student) over the teacher's top-k plus the tail bucket (`forward_kl_tail` at
  temperature 1), averaged over tokens, in nats;
- perplexity: exp of the student's mean cross-entropy on the shards' labels (the teacher's tokens).

`gen eval --logits DIR` reports both; the training summary can call `heldout_teacher_kl` the same way.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from gen.errors import UserError
from gen.logits.records import is_logit_dir
from train.config import LossConfig
from train.data import DistillCollator, LogitDataset
from train.losses import batch_loss_sum
from train.trainer import check_tokenizers, load_student

KL_LOSS = LossConfig(loss="forward_kl_tail", temperature=1.0, kd_weight=1.0)
CE_LOSS = LossConfig(kd_weight=0.0)  # no teacher positions: every loss token is hard-label cross-entropy


def heldout_teacher_kl(student: str | os.PathLike, logits_dir: str | os.PathLike, *, split: str = "train",
                       batch_size: int = 8, max_length: int | None = None, device: str | None = None
                       ) -> dict[str, Any]:
    """{"kl", "perplexity", "tokens", "rows", "teacher", "loss"} of the student at `student` (a local model
    directory) on the logit shards in `logits_dir`. The shards must share the student's tokenizer (as for
    training). `max_length` truncates rows (default: the student's context)."""
    if not is_logit_dir(logits_dir, split):
        raise UserError(f"{logits_dir}: not logit shards (write them with `gen logits`)")
    model, tokenizer = load_student(str(student))
    head = model.get_output_embeddings()
    check_tokenizers(tokenizer, int(head.weight.shape[0]), _metadata(logits_dir, split), str(logits_dir))
    limit = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
    dataset = LogitDataset(logits_dir, limit, split)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    collate = DistillCollator(pad_id=pad, k=dataset.k)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(target).eval()
    captured: dict[str, torch.Tensor] = {}

    def keep_hidden(module, args, output) -> None:  # the lm_head's input, as the trainer takes it
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    hook = model.get_decoder().register_forward_hook(keep_hidden)
    import inspect

    # [B, 1, V] logits instead of [B, L, V] where the model allows it: the losses use the hidden states.
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    kl_sum = ce_sum = 0.0
    tokens = ce_tokens = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                batch = {key: value.to(target) for key, value in batch.items()}
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                      **keep_last)
                hidden = captured.pop("hidden")
                bias = getattr(head, "bias", None)
                _, kl_stats = batch_loss_sum(hidden, head.weight, bias, batch, KL_LOSS)
                _, ce_stats = batch_loss_sum(hidden, head.weight, bias, batch, CE_LOSS)
                kl_sum += kl_stats["kd_loss_sum"]
                ce_sum += ce_stats["sft_loss_sum"]
                tokens += int(kl_stats["kd_tokens"])
                ce_tokens += int(ce_stats["sft_tokens"])
    finally:
        hook.remove()
    if tokens == 0:
        raise UserError(f"{logits_dir}: no loss tokens in the logit shards")
    return {"kl": kl_sum / tokens, "perplexity": math.exp(ce_sum / max(ce_tokens, 1)), "tokens": tokens, "rows": len(dataset),
            "teacher": dataset.metadata.get("teacher"), "loss": KL_LOSS.loss, "logits": str(logits_dir)}


def _metadata(logits_dir: str | os.PathLike, split: str) -> dict[str, Any] | None:
    from gen.logits.records import read_logit_metadata

    return read_logit_metadata(logits_dir, split)
