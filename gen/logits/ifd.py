"""Instruction-following difficulty (IFD; Cherry LLM, Li et al. 2023; Superfiltering, Li et al. 2024).

IFD(row) = PPL(answer | instruction) / PPL(answer) = exp(CE_cond) / exp(CE_uncond), where CE is the mean token
cross-entropy over the answer's tokens under a causal LM. IFD < 1: the instruction makes the answer easier to predict
(the lower, the less the instruction adds); IFD >= 1: the instruction does not help, and Cherry/Superfiltering drop
the row. A small model suffices (Superfiltering uses GPT-2); any `hf:` model works (a local transformers directory
or a .gguf file, loaded by the logit-capture loader, forward passes through `HFLogitTeacher.forward_logits`).

Choices (the papers score single-turn rows; these extend them):
- The answer is the LAST assistant turn: its tokens are those the chat template gives that turn (content and the
  end-of-turn marker), found as in logit capture (`tokenize_conversation`).
- The instruction is everything before it as the chat template renders it: the system prompt and, for multi-turn
  rows, all earlier turns (the answer is conditioned on its whole context, as the student will see it).
- Unconditioned: the same answer tokens after only the tokenizer's BOS token (EOS when it has none), so both
  perplexities average over exactly the same tokens.
- Truncation to `max_length` tokens: the answer keeps its head (at most max_length - 1 tokens), the context keeps
  its tail (the tokens nearest the answer). A row with no answer tokens gets no score (reason `ifd_no_answer`).
- Batches are right-padded with an attention mask; a causal LM's real positions never see the padding, so a row's
  IFD does not depend on its batch (tested against one-row batches). Cross-entropies are summed in float64.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gen.logits.records import IGNORE_INDEX, conversation, tokenize_conversation

NO_ANSWER = "ifd_no_answer"


@dataclass(frozen=True)
class IFDPair:
    """One row's two sequences: conditioned (context + answer) and unconditioned (BOS + answer); the answer tokens
    are the last `answer_len` of each."""

    conditioned: np.ndarray
    unconditioned: np.ndarray
    answer_len: int


@dataclass(frozen=True)
class IFDValue:
    ifd: float
    ppl_conditioned: float
    ppl_unconditioned: float
    answer_tokens: int


def model_fingerprint(path: str, max_length: int, chat_template: str | None = None) -> str:
    """A cheap identity of a local model (its files' names, sizes and mtimes), the truncation and the chat template
    given (if any): a rerun with the same fingerprint and the same row text reuses the stored IFD without loading
    the model."""
    location = Path(path).resolve()
    files = [location] if location.is_file() else sorted(p for p in location.iterdir() if p.is_file())
    blob = json.dumps([str(location), max_length, chat_template] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_fingerprint(row: Mapping[str, Any]) -> str:
    """A hash of what IFD reads from a row: its conversation (system prompt included)."""
    return hashlib.sha256(json.dumps(conversation(row), sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def ifd_pair(tokenizer, row: Mapping[str, Any], max_length: int, start_id: int) -> IFDPair | None:
    """The two sequences of one row, or None when its last assistant turn has no tokens."""
    messages = conversation(row)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not messages[last]["content"].strip():
        return None
    messages = messages[: last + 1]
    input_ids, labels = tokenize_conversation(tokenizer, messages, row_id=str(row.get("id", "?")))
    answer_positions = np.flatnonzero(labels != IGNORE_INDEX)
    # Only the last assistant turn is the answer: its span is the final run of labelled positions.
    breaks = np.flatnonzero(np.diff(answer_positions) != 1)
    if len(answer_positions) == 0:
        return None
    first = answer_positions[breaks[-1] + 1] if len(breaks) else answer_positions[0]
    end = answer_positions[-1] + 1
    answer = input_ids[first:end][: max_length - 1]
    context = input_ids[:first][-(max_length - len(answer)):] if max_length > len(answer) else input_ids[:0]
    if len(answer) == 0:
        return None
    unconditioned = np.concatenate([np.asarray([start_id], dtype=np.int32), answer]).astype(np.int32)
    if len(context) == 0:  # nothing before the answer: condition on the start token alone as well
        context = unconditioned[:1]
    return IFDPair(np.concatenate([context, answer]).astype(np.int32), unconditioned, len(answer))


def answer_cross_entropy(logits, sequence: np.ndarray, answer_len: int) -> float:
    """Mean cross-entropy (nats, float64) of the last `answer_len` tokens of `sequence` given `logits` [T, V]
    (position t predicts token t+1)."""
    import torch

    t = len(sequence)
    predicting = logits[t - answer_len - 1: t - 1].to(torch.float64)
    targets = torch.as_tensor(sequence[t - answer_len:].astype(np.int64), device=predicting.device)
    logprobs = torch.log_softmax(predicting, dim=-1).gather(1, targets[:, None])[:, 0]
    return float(-logprobs.mean())


class IFDScorer:
    """IFD with a local causal LM: `score(rows)` -> per row an IFDValue or None (no answer tokens).
    `chat_template` replaces the tokenizer's; `default_chat_template` is used only when the tokenizer has none (a
    base model such as the bundled Gemma GGUF)."""

    def __init__(self, path: str, *, max_length: int = 1024, batch_rows: int = 8, max_batch_tokens: int = 2048,
                 device: str | None = None,
                 dtype: str | None = None, chat_template: str | None = None,
                 default_chat_template: str | None = None):
        from gen.logits.capture import HFLogitTeacher

        self.teacher = HFLogitTeacher(path, device=device, dtype=dtype, chat_template=chat_template)
        self.tokenizer = self.teacher.tokenizer
        if not getattr(self.tokenizer, "chat_template", None) and default_chat_template:
            self.tokenizer.chat_template = default_chat_template
        self.max_length = max_length
        self.batch_rows = batch_rows
        self.max_batch_tokens = max_batch_tokens
        bos = self.tokenizer.bos_token_id
        self.start_id = int(bos if bos is not None else self.tokenizer.eos_token_id)

    def pairs(self, rows: Sequence[Mapping[str, Any]]) -> list[IFDPair | None]:
        return [ifd_pair(self.tokenizer, row, self.max_length, self.start_id) for row in rows]

    def score(self, rows: Sequence[Mapping[str, Any]]) -> list[IFDValue | None]:
        pairs = self.pairs(rows)
        out: list[IFDValue | None] = [None] * len(rows)
        todo = [i for i, p in enumerate(pairs) if p is not None]
        # Longest first, so each batch pads little.
        todo.sort(key=lambda i: -len(pairs[i].conditioned))
        for batch in self._batches(todo, pairs):
            sequences = [pairs[i].conditioned for i in batch] + [pairs[i].unconditioned for i in batch]
            logits = self.teacher.forward_logits(sequences)
            for j, i in enumerate(batch):
                p = pairs[i]
                ce_cond = answer_cross_entropy(logits[j], p.conditioned, p.answer_len)
                ce_uncond = answer_cross_entropy(logits[len(batch) + j], p.unconditioned, p.answer_len)
                out[i] = IFDValue(math.exp(ce_cond - ce_uncond), math.exp(ce_cond), math.exp(ce_uncond), p.answer_len)
        return out

    def _batches(self, todo: list[int], pairs: list[IFDPair | None]):
        """Groups of rows (longest first) under `batch_rows` and a padded-token cap: both sequences of each row,
        padded to the longest, at most `max_batch_tokens` tokens (the [tokens, vocab] logits are the memory)."""
        batch: list[int] = []
        for i in todo:
            longest = len(pairs[batch[0]].conditioned) if batch else len(pairs[i].conditioned)
            if batch and (len(batch) >= self.batch_rows or 2 * (len(batch) + 1) * longest > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def close(self) -> None:
        self.teacher.close()
