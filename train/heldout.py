"""How close a student is to its teacher on held-out logit shards (rows it was not trained on), without loading the
teacher: the shards hold the teacher's top-k log-probs and the exact log-mass of the rest (`gen logits`).

Per loss token (an assistant token, labels != -100):
- `kl`: KL(teacher || student) over the teacher's top-k tokens plus one bucket for all other tokens -- the
  `forward_kl_tail` loss of kernels/losses.py, computed by the fused op (no [tokens, vocab] logits). Merging the
  tail into one bucket can only lower a KL (data-processing inequality), so this is a lower bound of the full-vocabulary
  KL, exact up to the tail's inner shape; with an exact tail (`hf:` capture) and K=64 it is what KD minimizes.
- `ppl`: the student's perplexity of the held-out text, exp(mean -log q(label)), through the same op (one-hot teacher).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from train.config import LossConfig
from train.losses import batch_loss_sum


def heldout_metrics(student: str | os.PathLike, logit_dirs: Sequence[str | os.PathLike], *, max_length: int = 2048,
                    batch_size: int = 8) -> dict[str, Any]:
    """{kl, ppl, tokens, rows} of `student` (a checkpoint dir) over the held-out logit shards in `logit_dirs`
    (see the module doc). The student must share the shards' tokenizer (checked as `gen train` does)."""
    from train.data import load_training_data
    from train.trainer import check_tokenizers, load_student

    model, tokenizer = load_student(str(student))
    model.eval()
    data = load_training_data([str(d) for d in logit_dirs], tokenizer, max_length=max_length, packing=False)
    check_tokenizers(tokenizer, model.get_output_embeddings().weight.shape[0], data.logit_metadata,
                     ", ".join(map(str, logit_dirs)))
    head = model.get_output_embeddings()
    kd = LossConfig(loss="forward_kl_tail", kd_weight=1.0)
    ce = LossConfig(kd_weight=0.0)  # every loss token through the hard-label (one-hot teacher) path
    kl_sum = nll_sum = 0.0
    tokens = 0.0
    with torch.inference_mode():
        for start in range(0, len(data.dataset), batch_size):
            batch = data.collator([data.dataset[i] for i in range(start, min(start + batch_size, len(data.dataset)))])
            hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         use_cache=False).last_hidden_state
            _, kd_stats = batch_loss_sum(hidden, head.weight, getattr(head, "bias", None), batch, kd)
            _, ce_stats = batch_loss_sum(hidden, head.weight, getattr(head, "bias", None), batch, ce)
            kl_sum += kd_stats["kd_loss_sum"]
            nll_sum += ce_stats["sft_loss_sum"]
            tokens += ce_stats["sft_tokens"]
    tokens = max(tokens, 1.0)
    return {"kl": kl_sum / tokens, "ppl": math.exp(nll_sum / tokens), "tokens": int(tokens),
            "rows": len(data.dataset)}
