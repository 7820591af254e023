"""The student's on-policy completions from a vLLM engine colocated in the training process, fed the trainer's
weights every `sync_steps` optimizer steps (the "colocate" mode of TRL's online trainers).

The engine: `vllm.LLM` on the student's directory, with its engine core in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the trainer's tensors reach it by reference, with no copy through a socket.
vLLM then runs a one-process `torch.distributed` group of its own beside a one-process Trainer; multi-process runs
use the transformers sampler (train/student_sampler.py).

The weight sync: the worker's `reload_weights(weights_iterator=...)` (vLLM's in-place reload, reached through
`LLM.collective_rpc`), which calls the model's own `load_weights` -- checkpoint names in, vLLM's fused/sharded
layouts out -- then the prefix cache is dropped, since KV computed with the old weights is stale. Under LoRA the
adapter is merged into the weights pushed (W + get_delta_weight, as peft merges, without touching the trained
model), so vLLM needs no LoRA support. Sync happens before a sample when the last sync point `floor(step / N) * N`
is newer than the weights the engine holds; with `sync_steps` dividing `save_steps` (train/config.py), a resumed run
therefore samples from the same weights as an uninterrupted one.

Reproducibility: each request carries its own seed derived from (seed, rank, draw, row), `draw` counting this
rank's on-policy micro-batches and saved with the checkpoint, so sampling depends neither on batch composition nor
on the engine's history.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from gen.errors import InvalidSetting
from train.student_sampler import SamplingSpec, cut_after_eos

# One engine per process and configuration: a later run in the same process (the benchmark, the tests) pushes its
# own weights into it at start rather than paying vLLM's start-up again.
_ENGINES: dict[tuple, Any] = {}


def inference_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The student's parameters and buffers under its checkpoint names (what vLLM's `load_weights` reads), with a
    LoRA adapter merged in: `layer.base_layer.weight` + the adapter's delta, as `layer.weight`; `lora_*` dropped."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    head = base.get_output_embeddings()
    if hasattr(head, "base_layer") and getattr(base.config.get_text_config(), "tie_word_embeddings", False):
        raise InvalidSetting("student_sampler", "student_sampler vllm: LoRA on a tied lm_head cannot be pushed to "
                                                "vLLM (it rebuilds the head from the embeddings); leave lm_head out "
                                                "of lora_target or use student_sampler transformers")
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or "modules_to_save" in name:
            continue
        if ".base_layer." in name:
            owner, _, leaf = name.partition(".base_layer.")
            layer = modules[owner]
            if leaf == "weight" and not getattr(layer, "merged", False) and not getattr(layer, "disable_adapters",
                                                                                         False):
                for adapter in layer.active_adapters:
                    if adapter in getattr(layer, "lora_A", {}):
                        tensor = tensor + layer.get_delta_weight(adapter)
            name = f"{owner}.{leaf}"
        yield name, tensor.detach()


def request_seed(seed: int, rank: int, draw: int, row: int) -> int:
    """A 31-bit seed per request, a pure function of where the sample sits in the run."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{draw}:{row}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _start_engine(model_path: str, *, max_model_len: int, dtype: str, seed: int, gpu_memory_utilization: float,
                  cuda: bool):
    import vllm.envs
    from vllm import LLM

    key = (model_path, max_model_len, dtype, seed, gpu_memory_utilization, cuda)
    if key in _ENGINES:
        return _ENGINES[key], 0.0
    # The engine core in this process: weights are synced by reference (see the module docstring). Set only for this
    # start: the in-process engine core freezes vLLM's environment reads once it is up (envs cache), which would
    # also hold for any other vLLM engine this process starts later -- both are undone afterwards.
    multiprocessing = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    envs_cached = vllm.envs._is_envs_cache_enabled()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM's CPU worker lowers torch's thread count for serving, replaces torch.set_num_threads with a no-op and may
    # bind this process to cores: right for a server, wrong for the trainer it shares the process with. Put back.
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    t0 = time.perf_counter()
    try:
        llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                  gpu_memory_utilization=gpu_memory_utilization,
                  enforce_eager=not cuda)  # on CPU, torch.compile costs minutes at start for little gain
    finally:
        if multiprocessing is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = multiprocessing
        if not envs_cached:
            vllm.envs.disable_envs_cache()
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    _ENGINES[key] = llm
    return llm, time.perf_counter() - t0


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_path: str, spec: SamplingSpec, *, sync_steps: int, max_model_len: int,
                 device: torch.device, gpu_memory_utilization: float):
        self.spec, self.sync_steps = spec, sync_steps
        cuda = device.type == "cuda"
        # the trainer keeps float32 master weights; on GPU vLLM samples in bf16 (what a bf16 run computes in)
        self.llm, self.start_seconds = _start_engine(
            model_path, max_model_len=max_model_len, dtype="bfloat16" if cuda else "float32", seed=spec.seed,
            gpu_memory_utilization=gpu_memory_utilization, cuda=cuda)
        self._synced_at: int | None = None  # the optimizer step whose weights the engine holds
        self._draws = 0

    def sync(self, model: torch.nn.Module, step: int) -> float | None:
        """Push `model`'s weights (of optimizer step `step`) if a sync point has passed since the last push."""
        if self._synced_at is not None and (step // self.sync_steps) * self.sync_steps <= self._synced_at:
            return None
        t0 = time.perf_counter()
        with torch.no_grad():
            weights = inference_weights(model)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self._synced_at = step
        return time.perf_counter() - t0

    def sample(self, model, prompts: list[torch.Tensor], *, max_new_tokens: int) -> list[torch.Tensor]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        spec = self.spec
        params = [SamplingParams(temperature=spec.temperature, top_p=1.0, max_tokens=max_new_tokens,
                                 stop_token_ids=list(spec.eos_ids), detokenize=False,
                                 seed=request_seed(spec.seed, spec.rank, self._draws, row))
                  for row in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p.tolist()) for p in prompts], params,
                                    use_tqdm=False)
        self._draws += 1
        return [cut_after_eos(torch.tensor(list(o.outputs[0].token_ids), dtype=torch.long), spec.eos_ids)
                for o in outputs]

    def state_dict(self) -> dict[str, Any]:
        return {"vllm_draws": self._draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._draws = int(state.get("vllm_draws", 0))
        self._synced_at = None  # the resumed weights are pushed before the next sample
