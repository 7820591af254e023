"""Clusters from near-duplicate pairs, and which member of each cluster is kept.

Clusters are the connected components of the duplicate graph (union-find semantics: a ~ b and b ~ c put a, b, c
in one cluster even when a and c are not similar themselves — the usual choice of MinHash dedup pipelines).
Exactly one member per cluster is kept, by a stated rule, so no content is ever lost by dropping both sides of a
pair.
"""

from __future__ import annotations

import numpy as np

KEEP_RULES = ("longest", "first", "score")


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """[n] int64 labels: each node's label is the smallest node index in its component (deterministic whatever the
    edge order). Vectorized union-find by pointer jumping: O(edges · log n) numpy work."""
    label = np.arange(n, dtype=np.int64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    if n == 0 or len(left) == 0:
        return label
    while True:
        # Hook: every edge pulls the larger root onto the smaller one.
        a, b = label[left], label[right]
        low, high = np.minimum(a, b), np.maximum(a, b)
        changed = low != high
        if not changed.any():
            break
        np.minimum.at(label, high[changed], low[changed])
        # Jump: compress paths until every node points at a root.
        while True:
            parent = label[label]
            if np.array_equal(parent, label):
                break
            label = parent
    return label


def choose_kept(
    labels: np.ndarray,
    rule: str = "longest",
    lengths: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """[n] int64: for every node, the position of its cluster's kept member (a kept node maps to itself).

    Rules: "first" — the first row (lowest position); "longest" — the longest answer (`lengths`), ties to the first;
    "score" — the highest `scores` (NaN counts as lowest), ties to the first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    position = np.arange(n)
    if rule == "first":
        primary = np.zeros(n)
    elif rule == "longest":
        if lengths is None:
            raise ValueError("keep rule 'longest' needs lengths")
        primary = -np.asarray(lengths, dtype=np.float64)
    elif rule == "score":
        if scores is None:
            raise ValueError("keep rule 'score' needs scores")
        s = np.asarray(scores, dtype=np.float64)
        primary = -np.where(np.isnan(s), -np.inf, s)
    else:
        raise ValueError(f"keep rule must be one of {KEEP_RULES}, got {rule!r}")
    # Sort by (cluster, primary key, position): the first node of each cluster run is its kept member.
    order = np.lexsort((position, primary, labels))
    sorted_labels = labels[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    winner_of_label = np.empty(n, dtype=np.int64)
    winner_of_label[sorted_labels[first]] = order[first]
    return winner_of_label[labels]
