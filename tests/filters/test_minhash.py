"""MinHash near-duplicates: planted variants found, distinct texts kept, exact Jaccard checked against a reference
written with Python sets, same pairs from the numpy bands, datasketch's MinHashLSH and a real Redis."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from filters.minhash import (
    MinHasher,
    MinHashIndex,
    choose_bands,
    exact_jaccard_pairs,
    minhash_pairs,
)
from tests.filters.conftest import planted_corpus, random_doc, reference_jaccard, shingle_set


def brute_force_pairs(texts, threshold, n=5):
    sets = [shingle_set(t, n) for t in texts]
    return {(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
            if sets[i] and sets[j] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold}


def found_pairs(result):
    return set(zip(result.left.tolist(), result.right.tolist()))


def test_planted_variants_found_and_distinct_texts_kept():
    texts, groups = planted_corpus()
    result = minhash_pairs(texts, threshold=0.7)
    truth = brute_force_pairs(texts, 0.7)
    # Every kind of variant is a duplicate of its base (case/punctuation, reordered sentences, one word replaced) ...
    for base, shouting, swapped, reworded in groups:
        assert (base, shouting) in truth and (base, swapped) in truth and (base, reworded) in truth
    # ... and the LSH + exact check finds exactly the brute-force set: nothing missed, nothing extra.
    assert found_pairs(result) == truth
    planted = {i for g in groups for i in g}
    assert not {i for pair in truth for i in pair} - planted  # distinct documents never reported
    # Reported similarities are the exact Jaccard of the shingle sets.
    for i, j, s in zip(result.left, result.right, result.similarity):
        assert s == pytest.approx(reference_jaccard(texts[i], texts[j]), abs=1e-12)


def test_exact_jaccard_matches_python_sets_on_random_pairs():
    rng = random.Random(3)
    base = [random_doc(rng, rng.randint(3, 50)) for _ in range(60)]
    # Overlapping texts: suffixes/prefixes of each other give every Jaccard value from 0 to 1.
    texts = base + [t[: len(t) // 2] + random_doc(rng, 5) for t in base]
    pairs = np.array([(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if rng.random() < 0.2])
    shingled = MinHasher().shingle_texts(texts)
    ours = exact_jaccard_pairs(shingled, pairs, chunk_elements=500)  # small chunks: exercise the chunk loop
    reference = [reference_jaccard(texts[i], texts[j]) for i, j in pairs]
    np.testing.assert_allclose(ours, reference, atol=1e-12)
    assert max(reference) > 0.3  # the check saw real overlaps, not only zeros


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(5)
    hasher = MinHasher(num_perm=256)
    errors = []
    for _ in range(40):
        a = random_doc(rng, 60)
        words = a.split()
        for _ in range(rng.randint(0, 8)):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        b = " ".join(words)
        (_, siga), (_, sigb) = hasher.one(a), hasher.one(b)
        errors.append(float(np.mean(siga == sigb)) - reference_jaccard(a, b))
    # Unbiased estimator with standard error <= sqrt(0.25/256) = 0.031 per pair.
    assert abs(np.mean(errors)) < 0.02
    assert np.max(np.abs(errors)) < 0.15


def test_short_texts_and_empty_texts():
    texts = ["Sort a list", "sort a LIST!", "Sort the list", "", "   ...   ", "Sort a list of numbers in Python now"]
    result = minhash_pairs(texts, threshold=0.7, ngram=5)
    # Shorter than n: the whole normalized sequence is the one shingle, so only identical sequences match.
    assert found_pairs(result) == {(0, 1)}
    hasher = MinHasher(ngram=5)
    assert len(hasher.one("")[0]) == 0 and len(hasher.one("...")[0]) == 0


def test_char_shingles_catch_small_spelling_changes():
    a = "Summarize the following paragraph about renewable energy policy in Europe"
    b = "Summarise the following paragraph about renewable-energy policies in Europe"
    words = minhash_pairs([a, b], threshold=0.6, shingle="word", ngram=3)
    chars = minhash_pairs([a, b], threshold=0.6, shingle="char", ngram=5)
    assert len(words) == 0 and len(chars) == 1


def test_results_identical_on_rerun_and_independent_of_batching():
    texts, _ = planted_corpus(seed=1)
    first = minhash_pairs(texts)
    second = minhash_pairs(texts)
    assert found_pairs(first) == found_pairs(second)
    whole = MinHasher().shingle_texts(texts)
    batched = MinHasher().shingle_texts(texts, batch=7)
    np.testing.assert_array_equal(whole.signatures, batched.signatures)
    np.testing.assert_array_equal(whole.hashes, batched.hashes)


def test_choose_bands_favours_recall_at_the_threshold():
    b, r = choose_bands(0.7, 128)
    assert b * r <= 128
    assert 1 - (1 - 0.7**r) ** b >= 0.998
    # Of the settings meeting that recall, the one with the fewest candidates below the threshold wins here.
    assert 1 - (1 - 0.7 ** (r + 1)) ** (128 // (r + 1)) < 0.998
    b8, r8 = choose_bands(0.8, 128)
    assert r8 > r  # a higher threshold affords longer bands


def test_datasketch_backend_gives_the_same_pairs():
    texts, _ = planted_corpus(seed=2)
    assert found_pairs(minhash_pairs(texts, backend="datasketch")) == found_pairs(minhash_pairs(texts))


def test_index_check_and_add():
    texts, groups = planted_corpus(seed=4)
    index = MinHashIndex(threshold=0.7)
    verdicts = {i: index.check_and_add(f"doc-{i}", t) for i, t in enumerate(texts)}
    for base, *variants in groups:
        assert verdicts[base] is None
        for v in variants:
            assert verdicts[v] == f"doc-{base}"
    assert len(index) == len(texts) - sum(len(g) - 1 for g in groups)
    # A duplicate is not inserted; asking again gives the same answer.
    assert index.check_and_add("again", texts[groups[0][1]]) == f"doc-{groups[0][0]}"
    assert index.check_and_add("empty", "") is None and len(index) == len(texts) - sum(len(g) - 1 for g in groups)


def test_index_without_exact_check_uses_the_estimate():
    index = MinHashIndex(threshold=0.7, exact_check=False, shingle="word", ngram=3)
    assert index.check_and_add("a", "Write a short poem about the sea and the wind at night") is None
    assert index.check_and_add("b", "write a short POEM about the sea and the wind at night!") == "a"
    assert index.check_and_add("c", "Explain the causes of the French revolution in simple words") is None


def test_redis_index_gives_the_same_clusters_as_in_memory(redis_server):
    texts, _ = planted_corpus(seed=6, n_distinct=20)  # Redis answers one band per round trip: keep it small
    storage = {"type": "redis", "basename": b"kdforge_test_index", "redis": redis_server}
    in_memory = MinHashIndex(threshold=0.7)
    in_redis = MinHashIndex(threshold=0.7, storage_config=storage)
    a = [in_memory.check_and_add(i, t) for i, t in enumerate(texts)]
    b = [in_redis.check_and_add(i, t) for i, t in enumerate(texts)]
    assert a == b and any(x is not None for x in a)
    assert len(in_redis) == len(in_memory)
    # A second worker attached to the same Redis index sees everything the first one inserted.
    worker_two = MinHashIndex(threshold=0.7, storage_config=storage)
    assert worker_two.check_and_add("late", texts[0].upper()) == 0
    # The batch path through MinHashLSH in Redis gives the numpy path's pairs.
    batch_storage = {"type": "redis", "basename": b"kdforge_test_batch", "redis": redis_server}
    assert found_pairs(minhash_pairs(texts, backend="datasketch", storage_config=batch_storage)) == found_pairs(
        minhash_pairs(texts))
