"""`gen train` on tiny random Llamas: SFT and KD reduce their loss, the fused op and full logits give the same
gradients, token-count normalization under gradient accumulation, packing, resume, and the tokenizer guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from gen.cli import main
from gen.errors import UserError
from gen.logits.records import tokenizer_fingerprint
from kernels.losses import LOSSES
from train.config import LossConfig
from train.data import load_training_data
from train.losses import batch_loss_sum
from train.trainer import DistillTrainer, TrainConfig, check_tokenizers, train

FAST = {"max_length": 256, "batch_size": 4, "logging_steps": 1, "lr": 3e-3, "scheduler": "constant"}


def whole_set_loss(model, data, cfg: LossConfig = LossConfig()) -> float:
    """Mean per-token loss of `model` over every example of `data` (one padded batch)."""
    batch = data.collator([data.dataset[i] for i in range(len(data.dataset))])
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        total, _ = batch_loss_sum(hidden.last_hidden_state, model.get_output_embeddings().weight, None, batch, cfg)
    return float(total / (batch["shift_labels"] != -100).sum())


def mixed_items(tiny_pair, conversations, logit_shards, n: int = 6):
    """(items, collator): n/2 logit rows (KD) and n/2 conversational rows (SFT)."""
    tokenizer, _, _ = tiny_pair
    data = load_training_data([logit_shards, conversations], tokenizer, max_length=256, packing=False)
    half = data.n_logit_rows  # logit rows come first, then conversational rows
    return [data.dataset[i] for i in list(range(n // 2)) + list(range(half, half + n - n // 2))], data.collator


def mixed_batch(tiny_pair, conversations, logit_shards, n: int = 6):
    items, collator = mixed_items(tiny_pair, conversations, logit_shards, n)
    return collator(items)


def test_sft_and_kd_each_reduce_their_loss(tiny_pair, conversations, logit_shards, tmp_path):
    tokenizer, _, student_dir = tiny_pair
    for name, data_dir in (("sft", conversations), ("kd", logit_shards)):
        out = tmp_path / name
        argv = ["train", "--student", str(student_dir), "--data", str(data_dir), "--out", str(out),
                "--max-steps", "8", "--lr", "3e-3", "--batch-size", "4", "--max-length", "256",
                "--logging-steps", "1", "--save-steps", "100"]
        assert main(argv) == 0
        data = load_training_data([data_dir], tokenizer, max_length=256, packing=False)
        before = whole_set_loss(AutoModelForCausalLM.from_pretrained(student_dir), data)
        after = whole_set_loss(AutoModelForCausalLM.from_pretrained(out), data)
        assert after < 0.85 * before, (name, before, after)
        history = json.loads((out / "log_history.json").read_text())
        logged = [entry for entry in history if "loss" in entry]
        assert len(logged) == 8 and all(entry["tokens_per_second"] > 0 for entry in logged)
        assert all(entry["peak_memory_mb"] > 0 for entry in logged)
        assert (name == "kd") == ("kd_loss" in logged[0])
        assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fused_and_full_logits_paths_give_the_same_gradients(tiny_pair, conversations, logit_shards, tmp_path):
    """Through DistillTrainer.compute_loss on a batch mixing KD rows and SFT rows (kd_weight 0.7: KD + CE)."""
    _, _, student_dir = tiny_pair
    batch = mixed_batch(tiny_pair, conversations, logit_shards)
    assert batch["teacher_mask"].any() and not batch["teacher_mask"].all()
    grads = {}
    for impl in ("fused", "naive"):
        model = AutoModelForCausalLM.from_pretrained(student_dir)
        args = TrainingArguments(output_dir=str(tmp_path / impl), report_to="none", remove_unused_columns=False)
        trainer = DistillTrainer(model=model, args=args, loss_config=LossConfig(kd_weight=0.7, temperature=2.0,
                                                                               impl=impl))
        loss = trainer.compute_loss(model, batch, num_items_in_batch=(batch["shift_labels"] != -100).sum())
        loss.backward()
        grads[impl] = (float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads["fused"][0] == pytest.approx(grads["naive"][0], rel=1e-5)
    for name, grad in grads["fused"][1].items():
        torch.testing.assert_close(grad, grads["naive"][1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert grads["fused"][1]["lm_head.weight"].abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_matches_full_logits(tiny_pair, conversations, logit_shards, loss):
    _, _, student_dir = tiny_pair
    batch = mixed_batch(tiny_pair, conversations, logit_shards)
    torch.manual_seed(0)
    hidden = torch.randn(*batch["input_ids"].shape, 64, dtype=torch.float64) * 3
    weight = torch.randn(batch["teacher_topk_ids"].max().item() + 50, 64, dtype=torch.float64)
    results = []
    for impl in ("fused", "naive"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        total, _ = batch_loss_sum(h, w, None, batch, LossConfig(loss=loss, temperature=1.5, kd_weight=0.8,
                                                                impl=impl))
        total.backward()
        results.append((total.detach(), h.grad, w.grad))
    for fused, naive in zip(*results):
        torch.testing.assert_close(fused, naive, rtol=1e-9, atol=1e-9)


def test_forward_kl_with_tail_equals_a_hand_written_full_logits_loss(tiny_pair, conversations, logit_shards):
    """Independent of the kernel module: KL over the K+1 buckets and CE written out from full log-softmax."""
    batch = mixed_batch(tiny_pair, conversations, logit_shards)
    torch.manual_seed(1)
    hidden = torch.randn(*batch["input_ids"].shape, 64, dtype=torch.float64)
    weight = (torch.randn(400, 64, dtype=torch.float64) * 2).requires_grad_()
    fused, _ = batch_loss_sum(hidden, weight, None, batch, LossConfig(kd_weight=0.6))
    logq = torch.log_softmax(hidden[:, :-1] @ weight.T, -1)
    y = batch["labels"][:, 1:]
    keep, teacher = y != -100, batch["teacher_mask"][:, :-1]
    ids = batch["teacher_topk_ids"][:, :-1].long()
    logp_top = batch["teacher_topk_logprobs"][:, :-1].double()
    logp_tail = batch["teacher_tail_logmass"][:, :-1].double()
    logq_top = logq.gather(-1, ids)
    logq_tail = torch.log1p(-logq_top.exp().sum(-1))
    kl = (logp_top.exp() * (logp_top - logq_top)).sum(-1) + logp_tail.exp() * (logp_tail - logq_tail)
    ce = -logq.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    per_token = torch.where(teacher, 0.6 * kl + 0.4 * ce, ce)
    expected = per_token[keep].sum()
    torch.testing.assert_close(fused, expected, rtol=1e-7, atol=1e-7)
    g_fused, = torch.autograd.grad(fused, weight)
    g_expected, = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(g_fused, g_expected, rtol=1e-6, atol=1e-8)


def test_packing_gives_the_same_loss_as_padding(tiny_pair, conversations, logit_shards, tmp_path):
    """Packed rows (position_ids restart, block-diagonal mask) give every example the loss it has alone, through
    the trainer's own forward (which must disable the KV cache, or transformers ignores the packing)."""
    from train.data import PackedDataset

    _, _, student_dir = tiny_pair
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=False)
    trainer = DistillTrainer(model=model, args=args, loss_config=LossConfig(kd_weight=0.5))
    items, collator = mixed_items(tiny_pair, conversations, logit_shards, n=6)
    packed = PackedDataset(items, max_length=sum(len(item["input_ids"]) for item in items[:3]))
    assert len(packed) < len(items)
    padded_batch, packed_batch = collator(items), collator([packed[i] for i in range(len(packed))])
    assert "position_ids" in packed_batch and "attention_mask" not in packed_batch
    tokens = (padded_batch["shift_labels"] != -100).sum()
    assert tokens == (packed_batch["shift_labels"] != -100).sum()
    with torch.no_grad():
        padded = trainer.compute_loss(model, padded_batch, num_items_in_batch=tokens)
        packed_loss = trainer.compute_loss(model, packed_batch, num_items_in_batch=tokens)
    assert float(packed_loss) == pytest.approx(float(padded), rel=1e-6)


def test_gradient_accumulation_normalizes_by_tokens_of_the_whole_step(tiny_pair, conversations, tmp_path):
    """4 sequences of uneven length in one micro-batch, or in 2 x 2 with accumulation: same loss and gradient."""
    _, _, student_dir = tiny_pair
    logged = []
    for batch_size, accum in ((4, 1), (2, 2)):
        config = TrainConfig(student=str(student_dir), data=[str(conversations)], out=str(tmp_path / f"{accum}"),
                             max_steps=1, grad_accum=accum, save_steps=100, **{**FAST, "batch_size": batch_size})
        train(config)
        history = json.loads((tmp_path / f"{accum}" / "log_history.json").read_text())
        logged.append(next(entry for entry in history if "loss" in entry))
    assert logged[0]["loss"] == pytest.approx(logged[1]["loss"], rel=1e-5)
    assert logged[0]["grad_norm"] == pytest.approx(logged[1]["grad_norm"], rel=1e-4)


class StopAt(TrainerCallback):
    """Ends training after `step` optimizer steps, as a killed job would (the checkpoint at `step` is on disk)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_from_a_checkpoint_continues_the_same_run(tiny_pair, logit_shards, tmp_path):
    _, _, student_dir = tiny_pair

    def run(out, **extra):
        config = TrainConfig(student=str(student_dir), data=[str(logit_shards)], out=str(out), max_steps=6,
                             save_steps=3, **{**FAST, "scheduler": "cosine"}, **extra)
        train(config)
        return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "resumed", extra_callbacks=[StopAt(3)])
    assert sorted(interrupted) == [1, 2, 3] and (tmp_path / "resumed" / "checkpoint-3").is_dir()
    resumed = run(tmp_path / "resumed", resume=True)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the log history continues from the checkpoint's
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
    assert straight[6] < straight[1]


def test_mismatched_teacher_and_student_tokenizers_are_refused(tiny_pair, logit_shards, tmp_path, capsys):
    from tests.tiny_models import build_tiny_llama

    tokenizer, _, _ = tiny_pair
    other = build_tiny_llama(tmp_path / "other", corpus=["a completely different corpus of words and letters"] * 3,
                             vocab_size=300)
    code = main(["train", "--student", str(other), "--data", str(logit_shards), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "tokenizer" in err and "differs from the student's" in err
    meta = {"tokenizer_hash": tokenizer_fingerprint(tokenizer),
            "teacher": "hf:t", "vocab_size": len(tokenizer) - 10}
    with pytest.raises(UserError, match="vocab size mismatch"):
        check_tokenizers(tokenizer, len(tokenizer), meta)
    check_tokenizers(tokenizer, len(tokenizer) + 64, {**meta, "vocab_size": len(tokenizer)})  # padding rows: fine
    assert math.isfinite(len(tokenizer))
