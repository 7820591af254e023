"""Fixtures for the filter tests: a real redis-server on a free port, the packaged sentence-embedding model, and a
small corpus with planted near-duplicates."""

from __future__ import annotations

import random
import re

import pytest

from tests.servers import free_port, redis_server  # noqa: F401  (session fixture)

WORDS = (
    "river mountain silver quietly garden engine market winter yellow ancient bridge harbor lantern meadow orbit "
    "pepper violin canyon marble thunder velvet compass glacier orchard saddle falcon timber voyage crystal ember "
    "fabric gravel hollow island jungle kettle ladder mirror needle oyster pillow quartz ribbon saffron tunnel "
    "umbrella valley walnut yogurt zephyr anchor basket candle dragon feather goblet hammer ivory jasmine kingdom "
    "lemon magnet nectar olive parrot quiver rocket sparrow tulip utensil vessel whistle saddle beacon cobalt "
    "dune eclipse fossil granite horizon igloo jigsaw kayak lagoon mosaic nebula opal prism quill reef summit"
).split()


@pytest.fixture(scope="session")
def minilm():
    from filters.embedding import load_model

    return load_model(None)


def shingle_set(text: str, n: int = 5) -> set[str]:
    """Reference shingles, written independently of filters.minhash: word n-grams of lowercase \\w+ tokens."""
    tokens = re.findall(r"\w+", text.lower())
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def reference_jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingle_set(a, n), shingle_set(b, n)
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def random_doc(rng: random.Random, n_words: int = 40) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences = [words[i:i + 10] for i in range(0, n_words, 10)]
    return " ".join(" ".join(s).capitalize() + "." for s in sentences)


def planted_corpus(seed: int = 0, n_distinct: int = 120):
    """(texts, groups): distinct random documents plus planted variants of some of them:
    case/punctuation changes, two sentences swapped, one word replaced."""
    rng = random.Random(seed)
    texts = [random_doc(rng, rng.randint(80, 100)) for _ in range(n_distinct)]
    groups = []
    for base_index in range(0, 30, 3):
        base = texts[base_index]
        sentences = re.split(r"(?<=\.) ", base)
        shouting = base.upper().replace(".", "!!")
        swapped = " ".join([sentences[1], sentences[0]] + sentences[2:])
        words = base.split()
        words[len(words) // 2] = "zebra"
        reworded = " ".join(words)
        group = [base_index]
        for variant in (shouting, swapped, reworded):
            group.append(len(texts))
            texts.append(variant)
        groups.append(group)
    return texts, groups
