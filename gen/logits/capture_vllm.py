"""vLLM as a logit teacher (`--teacher vllm:PATH`): in-process `vllm.LLM`, prompt logprobs, one generate call per
batch (vLLM's scheduler batches continuously inside it).

vLLM returns, for prompt position j >= 1, the top-k log-probs of the distribution that predicted token j (plus the
actual token when it is outside the top-k). Our convention stores at position t the distribution over token t+1, so
position t takes vLLM's entry t+1; the last position takes the logprobs of one generated token. vLLM never exposes
the rest of the distribution, so the tail is log(1 - sum top-k p) ("topk_complement" in the shard metadata): exact up
to rounding when the top-k is known exactly, but it loses precision where the top-k holds almost all the mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gen.errors import MissingDependency
from gen.logits.records import TAIL_FROM_TOPK

# An empty tail (top-k sums to >= 1 after rounding) is stored as log(tiny) rather than -inf only if it is positive
# mass; -inf means "no mass", which every loss handles.
_NO_MASS = float("-inf")


def _top_from_position(entry: dict[int, Any], k: int) -> tuple[list[int], list[float]]:
    """The k most likely (id, logprob) of one vLLM position dict, sorted desc (drops the actual token if it ranks
    below k)."""
    ranked = sorted(entry.items(), key=lambda item: (-item[1].logprob, item[0]))[:k]
    return [token for token, _ in ranked], [float(value.logprob) for _, value in ranked]


def tail_from_topk(logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum exp(logprobs)) per row, in float64; -inf where the top-k already holds all the mass."""
    mass = np.exp(logprobs.astype(np.float64)).sum(axis=-1)
    rest = 1.0 - mass
    with np.errstate(divide="ignore"):
        return np.where(rest > 0, np.log(np.clip(rest, 1e-300, None)), _NO_MASS).astype(np.float32)


class VLLMLogitTeacher:
    tail_source = TAIL_FROM_TOPK

    def __init__(self, model: str, *, chat_template: str | None = None, max_logprobs: int = 128,
                 device: str | None = None, dtype: str | None = None, **engine_options: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise MissingDependency("vllm", "vllm") from None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        options = {"max_logprobs": max_logprobs, "seed": 0, **engine_options}
        if dtype:
            options["dtype"] = dtype
        self.llm = LLM(model=model, **options)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self.teacher_id = f"vllm:{model}"

    def capture(self, sequences: Sequence[np.ndarray], k: int,
                temperature: float = 1.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        # vLLM's prompt logprobs are always of the temperature-1 distribution; capture_logits refuses other values
        if temperature != 1.0:
            raise ValueError("vLLM prompt logprobs are temperature 1 only")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, logprobs=k, prompt_logprobs=k, seed=0)
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in seq]) for seq in sequences]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for seq, output in zip(sequences, outputs):
            T = len(seq)
            positions = list(output.prompt_logprobs[1:T]) + [output.outputs[0].logprobs[0]]
            ids = np.zeros((T, k), dtype=np.int32)
            logprobs = np.full((T, k), -math.inf, dtype=np.float32)
            for t, entry in enumerate(positions):
                top_ids, top_logprobs = _top_from_position(entry, k)
                ids[t, : len(top_ids)] = top_ids
                logprobs[t, : len(top_logprobs)] = top_logprobs
            results.append((ids, logprobs.astype(np.float16), tail_from_topk(logprobs)))
        return results

    def close(self) -> None:
        self.llm = None
