"""The compact logit-shard format (`logit_format: 2`): one fixed-size byte string per token holding the teacher's
top-k ids and log-probabilities, ~194 bytes/token at K=64 over a 262,144-token vocabulary (format 1: 396).

Per token, K entries, vocabulary V (layout of the `topk_packed` bytes, in this order):

1. ids, Elias-Fano coded (Elias 1974, Fano 1971): the K ids sorted ascending; each id splits into `low_bits`
   low bits (`low_bits = floor(log2(V / K))`, 0 when V <= K) stored at fixed width, and its high part stored in
   unary: bit `(id >> low_bits) + i` of an `upper_bits = K + ((V - 1) >> low_bits)`-bit field is set for the i-th
   id. About `K * (2 + log2(V / K))` bits: 112 bytes for K=64, V=262,144 (18-bit fixed width: 144). Exact, and
   repeated ids (padding of a backend that returned fewer than K) stay representable.
2. K uint8 log-probability codes, in the same (id-ascending) order: with `top` the position's largest finite
   log-prob and `span` its distance to the smallest finite one, `code = round(254 * sqrt((top - lp) / span))`;
   255 means probability 0 (-inf). The square root spends the codes where the mass is: the top entry is exact, the
   error grows towards the smallest entries (at most `span / 254` nats there).
3. `top` as float32, 4 bytes; 4. `span` as float16 rounded up (so every code stays <= 254), 2 bytes.

The tail log-mass stays a float32 column of its own (the tail-aware losses need it accurately), as do input_ids and
labels. Decoding returns the entries sorted by log-probability, descending (ties by id), like format 1.
Everything is numpy bit operations on whole [tokens, ...] arrays: no per-token Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_EXACT = 1
FORMAT_COMPACT = 2
_CODE_MAX = 254
_CODE_ZERO_PROB = 255


@dataclass(frozen=True)
class CompactLayout:
    """Byte layout of one token's `topk_packed` string for vocabulary `vocab_size` and top-k width `k`."""

    vocab_size: int
    k: int

    @property
    def low_bits(self) -> int:
        return max(0, int(np.floor(np.log2(self.vocab_size / self.k)))) if self.vocab_size > self.k else 0

    @property
    def upper_bits(self) -> int:
        return self.k + ((self.vocab_size - 1) >> self.low_bits)

    @property
    def low_bytes(self) -> int:
        return (self.k * self.low_bits + 7) // 8

    @property
    def upper_bytes(self) -> int:
        return (self.upper_bits + 7) // 8

    @property
    def width(self) -> int:
        """Bytes per token: ids (low + upper) + K codes + top (4) + span (2)."""
        return self.low_bytes + self.upper_bytes + self.k + 6


def encode(layout: CompactLayout, ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """ids [T, K] (0 <= id < V), logprobs [T, K] (float, -inf allowed) -> [T, width] uint8."""
    T, K = ids.shape
    if K != layout.k:
        raise ValueError(f"top-k width {K} != layout K {layout.k}")
    ids = ids.astype(np.int64)
    if T and (ids.min() < 0 or ids.max() >= layout.vocab_size):
        raise ValueError(f"top-k ids outside the vocabulary [0, {layout.vocab_size})")
    logprobs = logprobs.astype(np.float32)
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    logprobs = np.take_along_axis(logprobs, order, axis=1)
    out = np.zeros((T, layout.width), dtype=np.uint8)
    col = 0
    # 1. Elias-Fano ids: fixed-width low bits (most significant first), unary high parts.
    lb = layout.low_bits
    if lb:
        shifts = np.arange(lb - 1, -1, -1, dtype=np.int64)
        low = ((ids[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(T, K * lb)
        out[:, col:col + layout.low_bytes] = np.packbits(low, axis=1)
    col += layout.low_bytes
    upper = np.zeros((T, layout.upper_bytes * 8), dtype=np.uint8)
    positions = (ids >> lb) + np.arange(K, dtype=np.int64)
    np.put_along_axis(upper, positions, 1, axis=1)
    out[:, col:col + layout.upper_bytes] = np.packbits(upper, axis=1)
    col += layout.upper_bytes
    # 2. log-space codes relative to the position's top log-prob.
    finite = np.isfinite(logprobs)
    has_finite = finite.any(axis=1)
    top = np.where(has_finite, np.max(np.where(finite, logprobs, -np.inf), axis=1), 0.0).astype(np.float32)
    bottom = np.where(has_finite, np.min(np.where(finite, logprobs, np.inf), axis=1), 0.0).astype(np.float32)
    span = _round_up_fp16(top.astype(np.float64) - bottom)
    depth = np.where(finite, top[:, None].astype(np.float64) - logprobs, 0.0)
    safe_span = np.where(span > 0, span.astype(np.float64), 1.0)[:, None]
    codes = np.rint(_CODE_MAX * np.sqrt(np.clip(depth / safe_span, 0.0, 1.0)))
    out[:, col:col + K] = np.where(finite, codes, _CODE_ZERO_PROB).astype(np.uint8)
    col += K
    out[:, col:col + 4] = top.view(np.uint8).reshape(T, 4)
    out[:, col + 4:col + 6] = span.view(np.uint8).reshape(T, 2)
    return out


def decode(layout: CompactLayout, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[T, width] uint8 -> (ids [T, K] int32, logprobs [T, K] float16), sorted by log-prob desc (ties: id asc)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    T, K = packed.shape[0], layout.k
    col = 0
    lb = layout.low_bits
    if lb:
        bits = np.unpackbits(packed[:, col:col + layout.low_bytes], axis=1, count=K * lb).reshape(T, K, lb)
        low = bits.astype(np.int64) @ (1 << np.arange(lb - 1, -1, -1, dtype=np.int64))
    else:
        low = np.zeros((T, K), dtype=np.int64)
    col += layout.low_bytes
    upper = np.unpackbits(packed[:, col:col + layout.upper_bytes], axis=1)
    rows, positions = np.nonzero(upper)  # row-major: exactly K set bits per token, ascending
    if len(positions) != T * K:
        raise ValueError("corrupt compact logit record (Elias-Fano field does not hold K ids)")
    high = positions.reshape(T, K) - np.arange(K, dtype=np.int64)
    ids = (high << lb) | low
    col += layout.upper_bytes
    codes = packed[:, col:col + K]
    col += K
    top = packed[:, col:col + 4].copy().view(np.float32).reshape(T)
    span = packed[:, col + 4:col + 6].copy().view(np.float16).reshape(T).astype(np.float32)
    scaled = (codes.astype(np.float32) / _CODE_MAX) ** 2
    logprobs = np.where(codes == _CODE_ZERO_PROB, -np.inf, top[:, None] - span[:, None] * scaled)
    # log-prob desc, ties by id asc: lexsort on (id, -logprob) per row via one stable argsort each
    order = np.argsort(-logprobs, axis=1, kind="stable")
    return (np.take_along_axis(ids, order, axis=1).astype(np.int32),
            np.take_along_axis(logprobs, order, axis=1).astype(np.float16))


def _round_up_fp16(values: np.ndarray) -> np.ndarray:
    """float16 of `values`, rounded towards +inf, so `depth / span <= 1` holds after the rounding."""
    half = values.astype(np.float16)
    low = half.astype(np.float64) < values
    return np.where(low, np.nextafter(half, np.float16(np.inf)), half).astype(np.float16)
