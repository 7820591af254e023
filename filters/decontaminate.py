"""Benchmark decontamination: find rows that share a word n-gram (13 by default) with a benchmark item.

What counts as contamination (the rule every number here is measured against): a row is contaminated by a
benchmark item when the normalized word sequence of the row's text and that of the item share at least one run of
`n` consecutive words. As in GPT-3 (13-grams) and datatrove's n-gram decontamination (12 by default there).

Normalization (`segment`), the same on both sides: lowercase; accents stripped (NFD, combining marks and format
characters such as soft hyphens removed, as datatrove does); Unicode punctuation, symbols, separators and control
characters (categories P*, S*, Z*, Cc) split words, as datatrove's `simplify_text` turns its punctuation table into
spaces; the rest are the words. Numbers are kept as written (datatrove turns every digit run into "0", which makes
all math word problems with one template look alike).

Items shorter than `n` words are skipped, as datatrove does (GPT-3 used the whole item instead): a short item ("What
is the capital of France?", an answer "Paris") is common phrasing, and matching it anywhere inside a long
instruction or answer flags rows that merely ask the same everyday question; the count of skipped items is
reported, so a benchmark of short items is visible rather than silently passed. Rows shorter than `n` words cannot
contain an n-gram and are never contaminated.

How it is fast: a batch of texts (~256k characters) is lowercased by `str.lower`, joined and seen as one array of
code points (one byte each when ASCII); a lookup table classifies every character, and word boundaries are
neighbour compares. Word and n-gram hashes are polynomial hashes modulo 2^64 computed with prefix sums for all
words / n-grams at once (`NGramHasher`), each finished by the MurmurHash3 finalizer. The benchmark n-grams form one
sorted uint64 array (with the item of each); a row batch is checked with a bitmap on the hashes' top bits (one
memory access per n-gram stops ~7/8 of the non-matching ones) and a `searchsorted` of the survivors. No Python
object per word or n-gram.

Collisions: two n-grams that differ in their word hashes get one 64-bit hash with probability ~2^-64 (the word
hashes look random after the finalizer; one differing position can never collide, the base being invertible).
Checking Q row n-grams against B benchmark n-grams gives about Q·B/2^64 false hash hits: 3·10^8 row n-grams (1M
rows of 300 words) against 10^7 item n-grams is ~1.6·10^-4 per run. Every hash hit is confirmed on the n-gram's
actual words against the item it names before it is reported, so a reported contamination is never a collision
(unconfirmed hits are counted in `ScanResult.unconfirmed_hits`; tests narrow the hash to 8 bits to exercise this).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from filters.hashing import fmix64

DEFAULT_NGRAM = 13
CONTAMINATED = "contaminated"
# Aim for about this many characters of text per batch: the segmentation and hashing pass over a few arrays of this
# length (1-8 bytes per character); ~256k characters keeps them near the CPU caches (4M was 3x slower).
BATCH_CHARS = 1 << 18

_SEED = 0x5EED_DEC0
_WORD, _SEPARATOR, _DROPPED = 0, 1, 2


def _char_class(category: str) -> int:
    """Punctuation, symbols, separators and control characters split words; combining marks (accents after NFD)
    and format characters (soft hyphen, zero-width space) vanish; everything else is part of a word."""
    if category[0] in "PSZ" or category == "Cc":
        return _SEPARATOR
    if category in ("Mn", "Cf"):
        return _DROPPED
    return _WORD


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    """The class of every code point of the Basic Multilingual Plane (built once, ~65k lookups)."""
    return np.fromiter((_char_class(unicodedata.category(chr(c))) for c in range(0x10000)), dtype=np.uint8,
                       count=0x10000)


def _classes(code_points: np.ndarray) -> np.ndarray:
    if code_points.dtype == np.uint8:
        return _bmp_classes()[code_points]
    classes = _bmp_classes()[np.minimum(code_points, 0xFFFF)]
    astral = code_points > 0xFFFF
    if astral.any():  # emoji and rarer scripts: one lookup per distinct code point
        values, inverse = np.unique(code_points[astral], return_inverse=True)
        classes[astral] = np.array([_char_class(unicodedata.category(chr(int(v)))) for v in values],
                                   dtype=np.uint8)[inverse]
    return classes


def _fold(text: str | None) -> str:
    """Lowercase, and decompose accented letters (NFD) so that their marks can be dropped: `Café` -> `cafe`."""
    if not text:
        return ""
    text = text.lower()
    return text if text.isascii() else unicodedata.normalize("NFD", text)


@dataclass
class Segmented:
    """A batch of texts cut into normalized words, without a Python object per word.

    `code_points`: the folded texts joined by newlines, dropped marks removed (uint8 when all ASCII, else uint32);
    word w is `code_points[word_starts[w] : word_starts[w] + word_lengths[w]]`; text i owns words
    `offsets[i] : offsets[i + 1]`.
    """

    code_points: np.ndarray
    word_starts: np.ndarray
    word_lengths: np.ndarray
    offsets: np.ndarray

    def words(self, first: int, count: int) -> list[str]:
        return ["".join(map(chr, self.code_points[s:s + n].tolist()))
                for s, n in zip(self.word_starts[first:first + count].tolist(),
                                self.word_lengths[first:first + count].tolist())]

    def text_words(self, i: int) -> list[str]:
        return self.words(int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i]))


def segment(texts: Sequence[str | None]) -> Segmented:
    """Normalize and split texts into words (see the module docstring), all texts of the batch at once."""
    folded = [_fold(t) for t in texts]
    lengths = np.fromiter(map(len, folded), dtype=np.int64, count=len(folded))
    text_starts = np.zeros(len(folded) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=text_starts[1:])  # +1: the newline after each text, a separator
    joined = "\n".join(folded)
    # ASCII text (most of it) as one byte per character: the same values as code points, a quarter of the memory.
    code_points = np.frombuffer(joined.encode("ascii"), dtype=np.uint8) if joined.isascii() else \
        np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    classes = _classes(code_points)
    if code_points.dtype != np.uint8:
        keep = classes != _DROPPED  # accents (after NFD) and format characters vanish without splitting a word
        if not keep.all():
            text_starts = np.searchsorted(np.flatnonzero(keep), text_starts)
            code_points, classes = code_points[keep], classes[keep]
    is_word = classes == _WORD
    begins = is_word.copy()
    begins[1:] &= ~is_word[:-1]
    ends = is_word.copy()
    ends[:-1] &= ~is_word[1:]
    word_starts = np.flatnonzero(begins)
    word_lengths = np.flatnonzero(ends) + 1 - word_starts
    offsets = np.zeros(len(folded) + 1, dtype=np.int64)
    text_of_word = np.searchsorted(text_starts, word_starts, side="right") - 1
    np.cumsum(np.bincount(text_of_word, minlength=len(folded)), out=offsets[1:])
    return Segmented(code_points, word_starts, word_lengths, offsets)


def normalized_words(text: str) -> list[str]:
    """The words of one text, as `segment` cuts them: `normalized_words("It's Café-time!")` is
    `["it", "s", "cafe", "time"]`."""
    return segment([text]).text_words(0)


class NGramHasher:
    """Seeded word and n-gram hashes (the same in every process), for one n.

    Both are polynomial hashes in one random odd 64-bit constant r, evaluated for all words (n-grams) of a batch
    at once with prefix sums: Σ_i x_i·r^(i - start) = r^-start · (P[end] - P[start]) with P the cumulative sum
    of x_i·r^-i (r is odd, so r^-1 exists modulo 2^64; numpy's uint64 arithmetic wraps modulo 2^64). A word hashes
    its code points, an n-gram its words' hashes; each result goes through the MurmurHash3 finalizer.
    """

    def __init__(self, n: int = DEFAULT_NGRAM, *, seed: int = _SEED, hash_bits: int = 64):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not 1 <= hash_bits <= 64:
            raise ValueError(f"hash_bits must be in 1..64, got {hash_bits}")
        self.n = n
        rng = np.random.default_rng(seed)
        self._base = int(rng.integers(0, 2**62)) * 2 + 1
        self._word_seed = np.uint64(rng.integers(0, 2**63))
        self._powers = np.ones(1, dtype=np.uint64)  # r^i
        self._inverse_powers = np.ones(1, dtype=np.uint64)  # r^-i
        # Tests narrow the hash to provoke collisions: only the top `hash_bits` bits are kept.
        self.hash_bits = hash_bits
        self._keep = np.uint64(((1 << hash_bits) - 1) << (64 - hash_bits))

    def _tables(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._powers) < length:
            size = 1 << int(length - 1).bit_length()
            inverse = pow(self._base, -1, 2**64)
            # cumprod gives r^1..r^size; one more factor r^-1 (resp. r) shifts it to r^0..r^(size-1).
            self._powers = np.cumprod(np.full(size, self._base, dtype=np.uint64)) * np.uint64(inverse)
            self._inverse_powers = np.cumprod(np.full(size, inverse, dtype=np.uint64)) * np.uint64(self._base)
        return self._powers, self._inverse_powers

    def _window_sums(self, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Σ_{i<len} values[start + i]·r^i for each (start, len), modulo 2^64."""
        powers, inverse = self._tables(len(values) + 1)
        prefix = np.zeros(len(values) + 1, dtype=np.uint64)
        np.cumsum(values * inverse[:len(values)], out=prefix[1:])
        return (prefix[starts + lengths] - prefix[starts]) * powers[starts]

    def word_hashes(self, seg: Segmented) -> np.ndarray:
        if len(seg.word_starts) == 0:
            return np.zeros(0, dtype=np.uint64)
        values = seg.code_points.astype(np.uint64)
        return fmix64(self._window_sums(values, seg.word_starts, seg.word_lengths) ^ self._word_seed)

    def ngram_hashes(self, seg: Segmented) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, starts): the hash of every n-gram lying inside one text, and the index of its first word."""
        n, words = self.n, self.word_hashes(seg)
        total = len(words) - n + 1
        if total <= 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        lengths = np.diff(seg.offsets)
        ends = np.repeat(seg.offsets[1:], lengths)[:total]  # the end of the text each start position lies in
        starts = np.flatnonzero(np.arange(total) + n <= ends)
        sums = self._window_sums(words, starts, np.full(len(starts), n, dtype=np.int64))
        return fmix64(sums) & self._keep, starts


@dataclass(frozen=True)
class BenchmarkStats:
    """What was indexed of one benchmark: items read, items with at least one n-gram, items skipped as shorter
    than n words, distinct n-grams."""

    name: str
    items: int
    indexed: int
    too_short: int
    ngrams: int


@dataclass(frozen=True)
class Match:
    """A confirmed contamination: row `row` shares the n-gram `ngram` (normalized words joined by spaces) with item
    `item` (its position in the benchmark's items) of benchmark `benchmark` (its position in the index)."""

    row: int
    benchmark: int
    item: int
    ngram: str


@dataclass
class ScanResult:
    """`matches[row]`: one Match per benchmark the row overlaps (the first confirmed n-gram of the row for each),
    in benchmark order; rows without a match are absent. `rows_matched[b]`: rows overlapping benchmark b.
    `unconfirmed_hits`: hash hits whose words matched no item carrying that hash (hash collisions; expected 0)."""

    rows: int
    matches: dict[int, list[Match]] = field(default_factory=dict)
    rows_matched: list[int] = field(default_factory=list)
    unconfirmed_hits: int = 0


class BenchmarkIndex:
    """The n-grams of one or more benchmarks, for checking many rows against all of them at once.

    `add(name, items)` for each benchmark (items: its texts, in order: a Match names an item by its position), then
    `scan(texts)` any number of times. `hash_bits` < 64 only serves tests that provoke collisions.
    """

    def __init__(self, n: int = DEFAULT_NGRAM, *, hash_bits: int = 64):
        self.hasher = NGramHasher(n, hash_bits=hash_bits)
        self.n = n
        self.stats: list[BenchmarkStats] = []
        self._items: list[Sequence[str | None]] = []  # per benchmark: its item texts (for confirming hits)
        self._item_base: list[int] = []  # global id of each benchmark's first item
        self._items_total = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (hashes, global item ids) not merged yet
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self._owners = np.zeros(0, dtype=np.int64)  # global item id of each entry of _hashes
        self._bitmap: np.ndarray | None = None
        self._shift = np.uint64(64)
        self._ngram_cache: dict[int, set[str]] = {}

    def add(self, name: str, items: Sequence[str | None], *, batch_chars: int = BATCH_CHARS) -> BenchmarkStats:
        items = list(items)
        all_hashes, all_owners, counts = [], [], []
        for begin, end in _batches(items, batch_chars):
            seg = segment(items[begin:end])
            hashes, starts = self.hasher.ngram_hashes(seg)
            words = np.diff(seg.offsets)
            item_of_word = np.repeat(np.arange(begin, end, dtype=np.int64), words)
            all_hashes.append(hashes)
            all_owners.append(item_of_word[starts] + self._items_total)
            counts.append(words)
        hashes = np.concatenate(all_hashes) if all_hashes else np.zeros(0, dtype=np.uint64)
        owners = np.concatenate(all_owners) if all_owners else np.zeros(0, dtype=np.int64)
        words = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
        self._pending.append((hashes, owners))
        stats = BenchmarkStats(name=name, items=len(items), indexed=int((words >= self.n).sum()),
                               too_short=int(((words > 0) & (words < self.n)).sum()),
                               ngrams=int(len(np.unique(hashes))))
        self.stats.append(stats)
        self._items.append(items)
        self._item_base.append(self._items_total)
        self._items_total += len(items)
        self._bitmap = None
        return stats

    def _build(self) -> None:
        if self._bitmap is not None:
            return
        if self._pending:
            hashes = np.concatenate([self._hashes] + [h for h, _ in self._pending])
            owners = np.concatenate([self._owners] + [o for _, o in self._pending])
            order = np.lexsort((owners, hashes))  # by hash, then item: candidates come in benchmark order
            hashes, owners = hashes[order], owners[order]
            # One entry per (hash, item): an item repeating an n-gram is stored once.
            keep = np.ones(len(hashes), dtype=bool)
            keep[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])
            self._hashes, self._owners = hashes[keep], owners[keep]
            self._pending = []
        # A bitmap over the top bits with ~8 slots per stored hash: ~7/8 of the non-matching n-grams stop there,
        # after one random memory access, and only the rest pay for a binary search.
        bits = int(min(30, max(16, np.ceil(np.log2(max(len(self._hashes), 1) * 8)))))
        self._shift = np.uint64(64 - bits)
        self._bitmap = np.zeros(1 << bits, dtype=bool)
        self._bitmap[self._hashes >> self._shift] = True

    def _benchmark_of(self, item: int) -> tuple[int, int]:
        b = int(np.searchsorted(self._item_base, item, side="right") - 1)
        return b, item - self._item_base[b]

    def _item_ngrams(self, item: int) -> set[str]:
        """The item's n-grams as strings (normalized words joined by spaces), cached."""
        cached = self._ngram_cache.get(item)
        if cached is None:
            b, local = self._benchmark_of(item)
            words = normalized_words(self._items[b][local] or "")
            cached = {" ".join(words[i:i + self.n]) for i in range(len(words) - self.n + 1)}
            if len(self._ngram_cache) >= 10_000:
                self._ngram_cache.clear()
            self._ngram_cache[item] = cached
        return cached

    def scan(self, texts: Sequence[str | None], *, batch_chars: int = BATCH_CHARS) -> ScanResult:
        """Check every text; see ScanResult."""
        self._build()
        texts = texts if isinstance(texts, list) else list(texts)
        result = ScanResult(rows=len(texts), rows_matched=[0] * len(self.stats))
        if len(self._hashes):
            for begin, end in _batches(texts, batch_chars):
                self._scan_batch(texts[begin:end], begin, result)
        for matches in result.matches.values():
            matches.sort(key=lambda m: m.benchmark)
            for m in matches:
                result.rows_matched[m.benchmark] += 1
        return result

    def _scan_batch(self, texts: list[str | None], first_row: int, result: ScanResult) -> None:
        seg = segment(texts)
        hashes, starts = self.hasher.ngram_hashes(seg)
        maybe = np.flatnonzero(self._bitmap[hashes >> self._shift])
        place = np.searchsorted(self._hashes, hashes[maybe])
        found = place < len(self._hashes)
        found[found] = self._hashes[place[found]] == hashes[maybe[found]]
        hits, places = maybe[found], place[found]
        if len(hits) == 0:
            return
        rows = np.searchsorted(seg.offsets, starts[hits], side="right") - 1
        # Hits come in row order, then word order: each row keeps its first confirmed n-gram per benchmark.
        for row, start, place in zip(rows.tolist(), starts[hits].tolist(), places.tolist()):
            row += first_row
            found_for = {m.benchmark for m in result.matches.get(row, [])}
            if len(found_for) == len(self.stats):
                continue
            end = int(np.searchsorted(self._hashes, self._hashes[place], side="right"))
            ngram = " ".join(seg.words(start, self.n))
            confirmed = False
            for item in self._owners[place:end].tolist():
                b, local = self._benchmark_of(item)
                if b in found_for:
                    continue
                if ngram in self._item_ngrams(item):
                    confirmed = True
                    found_for.add(b)
                    result.matches.setdefault(row, []).append(Match(row, b, local, ngram))
            if not confirmed and not any(self._benchmark_of(i)[0] in found_for
                                         for i in self._owners[place:end].tolist()):
                result.unconfirmed_hits += 1


def _batches(texts: Sequence[str | None], batch_chars: int):
    """(begin, end) ranges of texts holding about `batch_chars` characters each (at least one text)."""
    begin, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text) if text else 0
        if size >= batch_chars:
            yield begin, i + 1
            begin, size = i + 1, 0
    if begin < len(texts):
        yield begin, len(texts)


def find_contamination(texts: Sequence[str | None], benchmarks: dict[str, Sequence[str | None]],
                       n: int = DEFAULT_NGRAM) -> ScanResult:
    """One-shot helper: index `benchmarks` (name -> item texts) and scan `texts`."""
    index = BenchmarkIndex(n)
    for name, items in benchmarks.items():
        index.add(name, items)
    return index.scan(texts)
