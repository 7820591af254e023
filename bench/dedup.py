"""Dedup benchmark: kdforge's MinHash vs datasketch (plain loop and fast path), embedding dedup, ROUGE-L novelty.

    python bench/dedup.py                      # minhash (100k docs; baselines on a 20k subsample) + rouge + embedding 10k
    python bench/dedup.py --part minhash --baseline-docs 100000   # baselines on the full corpus too (~3 min more)
    python bench/dedup.py --part embedding --embedding-docs 100000

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


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def worker(method: str, n_docs: int, seed: int, out: str) -> None:
    texts, _ = cached_corpus(n_docs, seed)
    import gc

    gc.collect()
    _reset_peak()
    base = _rss_kib("VmRSS")
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
    peak = _rss_kib("VmHWM") - base
    np.save(out, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, **extra}))


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


def bench_minhash(n_docs: int, baseline_docs: int, seed: int, repeats: int) -> None:
    print(f"\n## MinHash near-duplicates: {NUM_PERM} permutations, threshold {THRESHOLD}, word {NGRAM}-grams\n")
    sizes = sorted({baseline_docs, n_docs})
    results = {}
    for size in sizes:
        texts, groups = cached_corpus(size, seed)
        truth = Truth(texts, groups)
        methods = ["kdforge"] + (["datasketch_fast", "datasketch_loop"] if size == baseline_docs else [])
        for method in methods:
            runs = [run_worker(method, size, seed) for _ in range(repeats if method == "kdforge" else 1)]
            seconds = statistics.median(r[0]["seconds"] for r in runs)
            info, pairs = runs[0]
            found = evaluate(truth, pairs)
            results[(size, method)] = (seconds, info, found, truth)
        if size == sizes[0] or size == n_docs:
            _print_histogram(truth, size, groups)
    print("\n| docs | method | bands×rows | docs/s | × fast path | peak MiB | precision | recall | F1 | "
          + " | ".join(f"found J∈[{lo:.1f},{min(hi, 1):.1f})" for lo, hi in BANDS_REPORTED) + " |")
    print("|" + "---|" * (9 + len(BANDS_REPORTED)))
    for (size, method), (seconds, info, found, truth) in results.items():
        fast = results.get((size, "datasketch_fast"))
        ratio = f"{fast[0] / seconds:.1f}×" if fast else "–"
        bands = info.get("bands", "32x4 + exact check" if method == "kdforge" else "")
        p, r, f = prf(truth, found)
        print(f"| {size:,} | {method} | {bands} | {size / seconds:,.0f} | {ratio} | {info['peak_mib']:.0f} | "
              f"{p:.4f} | {r:.4f} | {f:.4f} | " + " | ".join(band_rates(truth, found)) + " |")
    print("\n`found J∈[a,b)`: fraction of planted pairs in that exact-Jaccard band reported as duplicates (below 0.7 "
          "a report is a false positive). kdforge docs/s is the median of "
          f"{repeats} runs; baselines ran once.")


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


def bench_embedding(n_docs: int, seed: int) -> None:
    from filters.embedding import embedding_clusters, load_model

    texts, groups = cached_corpus(n_docs, seed)
    model = load_model(None)
    import gc

    gc.collect()
    _reset_peak()
    base = _rss_kib("VmRSS")
    stats: dict = {}
    start = time.perf_counter()
    labels = embedding_clusters(texts, model=model, stats=stats)
    seconds = time.perf_counter() - start
    peak = (_rss_kib("VmHWM") - base) / 1024
    in_cluster = sum(1 for g in groups if len({labels[i] for i in g}) == 1)
    n_clusters = len(set(labels.tolist()))
    print(f"\n## Embedding dedup ({n_docs:,} docs, all-MiniLM-L6-v2, threshold {stats['threshold']})\n")
    print("| docs | encode s | similarity s | docs/s total | peak MiB (rise) | largest block (MiB) | N×N would be (MiB) "
          "| clusters | planted groups in one cluster |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {n_docs:,} | {stats['encode_seconds']:.1f} | {stats['search_seconds']:.1f} | {n_docs / seconds:,.0f} | "
          f"{peak:.0f} | {stats['block_mib']:.0f} | {n_docs * n_docs * 4 / 2**20:,.0f} | {n_clusters:,} | "
          f"{in_cluster}/{len(groups)} |")


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
    parser.add_argument("--embedding-docs", type=int, default=10_000)
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
        bench_minhash(args.docs, args.baseline_docs, args.seed, args.repeats)
    if "rouge" in parts:
        bench_rouge(5000, 1000, 20, args.seed)
    if "embedding" in parts:
        bench_embedding(args.embedding_docs, args.seed)


if __name__ == "__main__":
    main()
