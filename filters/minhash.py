"""MinHash near-duplicate detection: vectorized hashing, recall-biased LSH bands, exact Jaccard check.

What counts as a duplicate (the ground truth every number here is measured against): two texts whose *shingle
sets* have exact Jaccard similarity >= `threshold`. Shingles:

- `shingle="word"`: word n-grams over the normalized tokens (lowercase `\\w+` runs, so case and punctuation
  changes do not matter). Default n = 5 for answers / documents; instructions are short (often < 20 words),
  so for instructions use n = 3 (or `shingle="char"`, n = 5).
- `shingle="char"`: character n-grams over the normalized tokens joined by single spaces.
- A text with fewer units (tokens or characters) than n has exactly one shingle: its whole normalized sequence.
  Two such short texts are duplicates only when they normalize to the same sequence. A text with no token at
  all has no shingle and is never anyone's duplicate (the `empty_answer` heuristic deals with it).

How it is fast (datasketch's `MinHash.update` hashes one shingle per Python call with SHA-1):

1. Tokenizing and hashing run on the whole batch's code-point array at once (word characters by a lookup table,
   token hashes Σ c_i·m_i by `np.add.reduceat`, one random odd multiplier m_i per position); the n-gram hash of every position is
   one numpy expression over the token-hash array: a weighted sum with one odd 64-bit constant per position in the
   n-gram, then the MurmurHash3 64-bit finalizer. No Python call per token or per shingle.
2. The k permutations are h_k(x) = a_k·x + b_k mod 2^32 on the high 32 bits x of the shingle hash (a_k odd: a
   bijection; the pre-mixed input makes it behave like a random permutation, the argument behind datasketch 2's
   "affine32" scheme), computed for all permutations × all shingles of a chunk of texts as one uint32 matrix and
   min-reduced per text with `np.minimum.reduceat`.
3. LSH bands are chosen for *recall* at the threshold (candidates are verified, so a false candidate costs one
   cheap check while a missed pair is lost for good): among all (b, r) with b·r <= num_perm whose collision
   probability 1 - (1 - t^r)^b at J = t is at least `min_recall` (0.998), the one minimizing the weighted integral
   0.05·FP + 0.95·FN (datasketch's `_optimal_param` objective). For t = 0.7 and 128 permutations: 32 bands × 4 rows
   (datasketch's default for the same setting is 14 × 9, which finds only ~44% of the pairs at J = 0.7).
4. Every candidate pair is checked with the exact Jaccard of the shingle sets (sorted uint64 arrays, memory
   proportional to the corpus), so precision against the ground truth is 1 by construction (up to 64-bit shingle
   hash collisions, ~2^-64 per pair of distinct shingles).

Two front ends:

- `MinHashIndex`: incremental, for use *inside* generation (check an instruction before paying the teacher to
  answer it). It keeps its buckets in a datasketch `MinHashLSH` (dict or Redis storage: with Redis, every worker
  sees one global index; the shingle sets for the exact check live in the same Redis under `<basename>_docs`).
- `minhash_pairs(texts)`: the batch path for finished shards; bands are compared with numpy sorts instead of
  per-document dict operations. `backend="datasketch"` runs the same bands through `MinHashLSH` (optionally in
  Redis) and gives the same pairs.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from filters.hashing import fmix64

_WORD = re.compile(r"\w+")
_SHIFT32 = np.uint64(32)
# Buckets larger than this are not expanded into all pairs (quadratic); each member is paired with the bucket's
# first member and with its neighbour in the bucket instead. Real near-duplicate groups are far smaller.
MAX_BUCKET_ALL_PAIRS = 64
DEFAULT_MIN_RECALL = 0.998


def normalized_tokens(text: str) -> list[str]:
    """Lowercase word tokens (`\\w+` runs): case, punctuation and spacing changes do not change them."""
    return _WORD.findall(text.lower())


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values by sort + neighbour compare (numpy 2's hash-based `np.unique` is several times
    slower on large uint64 arrays)."""
    if len(values) == 0:
        return values.copy()
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _dense_ranks(values: np.ndarray) -> np.ndarray:
    """[len(values)] int64: the rank of each value among the distinct values (equal values, equal rank)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(values)
    ordered = values[order]
    step = np.empty(len(ordered), dtype=np.int64)
    step[0] = 0
    np.not_equal(ordered[1:], ordered[:-1], out=step[1:])
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.cumsum(step)
    return ranks


_WORD_CHAR_TABLE: np.ndarray | None = None


def _word_chars(code_points: np.ndarray) -> np.ndarray:
    """Boolean mask: which code points `\\w` matches (Python's rule: str.isalnum() or "_"), vectorized with a
    lookup table of the Basic Multilingual Plane (built once) and a per-value check above it."""
    global _WORD_CHAR_TABLE
    if _WORD_CHAR_TABLE is None:
        table = np.fromiter((chr(c).isalnum() for c in range(0x10000)), dtype=bool, count=0x10000)
        table[ord("_")] = True
        _WORD_CHAR_TABLE = table
    mask = _WORD_CHAR_TABLE[np.minimum(code_points, 0xFFFF)]
    astral = code_points > 0xFFFF
    if astral.any():
        values, inverse = np.unique(code_points[astral], return_inverse=True)
        mask[astral] = np.array([chr(int(v)).isalnum() for v in values], dtype=bool)[inverse]
    return mask


# ------------------------------------------------------------------------------------------------ band parameters


def _collision_probability(similarity: np.ndarray | float, bands: int, rows: int):
    return 1.0 - (1.0 - np.power(similarity, rows)) ** bands


@functools.lru_cache(maxsize=64)
def choose_bands(
    threshold: float,
    num_perm: int,
    *,
    min_recall: float = DEFAULT_MIN_RECALL,
    false_positive_weight: float = 0.05,
    false_negative_weight: float = 0.95,
) -> tuple[int, int]:
    """(bands, rows) for verified LSH: P(candidate | J = threshold) >= min_recall, then the least weighted
    FP/FN integral (FP = ∫_0^t P(s) ds, FN = ∫_t^1 (1 - P(s)) ds, trapezoid rule on 2,001 points)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    grid_low = np.linspace(0.0, threshold, 2001)
    grid_high = np.linspace(threshold, 1.0, 2001)
    best, best_error, fallback, fallback_recall = None, math.inf, None, -1.0
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands < 2:
            break
        recall = float(_collision_probability(threshold, bands, rows))
        if recall > fallback_recall:
            fallback, fallback_recall = (bands, rows), recall
        if recall < min_recall:
            continue
        fp = np.trapezoid(_collision_probability(grid_low, bands, rows), grid_low)
        fn = np.trapezoid(1.0 - _collision_probability(grid_high, bands, rows), grid_high)
        error = false_positive_weight * fp + false_negative_weight * fn
        if error < best_error:
            best, best_error = (bands, rows), error
    return best if best is not None else fallback


def _check_bands(bands: tuple[int, int] | None, num_perm: int) -> tuple[int, int] | None:
    if bands is not None:
        b, r = bands
        if b < 1 or r < 1 or b * r > num_perm:
            raise ValueError(f"bands {b} x rows {r} must be >= 1 and use at most num_perm = {num_perm} values")
        return int(b), int(r)
    return None


# ------------------------------------------------------------------------------------------------------- hashing


@dataclass
class ShingledTexts:
    """Shingle hashes of many texts, flat: text i owns `hashes[offsets[i]:offsets[i+1]]` (unsorted, may repeat).

    `signatures`: [N, num_perm] uint32 MinHash signatures; rows of texts with no shingle are all 0xFFFFFFFF.
    """

    hashes: np.ndarray
    offsets: np.ndarray
    signatures: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted unique uint64 shingle hashes of text i."""
        return sorted_unique(self.hashes[self.offsets[i]:self.offsets[i + 1]])


class MinHasher:
    """Shingling + MinHash signatures with fixed, seeded hash functions (the same in every process).

    `shingle`: "word" or "char"; `ngram`: n; `num_perm`: signature length; `seed`: seeds the token hash and the
    permutations, so signatures from different workers agree.
    """

    def __init__(self, num_perm: int = 128, shingle: str = "word", ngram: int = 5, seed: int = 1):
        if shingle not in ("word", "char"):
            raise ValueError(f"shingle must be 'word' or 'char', got {shingle!r}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.num_perm, self.shingle, self.ngram, self.seed = num_perm, shingle, ngram, seed
        rng = np.random.default_rng(seed)
        self._a = (rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)
        # One odd multiplier per position inside an n-gram: the n-gram hash is order-sensitive.
        self._position = (rng.integers(0, 2**63, size=max(ngram, 1), dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._short_tag = rng.integers(0, 2**63, size=1, dtype=np.uint64)
        self._char_seed = np.uint64(rng.integers(0, 2**63))
        self._char_multipliers = (rng.integers(0, 2**63, size=256, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        # The permutations work on 32-bit values (the high half of the 64-bit shingle hash): half the memory traffic
        # of 64-bit arithmetic, and uint32 wraparound is the modulo.
        self._a32 = (self._a >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
        self._b32 = (self._b >> np.uint64(32)).astype(np.uint32)

    # -- units: token hashes (word) or mixed code points (char), flat over many texts
    def _units(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        lowered = [t.lower() for t in texts]
        if self.shingle == "word":
            return self._token_hashes(lowered)
        normalized = [" ".join(_WORD.findall(t)) for t in lowered]
        lengths = np.fromiter(map(len, normalized), dtype=np.int64, count=len(normalized))
        code_points = np.frombuffer("".join(normalized).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        units = fmix64(code_points.astype(np.uint64) ^ self._char_seed)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return units, offsets

    def _token_hashes(self, lowered: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One uint64 hash per `\\w+` token of every text, without a Python call per token.

        The texts are joined by newlines and seen as one code-point array; a token is a maximal run of word
        characters. Its hash is fmix64(Σ_i c_i·m_i) over its characters c_i at positions i, with random odd 64-bit
        multipliers m_i, summed with `np.add.reduceat` (two distinct tokens collide only if Σ (c_i - c'_i)·m_i = 0
        mod 2^64: probability ~2^-60 for random multipliers).
        """
        lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
        starts = np.zeros(len(lowered) + 1, dtype=np.int64)
        np.cumsum(lengths + 1, out=starts[1:])  # +1: the newline after each text (never a word character)
        code_points = np.frombuffer("\n".join(lowered).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        word = np.flatnonzero(_word_chars(code_points))
        offsets = np.zeros(len(lowered) + 1, dtype=np.int64)
        if len(word) == 0:
            return np.zeros(0, dtype=np.uint64), offsets
        first = np.empty(len(word), dtype=bool)
        first[0] = True
        np.not_equal(word[1:], word[:-1] + 1, out=first[1:])
        token_starts = np.flatnonzero(first)
        token_lengths = np.diff(np.append(token_starts, len(word)))
        position = np.arange(len(word), dtype=np.int64) - np.repeat(token_starts, token_lengths)
        # Σ_i c_i · m_i over a token's characters, with one random odd 64-bit multiplier per position (positions
        # past 256 reuse a multiplier, offset by the position): a linear hash, made avalanching by one fmix64.
        multipliers = self._char_multipliers[position & 255] + (position >> 8).astype(np.uint64)
        mixed = code_points[word].astype(np.uint64) * multipliers
        hashes = fmix64(np.add.reduceat(mixed, token_starts) ^ self._char_seed)
        token_text = np.searchsorted(starts, word[token_starts], side="right") - 1
        np.cumsum(np.bincount(token_text, minlength=len(lowered)), out=offsets[1:])
        return hashes, offsets

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat uint64 shingle hashes and per-text offsets (see `ShingledTexts`)."""
        n = self.ngram
        units, unit_offsets = self._units(texts)
        lengths = np.diff(unit_offsets)
        total = len(units)
        # n-gram starting at every position p: sum_k units[p + k] * position_k (zero-padded past the end).
        padded = np.concatenate([units, np.zeros(n - 1, dtype=np.uint64)])
        combined = np.zeros(total, dtype=np.uint64)
        for k in range(n):
            combined += padded[k:k + total] * self._position[k]
        # Valid starts: the whole n-gram lies inside the same text.
        ends = np.repeat(unit_offsets[1:], lengths)
        valid = np.arange(total) + n <= ends
        shingle_counts = np.maximum(lengths - n + 1, 0)
        hashes = fmix64(combined[valid])
        # Texts shorter than n (but not empty): one shingle, the whole sequence (tagged so it never equals an n-gram).
        short = np.nonzero((lengths > 0) & (lengths < n))[0]
        if len(short):
            short_hashes = np.empty(len(short), dtype=np.uint64)
            for slot, i in enumerate(short.tolist()):
                seq = units[unit_offsets[i]:unit_offsets[i + 1]]
                # Array arithmetic wraps modulo 2^64 silently (numpy scalars would warn on overflow).
                terms = np.append(seq * self._position[: len(seq)], self._short_tag * np.uint64(len(seq)))
                short_hashes[slot] = terms.sum(dtype=np.uint64)
            short_hashes = fmix64(short_hashes)
            shingle_counts[short] = 1
            # Insert each short text's single shingle at its place in the flat order.
            starts = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(shingle_counts, out=starts[1:])
            merged = np.empty(int(starts[-1]), dtype=np.uint64)
            long_positions = np.ones(len(merged), dtype=bool)
            long_positions[starts[short]] = False
            merged[long_positions] = hashes
            merged[starts[short]] = short_hashes
            return merged, starts
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(shingle_counts, out=offsets[1:])
        return hashes, offsets

    def signatures_from_hashes(self, hashes: np.ndarray, offsets: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """[N, num_perm] uint32: min over each text's shingles x of h_k(x) = a_k·x + b_k mod 2^32 for every k
        (x = the high 32 bits of the shingle hash, a_k odd).

        Laid out [num_perm, shingles] so the per-text minimum is a `minimum.reduceat` along contiguous rows, and
        processed in chunks of whole texts holding about `chunk` shingles, so the matrix stays in cache.
        """
        n_texts = len(offsets) - 1
        out = np.full((n_texts, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        if len(nonempty) == 0:
            return out
        x = (hashes >> _SHIFT32).astype(np.uint32)
        a, b = self._a32[:, None], self._b32[:, None]
        buffer = np.empty((self.num_perm, chunk), dtype=np.uint32)
        ends = offsets[nonempty + 1]
        start = 0
        while start < len(nonempty):
            # Take texts until the chunk is full (at least one text per chunk).
            stop = max(int(np.searchsorted(ends, offsets[nonempty[start]] + chunk, side="right")), start + 1)
            docs = nonempty[start:stop]
            lo, hi = int(offsets[docs[0]]), int(offsets[docs[-1] + 1])
            values = buffer[:, : hi - lo] if hi - lo <= chunk else np.empty((self.num_perm, hi - lo), np.uint32)
            np.multiply(a, x[None, lo:hi], out=values)
            np.add(values, b, out=values)
            # Texts in `docs` are consecutive among non-empty texts; empty ones in between own no shingle.
            out[docs] = np.minimum.reduceat(values, offsets[docs] - lo, axis=1).T
            start = stop
        return out

    def shingle_texts(self, texts: Sequence[str], batch: int = 8192) -> ShingledTexts:
        """Shingles and signatures of many texts, `batch` texts at a time (bounded temporary memory)."""
        hash_parts, count_parts, signature_parts = [], [], []
        for lo in range(0, len(texts), batch):
            hashes, offsets = self.shingle_hashes(texts[lo:lo + batch])
            hash_parts.append(hashes)
            count_parts.append(np.diff(offsets))
            signature_parts.append(self.signatures_from_hashes(hashes, offsets))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if not texts:
            return ShingledTexts(np.zeros(0, np.uint64), offsets, np.zeros((0, self.num_perm), np.uint32))
        np.cumsum(np.concatenate(count_parts), out=offsets[1:])
        return ShingledTexts(np.concatenate(hash_parts), offsets, np.concatenate(signature_parts))

    def one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique shingle hashes, signature [num_perm] uint32) of one text."""
        hashes, offsets = self.shingle_hashes([text])
        return sorted_unique(hashes), self.signatures_from_hashes(hashes, offsets)[0]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique arrays; 0.0 if both are empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


# ------------------------------------------------------------------------------------------- incremental index


class MinHashIndex:
    """A global near-duplicate index for use inside generation, checked before the teacher is paid.

    `check_and_add(key, text)`: if an indexed text is a near-duplicate of `text` (exact Jaccard of shingle sets
    >= threshold, or with `exact_check=False` the MinHash estimate), returns that text's key (the most similar one)
    and does not insert; otherwise inserts `text` under `key` and returns None.

    `storage_config`: datasketch's, e.g. `{"type": "redis", "basename": b"run1", "redis": {"host": ..., "port": ...}}`
    for one index shared by several workers (two workers adding near-duplicates in the same instant can both get
    None: the check and the insert are not one transaction).
    """

    def __init__(
        self,
        threshold: float = 0.7,
        num_perm: int = 128,
        shingle: str = "word",
        ngram: int = 5,
        seed: int = 1,
        storage_config: dict | None = None,
        exact_check: bool = True,
        bands: tuple[int, int] | None = None,
    ):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.exact_check = exact_check
        self.hasher = MinHasher(num_perm=num_perm, shingle=shingle, ngram=ngram, seed=seed)
        self.bands = _check_bands(bands, num_perm) or choose_bands(threshold, num_perm)
        if storage_config and storage_config.get("type") == "redis" and not storage_config.get("basename"):
            # Name the index explicitly so the buckets and the shingle store below share one name.
            storage_config = {**storage_config, "basename": b"kdforge_" + os.urandom(6).hex().encode()}
        self.lsh = MinHashLSH(num_perm=num_perm, params=self.bands, storage_config=storage_config)
        self._docs = _DocStore(storage_config)

    def __len__(self) -> int:
        return len(self._docs)

    def _similarity(self, shingles: np.ndarray, signature: np.ndarray, other: tuple[np.ndarray, np.ndarray]) -> float:
        other_shingles, other_signature = other
        if self.exact_check:
            return jaccard(shingles, other_shingles)
        return float(np.mean(signature == other_signature))

    def query(self, text: str) -> tuple[Hashable | None, float]:
        """(key of the most similar indexed near-duplicate or None, its similarity) without inserting."""
        shingles, signature = self.hasher.one(text)
        return self._query(shingles, signature)

    def _query(self, shingles: np.ndarray, signature: np.ndarray) -> tuple[Hashable | None, float]:
        if len(shingles) == 0 or len(self._docs) == 0:
            return None, 0.0
        candidates = self.lsh.query(self._lean(signature))
        best_key, best = None, -1.0
        # Sorted by repr so ties resolve the same way whatever order the storage returns the keys in.
        for key, stored in zip(sorted(candidates, key=repr), self._docs.get_many(sorted(candidates, key=repr))):
            if stored is None:
                continue
            similarity = self._similarity(shingles, signature, stored)
            if similarity >= self.threshold and similarity > best:
                best_key, best = key, similarity
        return best_key, max(best, 0.0)

    def query_all(self, text: str) -> list[tuple[Hashable, float]]:
        """Every indexed near-duplicate of `text` as (key, similarity >= threshold), sorted by key's repr; nothing is
        inserted. Lets a caller apply its own order rule (e.g. "only keys that come before mine")."""
        shingles, signature = self.hasher.one(text)
        if len(shingles) == 0 or len(self._docs) == 0:
            return []
        candidates = sorted(self.lsh.query(self._lean(signature)), key=repr)
        found = []
        for key, stored in zip(candidates, self._docs.get_many(candidates)):
            if stored is not None:
                similarity = self._similarity(shingles, signature, stored)
                if similarity >= self.threshold:
                    found.append((key, similarity))
        return found

    def check_and_add(self, key: Hashable, text: str) -> Hashable | None:
        shingles, signature = self.hasher.one(text)
        if len(shingles) == 0:
            return None  # nothing to compare: never a duplicate, never indexed
        duplicate_of, _ = self._query(shingles, signature)
        if duplicate_of is not None:
            return duplicate_of
        self.add(key, text, _hashed=(shingles, signature))
        return None

    def add(self, key: Hashable, text: str, _hashed: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Insert without checking (e.g. seed instructions, or rows of an earlier run being resumed)."""
        shingles, signature = _hashed if _hashed is not None else self.hasher.one(text)
        if len(shingles) == 0 or key in self._docs:
            return
        self.lsh.insert(key, self._lean(signature), check_duplication=False)
        self._docs.put(key, shingles, signature)

    def _lean(self, signature: np.ndarray):
        return _lean_minhash(self.hasher.seed, signature)


def _lean_minhash(seed: int, signature: np.ndarray):
    """Hand our signature to datasketch without recomputing anything. Our values are uint32 like datasketch 2's
    "affine32" scheme (the label only guards against mixing schemes; only our own sketches meet in our index)."""
    from datasketch import LeanMinHash

    try:
        return LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")
    except TypeError:  # datasketch < 2.0 has no schemes
        return LeanMinHash(seed=seed, hashvalues=signature.astype(np.uint64))


class _DocStore:
    """key -> (sorted shingle hashes, signature) for the exact check: a dict, or a Redis hash beside the LSH."""

    def __init__(self, storage_config: dict | None):
        self._local: dict | None = None
        self._redis = None
        if storage_config and storage_config.get("type") == "redis":
            import pickle

            import redis

            self._pickle = pickle
            self._redis = redis.Redis(**storage_config.get("redis", {}))
            self._name = bytes(storage_config.get("basename", b"kdforge")) + b"_docs"
        else:
            self._local = {}

    def __len__(self) -> int:
        return len(self._local) if self._local is not None else int(self._redis.hlen(self._name))

    def __contains__(self, key: Hashable) -> bool:
        if self._local is not None:
            return key in self._local
        return bool(self._redis.hexists(self._name, self._pickle.dumps(key)))

    def put(self, key: Hashable, shingles: np.ndarray, signature: np.ndarray) -> None:
        if self._local is not None:
            self._local[key] = (shingles, signature)
            return
        blob = np.uint64(len(shingles)).tobytes() + shingles.astype("<u8").tobytes() + signature.astype("<u4").tobytes()
        self._redis.hset(self._name, self._pickle.dumps(key), blob)

    def get_many(self, keys: Sequence[Hashable]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        if not keys:
            return []
        if self._local is not None:
            return [self._local.get(k) for k in keys]
        out = []
        for blob in self._redis.hmget(self._name, [self._pickle.dumps(k) for k in keys]):
            if blob is None:
                out.append(None)
                continue
            count = int(np.frombuffer(blob[:8], dtype="<u8")[0])
            shingles = np.frombuffer(blob[8:8 + 8 * count], dtype="<u8").astype(np.uint64)
            signature = np.frombuffer(blob[8 + 8 * count:], dtype="<u4").astype(np.uint32)
            out.append((shingles, signature))
        return out


# -------------------------------------------------------------------------------------------------- batch path


@dataclass
class DuplicatePairs:
    """Verified near-duplicate pairs: left[k] < right[k] (text positions), similarity[k] = exact Jaccard."""

    left: np.ndarray
    right: np.ndarray
    similarity: np.ndarray
    candidates: int = 0  # candidate pairs the bands produced (before the exact check)

    def __len__(self) -> int:
        return len(self.left)


_BAND_MULTIPLIERS = (np.random.default_rng(0x5EED).integers(0, 2**63, size=(2, 256), dtype=np.uint64)
                     << np.uint64(1)) | np.uint64(1)


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[N, bands] uint64: one key per text and band. Equal bands give equal keys; unequal bands (or the same
    values in different bands) collide only by chance, which adds a candidate that the exact check rejects and
    never loses one."""
    n = len(signatures)
    values = np.ascontiguousarray(signatures[:, : bands * rows])
    if rows % 2 == 0:
        # Two 32-bit rows per uint64 word: half the multiply-adds.
        values, words = values.view(np.uint64).reshape(n, bands, rows // 2), rows // 2
    else:
        values, words = values.reshape(n, bands, rows), rows
    key = np.broadcast_to(_BAND_MULTIPLIERS[1, :bands], (n, bands)).copy()  # a different offset per band
    for r in range(words):
        key += values[:, :, r] * _BAND_MULTIPLIERS[0, r]
    return fmix64(key)


def _bucket_pairs(members: np.ndarray, keys_sorted: np.ndarray) -> np.ndarray:
    """Pairs (as [P, 2] text positions) of texts sharing a key; `members[k]` holds the key `keys_sorted[k]`."""
    boundaries = np.flatnonzero(keys_sorted[1:] != keys_sorted[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.concatenate([starts, [len(keys_sorted)]]))
    pairs = []
    for size in sorted(set(sizes[sizes > 1].tolist())):
        run_starts = starts[sizes == size]
        group = members[run_starts[:, None] + np.arange(size)[None, :]]  # [runs, size]
        if size <= MAX_BUCKET_ALL_PAIRS:
            i, j = np.triu_indices(size, k=1)
            pairs.append(np.stack([group[:, i].ravel(), group[:, j].ravel()], axis=1))
        else:
            star = np.stack([np.repeat(group[:, :1], size - 1, axis=1).ravel(), group[:, 1:].ravel()], axis=1)
            chain = np.stack([group[:, :-1].ravel(), group[:, 1:].ravel()], axis=1)
            pairs.extend([star, chain])
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """[P, 2] int64 unique candidate pairs (i < j) of texts agreeing on all rows of at least one band.

    All bands at once: the [N·bands] keys are sorted once to find the keys held more than once; only the (few)
    entries holding such a key are grouped into buckets. No per-band dict, no per-text Python work.
    """
    n = len(signatures)
    index = np.arange(n) if eligible is None else np.flatnonzero(eligible)
    if len(index) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = _band_keys(signatures[index], bands, rows).ravel()  # entry e = local text e // bands, band e % bands
    # Sort keys and entry numbers together in one uint64: the high bits keep the key, the low bits the entry.
    # Dropping the key's low bits only merges a few unrelated buckets by chance (more candidates, never fewer).
    entry_bits = max(int(len(keys) - 1).bit_length(), 1)
    packed = (keys >> np.uint64(entry_bits) << np.uint64(entry_bits)) | np.arange(len(keys), dtype=np.uint64)
    packed.sort()
    key_part = packed >> np.uint64(entry_bits)
    same = key_part[1:] == key_part[:-1]
    in_bucket = np.zeros(len(packed), dtype=bool)
    in_bucket[1:] |= same
    in_bucket[:-1] |= same
    if not in_bucket.any():
        return np.zeros((0, 2), dtype=np.int64)
    entries = (packed[in_bucket] & np.uint64((1 << entry_bits) - 1)).astype(np.int64)
    pairs = _bucket_pairs(index[entries // bands], key_part[in_bucket])
    a, b = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    codes = sorted_unique(a[a != b].astype(np.uint64) * np.uint64(n) + b[a != b].astype(np.uint64))
    return np.stack([(codes // np.uint64(n)).astype(np.int64), (codes % np.uint64(n)).astype(np.int64)], axis=1)


def exact_jaccard_pairs(shingled: ShingledTexts, pairs: np.ndarray, chunk_elements: int = 4_000_000) -> np.ndarray:
    """Exact Jaccard of the shingle sets of each pair ([P, 2] -> [P] float64), vectorized.

    The shingles of the texts involved are renumbered densely (uint32), each text's set becomes a sorted unique run,
    and per chunk of pairs the two runs of every pair are concatenated with the pair number in the high 32 bits:
    after one sort, equal neighbours are exactly the shared shingles.
    """
    if len(pairs) == 0:
        return np.zeros(0)
    docs = sorted_unique(pairs.ravel())
    counts = shingled.counts[docs]
    gather = _ranges(shingled.offsets[docs], counts)
    values = shingled.hashes[gather]
    owner = np.repeat(np.arange(len(docs), dtype=np.uint64), counts)
    dense = _dense_ranks(values)
    if dense.max(initial=0) >= 2**32:
        raise ValueError("more than 2^32 distinct shingles among candidate texts")
    sets = sorted_unique((owner << _SHIFT32) | dense.astype(np.uint64))  # sorted by (text, shingle), unique
    set_owner = (sets >> _SHIFT32).astype(np.int64)
    set_ids = sets & np.uint64(0xFFFFFFFF)
    set_starts = np.searchsorted(set_owner, np.arange(len(docs) + 1))
    set_sizes = np.diff(set_starts)
    left = np.searchsorted(docs, pairs[:, 0])
    right = np.searchsorted(docs, pairs[:, 1])
    la, lb = set_sizes[left], set_sizes[right]
    inter = np.zeros(len(pairs), dtype=np.int64)
    cumulative = np.cumsum(la + lb)
    start = 0
    while start < len(pairs):
        done = int(cumulative[start - 1]) if start else 0
        stop = max(int(np.searchsorted(cumulative, done + chunk_elements, side="right")), start + 1)
        p = np.arange(start, stop)
        tag_a = np.repeat(p.astype(np.uint64), la[p]) << _SHIFT32
        tag_b = np.repeat(p.astype(np.uint64), lb[p]) << _SHIFT32
        keys = np.concatenate([tag_a | set_ids[_ranges(set_starts[left[p]], la[p])],
                               tag_b | set_ids[_ranges(set_starts[right[p]], lb[p])]])
        keys.sort()
        shared = keys[1:][keys[1:] == keys[:-1]] >> _SHIFT32
        inter[start:stop] = np.bincount(shared.astype(np.int64) - start, minlength=stop - start)
        start = stop
    union = la + lb - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for every (s, l), vectorized."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    firsts = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths)
    return firsts + np.arange(total, dtype=np.int64)


def minhash_pairs(
    texts: Sequence[str] | None = None,
    *,
    threshold: float = 0.7,
    num_perm: int = 128,
    shingle: str = "word",
    ngram: int = 5,
    seed: int = 1,
    bands: tuple[int, int] | None = None,
    backend: str = "numpy",
    storage_config: dict | None = None,
    shingled: ShingledTexts | None = None,
) -> DuplicatePairs:
    """All pairs of `texts` whose shingle sets have exact Jaccard >= threshold (found through LSH, so a pair is
    missed only when it shares no band: probability <= 1 - min_recall at J = threshold, less above it).

    `backend="numpy"` compares bands with sorts; `"datasketch"` inserts the same signatures into a `MinHashLSH`
    with the same (bands, rows) (in `storage_config`, e.g. Redis) and queries every text: the same candidates.
    """
    _check_bands(bands, num_perm)
    hasher = MinHasher(num_perm=num_perm, shingle=shingle, ngram=ngram, seed=seed)
    if shingled is None:
        shingled = hasher.shingle_texts(list(texts))
    b, r = bands or choose_bands(threshold, num_perm)
    eligible = shingled.counts > 0
    if backend == "numpy":
        pairs = candidate_pairs(shingled.signatures, b, r, eligible)
    elif backend == "datasketch":
        pairs = _datasketch_candidates(shingled.signatures, (b, r), eligible, seed, storage_config)
    else:
        raise ValueError(f"backend must be 'numpy' or 'datasketch', got {backend!r}")
    similarity = exact_jaccard_pairs(shingled, pairs)
    keep = similarity >= threshold
    return DuplicatePairs(pairs[keep, 0], pairs[keep, 1], similarity[keep], candidates=len(pairs))


def _datasketch_candidates(signatures, params, eligible, seed, storage_config) -> np.ndarray:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(num_perm=signatures.shape[1], params=params, storage_config=storage_config)
    index = np.nonzero(eligible)[0].tolist()
    sketches = {i: _lean_minhash(seed, signatures[i]) for i in index}
    with lsh.insertion_session() as session:
        for i in index:
            session.insert(i, sketches[i], check_duplication=False)
    pairs = set()
    for i in index:
        for j in lsh.query(sketches[i]):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(sorted(pairs), dtype=np.int64)
