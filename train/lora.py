"""LoRA (Hu et al. 2021) and QLoRA (Dettmers et al. 2023) students for `gen train --lora R [--qlora]`, through PEFT.

The trainer's loss never calls the `lm_head` module: it hands the head's weight to the fused top-k KL op
(train/losses.py). With LoRA on the head, the head's output is ``W h + (alpha / r) B A h`` (dropout 0), i.e. the
plain head with the *effective* weight ``W + (alpha / r) B A``; `adapted_head_weight` builds that sum with autograd
(peft's `get_delta_weight`, the same product peft merges with), so the op's dW flows into B and A exactly as the
dense forward's would, and [tokens, vocab] logits still never exist. LoRA elsewhere changes only the hidden states,
which the op receives as usual.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from gen.errors import InvalidSetting
from train.config import TrainConfig


def quantization_config(config: TrainConfig):
    """The 4-bit NF4 `BitsAndBytesConfig` for `--qlora` (None without it). bitsandbytes' 4-bit kernels need a CUDA
    GPU: anywhere else this is a one-line InvalidSetting, before anything is loaded."""
    if not config.qlora:
        return None
    if not torch.cuda.is_available():
        raise InvalidSetting("qlora", "qlora: needs a CUDA GPU (bitsandbytes 4-bit weights); this machine has none -- "
                                      "use lora R alone for LoRA over full-precision weights")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidSetting("qlora", "qlora: needs the bitsandbytes package (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    targets = list(config.lora_target)
    return LoraConfig(r=config.lora, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")


def apply_lora(model, config: TrainConfig):
    """`model` wrapped as a PEFT LoRA model (only the adapter trains), or `model` itself without `config.lora`.
    A target that matches no module is an InvalidSetting naming it."""
    if config.lora is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.qlora:  # casts norms to fp32, enables input grads for checkpointing, as QLoRA training expects
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    try:
        return get_peft_model(model, lora_config(config))
    except ValueError as exc:  # "Target modules {...} not found in the base model"
        raise InvalidSetting("lora_target", f"lora_target {' '.join(config.lora_target)}: "
                                            f"{str(exc).strip().splitlines()[0]}") from None


def is_lora_layer(module: Any) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def adapted_head_weight(head, weight: torch.Tensor) -> torch.Tensor:
    """The weight the op must use for `head`: `weight` (the base [V, H] weight, already gathered if sharded) plus
    each active LoRA adapter's (alpha / r) B A, differentiably; `weight` itself when `head` carries no active,
    unmerged adapter."""
    if not is_lora_layer(head) or head.disable_adapters or head.merged:
        return weight
    for name in head.active_adapters:
        if name in head.lora_A:
            if name in getattr(head, "lora_variant", {}):  # DoRA and other variants are not a plain sum
                raise InvalidSetting("lora_target", "lora_target lm_head: only plain LoRA adapters are supported on "
                                                    "the head")
            weight = weight + head.get_delta_weight(name).to(weight.dtype)
    return weight


def trainable_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


def lora_summary(model, config: TrainConfig) -> dict[str, Any] | None:
    """What train_summary.json records of the adapter (None without LoRA)."""
    if config.lora is None:
        return None
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    return {"r": config.lora, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "qlora": config.qlora,
            "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
            "parameters": trainable_parameters(model)}


def save_merged(model, tokenizer, directory) -> str:
    """The student with its adapter folded into the weights (a plain transformers checkpoint) in `directory`."""
    merged = model.merge_and_unload()
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
