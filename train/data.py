"""Shards -> training examples -> padded (or packed) batches.

Two kinds of example, one dict shape (numpy arrays, T tokens, K teacher top-k):
- conversational rows (gen run dirs): tokenized with the *student's* chat template; loss on assistant tokens only
  (labels = -100 elsewhere); no teacher -> hard-label cross-entropy (SFT).
- logit rows (`gen logits` output): the teacher's `input_ids`/`labels` and its top-k per position, read zero-copy
  from the memory-mapped Arrow buffers (gen.logits.records.load_logit_columns) -> top-k KD.

A batch (`DistillCollator`) holds ``input_ids``/``labels``/``shift_labels`` [B, L] and, when any example has a
teacher, ``teacher_topk_ids`` [B, L, K] int32, ``teacher_topk_logprobs`` [B, L, K] fp16, ``teacher_tail_logmass``
[B, L] fp32 and ``teacher_mask`` [B, L] bool (which positions carry teacher data). Without packing it has an
``attention_mask``; with packing (several examples per row) it has ``position_ids`` that restart at every example
and no attention mask: transformers then builds a block-diagonal causal mask, so packed examples never see each
other (only with `use_cache=False` in the forward: with a KV cache it silently falls back to one causal mask).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gen.data.shards import read_table
from gen.errors import UserError
from gen.logits.records import (
    IGNORE_INDEX,
    conversation,
    is_logit_dir,
    load_logit_columns,
    tokenize_conversation,
)

TEACHER_KEYS = ("topk_ids", "topk_logprobs", "tail_logmass")


class ConversationDataset(torch.utils.data.Dataset):
    """Conversational rows tokenized once with the student's chat template: items {input_ids [T], labels [T]}."""

    def __init__(self, path: str | os.PathLike, tokenizer, max_length: int, split: str = "train"):
        table = read_table(path, split)
        if "messages" not in table.column_names or table.num_rows == 0:
            raise UserError(f"--data {path}: no conversational rows in split '{split}'")
        columns = [c for c in ("id", "messages", "system") if c in table.column_names]
        self.items = []
        for row in table.select(columns).to_pylist():
            input_ids, labels = tokenize_conversation(tokenizer, conversation(row), max_length, row.get("id", "?"))
            if (labels[1:] != IGNORE_INDEX).any():
                self.items.append({"input_ids": input_ids, "labels": labels})
        if not self.items:
            raise UserError(f"--data {path}: no row has an assistant token within --max-length {max_length}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.items[i]


class LogitDataset(torch.utils.data.Dataset):
    """Logit shards as a dataset: items are numpy views into the memory-mapped shards (no copy until collation)."""

    def __init__(self, path: str | os.PathLike, max_length: int, split: str = "train"):
        self.columns = load_logit_columns(path, split)
        self.metadata = self.columns.metadata
        self.k = self.metadata["k"]
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = self.columns.row(i)
        return {key: value[: self.max_length] for key, value in row.items()}


class PackedDataset(torch.utils.data.Dataset):
    """Greedy in-order packing: consecutive examples share a row while their total length fits `max_length`.
    Items: the concatenated arrays plus `position_ids` that restart at 0 for every packed example."""

    def __init__(self, base: torch.utils.data.Dataset, max_length: int):
        self.base = base
        self.groups: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in range(len(base)):
            n = len(base[i]["input_ids"])
            if current and used + n > max_length:
                self.groups.append(current)
                current, used = [], 0
            current.append(i)
            used += n
        if current:
            self.groups.append(current)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        parts = [self.base[j] for j in self.groups[i]]
        item: dict[str, Any] = {
            "input_ids": np.concatenate([p["input_ids"] for p in parts]),
            # the first token of each packed example gets no loss: it would be "predicted" from the previous example
            "labels": np.concatenate([np.concatenate([[IGNORE_INDEX], p["labels"][1:]]) for p in parts]),
            "position_ids": np.concatenate([np.arange(len(p["input_ids"])) for p in parts]),
        }
        if any("topk_ids" in p for p in parts):
            k = next(p["topk_ids"].shape[1] for p in parts if "topk_ids" in p)
            for key in TEACHER_KEYS:
                item[key] = np.concatenate([p[key] if key in p else _no_teacher(key, len(p["input_ids"]), k)
                                            for p in parts])
            item["teacher_mask"] = np.concatenate([np.full(len(p["input_ids"]), "topk_ids" in p) for p in parts])
        return item


def _no_teacher(key: str, length: int, k: int) -> np.ndarray:
    if key == "topk_ids":
        return np.zeros((length, k), dtype=np.int32)
    if key == "topk_logprobs":
        return np.zeros((length, k), dtype=np.float16)
    return np.zeros(length, dtype=np.float32)


@dataclass
class DistillCollator:
    """Pads a list of items (see module docstring) into a batch of torch tensors. `pad_id` fills input_ids."""

    pad_id: int
    k: int | None = None

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        B = len(items)
        L = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        packed = "position_ids" in items[0]
        if packed:
            # padding continues as its own "example" (positions restart), so it never joins a real example's mask
            position_ids = torch.arange(L).repeat(B, 1)
        else:
            attention_mask = torch.zeros((B, L), dtype=torch.long)
        has_teacher = self.k is not None and any("topk_ids" in item for item in items)
        if has_teacher:
            topk_ids = torch.zeros((B, L, self.k), dtype=torch.int32)
            topk_logprobs = torch.zeros((B, L, self.k), dtype=torch.float16)
            tail = torch.zeros((B, L), dtype=torch.float32)
            teacher_mask = torch.zeros((B, L), dtype=torch.bool)
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[b, :n] = torch.from_numpy(np.asarray(item["input_ids"], dtype=np.int64))
            labels[b, :n] = torch.from_numpy(np.asarray(item["labels"], dtype=np.int64))
            if packed:
                position_ids[b, :n] = torch.from_numpy(np.asarray(item["position_ids"], dtype=np.int64))
            else:
                attention_mask[b, :n] = 1
            if has_teacher and "topk_ids" in item:
                # np.array(copy) of the memory-mapped view: torch wants writable memory
                topk_ids[b, :n] = torch.from_numpy(np.array(item["topk_ids"], dtype=np.int32))
                topk_logprobs[b, :n] = torch.from_numpy(np.array(item["topk_logprobs"], dtype=np.float16))
                tail[b, :n] = torch.from_numpy(np.array(item["tail_logmass"], dtype=np.float32))
                mask = item.get("teacher_mask")
                teacher_mask[b, :n] = True if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))
        shift_labels = torch.full_like(labels, IGNORE_INDEX)
        shift_labels[:, :-1] = labels[:, 1:]
        batch = {"input_ids": input_ids, "labels": labels, "shift_labels": shift_labels,
                 "num_tokens": torch.tensor(sum(len(item["input_ids"]) for item in items))}
        if packed:
            batch["position_ids"] = position_ids
        else:
            batch["attention_mask"] = attention_mask
        if has_teacher:
            batch.update(teacher_topk_ids=topk_ids, teacher_topk_logprobs=topk_logprobs,
                         teacher_tail_logmass=tail, teacher_mask=teacher_mask)
        return batch


@dataclass
class TrainingData:
    dataset: torch.utils.data.Dataset
    collator: DistillCollator
    logit_metadata: dict[str, Any] | None  # of the logit shards, if any (teacher, tokenizer hash, vocab, K)
    n_conversation_rows: int
    n_logit_rows: int


def load_training_data(paths: Sequence[str | os.PathLike], tokenizer, *, max_length: int, packing: bool,
                       split: str = "train") -> TrainingData:
    """Each path is a conversational run dir (SFT) or a logit-shard dir (KD); any mix. Logit dirs must agree on the
    teacher's tokenizer and K."""
    datasets: list[torch.utils.data.Dataset] = []
    metadata = None
    n_conv = n_logit = 0
    for path in paths:
        if is_logit_dir(path, split):
            ds = LogitDataset(path, max_length, split)
            if metadata is not None and (ds.metadata["tokenizer_hash"], ds.k, ds.metadata["temperature"]) != (
                    metadata["tokenizer_hash"], metadata["k"], metadata["temperature"]):
                raise UserError(f"--data {path}: logit shards disagree with the other --data dirs on tokenizer, K or "
                                f"capture temperature")
            metadata = metadata or ds.metadata
            n_logit += len(ds)
        else:
            ds = ConversationDataset(path, tokenizer, max_length, split)
            n_conv += len(ds)
        datasets.append(ds)
    if not datasets:
        raise UserError("--data: give at least one directory")
    dataset = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    if packing:
        dataset = PackedDataset(dataset, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    collator = DistillCollator(pad_id=pad_id, k=metadata["k"] if metadata else None)
    return TrainingData(dataset, collator, metadata, n_conv, n_logit)
