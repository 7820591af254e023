"""`gen train --lora`: the fused op gets the LoRA-adapted lm_head, so LoRA on the head and LoRA elsewhere give the
gradients of the dense computation (full logits through the PEFT model's own forward); `gen train --lora` end to
end saves an adapter (and a merged student) that load; `--qlora` off a CUDA GPU is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from gen.cli import main
from tests.train.test_train import mixed_batch
from train.config import LossConfig, TrainConfig
from train.lora import apply_lora
from train.trainer import DistillTrainer


def dense_loss(model, batch, kd_weight: float) -> torch.Tensor:
    """KD (forward KL over top-k + tail, T = 1) mixed with CE on teacher positions, CE elsewhere: written out from
    the full logits of the model's normal forward (independent of train/losses.py and the kernels)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logq = torch.log_softmax(logits[:, :-1].double(), -1)
    y = batch["labels"][:, 1:]
    keep, teacher = y != -100, batch["teacher_mask"][:, :-1]
    ids = batch["teacher_topk_ids"][:, :-1].long()
    logp_top = batch["teacher_topk_logprobs"][:, :-1].double()
    logp_tail = batch["teacher_tail_logmass"][:, :-1].double()
    logq_top = logq.gather(-1, ids)
    logq_tail = torch.log1p(-logq_top.exp().sum(-1))
    kl = (logp_top.exp() * (logp_top - logq_top)).sum(-1) + logp_tail.exp() * (logp_tail - logq_tail)
    ce = -logq.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    per_token = torch.where(teacher, kd_weight * kl + (1 - kd_weight) * ce, ce)
    return per_token[keep].sum() / keep.sum()


@pytest.mark.parametrize("targets", [["lm_head"], ["q_proj", "v_proj", "down_proj"]], ids=["head", "elsewhere"])
def test_lora_gradients_equal_the_dense_computation(tiny_pair, conversations, logit_shards, tmp_path, targets):
    _, _, student_dir = tiny_pair
    batch = mixed_batch(tiny_pair, conversations, logit_shards)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float64)
    config = TrainConfig(student=str(student_dir), data=["d"], out=str(tmp_path), lora=4, lora_alpha=8.0,
                         lora_target=targets)
    model = apply_lora(model, config)
    lora = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in name for name in lora)
    assert any(".lm_head." in name for name in lora) == (targets == ["lm_head"])
    torch.manual_seed(0)
    with torch.no_grad():  # B = 0 at init would make every A gradient 0: give the adapter a real update
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(std=0.2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=False, use_cpu=True)
    trainer = DistillTrainer(model=model, args=args, loss_config=LossConfig(kd_weight=0.7))
    fused = trainer.compute_loss(model, batch, num_items_in_batch=(batch["shift_labels"] != -100).sum())
    g_fused = torch.autograd.grad(fused, list(lora.values()))
    dense = dense_loss(model, batch, 0.7)
    g_dense = torch.autograd.grad(dense, list(lora.values()))
    torch.testing.assert_close(fused, dense, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(lora, g_fused, g_dense):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=name)
    # the adapter is what the fused op saw: without it the loss differs
    with model.disable_adapter():
        plain = trainer.compute_loss(model, batch, num_items_in_batch=(batch["shift_labels"] != -100).sum())
    assert abs(float(plain) - float(fused)) > 1e-4


def test_gen_train_lora_saves_an_adapter_and_a_merged_student_that_load(tiny_pair, logit_shards, tmp_path):
    from peft import AutoPeftModelForCausalLM

    _, _, student_dir = tiny_pair
    out = tmp_path / "lora"
    assert main(["train", "--student", str(student_dir), "--data", str(logit_shards), "--out", str(out),
                 "--max-steps", "3", "--lr", "1e-2", "--batch-size", "4", "--max-length", "128", "--save-steps", "100",
                 "--logging-steps", "1", "--lora", "4", "--lora-target", "q_proj", "v_proj", "lm_head",
                 "--lora-merge"]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj", "lm_head"}
    assert not (out / "model.safetensors").exists()  # the adapter only, not a full copy of the student
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["lora"]["parameters"]["trainable"] < summary["lora"]["parameters"]["total"] / 5
    loaded = AutoPeftModelForCausalLM.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(student_dir)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        adapted, flat, plain = loaded(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(adapted, flat, rtol=1e-4, atol=1e-4)  # merging keeps the trained function
    assert (adapted - plain).abs().max() > 1e-3  # and training changed it


def test_qlora_without_a_cuda_gpu_is_a_one_line_error(tiny_pair, conversations, tmp_path, capsys):
    import importlib.util

    _, _, student_dir = tiny_pair
    code = main(["train", "--student", str(student_dir), "--data", str(conversations), "--out", str(tmp_path / "q"),
                 "--lora", "4", "--qlora", "--max-steps", "1", "--max-length", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    if not torch.cuda.is_available():
        assert code == 2 and err[-1].startswith("gen train: error: --qlora: needs a CUDA GPU"), err
        assert not (tmp_path / "q").exists()
    elif importlib.util.find_spec("bitsandbytes") is None:
        assert code == 2 and err[-1] == "gen train: error: --qlora: needs the bitsandbytes package " \
                                       "(pip install bitsandbytes)", err
    else:  # a GPU with bitsandbytes: QLoRA trains
        assert code == 0
