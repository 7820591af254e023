"""Teacher logit capture (`gen logits`): conversational shards in, logit shards out (schema: gen/logit_records.py).

Teacher specs:
- `hf:PATH` -- a local Hugging Face causal LM (a checkpoint directory, or a `.gguf` file that transformers converts).
  Exact: it sees the full next-token distribution, so `tail_logmass` is the logsumexp of every non-top-k log-prob.
- `vllm:PATH` -- vLLM prompt logprobs (gen/capture_vllm.py). vLLM returns only the top-k, so the tail is derived as
  log(1 - sum top-k p) and the metadata says `tail_source: topk_complement`.

The run is resumable: rows whose id is already in the output shards are neither tokenized nor sent to the teacher
again; finished shards are committed atomically, so a killed run loses at most the unflushed buffer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gen.data.lock import run_lock
from gen.data.shards import read_table, shard_paths, write_manifest
from gen.errors import MissingDependency, UserError
from gen.logits.records import (
    LogitShardWriter,
    conversation,
    logit_metadata,
    logit_shard_stats,
    read_logit_metadata,
    text_hash,
    tokenize_conversation,
    tokenizer_fingerprint,
)

TopK = tuple[np.ndarray, np.ndarray, np.ndarray]  # topk_ids [T, K] int32, topk_logprobs [T, K], tail_logmass [T]


class LogitTeacher(Protocol):
    teacher_id: str
    tokenizer: Any
    vocab_size: int
    tail_source: str

    def capture(self, sequences: Sequence[np.ndarray], k: int) -> list[TopK]: ...

    def close(self) -> None: ...


def topk_from_logits(logits, k: int, chunk_rows: int = 1024) -> TopK:
    """Top-k log-probs and the exact tail log-mass from one sequence's logits [T, V] (any float dtype; math in fp32).

    tail_logmass = logsumexp of the log-probs outside the top-k (the top-k set to -inf), which stays accurate when the
    top-k holds almost all the mass, where log(1 - sum p) would round to log(0). -inf when K == V."""
    import torch

    T, V = logits.shape
    k = min(k, V)
    ids = np.empty((T, k), dtype=np.int32)
    logprobs = np.empty((T, k), dtype=np.float16)
    tail = np.empty(T, dtype=np.float32)
    for start in range(0, T, chunk_rows):
        logp = torch.log_softmax(logits[start:start + chunk_rows].float(), dim=-1)
        top = logp.topk(k, dim=-1, sorted=True)
        rest = logp.scatter(-1, top.indices, float("-inf"))
        ids[start:start + chunk_rows] = top.indices.to(torch.int32).cpu().numpy()
        logprobs[start:start + chunk_rows] = top.values.to(torch.float16).cpu().numpy()
        tail[start:start + chunk_rows] = torch.logsumexp(rest, dim=-1).cpu().numpy()
    return ids, logprobs, tail


def check_hf_model_path(path: str) -> Path:
    """`path` as a Path if it is a local model (a directory with config.json, or a .gguf file); else a UserError.
    Cheap (no import, nothing loaded): the CLI calls it before taking the run's lock."""
    location = Path(path)
    if not location.exists():
        raise UserError(f"--teacher hf:{path}: no such local model (hf: takes a local directory or .gguf file)")
    if not (location.is_file() and location.suffix == ".gguf") and not (location / "config.json").is_file():
        raise UserError(f"--teacher hf:{path}: not a Hugging Face model (no config.json; hf: takes a local model "
                        f"directory or .gguf file)")
    return location


def load_hf_causal_lm(path: str, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any, Any]:
    """What `hf:PATH` means everywhere (logit capture here, generation in `gen.teachers.hf_local`): a local
    transformers causal LM (a directory with config.json, or a .gguf file transformers converts), loaded offline on
    `device` (default cuda when available, else cpu) in `dtype` (default bf16 on cuda, fp32 on cpu).
    Returns (tokenizer, model in eval mode on the device, torch.device)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = check_hf_model_path(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if location.is_file() and location.suffix == ".gguf":
        try:
            import gguf  # noqa: F401  (transformers' GGUF conversion needs it)
        except ImportError:
            raise MissingDependency("gguf", "gguf") from None
        kwargs["gguf_file"] = location.name
        location = location.parent
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if torch_device.type == "cuda" else torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"hf:{path}: cannot load ({str(exc).strip().splitlines()[0]})") from None
    return tokenizer, model.to(torch_device).eval(), torch_device


class HFLogitTeacher:
    """A local transformers causal LM as a logit teacher: batched right-padded forward passes, full log-softmax."""

    tail_source = "full_distribution"

    def __init__(self, path: str, *, device: str | None = None, dtype: str | None = None,
                 chat_template: str | None = None):
        self.tokenizer, self.model, self.device = load_hf_causal_lm(path, device=device, dtype=dtype)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.teacher_id = f"hf:{path}"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def capture(self, sequences: Sequence[np.ndarray], k: int) -> list[TopK]:
        """sequences: token ids [T_i] -> per sequence (topk_ids [T_i, K], topk_logprobs [T_i, K], tail [T_i])."""
        import torch

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
            attention_mask[i, : len(seq)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return [topk_from_logits(logits[i, : len(seq)], k) for i, seq in enumerate(sequences)]

    def close(self) -> None:
        self.model = None


def open_logit_teacher(spec: str, **options) -> LogitTeacher:
    """`hf:PATH` or `vllm:PATH` -> a logit teacher (other specs are a UserError naming --teacher)."""
    backend, _, target = spec.partition(":")
    if not target:
        raise UserError(f"--teacher {spec!r}: expected hf:PATH or vllm:PATH")
    if backend == "hf":
        return HFLogitTeacher(target, **options)
    if backend == "vllm":
        from gen.logits.capture_vllm import VLLMLogitTeacher

        return VLLMLogitTeacher(target, **options)
    raise UserError(f"--teacher {spec!r}: logit capture supports hf:PATH and vllm:PATH (API teachers return no logits)")


def _batches(items: list[tuple[str, np.ndarray, np.ndarray]], max_rows: int,
             max_tokens: int) -> Iterator[list[tuple[str, np.ndarray, np.ndarray]]]:
    """Consecutive groups under a row cap and a padded-token cap (rows x longest row)."""
    batch: list = []
    longest = 0
    for item in items:
        longest_if_added = max(longest, len(item[1]))
        if batch and (len(batch) >= max_rows or longest_if_added * (len(batch) + 1) > max_tokens):
            yield batch
            batch, longest_if_added = [], len(item[1])
        batch.append(item)
        longest = longest_if_added
    if batch:
        yield batch


def check_conversation_source(source: str | os.PathLike, split: str = "train") -> None:
    """A UserError unless `source` holds shards of `split` (a run directory, a split directory or one .arrow file):
    a directory that is not a run would otherwise give an empty capture that looks like a finished one."""
    if not shard_paths(source, split):
        raise UserError(f"{source}: no '{split}' shards here (not a run directory written by gen, or its '{split}' "
                        f"split is empty)")


def capture_logits(source: str | os.PathLike, out: str | os.PathLike, teacher: LogitTeacher, k: int, *,
                   split: str = "train", max_length: int | None = None, batch_size: int = 16,
                   max_batch_tokens: int = 8192, progress: bool = True, config: dict | None = None) -> dict[str, Any]:
    """Tokenize every row of `source` (a conversational run dir) with the teacher's chat template, capture the
    teacher's top-k, and append logit rows to `out`/train. Returns the logit shard stats plus this run's counts."""
    from tqdm import tqdm

    if k < 1:
        raise UserError(f"-k {k}: must be >= 1")
    check_conversation_source(source, split)
    tokenizer_hash = tokenizer_fingerprint(teacher.tokenizer)
    metadata = logit_metadata(teacher=teacher.teacher_id, tokenizer_hash=tokenizer_hash,
                              vocab_size=teacher.vocab_size, k=min(k, teacher.vocab_size),
                              tail_source=teacher.tail_source,
                              chat_template_hash=text_hash(getattr(teacher.tokenizer, "chat_template", None)))
    existing = read_logit_metadata(out)
    if existing is not None:
        for key in ("teacher", "tokenizer_hash", "k"):
            if str(existing[key]) != metadata[key]:
                raise UserError(f"{out}: existing logit shards have {key}={existing[key]}, this run has "
                                f"{metadata[key]}; use a new --out")
    table = read_table(source, split, columns=None)
    if "messages" not in table.column_names:
        raise UserError(f"{source}: no 'messages' column in split '{split}' (expected conversational shards)")
    started = time.monotonic()
    tokens = 0
    # One writer per run directory (gen.data.lock): held until the manifest is written.
    with run_lock(out, "logits"), LogitShardWriter(out, k=min(k, teacher.vocab_size), metadata=metadata) as writer:
        todo_rows = [row for row in table.select([c for c in ("id", "messages", "system") if c in table.column_names])
                     .to_pylist() if row["id"] not in writer.keys]
        bar = tqdm(total=len(todo_rows), desc="logits", unit="row", disable=not progress)
        items = []
        for row in todo_rows:
            input_ids, labels = tokenize_conversation(teacher.tokenizer, conversation(row), max_length, row["id"])
            if len(input_ids) >= 2 and (labels != -100).any():
                items.append((row["id"], input_ids, labels))
            else:
                bar.update(1)  # nothing to distill (no assistant token left after truncation)
        for batch in _batches(items, batch_size, max_batch_tokens):
            results = teacher.capture([input_ids for _, input_ids, _ in batch], k)
            for (row_id, input_ids, labels), (top_ids, top_logprobs, tail) in zip(batch, results):
                writer.write({"id": row_id, "input_ids": input_ids, "labels": labels, "topk_ids": top_ids,
                              "topk_logprobs": top_logprobs.astype(np.float16), "tail_logmass": tail})
                tokens += len(input_ids)
            bar.update(len(batch))
            bar.set_postfix_str(f"{tokens / max(1e-9, time.monotonic() - started):.0f} tok/s")
        bar.close()
        skipped = table.num_rows - len(todo_rows)
        written_rows = len(items)
        writer.close()  # every row committed before the manifest describes them
        stats = logit_shard_stats(out)
        write_manifest(out, config=config or {}, extra={"logits": stats})
    return {**stats, "new_rows": written_rows, "resumed_rows": skipped, "new_tokens": tokens,
            "seconds": time.monotonic() - started}
