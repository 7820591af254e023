"""`gen train`: fine-tune any Hugging Face causal LM from shards -- SFT, top-k KD, or both -- with a
`transformers.Trainer` subclass whose loss goes through the fused top-k KL op (train/losses.py).

Why a Trainer subclass: checkpoints, resume, LR schedules, bf16, gradient accumulation, and `accelerate launch`
with FSDP or DeepSpeed come with it unchanged; we only replace `compute_loss`:

1. run the wrapped model's own forward with `logits_to_keep=1` (so full logits are never computed) and catch the
   decoder's final hidden states [B, L, H] with a forward hook -- going through the wrapped forward keeps
   FSDP/DeepSpeed parameter gathering and DDP gradient sync in charge;
2. hand hidden states and the `lm_head` weight to the op, which returns the summed loss and stores dW/dh;
3. divide by `num_items_in_batch`, the number of loss tokens of the whole accumulated batch counted by the Trainer
   over every micro-batch (and every device, `average_tokens_across_devices`), so that accumulation over uneven
   micro-batches gives exactly the gradient of one big batch.

Sharded lm_head: the op needs the whole [V, H] weight.
- FSDP2 (`fully_shard`, `reshard_after_forward: true`): the root unit (embeddings, final norm, lm_head) reshards
  after forward and frees its gathered storage, and its pre-backward hook -- which would gather it again -- hangs on
  the model's output (the [B, 1, V] logits), which our loss does not use. Backward through the final norm would then
  read freed memory (a segfault on CPU, measured) and the root's gradients would not be reduce-scattered. So the
  root (and the lm_head, if it is a unit of its own) is unsharded again right after the forward
  (`_unshard_fsdp2_units`): lm_head.weight is then the whole tensor, and FSDP2's end-of-backward callback
  reduce-scatters its gradient and reshards, as for any unit.
- Any other DTensor-sharded lm_head (e.g. no_grad evaluation under FSDP2) is gathered with `full_tensor`, whose
  backward reduce-scatters dW back to the shards (`gather_full_weight`).
- DeepSpeed ZeRO-3: the op runs as the lm_head module's forward, so ZeRO-3's own hooks gather the weight for it and
  again before its backward (`_loss_route`).
- FSDP1 (`use_orig_params`): even the root unit points its parameters back at the local flat shard after forward;
  the op runs as the forward of the FSDP unit holding the lm_head (`_loss_route`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import resource
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from gen.errors import InvalidSetting, UserError
from gen.logits.records import tokenizer_fingerprint
from train.config import LossConfig, TrainConfig, check_settings
from train.lora import adapted_head_weight  # a LoRA-adapted lm_head
from train.losses import batch_loss_sum

# Config attributes of models whose logits are not plain `h @ W.T + b`: the op would train a different distribution.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def gather_full_weight(param: torch.Tensor | None) -> torch.Tensor | None:
    """The whole tensor behind `param` (lm_head weight [V, H] or bias [V]): a DTensor (FSDP2 / DTensor-sharded
    parameter) is all-gathered into a plain tensor, differentiably; anything else is returned as is.

    Gradient: each rank's dW is a different (data-parallel) partial gradient, so the full tensor's gradient is
    declared `Partial("avg")`: backward reduce-scatters it to each rank's shard (all-reduces over replicated mesh
    dims), averaging over ranks exactly as FSDP does for every other parameter. (The default, Replicate, would keep
    only this rank's slice of its own gradient, unsynchronized.)"""
    if param is None:
        return None
    try:
        from torch.distributed.tensor import DTensor, Partial
    except ImportError:  # torch built without distributed
        return param
    if not isinstance(param, DTensor):
        return param
    return param.full_tensor(grad_placements=[Partial("avg")] * param.device_mesh.ndim)


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak accelerator memory allocated by torch (CUDA), else this process's peak resident set size, in MiB."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class DistillTrainer(Trainer):
    """A Trainer whose loss is `train.losses.batch_loss_sum` / tokens-in-accumulated-batch.

    Extra batch keys (from train.data.DistillCollator) are consumed here and never reach the model's forward."""

    def __init__(self, *args, loss_config: LossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        # We normalize by num_items_in_batch ourselves: make the Trainer count it and not divide again by the number
        # of accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        core = self.accelerator.unwrap_model(self.model)
        self._head = core.get_output_embeddings()
        self._hidden: torch.Tensor | None = None
        self._route, self._route_for = None, None  # `_loss_route` of the model compute_loss last saw
        core.get_decoder().register_forward_hook(self._keep_hidden)
        # a PEFT model's forward passes **kwargs (logits_to_keep among them) on to the base model's (LoRA)
        base = core.get_base_model() if hasattr(core, "get_base_model") else core
        self._forward_takes = set(inspect.signature(base.forward).parameters)
        self._tokens_trained = 0  # input tokens of every training micro-batch, for the summary and card
        self._eval_window = dict.fromkeys(("loss_sum", "tokens", "kd_loss_sum", "kd_tokens", "sft_loss_sum",
                                           "sft_tokens"), 0.0)  # token-weighted eval loss and split
        self._window = {"tokens": 0, "kd_tokens": 0.0, "sft_tokens": 0.0, "kd_loss_sum": 0.0, "sft_loss_sum": 0.0}
        self._window_start = time.perf_counter()

    def _keep_hidden(self, module, args, output) -> None:
        self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def _head_partitioned_by_zero3(self) -> bool:
        params = [p for p in (self._head.weight, getattr(self._head, "bias", None)) if p is not None]
        return getattr(self.accelerator.state, "deepspeed_plugin", None) is not None and any(
            hasattr(p, "ds_id") for p in params)

    def distributed_summary(self) -> dict[str, Any]:
        """How the run was spread: processes, accelerate's distributed type, the ZeRO stage, and inside which
        module's forward the loss ran (None: called directly)."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        kind = self.accelerator.distributed_type
        return {"processes": self.accelerator.num_processes, "type": getattr(kind, "value", str(kind)),
                "zero_stage": plugin.zero_stage if plugin is not None else None,
                "loss_ran_inside": self._route[2] if self._route else None}

    def _loss_route(self, model) -> tuple[torch.nn.Module, torch.nn.Module, str] | None:
        """(module to call, module whose forward is replaced, label) when the op must run inside a wrapper's
        forward to see a whole lm_head weight and to have its dW reach the sharded parameter; None when it can be
        called directly.

        - DeepSpeed ZeRO-3 keeps every parameter a 0-element placeholder except inside its module's forward and
          before its module's backward (hooks on the module). Gathering the lm_head only around the op (a
          GatheredParameters block) gives the op a whole weight, but by the backward it is a placeholder again and
          accumulating the [V, H] dW into it fails ("The size of tensor a (0) must match the size of tensor b (H)",
          measured with DeepSpeed 0.19 on CPU/gloo; TRL's Liger losses hit the same). Run as the lm_head's forward,
          the op sits between ZeRO-3's own gather and release, ZeRO-3 gathers the weight again before the op's
          backward and reduce-scatters its gradient, as for any layer.
        - FSDP1 with `use_orig_params` (`fsdp1.yaml`): after the forward, even the root unit points its parameters
          back at this rank's flat shard (lm_head.weight becomes a 1-D slice, or empty; measured, torch 2.13).
          Run as the forward of the innermost FSDP unit holding the lm_head, the op sees the unsharded views, and
          FSDP's hooks on that output unshard again for the backward and reduce-scatter the flat gradient."""
        if self._head_partitioned_by_zero3():
            return self._head, self._head, "lm_head (DeepSpeed ZeRO-3)"
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel
        except ImportError:  # torch built without distributed
            return None
        owners = [m for m in model.modules() if isinstance(m, FullyShardedDataParallel)
                  and any(sub is self._head for sub in m.module.modules())]
        if owners:  # modules() lists outer units before inner ones
            return owners[-1], owners[-1].module, "FSDP1 unit holding the lm_head"
        return None

    def _run_as_forward(self, route, fn):
        """`fn()` run as `route`'s module's forward: calling the wrapper runs its hooks around `fn` (see
        `_loss_route`)."""
        call, inner, _ = route
        own_forward = inner.__dict__.get("forward")
        inner.forward = lambda *args, **kwargs: fn()
        try:
            return call()
        finally:
            if own_forward is None:
                del inner.forward
            else:
                inner.forward = own_forward

    def _unshard_fsdp2_units(self, model) -> None:
        """FSDP2: all-gather again (no-op if still gathered) the root unit and the lm_head's own unit, if any,
        after the forward: the loss runs on their parameters outside their forward (see the module docstring)."""
        if not torch.is_grad_enabled():  # no backward will read them: gather_full_weight is enough
            return
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # torch built without distributed
            return
        units = {id(m): m for m in (model, self.accelerator.unwrap_model(model), self._head)
                 if isinstance(m, FSDPModule)}
        for unit in units.values():
            unit.unshard()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forward = {"input_ids": inputs["input_ids"], "use_cache": False}
        for key in ("attention_mask", "position_ids"):
            if key in inputs:
                forward[key] = inputs[key]
        if "logits_to_keep" in self._forward_takes:
            forward["logits_to_keep"] = 1  # [B, 1, V] instead of [B, L, V]: the loss uses hidden states
        self._hidden = None
        model(**forward)
        hidden, self._hidden = self._hidden, None
        self._unshard_fsdp2_units(model)

        def loss_from_head():
            weight = gather_full_weight(self._head.weight)
            weight = adapted_head_weight(self._head, weight)  # W + (alpha/r) B A under LoRA on the head
            bias = gather_full_weight(getattr(self._head, "bias", None))
            if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
                raise RuntimeError(f"lm_head weight has shape {tuple(weight.shape)} at loss time: it is sharded in a "
                                   f"way this trainer cannot gather; see README 'Training' for the FSDP/DeepSpeed "
                                   f"settings")
            return batch_loss_sum(hidden, weight, bias, inputs, self.loss_config)

        if self._route_for is not model:  # found once per wrapped model (a walk over its modules)
            self._route, self._route_for = self._loss_route(model), model
        route = self._route
        loss_sum, stats = self._run_as_forward(route, loss_from_head) if route else loss_from_head()
        if num_items_in_batch is None:
            num_items_in_batch = (inputs["labels"][:, 1:] != -100).sum()
        loss = loss_sum / num_items_in_batch.clamp_min(1) if torch.is_tensor(num_items_in_batch) else \
            loss_sum / max(int(num_items_in_batch), 1)
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # num_items_in_batch is the global count; DDP/FSDP average gradients over processes, so scale back up
            loss = loss * self.accelerator.num_processes
        if model.training:
            tokens = int(inputs["num_tokens"]) if "num_tokens" in inputs else int(inputs["input_ids"].numel())
            self._window["tokens"] += tokens
            self._tokens_trained += tokens
            for key, value in stats.items():
                self._window[key] += value
        else:  # evaluation: per-token sums, so the eval loss is over the whole eval set
            for key, value in stats.items():
                self._eval_window[key] += value
            self._eval_window["loss_sum"] += stats["kd_loss_sum"] + stats["sft_loss_sum"]
            self._eval_window["tokens"] += stats["kd_tokens"] + stats["sft_tokens"]
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's loop, with `<prefix>_loss` per loss token over the whole eval set (its own is a mean of
        per-batch means) and the split `<prefix>_kd_loss` / `<prefix>_sft_loss`."""
        self._eval_window = dict.fromkeys(self._eval_window, 0.0)
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        w = self._global_eval_window()
        if w["tokens"]:
            output.metrics[f"{prefix}_loss"] = w["loss_sum"] / w["tokens"]
        for part in ("kd", "sft"):
            if w[f"{part}_tokens"]:
                output.metrics[f"{prefix}_{part}_loss"] = w[f"{part}_loss_sum"] / w[f"{part}_tokens"]
        return output

    def tokens_trained(self) -> int:
        """Input tokens (padding excluded) of every training micro-batch of this run, summed over processes."""
        if self.accelerator.num_processes == 1:
            return self._tokens_trained
        local = torch.tensor([float(self._tokens_trained)], dtype=torch.float64, device=self.args.device)
        return int(self.accelerator.reduce(local, reduction="sum").item())

    def _global_eval_window(self) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return dict(self._eval_window)
        keys = list(self._eval_window)
        local = torch.tensor([float(self._eval_window[k]) for k in keys], dtype=torch.float64, device=self.args.device)
        return dict(zip(keys, self.accelerator.reduce(local, reduction="sum").tolist()))

    def _global_window(self) -> dict[str, float]:
        """The loss-split/token window summed over all processes (every rank calls `log` at a logging step: the
        Trainer gathers the loss there too), so the logged kd_loss/sft_loss/tokens_per_second are the whole step's,
        not rank 0's share."""
        if self.accelerator.num_processes == 1:
            return dict(self._window)
        keys = list(self._window)
        local = torch.tensor([float(self._window[k]) for k in keys], dtype=torch.float64, device=self.args.device)
        return dict(zip(keys, self.accelerator.reduce(local, reduction="sum").tolist()))

    def _max_over_ranks(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        local = torch.tensor([value], dtype=torch.float64, device=self.args.device)
        return float(self.accelerator.gather(local).max())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add throughput, memory and the loss split since the last one
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            w = self._global_window()
            logs["tokens_per_second"] = round(w["tokens"] / elapsed, 1)
            logs["peak_memory_mb"] = round(self._max_over_ranks(peak_memory_mb(self.args.device)), 1)
            if w["kd_tokens"]:
                logs["kd_loss"] = w["kd_loss_sum"] / w["kd_tokens"]
            if w["sft_tokens"]:
                logs["sft_loss"] = w["sft_loss_sum"] / w["sft_tokens"]
            self._window = dict.fromkeys(self._window, 0.0)
            self._window_start = time.perf_counter()
        super().log(logs, start_time)


def check_tokenizers(student_tokenizer, student_vocab_rows: int, metadata: dict[str, Any] | None,
                     data_dir: str = "logit shards") -> None:
    """Token-level KD is only meaningful when teacher and student ids mean the same tokens: the tokenizer hash in
    the logit shards must equal the student tokenizer's, and the vocabularies may differ only by padding rows
    beyond the tokenizer (never below it)."""
    if metadata is None:
        return
    student_hash = tokenizer_fingerprint(student_tokenizer)
    if metadata["tokenizer_hash"] != student_hash:
        raise UserError(f"{data_dir}: the teacher's tokenizer ({metadata['teacher']}, hash "
                        f"{metadata['tokenizer_hash']}) differs from the student's (hash {student_hash}): top-k KD "
                        f"needs teacher and student to share one tokenizer")
    tokens = len(student_tokenizer)
    teacher_vocab = int(metadata["vocab_size"])
    if teacher_vocab != student_vocab_rows and min(teacher_vocab, student_vocab_rows) < tokens:
        raise UserError(f"{data_dir}: teacher vocab size {teacher_vocab} != student vocab size {student_vocab_rows} "
                        f"(tokenizer has {tokens} tokens): vocab size mismatch between teacher and student")


def check_temperature(temperature: float, metadata: dict[str, Any] | None, data_dir: str = "logit shards", *,
                      force: bool = False) -> None:
    """The teacher's top-k is stored at its capture temperature and used as stored, while the student is softened by
    `temperature`: the two must agree, or the loss compares distributions at different temperatures."""
    if metadata is None or force:
        return
    captured = float(metadata.get("temperature", 1.0))
    if abs(captured - temperature) > 1e-9 * max(1.0, temperature):
        raise InvalidSetting("temperature", f"{data_dir}: logit shards captured at temperature {captured:g} but "
                                            f"training temperature is {temperature:g} (capture the logits at "
                                            f"temperature {temperature:g}, or force_temperature to train anyway)")


def _use_bf16(choice: str) -> bool:
    if choice == "on":
        return True
    if choice == "off":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _latest_checkpoint(out: Path) -> str | None:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def load_student(student: str, chat_template: str | None = None, quantization_config=None):
    """(model, tokenizer) of the student; anything that is not a usable causal LM is an InvalidSetting naming it.
    `quantization_config`: a transformers quantization config (QLoRA's 4-bit base weights, train/lora.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(student).is_dir() and not (Path(student) / "config.json").is_file():
        raise InvalidSetting("student", f"student {student}: not a Hugging Face model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(student)
        model = AutoModelForCausalLM.from_pretrained(
            student, dtype=torch.float32,
            **({"quantization_config": quantization_config, "device_map": {"": torch.cuda.current_device()}}
               if quantization_config is not None else {}))
    except (OSError, ValueError) as exc:
        raise InvalidSetting("student", f"student {student}: cannot load ({str(exc).strip().splitlines()[0]})") from None
    if chat_template:
        tokenizer.chat_template = chat_template
    for name in _LOGIT_TRANSFORMS:
        value = getattr(model.config, name, None) or getattr(model.config.get_text_config(), name, None)
        if value not in (None, 1, 1.0):
            raise InvalidSetting("student", f"student {student}: its logits use {name}={value}; the fused KD op computes plain "
                            f"h @ W.T logits, so this student is not supported")
    if model.get_output_embeddings() is None:
        raise InvalidSetting("student", f"student {student}: no lm_head (not a causal LM)")
    rows = min(model.get_input_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0])
    if rows < len(tokenizer):  # a token id >= rows would index past the embeddings mid-training
        raise InvalidSetting("student", f"student {student}: its vocabulary has {rows} rows but its tokenizer has {len(tokenizer)} "
                        f"tokens; resize its embeddings to the tokenizer (model.resize_token_embeddings) first")
    return model, tokenizer


# TrainConfig values that TrainingArguments takes in another form
_TRAINING_ARGS_FORM = {"out": str, "bf16": _use_bf16}


def training_arguments(config: TrainConfig, arguments_class=None, **extra):
    """`transformers.TrainingArguments` (or `arguments_class`, a subclass such as TRL's `DPOConfig`, with `extra`
    fields) from the TrainConfig fields that name a `training_args` target (see train/config.py), plus the settings
    this trainer always uses."""
    from transformers import TrainingArguments

    from train.evaluation import evaluation_arguments
    arguments_class = arguments_class or TrainingArguments

    # transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing
    renamed = {"gradient_checkpointing": "activation_checkpointing"} \
        if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else {}
    values = {}
    for f in fields(config):
        form = _TRAINING_ARGS_FORM.get(f.name, lambda value: value)
        for target in f.metadata.get("training_args", ()):
            values[renamed.get(target, target)] = form(getattr(config, f.name))
    return arguments_class(
        **values, **evaluation_arguments(config), **extra, save_strategy="steps", remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(), average_tokens_across_devices=True, disable_tqdm=True,
        # without an accelerator, say so: then `torchrun --nproc_per_node N` gives multi-process CPU (gloo) DDP
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )


@contextlib.contextmanager
def deepspeed_hidden_unless_used():
    """Keep DeepSpeed unimported unless this run uses it.

    accelerate's `extract_model_from_parallel` (behind every unwrap and save) imports deepspeed whenever the package
    is installed, and importing it prints "Setting accelerator to CPU ..." on a machine without CUDA and costs
    seconds, on every run. Unless accelerate was launched with DeepSpeed (ACCELERATE_USE_DEEPSPEED), a None entry in
    `sys.modules` hides the package for the run: `importlib.util.find_spec` then reports it missing, so accelerate's
    and transformers' availability checks say no and nothing imports it. The entry is removed afterwards."""
    from accelerate.utils.environment import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or "deepspeed" in sys.modules:
        yield
        return
    sys.modules["deepspeed"] = None
    try:
        yield
    finally:
        if "deepspeed" in sys.modules and sys.modules["deepspeed"] is None:
            del sys.modules["deepspeed"]


def train(config: TrainConfig) -> dict[str, Any]:
    """Build data, model and trainer from `config`, train, save the final model, the loss curve and the log.
    Returns a summary (steps, final loss, paths). A refused configuration writes nothing."""
    check_settings(config)
    if config.preference.dpo:  # `gen train --dpo`: preference rows go through TRL's DPOTrainer
        raise InvalidSetting("dpo", "dpo: preference training is train.dpo.train_dpo, not train.trainer.train")
    with deepspeed_hidden_unless_used():
        return _train(config)


def resolve_resume(config: TrainConfig) -> str | None:
    """The checkpoint directory `config.resume` names (`latest`/True: the newest in `out`), or None."""
    out, resume = Path(config.out), config.resume
    if resume is True or resume == "latest":
        resume = _latest_checkpoint(out)
        if resume is None:
            raise InvalidSetting("resume", f"resume: no checkpoint-* directory in {out}")
    elif resume and not Path(resume).is_dir():
        raise InvalidSetting("resume", f"resume {resume}: no such checkpoint directory")
    return resume or None


def _train(config: TrainConfig) -> dict[str, Any]:
    from train.data import load_training_data
    from train.plot import plot_loss_curve

    out = Path(config.out)
    resume = resolve_resume(config)
    # --- artifacts: tracker check, QLoRA load, LoRA, evaluation set ---
    from train.evaluation import evaluation_callbacks, evaluation_data, evaluation_summary
    from train.lora import apply_lora, lora_summary, quantization_config, save_merged
    from train.trackers import check_tracker

    check_tracker(config.report_to)
    model, tokenizer = load_student(config.student, config.chat_template, quantization_config(config))
    data = load_training_data(config.data, tokenizer, max_length=config.max_length, packing=config.packing,
                              split=config.split)
    check_tokenizers(tokenizer, model.get_output_embeddings().weight.shape[0], data.logit_metadata,
                     ", ".join(map(str, config.data)))
    check_temperature(config.loss.temperature, data.logit_metadata, ", ".join(map(str, config.data)),
                      force=config.force_temperature)
    eval_set = evaluation_data(config, data, tokenizer)
    model = apply_lora(model, config)
    args = training_arguments(config)
    bf16 = args.bf16
    # on-policy distillation (GKD): a teacher scorer, and a trainer that mixes in the student's samples
    trainer_class, on_policy = DistillTrainer, {}
    if config.teacher:
        from train.on_policy import OnPolicyMixin, on_policy_setup

        on_policy = on_policy_setup(config, data.logit_metadata, args.device, processes=args.world_size)
        check_tokenizers(tokenizer, model.get_output_embeddings().weight.shape[0], on_policy.pop("metadata"),
                         f"teacher {config.teacher}")
        trainer_class = type("OnPolicyTrainer", (OnPolicyMixin, DistillTrainer), {})
    trainer = trainer_class(model=model, args=args, train_dataset=eval_set.train, eval_dataset=eval_set.eval,
                            data_collator=data.collator, processing_class=tokenizer, loss_config=config.loss,
                            callbacks=list(config.extra_callbacks) + evaluation_callbacks(config), **on_policy)
    result = trainer.train(resume_from_checkpoint=resume or None)
    history = trainer.state.log_history
    # Every rank: under FSDP and ZeRO-3 saving gathers the sharded weights (a collective); the Trainer writes the
    # files from rank 0 only. (Called from rank 0 alone, ZeRO-3's gather waited on a rank that had finished: it failed
    # on gloo with 'Connection closed by peer', measured; NCCL would hang.)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        (out / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
        plot_loss_curve(history, out / "loss_curve.png")
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = {
        "out": str(out), "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
        "rows": {"conversational": data.n_conversation_rows, "logit": data.n_logit_rows},
        "examples": len(data.dataset), "bf16": bf16, "loss": asdict(config.loss),
        "loss_curve": str(out / "loss_curve.png"), "resumed_from": resume,
        "distributed": trainer.distributed_summary(),
    }
    # --- artifacts: what the model card and the user need of the run ---
    summary.update({
        "student": config.student, "data": [str(d) for d in config.data],
        "teacher": data.logit_metadata["teacher"] if data.logit_metadata else config.teacher,
        "tokens": trainer.tokens_trained(), "examples": len(eval_set.train), "report_to": config.report_to,
        "lora": lora_summary(model, config), "eval": evaluation_summary(trainer, config, eval_set, data.collator),
    })
    if config.lora_merge and trainer.is_world_process_zero():
        summary["merged"] = save_merged(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out / "merged")
    if config.teacher:  # on-policy distillation: teacher, tail source, tokens/s of gen/score/train
        summary["on_policy"] = trainer.on_policy_summary()
    if trainer.is_world_process_zero():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
