"""Logit shards: the teacher's top-k next-token distribution per token, as Arrow, and the tokenization both the
capture (`gen logits`) and the trainer (`gen train`) share.

One row per tokenized sequence (T tokens, K = top-k):

| column | type | meaning |
| --- | --- | --- |
| `id` | string | the source conversational row's id (resume: rows already on disk are skipped) |
| `input_ids` | list<int32> [T] | the conversation rendered with the teacher's chat template |
| `labels` | list<int32> [T] | `input_ids` on assistant tokens, -100 on prompt/system/user tokens (HF convention, unshifted) |
| `topk_ids` | list<fixed_size_list<int32, K>> [T, K] | teacher's K most likely next tokens, sorted by logprob desc |
| `topk_logprobs` | list<fixed_size_list<float16, K>> [T, K] | their log-probabilities at temperature 1 |
| `tail_logmass` | list<float32> [T] | log(1 - sum of the top-k probabilities): the teacher mass on every other token |

Alignment ("next_token"): position t holds the teacher's distribution over token t+1 given tokens 0..t, so the
loss at position t is weighted by `labels[t + 1]` (the same shift as a causal LM's cross-entropy). The last
position holds the distribution after the final token (kept so every column has T entries).

Compact shards (`logit_format` "2", gen/logits/compact.py) replace `topk_ids` and `topk_logprobs` by one column
`topk_packed` list<fixed_size_binary[W]> [T] (Elias-Fano ids + uint8 log-space codes); the reader decodes them back
to the two arrays above, so consumers see one shape. Shards without `logit_format` are format 1.

Schema metadata (bytes -> bytes in Arrow, strings here): `kdforge.kind` = "topk_logits", `teacher`,
`tokenizer_hash` (see `tokenizer_fingerprint`), `vocab_size` (teacher logits width), `k`, `temperature` (the
softmax temperature the top-k and tail were taken at; "1.0" unless `gen logits --temperature`), `logit_format`,
`alignment`, `tail_source` ("full_distribution": logsumexp of the non-top-k log-probs of the full teacher
distribution; "topk_complement": log(1 - sum top-k p), all a backend that only returns top-k can do).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gen.data.shards import ShardWriter, open_shard, shard_paths
from gen.errors import UserError
from gen.logits.compact import FORMAT_COMPACT, FORMAT_EXACT, CompactLayout, decode, encode

KIND = "topk_logits"
ALIGNMENT = "next_token"
IGNORE_INDEX = -100
TAIL_FULL = "full_distribution"
TAIL_FROM_TOPK = "topk_complement"


def logit_schema(k: int, logit_format: int = FORMAT_EXACT, vocab_size: int | None = None) -> pa.Schema:
    """The Arrow schema of a logit shard with top-k width `k` (metadata is added by the writer)."""
    if logit_format == FORMAT_COMPACT:
        width = CompactLayout(int(vocab_size), k).width
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
                pa.field("labels", pa.list_(pa.int32()), nullable=False),
                pa.field("topk_packed", pa.list_(pa.binary(width)), nullable=False),
                pa.field("tail_logmass", pa.list_(pa.float32()), nullable=False),
            ]
        )
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("labels", pa.list_(pa.int32()), nullable=False),
            pa.field("topk_ids", pa.list_(pa.list_(pa.int32(), k)), nullable=False),
            pa.field("topk_logprobs", pa.list_(pa.list_(pa.float16(), k)), nullable=False),
            pa.field("tail_logmass", pa.list_(pa.float32()), nullable=False),
        ]
    )


def logit_metadata(*, teacher: str, tokenizer_hash: str, vocab_size: int, k: int, tail_source: str,
                   chat_template_hash: str | None = None, temperature: float = 1.0,
                   logit_format: int = FORMAT_EXACT) -> dict[str, str]:
    return {
        "kdforge.kind": KIND,
        "teacher": teacher,
        "tokenizer_hash": tokenizer_hash,
        "vocab_size": str(int(vocab_size)),
        "k": str(int(k)),
        "temperature": repr(float(temperature)),
        "logit_format": str(int(logit_format)),
        "alignment": ALIGNMENT,
        "alignment_doc": "position t holds the teacher distribution over token t+1; loss at t uses labels[t+1]",
        "tail_source": tail_source,
        "chat_template_hash": chat_template_hash or "",
    }


def read_logit_metadata(path: str | os.PathLike, split: str = "train") -> dict[str, Any] | None:
    """The metadata of the logit shards under `path` (run dir, split dir or file) with `k`/`vocab_size` as ints;
    None when there are no shards yet. A shard that is not a logit shard is a UserError naming it."""
    if not Path(path).exists():
        return None
    paths = shard_paths(path, split)
    if not paths:
        return None
    schema = open_shard(paths[0]).schema
    meta = {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()}
    if meta.get("kdforge.kind") != KIND:
        raise UserError(f"{paths[0]}: not a logit shard (no 'kdforge.kind: {KIND}' in its schema metadata)")
    meta["k"] = int(meta["k"])
    meta["vocab_size"] = int(meta["vocab_size"])
    meta["logit_format"] = int(meta.get("logit_format", FORMAT_EXACT))  # shards from before formats: 1
    meta["temperature"] = float(meta.get("temperature", "1.0"))
    if meta["logit_format"] not in (FORMAT_EXACT, FORMAT_COMPACT):
        raise UserError(f"{paths[0]}: logit_format {meta['logit_format']} is not one this kdforge reads (1, 2)")
    return meta


def is_logit_dir(path: str | os.PathLike, split: str = "train") -> bool:
    """True when the first shard under `path` carries logit-shard metadata (False for conversational shards)."""
    paths = shard_paths(path, split)
    if not paths:
        return False
    meta = open_shard(paths[0]).schema.metadata or {}
    return meta.get(b"kdforge.kind") == KIND.encode()


# ------------------------------------------------------------------------------------------------- tokenization


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the token-string -> id mapping (added tokens included). Two tokenizers with the same fingerprint give
    token ids the same meaning, which is what token-level distillation needs (merges and chat templates may differ)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    blob = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def text_hash(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:16]


def conversation(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """A row's messages with its `system` column (Orca-style system message) prepended when it is not already there."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    system = row.get("system")
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _render(tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_conversation(tokenizer, messages: Sequence[Mapping[str, str]], max_length: int | None = None,
                          row_id: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """Render `messages` with the tokenizer's chat template; return (input_ids [T] int32, labels [T] int32) where
    labels = input_ids on assistant tokens (the content and the template's end-of-turn marker, so the student learns
    to stop) and -100 elsewhere. Truncated to `max_length` tokens (the head is kept).

    Assistant spans are found by rendering prefixes: the text of turn i spans from the end of
    render(messages[:i], generation prompt) to the end of render(messages[:i+1]). Templates that rewrite earlier turns
    (e.g. drop past reasoning) fall back to locating the turn's content in the full text. Needs a fast tokenizer
    (character offsets)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template: pass --chat-template FILE (a Jinja chat template)")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("a fast (Rust) tokenizer is needed to map assistant text to tokens")
    try:
        full = _render(tokenizer, messages, add_generation_prompt=False)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start_text = _render(tokenizer, messages[:i], add_generation_prompt=True)
            end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if end_text.startswith(start_text) and full.startswith(end_text) and len(end_text) > len(start_text):
                spans.append((len(start_text), len(end_text)))
                cursor = len(end_text)
            else:
                at = full.find(message["content"], cursor)
                if at >= 0:
                    spans.append((at, at + len(message["content"])))
                    cursor = at + len(message["content"])
    except UserError:
        raise
    except Exception as exc:  # jinja2 TemplateError and friends: the row does not fit the template
        raise UserError(f"row {row_id}: the chat template cannot render it ({str(exc).splitlines()[0]})") from None
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = np.asarray(encoding["input_ids"], dtype=np.int32)
    starts = np.asarray([start for start, _ in encoding["offset_mapping"]], dtype=np.int64)
    is_assistant = np.zeros(len(input_ids), dtype=bool)
    for begin, end in spans:
        is_assistant |= (starts >= begin) & (starts < end)
    labels = np.where(is_assistant, input_ids, IGNORE_INDEX).astype(np.int32)
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


# ------------------------------------------------------------------------------------------------------ writing


def make_logit_row(row_id: str, input_ids: np.ndarray, labels: np.ndarray, topk_ids: np.ndarray,
                   topk_logprobs: np.ndarray, tail_logmass: np.ndarray) -> dict[str, Any]:
    """One logit-shard row from numpy arrays: input_ids/labels [T], topk_ids [T, K], topk_logprobs [T, K],
    tail_logmass [T]. Stored as int32 / int32 / int32 / float16 / float32."""
    T = len(input_ids)
    if len(labels) != T or topk_ids.shape[0] != T or topk_logprobs.shape != topk_ids.shape or len(tail_logmass) != T:
        raise ValueError(f"row {row_id}: column lengths disagree ({T} tokens)")
    return {
        "id": row_id,
        "input_ids": np.ascontiguousarray(input_ids, dtype=np.int32),
        "labels": np.ascontiguousarray(labels, dtype=np.int32),
        "topk_ids": np.ascontiguousarray(topk_ids, dtype=np.int32),
        "topk_logprobs": np.ascontiguousarray(topk_logprobs, dtype=np.float16),
        "tail_logmass": np.ascontiguousarray(tail_logmass, dtype=np.float32),
    }


def _list_column(arrays: list[np.ndarray], k: int | None = None) -> pa.Array:
    """A list<...> column (list<fixed_size_list<., k>> when k) from per-row numpy arrays, built from one flat
    buffer and an offsets array: no per-value Python work."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = pa.array(np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0))
    values = pa.FixedSizeListArray.from_arrays(flat, k) if k is not None else flat
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class LogitShardWriter(ShardWriter):
    """ShardWriter for logit rows (`make_logit_row`): columns are built from numpy buffers, and shards are cut by
    the real byte size of the arrays (the base writer's estimate only counts strings)."""

    def __init__(self, out_dir: str | os.PathLike, *, k: int, metadata: Mapping[str, str], split: str = "train",
                 max_bytes: int = 256 * 1024 * 1024):
        self.logit_format = int(metadata.get("logit_format", FORMAT_EXACT))
        self.layout = (CompactLayout(int(metadata["vocab_size"]), k) if self.logit_format == FORMAT_COMPACT
                       else None)
        super().__init__(out_dir, split, schema=logit_schema(k, self.logit_format, metadata.get("vocab_size")),
                         key_column="id", max_bytes=max_bytes, metadata=metadata)
        self.k = k

    def write(self, row: Mapping[str, Any]) -> bool:
        if row["topk_ids"].shape[1] != self.k:
            raise ValueError(f"row {row['id']}: top-k width {row['topk_ids'].shape[1]} != shard K {self.k}")
        written = super().write(row)
        if written:
            self._buffer_bytes += sum(v.nbytes for v in row.values() if isinstance(v, np.ndarray))
            if self._buffer_bytes >= self.max_bytes:
                self.flush()
        return written

    def _buffer_to_table(self) -> pa.Table:
        rows = self._buffer
        if self.layout is not None:
            # one vectorised encode over every buffered token, then one list<fixed_size_binary> column
            ids = np.concatenate([r["topk_ids"] for r in rows])
            logprobs = np.concatenate([r["topk_logprobs"] for r in rows])
            packed = encode(self.layout, ids, logprobs)
            offsets = np.zeros(len(rows) + 1, dtype=np.int32)
            np.cumsum([len(r["input_ids"]) for r in rows], out=offsets[1:])
            binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.layout.width), len(packed),
                                                          [None, pa.py_buffer(packed.tobytes())])
            columns = [
                pa.array([r["id"] for r in rows], pa.string()),
                _list_column([r["input_ids"] for r in rows]),
                _list_column([r["labels"] for r in rows]),
                pa.ListArray.from_arrays(pa.array(offsets), binary),
                _list_column([r["tail_logmass"] for r in rows]),
            ]
            return pa.Table.from_arrays(columns, schema=self.schema)
        columns = [
            pa.array([r["id"] for r in rows], pa.string()),
            _list_column([r["input_ids"] for r in rows]),
            _list_column([r["labels"] for r in rows]),
            _list_column([r["topk_ids"] for r in rows], self.k),
            _list_column([r["topk_logprobs"] for r in rows], self.k),
            _list_column([r["tail_logmass"] for r in rows]),
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)


# ------------------------------------------------------------------------------------------------------ reading


COLUMNS = ("input_ids", "labels", "topk_ids", "topk_logprobs", "tail_logmass")


@dataclass
class LogitSegment:
    """One record batch of one shard as flat numpy views over the memory-mapped Arrow buffers (zero-copy).
    Local row r spans tokens offsets[r]:offsets[r+1] of input_ids/labels/tail_logmass [tokens] and of
    topk_ids/topk_logprobs [tokens, K]."""

    offsets: np.ndarray
    input_ids: np.ndarray
    labels: np.ndarray
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    tail_logmass: np.ndarray
    topk_packed: np.ndarray | None = None  # [tokens, W] uint8 (compact format; ids/logprobs decoded per row)
    layout: CompactLayout | None = None

    def slice(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Tokens a:b as {column: array}: views for format 1, freshly decoded top-k for the compact format."""
        row = {name: getattr(self, name)[a:b] for name in ("input_ids", "labels", "tail_logmass")}
        if self.topk_packed is not None:
            row["topk_ids"], row["topk_logprobs"] = decode(self.layout, self.topk_packed[a:b])
        else:
            row["topk_ids"], row["topk_logprobs"] = self.topk_ids[a:b], self.topk_logprobs[a:b]
        return row


@dataclass
class LogitColumns:
    """Every logit shard under a directory, row-addressable, without copying: `row(i)` returns numpy views into
    the memory-mapped files (read-only; the collator copies them once into the batch tensors)."""

    ids: list[str]
    segments: list[LogitSegment]
    row_segment: np.ndarray  # [rows] which segment holds row i
    row_local: np.ndarray  # [rows] its index inside that segment
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        return sum(len(segment.input_ids) for segment in self.segments)

    def row(self, i: int) -> dict[str, np.ndarray]:
        segment = self.segments[self.row_segment[i]]
        r = self.row_local[i]
        a, b = int(segment.offsets[r]), int(segment.offsets[r + 1])
        row = segment.slice(a, b)
        return {name: row[name] for name in COLUMNS}


def _flat(chunk: pa.Array, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [rows+1] relative to the returned values, values [tokens] or [tokens, k]) of one list<...> chunk,
    zero-copy: list offsets + the flat child buffer, no per-token Python work."""
    offsets = chunk.offsets.to_numpy()
    values = chunk.values
    if k is not None:
        values = values.values  # fixed_size_list child: K values per token
    first, last = int(offsets[0]), int(offsets[-1])
    scale = k or 1
    flat = values.slice(first * scale, (last - first) * scale).to_numpy(zero_copy_only=True)
    if k is not None:
        flat = flat.reshape(-1, k)
    return (offsets - first).astype(np.int64), flat


def _flat_binary(chunk: pa.Array, width: int) -> np.ndarray:
    """The [tokens, width] uint8 view of one list<fixed_size_binary[width]> chunk, zero-copy."""
    offsets = chunk.offsets.to_numpy()
    values = chunk.values
    first, last = int(offsets[0]), int(offsets[-1])
    data = values.buffers()[1]
    start = (values.offset + first) * width
    flat = np.frombuffer(data, dtype=np.uint8, count=(last - first) * width, offset=start)
    return flat.reshape(-1, width)


def load_logit_columns(path: str | os.PathLike, split: str = "train") -> LogitColumns:
    """Memory-map every logit shard under `path`; rows are served as views (see LogitColumns)."""
    meta = read_logit_metadata(path, split)
    if meta is None:
        raise UserError(f"{path}: no logit shards")
    k = meta["k"]
    layout = CompactLayout(meta["vocab_size"], k) if meta["logit_format"] == FORMAT_COMPACT else None
    ids: list[str] = []
    segments: list[LogitSegment] = []
    row_segment: list[np.ndarray] = []
    row_local: list[np.ndarray] = []
    for shard in shard_paths(path, split):
        table = open_shard(shard)
        if (table.schema.metadata or {}).get(b"k") != str(k).encode():
            raise UserError(f"{shard}: top-k width differs from the other shards in {path}")
        ids.extend(table.column("id").to_pylist())
        for batch in table.to_batches():
            offsets, input_ids = _flat(batch.column("input_ids"))
            arrays = {"input_ids": input_ids}
            for name in ("labels", "tail_logmass"):
                arrays[name] = _flat(batch.column(name))[1]
            if layout is not None:
                if "topk_packed" not in batch.schema.names:
                    raise UserError(f"{shard}: no topk_packed column, but the shards say logit_format 2")
                arrays["topk_packed"] = _flat_binary(batch.column("topk_packed"), layout.width)
            else:
                for name in ("topk_ids", "topk_logprobs"):
                    arrays[name] = _flat(batch.column(name), k)[1]
            if any(len(array) != len(input_ids) for array in arrays.values()):
                raise UserError(f"{shard}: logit shard columns disagree in length (corrupt shard?)")
            row_segment.append(np.full(batch.num_rows, len(segments), dtype=np.int64))
            row_local.append(np.arange(batch.num_rows, dtype=np.int64))
            arrays.setdefault("topk_ids", None)
            arrays.setdefault("topk_logprobs", None)
            segments.append(LogitSegment(offsets=offsets, layout=layout, **arrays))
    return LogitColumns(ids, segments, np.concatenate(row_segment), np.concatenate(row_local), meta)


def logit_shard_stats(path: str | os.PathLike, split: str = "train") -> dict[str, Any]:
    """Rows, tokens, label tokens, bytes on disk and bytes per token of the logit shards under `path` (for
    `gen stats`)."""
    paths = shard_paths(path, split)
    meta = read_logit_metadata(path, split) or {}
    rows = tokens = label_tokens = 0
    for shard in paths:
        table = open_shard(shard)
        rows += table.num_rows
        for chunk in table.column("labels").chunks:
            flat = _flat(chunk)[1]
            tokens += len(flat)
            label_tokens += int((flat != IGNORE_INDEX).sum())
    size = sum(p.stat().st_size for p in paths)
    return {"shards": len(paths), "rows": rows, "tokens": tokens, "label_tokens": label_tokens, "bytes": size,
            "bytes_per_token": (size / tokens) if tokens else 0.0, "k": meta.get("k"),
            "teacher": meta.get("teacher"), "vocab_size": meta.get("vocab_size"),
            "tail_source": meta.get("tail_source"), "logit_format": meta.get("logit_format"),
            "temperature": meta.get("temperature")}
