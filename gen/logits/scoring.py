"""Teacher scorers for on-policy distillation (`gen train --on-policy`): the teacher's top-k next-token
log-probabilities and tail mass on sequences the *student* wrote, in the record layout of logit shards
(gen/logits/records.py), so the trainer's fused op reads them like captured rows.

Two kinds of scorer:
- `hf:PATH` -- a transformers causal LM in the training process (`HFLogitTeacher`, the same code as `gen logits`):
  it sees the full distribution, so the tail is exact (`tail_source: full_distribution`).
- `openai:MODEL` at a base URL -- an OpenAI-compatible server that returns *prompt* log-probabilities, as vLLM's
  `/v1/completions` does with the `prompt_logprobs` extension. The whole sequence is sent as the prompt (token ids),
  with one generated token that is thrown away; vLLM answers, for each prompt position j >= 1, the top-k of the
  distribution that predicted token j (plus token j itself when it ranks lower; dropped here). The rest of the
  distribution is never returned, so the tail is the complement log(1 - sum top-k p) (`tail_source:
  topk_complement`), exactly as `gen logits --teacher vllm:` records it.

Alignment (as in logit shards): position t holds the distribution over token t+1. The last position of a sequence is
never a loss position (no token follows it); the server scorer leaves it empty (ids 0, log-probs -inf, tail 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gen.errors import UserError
from gen.logits.capture import HFLogitTeacher
from gen.logits.capture_vllm import tail_from_topk
from gen.logits.records import IGNORE_INDEX, TAIL_FROM_TOPK, logit_metadata, text_hash, tokenizer_fingerprint

TopK = tuple[np.ndarray, np.ndarray, np.ndarray]  # topk_ids [T, K] int32, topk_logprobs [T, K] fp16, tail [T] fp32


class TeacherScorer(Protocol):
    teacher_id: str
    tokenizer: Any
    vocab_size: int
    tail_source: str

    def capture(self, sequences: Sequence[np.ndarray], k: int) -> list[TopK]: ...

    def close(self) -> None: ...


class PromptLogprobsScorer:
    """A teacher behind an OpenAI-compatible `/v1/completions` endpoint that accepts token-id prompts and the
    `prompt_logprobs` extension (vLLM's OpenAI server; `--max-logprobs` on the server must be >= k)."""

    tail_source = TAIL_FROM_TOPK

    def __init__(self, model: str, base_url: str, *, tokenizer: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0):
        import httpx
        from transformers import AutoConfig, AutoTokenizer

        source = tokenizer or model
        if not Path(source).is_dir():
            raise UserError(f"teacher openai:{model}: the teacher's tokenizer is needed locally (to check it against "
                            f"the student's); give the teacher tokenizer's directory")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"teacher tokenizer {source}: cannot load ({str(exc).strip().splitlines()[0]})") from None
        try:  # the teacher's logit width; the tokenizer's size when the directory holds no model config
            self.vocab_size = int(AutoConfig.from_pretrained(source, local_files_only=True).get_text_config().vocab_size)
        except (OSError, ValueError, AttributeError):
            self.vocab_size = len(self.tokenizer)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.teacher_id = f"openai:{model}@{self.base_url}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def capture(self, sequences: Sequence[np.ndarray], k: int) -> list[TopK]:
        import httpx

        body = {"model": self.model, "prompt": [[int(t) for t in seq] for seq in sequences], "max_tokens": 1,
                "temperature": 1.0, "prompt_logprobs": k}
        try:
            response = self.client.post(f"{self.base_url}/completions", json=body)
        except httpx.HTTPError as exc:
            raise UserError(f"teacher {self.teacher_id}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise UserError(f"teacher {self.teacher_id}: HTTP {response.status_code}: {response.text[:300]}")
        choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(sequences) or any(choice.get("prompt_logprobs") is None for choice in choices):
            raise UserError(f"teacher {self.teacher_id}: the server returned no prompt log-probabilities (it must "
                            f"accept `prompt_logprobs`, as vLLM's OpenAI server does)")
        return [self._topk(choice["prompt_logprobs"], len(seq), k) for seq, choice in zip(sequences, choices)]

    @staticmethod
    def _topk(prompt_logprobs: list[dict[str, Any] | None], length: int, k: int) -> TopK:
        ids = np.zeros((length, k), dtype=np.int32)
        logprobs = np.full((length, k), -math.inf, dtype=np.float32)
        for t, entry in enumerate(prompt_logprobs[1:length]):  # entry j predicts token j: stored at j - 1
            # JSON object keys are strings; vLLM writes -inf as -9999 (JSON has no infinity)
            ranked = sorted(((value["logprob"], int(token)) for token, value in entry.items()),
                            key=lambda item: (-item[0], item[1]))[:k]
            ids[t, : len(ranked)] = [token for _, token in ranked]
            logprobs[t, : len(ranked)] = [value for value, _ in ranked]
        tail = tail_from_topk(logprobs)
        tail[length - 1] = 0.0  # the last position predicts nothing that is scored
        return ids, logprobs.astype(np.float16), tail

    def close(self) -> None:
        self.client.close()


def open_teacher_scorer(spec: str, *, base_url: str | None = None, tokenizer: str | None = None,
                        device: str | None = None) -> TeacherScorer:
    """`hf:PATH` (in process) or `openai:MODEL` with `base_url` (a prompt-logprobs server) -> a scorer."""
    backend, _, target = spec.partition(":")
    if backend == "hf" and target:
        return HFLogitTeacher(target, device=device)
    if backend == "openai" and target:
        if not base_url:
            raise UserError(f"teacher {spec}: an openai: teacher needs the server's base URL (e.g. "
                            f"http://127.0.0.1:8000/v1)")
        return PromptLogprobsScorer(target, base_url, tokenizer=tokenizer)
    raise UserError(f"teacher {spec!r}: expected hf:PATH (in process) or openai:MODEL (a server that returns prompt "
                    f"log-probabilities, such as vLLM's OpenAI server)")


def scorer_metadata(scorer: TeacherScorer, k: int) -> dict[str, Any]:
    """The metadata a logit shard captured by this scorer would carry (`k`, `vocab_size` as ints), for the same
    tokenizer check as logit shards."""
    meta = logit_metadata(teacher=scorer.teacher_id, tokenizer_hash=tokenizer_fingerprint(scorer.tokenizer),
                          vocab_size=scorer.vocab_size, k=k, tail_source=scorer.tail_source,
                          chat_template_hash=text_hash(getattr(scorer.tokenizer, "chat_template", None)))
    return {**meta, "k": int(k), "vocab_size": int(scorer.vocab_size)}


def score_completions(scorer: TeacherScorer, prompts: Sequence[np.ndarray], completions: Sequence[np.ndarray],
                      k: int) -> list[dict[str, np.ndarray]]:
    """One logit-shard-shaped record per (prompt, completion): `input_ids` = prompt + completion, `labels` = the
    completion's tokens (-100 on the prompt: the loss is on completion tokens only), and the teacher's top-k and
    tail at every position."""
    sequences = [np.concatenate([p, c]).astype(np.int32) for p, c in zip(prompts, completions)]
    records = []
    for prompt, sequence, (ids, logprobs, tail) in zip(prompts, sequences, scorer.capture(sequences, k)):
        labels = sequence.copy()
        labels[: len(prompt)] = IGNORE_INDEX
        records.append({"input_ids": sequence, "labels": labels, "topk_ids": ids.astype(np.int32),
                        "topk_logprobs": logprobs.astype(np.float16), "tail_logmass": tail.astype(np.float32)})
    return records
