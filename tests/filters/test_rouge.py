"""ROUGE-L: the same numbers as the `rouge_score` package, and the novelty pool's decisions equal the naive
Self-Instruct loop (score against every pool entry)."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer

from filters.rouge import RougeLNovelty, lcs_length, rouge_l, tokenize
from tests.filters.conftest import WORDS

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)  # what Self-Instruct uses


def naive_best(pool, text):
    scores = [SCORER.score(p, text)["rougeL"].fmeasure for p in pool]
    best = max(scores, default=0.0)
    return best, (scores.index(best) if scores and best > 0 else None)


def instruction(rng: random.Random) -> str:
    verbs = ["Write", "Explain", "List", "Describe", "Give", "Summarize"]
    words = [rng.choice(WORDS[:40]) for _ in range(rng.randint(1, 18))]
    tail = rng.choice([".", "?", "!", " (in 3 steps).", ", please."])
    return f"{rng.choice(verbs)} {' '.join(words)}{tail}"


def test_rouge_l_equals_rouge_score_on_random_pairs():
    rng = random.Random(0)
    alphabet = WORDS[:12] + ["The", "A", "x2", "café", "naïve", "--", "C++", "don't", "3.14", "", "ÉCOLE"]
    for _ in range(600):
        a = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        b = " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        assert rouge_l(a, b) == SCORER.score(a, b)["rougeL"].fmeasure  # bit-identical, not just close
        assert tokenize(a) == SCORER._tokenizer.tokenize(a)


def test_lcs_length_against_dynamic_programming():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randrange(6) for _ in range(rng.randint(0, 70))]  # > 64 tokens: bit vectors wider than a word
        b = [rng.randrange(6) for _ in range(rng.randint(0, 70))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert lcs_length(a, b) == table[-1][-1]


def test_novelty_decisions_equal_the_naive_self_instruct_loop():
    rng = random.Random(2)
    pool_texts = [instruction(rng) for _ in range(150)]
    novelty = RougeLNovelty(0.7)
    naive_pool: list[str] = []
    rejected = 0
    for k in range(120):
        if k % 3 == 0 and naive_pool:  # a reworded earlier instruction
            words = rng.choice(naive_pool).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            text = " ".join(words)
        else:
            text = pool_texts[k % len(pool_texts)] if k % 5 == 0 else instruction(rng)
        best, index = naive_best(naive_pool, text)
        novel, score, match = novelty.check_and_add(text)
        assert novel == (best < 0.7)
        if not novel:
            rejected += 1
            assert score == best  # exact best score when rejected
            assert SCORER.score(match, text)["rougeL"].fmeasure == best
        else:
            naive_pool.append(text)
            assert score <= best  # only entries that could reach the threshold were scored
    assert novelty.texts == naive_pool
    assert 15 < rejected < 90  # both outcomes exercised


def test_exact_best_mode_reports_the_true_maximum():
    rng = random.Random(3)
    pool = [instruction(rng) for _ in range(80)]
    novelty = RougeLNovelty(0.7, exact_best=True, texts=pool)
    for _ in range(40):
        text = instruction(rng)
        score, index = novelty.best_match(text)
        best, _ = naive_best(pool, text)
        assert score == pytest.approx(best, abs=1e-15)


def test_pruning_skips_most_pairs():
    rng = random.Random(4)
    novelty = RougeLNovelty(0.7, texts=[instruction(rng) for _ in range(400)])
    for _ in range(100):
        novelty.best_match(instruction(rng))
    assert novelty.scored < 0.1 * 400 * 100


def test_empty_and_punctuation_only_texts_are_never_novel():
    novelty = RougeLNovelty()
    assert novelty.check_and_add("") == (False, 0.0, None)
    assert novelty.check_and_add("?!...") == (False, 0.0, None)
    assert len(novelty) == 0
    assert novelty.check_and_add("Write a poem")[0] and len(novelty) == 1
