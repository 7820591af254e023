"""Embedding dedup with the real all-MiniLM-L6-v2 (packaged), blocked similarity, clusters and keep rules, and the
one-pass MinHash + embedding merge."""

from __future__ import annotations

import numpy as np
import pytest

from filters.clusters import choose_kept, connected_components
from filters.dedup import EMBEDDING_DUPLICATE, MINHASH_DUPLICATE, dedup
from filters.embedding import embed, embedding_clusters, similar_pairs

PARAPHRASES = [
    "How do I reverse a list in Python?",
    "What is the way to reverse a Python list?",
    "Give me a recipe for banana bread.",
    "Share a banana bread recipe with me.",
    "What causes the seasons on Earth?",
    "Explain the rules of chess for a beginner.",
    "Translate 'good morning' into Japanese.",
    "Write a limerick about a cat who loves jazz.",
]


def test_blocked_search_equals_the_full_matrix():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    x = np.repeat(centers, 5, axis=0) + 0.15 * rng.normal(size=(50, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    full = x @ x.T
    i, j = np.nonzero(np.triu(full >= 0.9, k=1))
    expected = set(zip(i.tolist(), j.tolist()))
    for block in (1, 7, 16, 64):
        left, right, sims = similar_pairs(x, 0.9, block_size=block)
        assert set(zip(left.tolist(), right.tolist())) == expected
        np.testing.assert_allclose(sims, full[left, right], rtol=1e-5)
    assert len(expected) > 20


def test_paraphrases_cluster_distinct_requests_stay_apart(minilm):
    vectors = embed(PARAPHRASES, minilm)
    assert vectors.shape == (len(PARAPHRASES), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    labels = embedding_clusters(PARAPHRASES, threshold=0.8, model=minilm)
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len(set(labels[[0, 2, 4, 5, 6, 7]].tolist())) == 6
    assert labels.tolist() == embedding_clusters(PARAPHRASES, threshold=0.8, model=minilm).tolist()  # rerun


def test_connected_components_labels_are_the_smallest_member():
    labels = connected_components(8, np.array([5, 1, 3, 6]), np.array([3, 2, 1, 7]))
    assert labels.tolist() == [0, 1, 1, 1, 4, 1, 6, 6]
    # A long chain given in reverse order (worst case for naive label propagation).
    n = 1000
    chain = connected_components(n, np.arange(n - 1)[::-1], np.arange(1, n)[::-1])
    assert (chain == 0).all()


def test_keep_rules_keep_exactly_one_per_cluster():
    labels = np.array([0, 0, 0, 3, 3, 5])
    lengths = np.array([5, 9, 9, 1, 2, 7])
    scores = np.array([0.1, np.nan, 0.3, 0.9, 0.2, 0.0])
    assert choose_kept(labels, "first").tolist() == [0, 0, 0, 3, 3, 5]
    assert choose_kept(labels, "longest", lengths=lengths).tolist() == [1, 1, 1, 4, 4, 5]  # tie -> first seen
    assert choose_kept(labels, "score", scores=scores).tolist() == [2, 2, 2, 3, 3, 5]  # NaN ranks lowest
    with pytest.raises(ValueError):
        choose_kept(labels, "score")


def test_minhash_and_embedding_merge_into_one_set_of_clusters(minilm):
    long_a = ("Photosynthesis is the process by which green plants use sunlight water and carbon dioxide "
              "to produce glucose and oxygen inside their chloroplasts every single day")
    texts = [
        long_a,
        long_a.upper() + "!",                                 # lexical duplicate of 0
        "How do I reverse a list in Python?",
        "What is the way to reverse a Python list?",          # paraphrase of 2 (no shared 5-gram)
        "Write a limerick about a cat who loves jazz.",
    ]
    result = dedup(texts, minhash={"threshold": 0.7}, embedding={"threshold": 0.8, "model": minilm}, keep="first")
    assert result.cluster.tolist() == [0, 0, 2, 2, 4]
    assert result.kept.tolist() == [True, False, True, False, True]
    assert result.duplicate_of.tolist() == [-1, 0, -1, 2, -1]
    assert MINHASH_DUPLICATE in result.reasons[1] and result.reasons[3] == [EMBEDDING_DUPLICATE]
    assert result.reasons[0] == result.reasons[2] == result.reasons[4] == []
    # Exactly one member per cluster is kept; every dropped row points at its cluster's kept row.
    for c in np.unique(result.cluster):
        members = np.flatnonzero(result.cluster == c)
        assert result.kept[members].sum() == 1
    for i in np.flatnonzero(~result.kept):
        assert result.kept[result.duplicate_of[i]] and result.cluster[result.duplicate_of[i]] == result.cluster[i]
    # MinHash alone does not see the paraphrase.
    lexical = dedup(texts, minhash={"threshold": 0.7}, keep="first")
    assert lexical.kept.tolist() == [True, False, True, True, True]
