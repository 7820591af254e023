"""Dedup benchmark: kdforge's MinHash vs datasketch (plain loop and fast path), embedding dedup, ROUGE-L novelty.

    python bench/dedup.py            # all parts, defaults below (a few minutes on an idle 2-core machine)
    python bench/dedup.py --part minhash --baseline-docs 100000   # datasketch baselines on the 100k corpus too
    python bench/dedup.py --part embedding --embedding-docs 5000 --search-docs 100000

Defaults: MinHash on a 100k-document corpus (median of 3 runs), the two datasketch baselines beside kdforge on a
20k corpus (the plain loop runs at ~1k docs/s: 100k would add minutes), kdforge alone at 25k and 50k to show memory
growth; ROUGE-L novelty with a 5k pool and 1k queries vs the naive rouge_score loop (timed on 20 queries, scaled);
embedding dedup with the real MiniLM on 300 corpus documents plus the blocked search alone on 20k synthetic vectors.

Corpus: synthetic short documents (20-60 words drawn from a Zipf(1.1) vocabulary of 30k pseudo-words, in sentences
with capitals and punctuation) with planted near-duplicate groups of 2-5 variants of one base text. Each variant
applies to the base a random mix of: case/punctuation changes, a reordering of two sentences, and 0-4 word
substitutions / insertions / deletions. The edits are sized so that many planted pairs sit at Jaccard 0.6-0.8,
where banding errs. Ground truth: a pair is a duplicate when the exact Jaccard of its sets of word 5-grams (of the
lowercased `\\w+` tokens, computed here with Python sets of strings, independently of kdforge's hashing) is >= 0.7.
Candidates are all pairs inside planted groups plus every pair any method reports (unrelated random texts share no
5-gram in practice; any such pair reported is still checked exactly).

Every method runs in a fresh subprocess; peak memory = the rise of its resident set (VmHWM after clear_refs)
over its state right after the corpus was built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _rss import reset_peak, rss_kib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLD = 0.7
NUM_PERM = 128
NGRAM = 5
BANDS_REPORTED = [(0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0001)]
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------------------------------------------- corpus


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """`size` distinct pseudo-words of 1-3 syllables, in random order (so Zipf ranks are not alphabetical)."""
    syllables = np.array([c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "el", "or", "is", "um", "ex"])
    words: set[str] = set()
    while len(words) < size:
        k = rng.integers(1, 4, size=size)
        parts = syllables[rng.integers(0, len(syllables), size=(size, 3))]
        for n, row in zip(k.tolist(), parts.tolist()):
            words.add("".join(row[:n]))
    return rng.permutation(sorted(words)[:size]).tolist() if len(words) > size else rng.permutation(sorted(words)).tolist()


def _render(sentences: list[list[str]], rng: np.random.Generator, style: int) -> str:
    """Sentences of words -> text. style 0: plain capitalized with periods; 1: lowercase, commas and '!';
    2: UPPERCASE with '?' and extra spaces."""
    parts = []
    for sentence in sentences:
        if not sentence:
            continue
        if style == 0:
            parts.append(" ".join(sentence).capitalize() + ".")
        elif style == 1:
            commas = (rng.random(len(sentence)) < 0.15).tolist()
            words = [w + "," if c else w for w, c in zip(sentence, commas)]
            parts.append(" ".join(words) + "!")
        else:
            parts.append("  ".join(sentence).upper() + " ?")
    return " ".join(parts)


def build_corpus(n_docs: int, seed: int = 0, planted_fraction: float = 0.2):
    """(texts, groups): `groups` lists the planted groups as lists of text positions."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, 30_000)
    ranks = np.arange(1, len(vocab) + 1)
    cdf = np.cumsum(1.0 / ranks**1.1)
    cdf /= cdf[-1]

    def draw(k: int) -> np.ndarray:  # Zipf(1.1) word indices (inverse CDF: rng.choice(p=...) rebuilds it per call)
        return np.minimum(np.searchsorted(cdf, rng.random(k)), len(vocab) - 1)

    def fresh_sentences() -> list[list[str]]:
        n_words = int(rng.integers(20, 61))
        words = [vocab[i] for i in draw(n_words).tolist()]
        cuts = sorted(set(rng.integers(5, n_words - 3, size=max(1, n_words // 12)).tolist()))
        return [words[a:b] for a, b in zip([0] + cuts, cuts + [n_words])]

    def variant(base: list[list[str]]) -> list[list[str]]:
        sentences = [list(s) for s in base]
        if len(sentences) > 1 and rng.random() < 0.3:  # reorder two sentences
            i, j = rng.choice(len(sentences), 2, replace=False)
            sentences[i], sentences[j] = sentences[j], sentences[i]
        for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3, 4]))):  # reword: substitute / insert / delete a word
            s = sentences[int(rng.integers(len(sentences)))]
            op = rng.integers(3)
            pos = int(rng.integers(len(s)))
            if op == 0:
                s[pos] = vocab[int(draw(1)[0])]
            elif op == 1:
                s.insert(pos, vocab[int(draw(1)[0])])
            elif len(s) > 2:
                del s[pos]
        return sentences

    texts: list[str] = []
    groups: list[list[int]] = []
    planted_docs = int(n_docs * planted_fraction)
    while len(texts) < planted_docs:
        base = fresh_sentences()
        size = int(rng.integers(2, 6))
        group = [len(texts)]
        texts.append(_render(base, rng, 0))
        for _ in range(size - 1):
            group.append(len(texts))
            texts.append(_render(variant(base), rng, int(rng.integers(3))))
        groups.append(group)
    while len(texts) < n_docs:
        texts.append(_render(fresh_sentences(), rng, int(rng.integers(3))))
    # Shuffle so duplicates are not neighbours (order-sensitive methods get no help).
    perm = rng.permutation(len(texts))
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    texts = [texts[i] for i in perm]
    groups = [[int(inverse[i]) for i in g if inverse[i] < n_docs] for g in groups]
    texts = texts[:n_docs]
    return texts, [g for g in groups if len(g) > 1]


def cached_corpus(n_docs: int, seed: int):
    """build_corpus, kept in a pickle under the temp dir so the worker subprocesses do not rebuild it."""
    import pickle

    path = Path(tempfile.gettempdir()) / "kdforge-bench" / f"dedup-corpus-{n_docs}-{seed}-v1.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    corpus = build_corpus(n_docs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(pickle.dumps(corpus))
    os.replace(tmp, path)
    return corpus


def shingle_strings(text: str, n: int = NGRAM) -> list[str]:
    tokens = _WORD.findall(text.lower())
    if len(tokens) < n:
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def exact_jaccard(a: str, b: str) -> float:
    sa, sb = set(shingle_strings(a)), set(shingle_strings(b))
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


# --------------------------------------------------------------------------------------------------------- workers


def worker(method: str, n_docs: int, seed: int, out: str) -> None:
    import gc

    extra: dict = {}
    if method.startswith("embedding"):
        _embedding_worker(method, n_docs, seed, out)
        return
    texts, _ = cached_corpus(n_docs, seed)
    gc.collect()
    reset_peak()
    base = rss_kib("VmRSS")
    start = time.perf_counter()
    if method == "kdforge":
        from filters.minhash import minhash_pairs

        result = minhash_pairs(texts, threshold=THRESHOLD, num_perm=NUM_PERM, shingle="word", ngram=NGRAM)
        pairs = np.stack([result.left, result.right], axis=1)
        extra = {"candidates": int(result.candidates)}
    elif method == "datasketch_loop":
        pairs, extra = _datasketch_loop(texts)
    elif method == "datasketch_fast":
        pairs, extra = _datasketch_fast(texts)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM") - base
    np.save(out, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, **extra}))


def _embedding_worker(method: str, n_docs: int, seed: int, out: str) -> None:
    """`embedding`: the real model on the corpus (encode + blocked search + clusters), model loaded beforehand.
    `embedding_search`: the blocked search alone on synthetic unit vectors (384-d) with planted near-duplicate
    pairs, to measure the search at sizes where CPU encoding would take too long."""
    import gc

    from filters.clusters import connected_components
    from filters.embedding import DEFAULT_THRESHOLD, embed, load_model, similar_pairs

    info: dict = {"threshold": DEFAULT_THRESHOLD}
    if method == "embedding":
        texts, groups = cached_corpus(n_docs, seed)
        model = load_model(None)
        embed(texts[:64], model)  # warm-up: first-call allocations are not the dedup's
        gc.collect()
        reset_peak()
        base = rss_kib("VmRSS")
        start = time.perf_counter()
        vectors = embed(texts, model)
        info["encode_seconds"] = time.perf_counter() - start
        left, right, _ = similar_pairs(vectors, DEFAULT_THRESHOLD)
        labels = connected_components(len(texts), left, right)
        info["seconds"] = time.perf_counter() - start
        info["search_seconds"] = info["seconds"] - info["encode_seconds"]
        info["groups_together"] = sum(1 for g in groups if len({int(labels[i]) for i in g}) == 1)
        info["groups"] = len(groups)
    else:
        rng = np.random.default_rng(seed)
        vectors = rng.normal(size=(n_docs, 384)).astype(np.float32)
        planted = rng.choice(n_docs, size=(n_docs // 20, 2), replace=False)
        # Second member = first + noise scaled for cosine ~0.95 (above the 0.9 threshold).
        vectors[planted[:, 1]] = vectors[planted[:, 0]] + 0.33 * rng.normal(size=(len(planted), 384))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        gc.collect()
        reset_peak()
        base = rss_kib("VmRSS")
        start = time.perf_counter()
        left, right, _ = similar_pairs(vectors, DEFAULT_THRESHOLD)
        info["seconds"] = info["search_seconds"] = time.perf_counter() - start
        found = set(zip(np.minimum(left, right).tolist(), np.maximum(left, right).tolist()))
        info["planted_found"] = sum((min(a, b), max(a, b)) in found for a, b in planted.tolist())
        info["groups"] = len(planted)
    info["peak_mib"] = (rss_kib("VmHWM") - base) / 1024
    info["pairs"] = int(len(left))
    np.save(out, np.zeros((0, 2), dtype=np.int64))
    print(json.dumps(info))


def _datasketch_loop(texts):
    """(a) What the datasketch README shows: MinHash() + update() per shingle, query then insert per document."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    pairs = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM)
        for s in shingle_strings(text):
            m.update(s.encode("utf-8"))
        for j in lsh.query(m):
            pairs.append((j, i))
        lsh.insert(i, m, check_duplication=False)
    return pairs, {"bands": f"{lsh.b}x{lsh.r}"}


def _datasketch_fast(texts):
    """(b) datasketch's own fast path: MinHash.generator (update_batch), LeanMinHash, insertion_session, then a query
    per document (pairs = all bucket-mates)."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    shingles = ([s.encode("utf-8") for s in shingle_strings(t)] for t in texts)
    sketches = [LeanMinHash(m) for m in MinHash.generator(shingles, num_perm=NUM_PERM)]
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)
    pairs = set()
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs), {"bands": f"{lsh.b}x{lsh.r}"}


def run_worker(method: str, n_docs: int, seed: int) -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pairs.npy")
        proc = subprocess.run([sys.executable, __file__, "--worker", method, "--docs", str(n_docs), "--seed",
                               str(seed), "--out", out], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{method} failed:\n{proc.stderr}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        return info, np.load(out)


# --------------------------------------------------------------------------------------------------------- metrics


class Truth:
    """Exact Jaccard of every pair anyone looks at, cached; positives = pairs >= THRESHOLD."""

    def __init__(self, texts, groups):
        self.texts = texts
        self.sets = {}
        self.jaccard: dict[tuple[int, int], float] = {}
        self.planted: list[tuple[int, int]] = []
        for g in groups:
            for x in range(len(g)):
                for y in range(x + 1, len(g)):
                    pair = (min(g[x], g[y]), max(g[x], g[y]))
                    self.planted.append(pair)
                    self.score(pair)

    def _set(self, i):
        s = self.sets.get(i)
        if s is None:
            s = self.sets[i] = set(shingle_strings(self.texts[i]))
        return s

    def score(self, pair) -> float:
        value = self.jaccard.get(pair)
        if value is None:
            a, b = self._set(pair[0]), self._set(pair[1])
            value = len(a & b) / len(a | b) if a and b else 0.0
            self.jaccard[pair] = value
        return value

    def positives(self) -> set:
        return {p for p, j in self.jaccard.items() if j >= THRESHOLD}


def evaluate(truth: Truth, pairs: np.ndarray) -> dict:
    found = {(int(min(a, b)), int(max(a, b))) for a, b in pairs}
    for p in found:
        truth.score(p)
    return found


def prf(truth: Truth, found: set) -> tuple[float, float, float]:
    positives = truth.positives()
    tp = len(found & positives)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(positives) if positives else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def band_rates(truth: Truth, found: set) -> list[str]:
    cells = []
    for lo, hi in BANDS_REPORTED:
        in_band = [p for p in truth.planted if lo <= truth.jaccard[p] < hi]
        rate = sum(p in found for p in in_band) / len(in_band) if in_band else float("nan")
        cells.append(f"{rate:.3f}")
    return cells


def bench_minhash(n_docs: int, baseline_docs: int, seed: int, repeats: int, scaling: list[int]) -> None:
    from filters.minhash import choose_bands

    b, r = choose_bands(THRESHOLD, NUM_PERM)
    print(f"\n## MinHash near-duplicates: {NUM_PERM} permutations, threshold {THRESHOLD}, word {NGRAM}-grams\n")
    sizes = sorted({baseline_docs, n_docs, *scaling})
    results = {}
    for size in sizes:
        texts, groups = cached_corpus(size, seed)
        truth = Truth(texts, groups)
        methods = ["kdforge"] + (["datasketch_fast", "datasketch_loop"] if size == baseline_docs else [])
        for method in methods:
            runs = [run_worker(method, size, seed)
                    for _ in range(repeats if method == "kdforge" and size in (n_docs, baseline_docs) else 1)]
            seconds = statistics.median(r[0]["seconds"] for r in runs)
            info, pairs = runs[0]
            info["peak_mib"] = statistics.median(r[0]["peak_mib"] for r in runs)
            found = evaluate(truth, pairs)
            results[(size, method)] = (seconds, info, found, truth, len(runs))
        if size in (n_docs, baseline_docs):
            _print_histogram(truth, size, groups)
    print("\n| docs | method | bands×rows | docs/s | × fast path | peak MiB | MiB / 1k docs | precision | recall | F1 | "
          + " | ".join(f"found J∈[{lo:.1f},{min(hi, 1):.1f})" for lo, hi in BANDS_REPORTED) + " |")
    print("|" + "---|" * (10 + len(BANDS_REPORTED)))
    for (size, method), (seconds, info, found, truth, _n_runs) in results.items():
        fast = results.get((size, "datasketch_fast"))
        ratio = f"{fast[0] / seconds:.1f}×" if fast else "–"
        bands = info.get("bands", f"{b}x{r} + exact check ({info.get('candidates', 0):,} candidates)")
        p, rec, f = prf(truth, found)
        print(f"| {size:,} | {method} | {bands} | {size / seconds:,.0f} | {ratio} | {info['peak_mib']:.0f} | "
              f"{info['peak_mib'] / size * 1000:.2f} | {p:.4f} | {rec:.4f} | {f:.4f} | "
              + " | ".join(band_rates(truth, found)) + " |")
    print("\n`found J∈[a,b)`: fraction of planted pairs in that exact-Jaccard band reported as duplicates (below 0.7 "
          f"a report is a false positive). kdforge at {n_docs:,} and {baseline_docs:,} docs: median of {repeats} "
          "runs; other rows one run. Peak MiB = rise of the worker's resident set while deduplicating.")


def _print_histogram(truth: Truth, size: int, groups) -> None:
    values = np.array([truth.jaccard[p] for p in truth.planted])
    edges = [0, 0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0, 1.0001]
    counts, _ = np.histogram(values, bins=edges)
    print(f"Corpus of {size:,} docs: {len(groups):,} planted groups, {len(values):,} planted pairs, "
          f"{int((values >= THRESHOLD).sum()):,} of them at J >= {THRESHOLD}. Exact-Jaccard histogram of planted pairs:\n")
    print("| J | " + " | ".join(f"[{a:g},{b:g})" if b <= 1 else "=1" for a, b in zip(edges[:-1], edges[1:])) + " |")
    print("|" + "---|" * len(counts) + "---|")
    print("| pairs | " + " | ".join(str(c) for c in counts) + " |\n")


# ------------------------------------------------------------------------------------------------------- embedding


def bench_embedding(n_docs: int, search_docs: int, seed: int) -> None:
    from filters.embedding import similar_pairs  # noqa: F401  (fail early if the module is broken)

    rows = []
    real, _ = run_worker("embedding", n_docs, seed)
    rows.append((f"{n_docs:,} corpus docs, all-MiniLM-L6-v2 (encode + search + clusters)", n_docs, real,
                 f"{real['groups_together']}/{real['groups']} planted groups in one cluster"))
    synthetic, _ = run_worker("embedding_search", search_docs, seed)
    rows.append((f"{search_docs:,} synthetic 384-d unit vectors (search + pairs only)", search_docs, synthetic,
                 f"{synthetic['planted_found']}/{synthetic['groups']} planted pairs (cos ~0.95) found"))
    print(f"\n## Embedding dedup (threshold {real['threshold']}, blocked cosine in 2048×2048 tiles)\n")
    print("| run | encode docs/s | search s | total docs/s | peak MiB (rise) | N×N fp32 matrix would be (MiB) "
          "| pairs ≥ threshold | check |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, info, check in rows:
        encode = f"{n / info['encode_seconds']:,.0f}" if "encode_seconds" in info else "–"
        print(f"| {label} | {encode} | {info['search_seconds']:.1f} | {n / info['seconds']:,.0f} | "
              f"{info['peak_mib']:.0f} | {n * n * 4 / 2**20:,.0f} | {info['pairs']:,} | {check} |")
    print("\nEncoding 100k documents with MiniLM on this 2-core CPU would take tens of minutes, so the model runs on "
          f"{n_docs:,} documents (`--embedding-docs N` for more) and the search alone is measured at "
          f"{search_docs:,}.")


# ----------------------------------------------------------------------------------------------------------- rouge


def bench_rouge(pool_size: int, n_queries: int, naive_queries: int, seed: int) -> None:
    from rouge_score import rouge_scorer

    from filters.rouge import RougeLNovelty

    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, 3000)
    verbs = ["Write", "Explain", "List", "Describe", "Give", "Summarize", "Classify", "Translate", "Suggest", "Create"]

    def instruction() -> str:
        words = [vocab[i] for i in rng.zipf(1.3, size=int(rng.integers(6, 25))) % len(vocab)]
        return f"{verbs[int(rng.integers(len(verbs)))]} {' '.join(words)}."

    pool = [instruction() for _ in range(pool_size)]
    queries = []
    for k in range(n_queries):
        if k % 3 == 0:  # a reworded pool entry: the case the rule exists for
            words = pool[int(rng.integers(pool_size))].split()
            words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
            queries.append(" ".join(words))
        else:
            queries.append(instruction())
    index = RougeLNovelty(0.7, texts=pool)
    start = time.perf_counter()
    ours = [index.best_match(q)[0] for q in queries]
    fast_seconds = time.perf_counter() - start
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    naive = [max(scorer.score(p, q)["rougeL"].fmeasure for p in pool) for q in queries[:naive_queries]]
    naive_seconds = (time.perf_counter() - start) / naive_queries * n_queries
    agree = sum((a >= 0.7) == (b >= 0.7) for a, b in zip(ours, naive))
    exact = sum(a == b for a, b in zip(ours, naive) if b >= 0.7)
    print(f"\n## ROUGE-L novelty (pool {pool_size:,} instructions, {n_queries:,} queries, 1/3 of them reworded pool "
          f"entries)\n")
    print("| method | seconds for all queries | queries/s | speedup | LCS computed |")
    print("|---|---|---|---|---|")
    print(f"| naive rouge_score loop (Self-Instruct), timed on {naive_queries} queries and scaled | "
          f"{naive_seconds:.1f} | {n_queries / naive_seconds:,.1f} | 1× | {pool_size * n_queries:,} |")
    print(f"| RougeLNovelty (bound + inverted index + bit-parallel LCS) | {fast_seconds:.2f} | "
          f"{n_queries / fast_seconds:,.0f} | {naive_seconds / fast_seconds:,.0f}× | {index.scored:,} |")
    print(f"\nDecisions identical to rouge_score on the {naive_queries} checked queries: {agree}/{naive_queries}; "
          f"exact best score equal where rejected: {exact}/{sum(b >= 0.7 for b in naive)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="minhash,rouge,embedding")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000,
                        help="corpus size for the datasketch baselines (and kdforge beside them)")
    parser.add_argument("--embedding-docs", type=int, default=300,
                        help="corpus documents encoded with the real model (default 300: CPU encoding is slow)")
    parser.add_argument("--search-docs", type=int, default=20_000,
                        help="synthetic vectors for the blocked-search measurement (default 20,000; 100,000 takes ~2-8 min)")
    parser.add_argument("--scaling", default="25000,50000",
                        help="extra corpus sizes at which kdforge's MinHash runs, to show memory grows with the "
                             "corpus ('' to skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.docs, args.seed, args.out)
        return
    parts = args.part.split(",")
    if "minhash" in parts:
        scaling = [int(x) for x in args.scaling.split(",") if x.strip()]
        bench_minhash(args.docs, args.baseline_docs, args.seed, args.repeats, scaling)
    if "rouge" in parts:
        bench_rouge(5000, 1000, 20, args.seed)
    if "embedding" in parts:
        bench_embedding(args.embedding_docs, args.search_docs, args.seed)


if __name__ == "__main__":
    main()
