"""On-policy distillation (GKD, Agarwal et al. 2024): with probability lambda per micro-batch the student writes its
own completions for the batch's prompts, a teacher scorer (gen/logits/scoring.py) returns its top-k log-probs and
tail mass on every completion position, and the loss -- the fused top-k op, completion tokens only -- trains the
student on the distribution it will actually sample from at inference, not only on the teacher's or the dataset's
sequences (the train/inference mismatch of offline KD).

Where it hooks into the Trainer: `get_batch_samples`, which fetches the micro-batches of one optimizer step and
counts their loss tokens. The on/off decision, the student's sampling and the teacher's scoring happen there, so
the replaced micro-batches are counted like any other and the step is normalized by its real loss-token count
(train/trainer.py); `compute_loss` only picks the on-policy divergence for the replaced ones.

Randomness, and why two generators:
- the on/off decision per micro-batch: a `random.Random(seed)`, the same on every rank, so under FSDP/ZeRO-3 every
  rank generates at the same steps (generation there is a collective);
- the student's sampling: the sampler's own (train/student_sampler.py): torch's RNG forked around `generate` and
  seeded with (seed, rank), or vLLM's per-request seeds from (seed, rank, draw, row) (train/vllm_sampler.py), so
  ranks sample different completions for their different prompts, and the Trainer's own RNG is untouched.
Both are saved in every checkpoint (`on_policy_state_<rank>.pt`) and restored before the resumed run draws again.

Student sampling: transformers' `generate` on the student being trained, or a vLLM engine in this process that gets
the trainer's weights every `sync_steps` optimizer steps (`student_sampler`; auto = vLLM when installed).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from gen.errors import InvalidSetting
from gen.logits.scoring import TeacherScorer, open_teacher_scorer, score_completions, scorer_metadata
from train.config import LossConfig, TrainConfig
from train.data import DistillCollator
from train.student_sampler import SamplingSpec, TransformersSampler, resolve_sampler, sample_completions

__all__ = ["OnPolicyMixin", "OnPolicySettings", "on_policy_setup", "prompts_of", "sample_completions"]

IGNORE_INDEX = -100
DEFAULT_TEACHER_K = 20  # vLLM's default --max-logprobs
_STATE_FILE = "on_policy_state_{rank}.pt"


@dataclass(frozen=True)
class OnPolicySettings:
    lmbda: float
    k: int
    loss: LossConfig  # the divergence on on-policy micro-batches
    temperature: float
    max_new_tokens: int
    max_length: int
    seed: int
    # who samples (train/student_sampler.py): "transformers" or "vllm", resolved from `auto` by on_policy_setup
    sampler: str = "transformers"
    sync_steps: int = 1
    student: str = ""  # the student's directory, which a vLLM sampler starts from
    vllm_gpu_memory_utilization: float = 0.3


def prompts_of(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each row's prompt: its tokens before the first loss token (the first assistant turn's start). Rows come
    right-padded and unpacked (packing is refused with on-policy)."""
    prompts = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        scored = (labels != IGNORE_INDEX).nonzero()
        first = int(scored[0]) if len(scored) else len(ids)
        prompts.append(ids[: max(first, 1)].cpu())
    return prompts


class OnPolicyMixin:
    """GKD's mixture for train.trainer.DistillTrainer (`class OnPolicyTrainer(OnPolicyMixin, DistillTrainer)`; a
    mixin so this module needs nothing from train.trainer): with probability lambda a micro-batch is replaced by the
    student's samples on its prompts, scored by the teacher (see the module docstring)."""

    def __init__(self, *args, scorer: TeacherScorer, on_policy: OnPolicySettings, sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scorer, self.on_policy = scorer, on_policy
        tokenizer = self.processing_class
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        eos = self.accelerator.unwrap_model(self.model).generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self._eos_ids = sorted({*eos, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        self._collator = DistillCollator(pad_id=self._pad_id, k=on_policy.k)
        self._decide = random.Random(on_policy.seed)  # identical on every rank
        counters = ("gen_tokens", "gen_seconds", "score_tokens", "score_seconds", "train_tokens", "train_seconds",
                    "on_policy_batches", "batches", "sync_seconds", "syncs")
        self._totals = dict.fromkeys(counters, 0.0)
        self._since_log = dict.fromkeys(counters, 0.0)
        self.sampler = sampler or self._open_sampler()
        if on_policy.lmbda > 0:  # a first push now: a student the engine cannot take is refused before training
            self._sync_sampler()

    def _open_sampler(self):
        settings = self.on_policy
        spec = SamplingSpec(pad_id=self._pad_id, eos_ids=self._eos_ids, temperature=settings.temperature,
                            seed=settings.seed, rank=self.args.process_index)
        if settings.sampler == "vllm":
            from train.vllm_sampler import VLLMSampler

            return VLLMSampler(settings.student, spec, sync_steps=settings.sync_steps,
                               max_model_len=settings.max_length, device=self.args.device,
                               gpu_memory_utilization=settings.vllm_gpu_memory_utilization)
        return TransformersSampler(spec, self.accelerator, self.args.device, synced_gpus=self._synced_generation())

    def _sync_sampler(self) -> None:
        seconds = self.sampler.sync(self.accelerator.unwrap_model(self.model), self.state.global_step)
        if seconds is not None:
            self._count("sync_seconds", seconds)
            self._count("syncs", 1)

    # ------------------------------------------------------------------------------------------ randomness

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save({"decide": self._decide.getstate(), "sampling": self.sampler.state_dict(), "totals": self._totals},
                   os.path.join(output_dir, _STATE_FILE.format(rank=self.args.process_index)))

    def _restore_sampler(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, _STATE_FILE.format(rank=self.args.process_index))
        if not os.path.isfile(path):  # a checkpoint of an offline run: the sampler starts fresh
            return
        state = torch.load(path, weights_only=True)
        self._decide.setstate(state["decide"])
        self.sampler.load_state_dict(state["sampling"])
        self._totals.update(state["totals"])

    def train(self, resume_from_checkpoint=None, **kwargs):
        # Restored here, before the loop: the Trainer reloads its own RNG only after the first resumed batch is drawn
        if isinstance(resume_from_checkpoint, str):
            self._restore_sampler(resume_from_checkpoint)
        elif resume_from_checkpoint:
            from transformers.trainer_utils import get_last_checkpoint

            last = get_last_checkpoint(self.args.output_dir)
            if last:
                self._restore_sampler(last)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ------------------------------------------------------------------------------------------ the mixture

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        replaced = False
        for i, batch in enumerate(batches):
            self._count("batches", 1)
            if self._decide.random() < self.on_policy.lmbda:
                batches[i] = self._on_policy_batch(batch)
                self._count("on_policy_batches", 1)
                replaced = True
        if replaced and num_items is not None:  # same decisions on every rank: all of them reach this collective
            num_items = sum((b["shift_labels"] != IGNORE_INDEX).sum() for b in batches)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                num_items = self.accelerator.gather(num_items.to(device)).sum()
            num_items = num_items.to(device)
        return batches, num_items

    def _count(self, key: str, value: float) -> None:
        self._totals[key] += value
        self._since_log[key] += value

    def _synced_generation(self) -> bool:
        """FSDP runs every forward as a collective: ranks must keep generating until all are done."""
        kind = getattr(self.accelerator.distributed_type, "value", str(self.accelerator.distributed_type))
        return self.accelerator.num_processes > 1 and "FSDP" in kind

    def _on_policy_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        settings = self.on_policy
        prompts = [p[: settings.max_length - 1] for p in prompts_of(batch)]
        room = settings.max_length - max(len(p) for p in prompts)
        self._sync_sampler()  # timed apart: the weight push is not generation
        t0 = time.perf_counter()
        completions = self.sampler.sample(self.model_wrapped, prompts,
                                          max_new_tokens=max(1, min(settings.max_new_tokens, room)))
        t1 = time.perf_counter()
        completions = [c[: settings.max_length - len(p)] for p, c in zip(prompts, completions)]
        records = score_completions(self.scorer, [p.numpy() for p in prompts], [c.numpy() for c in completions],
                                    settings.k)
        t2 = time.perf_counter()
        self._count("gen_tokens", sum(len(c) for c in completions))
        self._count("gen_seconds", t1 - t0)
        self._count("score_tokens", sum(len(r["input_ids"]) for r in records))
        self._count("score_seconds", t2 - t1)
        on_policy = self._collator(records)
        on_policy["on_policy"] = True
        return on_policy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not inputs.pop("on_policy", False):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        offline, self.loss_config = self.loss_config, self.on_policy.loss
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self.loss_config = offline

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokens = int(inputs["num_tokens"]) if "num_tokens" in inputs else int(inputs["input_ids"].numel())
        t0 = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._count("train_seconds", time.perf_counter() - t0)
        self._count("train_tokens", tokens)
        return loss

    # ------------------------------------------------------------------------------------------ throughput

    def _rates(self, counters: dict[str, float]) -> dict[str, float]:
        """Tokens/s of generation, scoring and training (forward + backward) over all ranks: summed tokens over the
        mean per-rank seconds (ranks work in parallel)."""
        keys = list(counters)
        values = [float(counters[k]) for k in keys]
        n = self.accelerator.num_processes
        if n > 1:
            local = torch.tensor(values, dtype=torch.float64, device=self.args.device)
            values = self.accelerator.reduce(local, reduction="sum").tolist()
        c = dict(zip(keys, values))
        rate = lambda tokens, seconds: round(c[tokens] / (c[seconds] / n), 1) if c[seconds] else 0.0  # noqa: E731
        return {"gen_tokens_per_second": rate("gen_tokens", "gen_seconds"),
                "score_tokens_per_second": rate("score_tokens", "score_seconds"),
                "train_tokens_per_second": rate("train_tokens", "train_seconds"),
                "on_policy_fraction": round(c["on_policy_batches"] / c["batches"], 4) if c["batches"] else 0.0,
                "gen_tokens": int(c["gen_tokens"]),
                # weight pushes into a vLLM sampler: how many, and the seconds they took (not counted as generation)
                "syncs": int(c["syncs"]), "sync_seconds": round(c["sync_seconds"] / n, 4)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._rates(self._since_log))
            self._since_log = dict.fromkeys(self._since_log, 0.0)
        super().log(logs, start_time)

    def on_policy_summary(self) -> dict[str, Any]:
        """For train_summary.json: the teacher, how its tail was obtained, and the run's throughput split."""
        return {"student_sampler": self.sampler.name, "sync_steps": self.on_policy.sync_steps,
                "sampler_start_seconds": round(getattr(self.sampler, "start_seconds", 0.0), 2),
                "teacher": self.scorer.teacher_id, "tail_source": self.scorer.tail_source, "k": self.on_policy.k,
                "lambda": self.on_policy.lmbda, "loss": self.on_policy.loss.loss,
                **self._rates(self._totals), "on_policy_batches": int(self._totals["on_policy_batches"])}


def on_policy_setup(config: TrainConfig, logit_metadata: dict | None, device: torch.device,
                    processes: int = 1) -> dict[str, Any]:
    """The OnPolicyTrainer's extra arguments -- the teacher scorer and the settings -- and `metadata`, what a logit
    shard of this scorer would carry, for the trainer's tokenizer check. K follows the logit shards when the run
    mixes them in."""
    k = config.teacher_k or (logit_metadata["k"] if logit_metadata else DEFAULT_TEACHER_K)
    if logit_metadata and k != logit_metadata["k"]:
        raise InvalidSetting("teacher_k", f"teacher_k {k}: the run's logit shards have K={logit_metadata['k']}; "
                                          f"on-policy samples and shards share one batch layout, so K must match")
    scorer = open_teacher_scorer(config.teacher, base_url=config.teacher_base_url, tokenizer=config.teacher_tokenizer,
                                 device=str(device))
    settings = OnPolicySettings(lmbda=config.on_policy, k=k, loss=replace(config.loss, loss=config.on_policy_loss),
                                temperature=config.gen_temperature, max_new_tokens=config.gen_max_new_tokens,
                                max_length=config.max_length, seed=config.seed,
                                # lambda 0 never samples: no engine to start
                                sampler=resolve_sampler(config.student_sampler if config.on_policy > 0 else
                                                        "transformers", processes),
                                sync_steps=config.sync_steps, student=str(config.student),
                                vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization)
    return {"scorer": scorer, "on_policy": settings, "metadata": scorer_metadata(scorer, k)}
