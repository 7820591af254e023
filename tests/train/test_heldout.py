"""train.heldout.heldout_teacher_kl (the shared held-out function, merged from the `artifacts` branch, used by
`make distill-demo`): held-out KL to the teacher (top-k + tail buckets, from the logit shards) and the student's
perplexity, checked against the same quantities computed independently from both models' full logits."""

from __future__ import annotations

import math

import torch

from train.heldout import heldout_teacher_kl


def full_logit_metrics(teacher_dir, student_dir, logit_dir):
    """KL over the teacher's top-k + one tail bucket, and perplexity, from both models' full logits (float64)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import load_training_data

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    data = load_training_data([logit_dir], tokenizer, max_length=2048, packing=False)
    batch = data.collator([data.dataset[i] for i in range(len(data.dataset))])
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        logp = torch.log_softmax(AutoModelForCausalLM.from_pretrained(teacher_dir)(**kwargs).logits.double(), -1)
        logq = torch.log_softmax(AutoModelForCausalLM.from_pretrained(student_dir)(**kwargs).logits.double(), -1)
    logp, logq = logp[:, :-1], logq[:, :-1]
    y = batch["labels"][:, 1:]
    keep = y != -100
    ids = batch["teacher_topk_ids"][:, :-1].long()
    p_top, q_top = logp.gather(-1, ids).exp(), logq.gather(-1, ids).exp()
    p_tail, q_tail = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    kl = (p_top * (p_top.log() - q_top.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    nll = -logq.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    return float(kl[keep].mean()), math.exp(float(nll[keep].mean())), int(keep.sum())


def test_heldout_teacher_kl_matches_full_logits(tiny_pair, logit_shards):
    from transformers import AutoModelForCausalLM

    _, teacher_dir, student_dir = tiny_pair
    got = heldout_teacher_kl(AutoModelForCausalLM.from_pretrained(student_dir), logit_shards, batch_size=5)
    kl, ppl, tokens = full_logit_metrics(teacher_dir, student_dir, logit_shards)
    assert got["tokens"] == tokens and got["rows"] == 24
    assert math.isclose(got["perplexity"], ppl, rel_tol=1e-4)
    assert math.isclose(got["teacher_kl"], kl, rel_tol=2e-2, abs_tol=1e-4)  # the shards hold fp16 teacher log-probs
    own = heldout_teacher_kl(AutoModelForCausalLM.from_pretrained(teacher_dir), logit_shards)
    assert abs(own["teacher_kl"]) < 1e-3 < got["teacher_kl"]  # the teacher against its own captured distribution
