"""ROUGE-L novelty: the Self-Instruct rule, fast.

Self-Instruct (Wang et al. 2023, §2.3 / App. A.2) lets a new instruction into the task pool only if its ROUGE-L
F-measure against *every* pool instruction is below 0.7. The original code scores each new instruction against the
whole pool with `rouge_score` — an O(pool) Python LCS per candidate, the slow part of the method.

Here the score is the same number (tokenization of `rouge_score`'s default tokenizer: lowercase, runs of [a-z0-9],
no stemmer — what Self-Instruct used — and F = 2·P·R/(P+R) with P = LCS/|new|, R = LCS/|pool entry|), computed
only where it can matter:

- Upper bound: LCS(a, b) ≤ |a ∩ b| (multiset intersection of tokens), so F ≤ 2·|a ∩ b| / (|a| + |b|).
  An inverted index token -> pool entries gives |a ∩ b| for every entry that shares a token with the query, with
  numpy, in one pass over the query's distinct tokens; entries whose bound is below the threshold are skipped.
- The survivors are scored in decreasing bound order with a bit-parallel LCS (Hyyrö 2004: one add/and/or per token
  of the other string, on a Python int used as a bit vector), and the search stops as
  soon as the next bound cannot beat the best exact score found.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Sequence

import numpy as np

# rouge_score.tokenize: lowercase, replace every run of characters outside [a-z0-9] with a space, split.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """`rouge_score`'s default tokenizer (no stemmer): lowercase [a-z0-9]+ runs, in order."""
    return [t for t in _NON_ALNUM.split(text.lower()) if t]


def _f_measure(lcs: int, len_prediction: int, len_target: int) -> float:
    """rouge_score's F: computed in its order of operations so the float is bit-identical to `rouge_score`."""
    if lcs == 0:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    return 2 * precision * recall / (precision + recall)


def _match_masks(tokens: Iterable) -> dict:
    """Bit-parallel LCS preprocessing of one sequence: token -> bit mask of the positions where it occurs."""
    masks: dict = {}
    for position, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def _lcs_length(masks: dict, length: int, other: Iterable) -> int:
    """Length of the LCS of the sequence behind `masks` (of `length` tokens) and `other`.

    Hyyrö's bit-vector recurrence: V starts all ones; for every token y of `other`, with U = V & M[y],
    V = (V + U) | (V - U); the LCS length is the number of zero bits left in V. O(|other|) big-int operations.
    """
    full = (1 << length) - 1
    v = full
    get = masks.get
    for token in other:
        m = get(token)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


def lcs_length(a: list, b: list) -> int:
    """LCS length of two token sequences."""
    if not a or not b:
        return 0
    return _lcs_length(_match_masks(a), len(a), b)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, equal to `rouge_score.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`.

    The F-measure is symmetric in its arguments (F = 2·LCS / (|a| + |b|)); 0.0 when either text has no token.
    """
    ta, tb = tokenize(a), tokenize(b)
    if not ta or not tb:
        return 0.0
    return _f_measure(lcs_length(ta, tb), len(tb), len(ta))


class RougeLNovelty:
    """A growing pool of texts with the Self-Instruct novelty test.

    `check_and_add(text)` -> `(novel, best_score, best_match)`: `novel` is True (and the text joins the pool) when its
    ROUGE-L against every pool text is below `threshold` (the paper: "less than 0.7").

    `best_score` / `best_match`: when the text is rejected, the exact highest ROUGE-L in the pool and that pool text.
    When it is novel, the highest exact score among the entries whose upper bound reached the threshold (0.0 / None
    if none did): every other entry is provably below the threshold and was never scored. Pass `exact_best=True` to
    get the exact maximum over the whole pool in that case too (slower: it scores everything that shares a token).

    Texts with no token (empty, only punctuation) are never novel and never enter the pool (best_score 0.0).
    """

    def __init__(self, threshold: float = 0.7, *, exact_best: bool = False, texts: Iterable[str] = ()):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.exact_best = exact_best
        self._vocab: dict[str, int] = {}
        self.texts: list[str] = []
        self._tokens: list[list[int]] = []
        self._lengths: list[int] = []
        self._lengths_np = np.zeros(0, dtype=np.int64)
        # token id -> (pool entry ids, occurrence counts); lists grow on add, numpy views are rebuilt lazily.
        self._postings: dict[int, tuple[list[int], list[int]]] = {}
        self._postings_np: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.scored = 0  # LCS computations done (for benchmarks: how much the bound pruned)
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def _ids(self, text: str, grow: bool) -> list[int]:
        vocab = self._vocab
        if grow:
            return [vocab.setdefault(t, len(vocab)) for t in tokenize(text)]
        # Unknown tokens cannot match any pool entry: -1 (distinct per position does not matter, they never match).
        return [vocab.get(t, -1) for t in tokenize(text)]

    def add(self, text: str) -> None:
        """Put a text into the pool without testing it (seed tasks)."""
        ids = self._ids(text, grow=True)
        entry = len(self.texts)
        self.texts.append(text)
        self._tokens.append(ids)
        self._lengths.append(len(ids))
        counts: dict[int, int] = {}
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            posting = self._postings.get(t)
            if posting is None:
                posting = self._postings[t] = ([], [])
            posting[0].append(entry)
            posting[1].append(c)
            self._postings_np.pop(t, None)

    def _posting_arrays(self, token: int) -> tuple[np.ndarray, np.ndarray] | None:
        arrays = self._postings_np.get(token)
        if arrays is None:
            posting = self._postings.get(token)
            if posting is None:
                return None
            arrays = (np.asarray(posting[0], dtype=np.int64), np.asarray(posting[1], dtype=np.int64))
            self._postings_np[token] = arrays
        return arrays

    def best_match(self, text: str) -> tuple[float, int | None]:
        """(best score, pool index) under the pruning rule described in the class docstring."""
        query = self._ids(text, grow=False)
        n = len(self.texts)
        if not query or n == 0:
            return 0.0, None
        if len(self._lengths_np) != n:
            self._lengths_np = np.asarray(self._lengths, dtype=np.int64)
        counts: dict[int, int] = {}
        for t in query:
            if t >= 0:
                counts[t] = counts.get(t, 0) + 1
        overlap = np.zeros(n, dtype=np.int64)
        for t, c in counts.items():
            entries, entry_counts = self._posting_arrays(t)
            # Entries are unique within one posting list, so fancy-index += adds once per entry.
            overlap[entries] += np.minimum(entry_counts, c)
        # F <= 2·overlap / (|q| + |e|): compare 2·overlap >= t·(|q| + |e|) in floats with a hair of slack.
        total = self._lengths_np + len(query)
        bound = 2.0 * overlap / total
        floor = 0.0 if self.exact_best else self.threshold
        candidates = np.nonzero((overlap > 0) & (bound >= floor - 1e-12))[0]
        if len(candidates) == 0:
            return 0.0, None
        order = candidates[np.argsort(-bound[candidates], kind="stable")]
        masks = _match_masks(query)
        q_len = len(query)
        best_score, best_index = 0.0, None
        for index in order.tolist():
            if bound[index] <= best_score:
                break  # sorted by bound: no later entry can beat the best exact score
            lcs = _lcs_length(masks, q_len, self._tokens[index])
            self.scored += 1
            score = _f_measure(lcs, q_len, self._lengths[index])
            if score > best_score:
                best_score, best_index = score, index
        return best_score, best_index

    def check_and_add(self, text: str) -> tuple[bool, float, str | None]:
        """Test `text` against the pool; add it if novel. Returns (novel, best_score, best_match_text)."""
        if not tokenize(text):
            return False, 0.0, None
        score, index = self.best_match(text)
        match = self.texts[index] if index is not None else None
        if score >= self.threshold:
            return False, score, match
        self.add(text)
        return True, score, match


def novelty_duplicates(texts: Sequence[str], threshold: float = 0.7,
                       skip: Container[int] = ()) -> list[tuple[int, int]]:
    """The Self-Instruct novelty rule as a pair filter over `texts` in order: (position, position of the earlier
    novel text it matched) for each text whose ROUGE-L against an earlier novel text reaches `threshold`.

    Texts at the `skip` positions are not tested and never enter the pool (a row rejected for another reason must
    not block a good later one); texts with no token are neither novel nor a duplicate of anything."""
    novelty = RougeLNovelty(threshold)
    pool_positions: list[int] = []  # pool entry -> position in `texts`
    pairs: list[tuple[int, int]] = []
    for position, text in enumerate(texts):
        if position in skip or not tokenize(text):
            continue
        score, index = novelty.best_match(text)
        if score >= novelty.threshold and index is not None:
            pairs.append((position, pool_positions[index]))
        else:
            novelty.add(text)
            pool_positions.append(position)
    return pairs
