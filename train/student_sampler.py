"""Who writes the student's on-policy completions (train/on_policy.py): one interface, two samplers.

- `TransformersSampler`: transformers' `generate` on the very model being trained (so it is always current, under
  any `accelerate launch` setup), with torch's RNG forked around it.
- `train.vllm_sampler.VLLMSampler`: a vLLM engine in the training process (colocated) that is handed the trainer's
  weights every `sync_steps` optimizer steps; much faster decoding, one process only.

Every sampler answers `sync(model, step)` (push weights if due; seconds spent, or None), `sample(model, prompts,
max_new_tokens=...)` (each prompt's completion, cut after its first EOS, which is kept) and `state_dict` /
`load_state_dict` (what a resumed run needs to draw the same samples as an uninterrupted one).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gen.errors import InvalidSetting


@dataclass(frozen=True)
class SamplingSpec:
    """What every sampler needs to know about the completions to draw."""

    pad_id: int
    eos_ids: list[int]
    temperature: float  # 0: greedy
    seed: int
    rank: int  # this process's index: ranks sample different completions for their different prompts


class StudentSampler(Protocol):
    name: str

    def sync(self, model: torch.nn.Module, step: int) -> float | None: ...

    def sample(self, model: torch.nn.Module, prompts: list[torch.Tensor], *,
               max_new_tokens: int) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_sampler(choice: str, processes: int) -> str:
    """`auto` -> vllm when it is importable and the run is one process, else transformers. An explicit `vllm` in a
    multi-process run is refused: each rank would start its own engine beside a sharded student."""
    if choice == "auto":
        return "vllm" if processes == 1 and importlib.util.find_spec("vllm") is not None else "transformers"
    if choice == "vllm" and processes > 1:
        raise InvalidSetting("student_sampler", f"student_sampler vllm: one process only (this run has {processes}); "
                                                f"use student_sampler transformers under accelerate launch")
    return choice


def sample_completions(model, prompts: list[torch.Tensor], *, pad_id: int, eos_ids: list[int], temperature: float,
                       max_new_tokens: int, synced_gpus: bool = False) -> list[torch.Tensor]:
    """The student's completion of each prompt (left-padded batch `generate`), cut after its first EOS."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt):] = prompt
        attention_mask[i, width - len(prompt):] = 1
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else \
        {"do_sample": False}
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                         max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids,
                         synced_gpus=synced_gpus, **sampling)
    return [cut_after_eos(row, eos_ids) for row in out[:, width:].cpu()]


def cut_after_eos(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    ends = torch.isin(tokens, torch.tensor(eos_ids, dtype=tokens.dtype)).nonzero()
    return tokens[: int(ends[0]) + 1] if len(ends) else tokens


class TransformersSampler:
    """`generate` on the trained model itself (eval mode, no grad; TRL's `unwrap_model_for_generation` gathers
    ZeRO-3 weights for it), with torch's RNG forked around it and seeded with (seed, rank), so ranks sample
    differently and the Trainer's own RNG (dropout, data order) is untouched. Its RNG state is the sampler's state."""

    name = "transformers"

    def __init__(self, spec: SamplingSpec, accelerator, device: torch.device, *, synced_gpus: bool):
        self.spec, self.accelerator, self.device, self.synced_gpus = spec, accelerator, device, synced_gpus
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(spec.seed * 1_000_003 + 7919 * (spec.rank + 1))
            self._rng = self._rng_now()

    def _cuda_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def _rng_now(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def sync(self, model, step: int) -> None:
        return None  # it samples from the trained model itself

    def sample(self, model, prompts: list[torch.Tensor], *, max_new_tokens: int) -> list[torch.Tensor]:
        from trl.models.utils import unwrap_model_for_generation

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), unwrap_model_for_generation(model, self.accelerator) as student, \
                    torch.random.fork_rng(devices=self._cuda_devices()):
                torch.set_rng_state(self._rng["cpu"])
                if "cuda" in self._rng:
                    torch.cuda.set_rng_state(self._rng["cuda"], self.device)
                completions = sample_completions(
                    student, prompts, pad_id=self.spec.pad_id, eos_ids=self.spec.eos_ids,
                    temperature=self.spec.temperature, max_new_tokens=max_new_tokens, synced_gpus=self.synced_gpus)
                self._rng = self._rng_now()
        finally:
            model.train(was_training)
        return completions

    def state_dict(self) -> dict[str, Any]:
        return self._rng

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "cpu" in state:  # else: a checkpoint of a vLLM-sampled run, whose state is not an RNG
            self._rng = state
