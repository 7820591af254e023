"""Decontamination benchmark: kdforge's hashed n-grams (filters.decontaminate) vs a plain Python set of n-gram
strings vs datatrove's n-gram decontamination (NGramsDecontIndexer's hashing + NGramsDecontFilter), same corpus.

    python bench/filters.py             # quick: 50k rows against 5k benchmark items (datatrove on 5k rows)
    python bench/filters.py --full      # 1M rows against 100k items (datatrove on 20k rows)

datatrove scans ~150 rows/s on this corpus (spaCy word tokenization), so it runs on the first --datatrove-rows rows
and its time for all rows is scaled from that; the other two run on every row.

datatrove runs in its own virtual environment (never the project's): by default /tmp/venv-datatrove, made with
`python -m venv /tmp/venv-datatrove && /tmp/venv-datatrove/bin/pip install datatrove xxhash spacy pyarrow` (its
English word tokenizer is spaCy's blank `en` pipeline: no model download). Its index is built with the indexer's
own `compute_hashes` (the indexer step itself requires lighteval, which only serves to load benchmark tasks). Without
that venv, or if datatrove fails there, the table has the Python-set baseline only and says why.

Corpus: synthetic rows (an instruction of 15-60 words and an answer of 60-250 words, in sentences with capitals,
commas and periods) over a Zipf(1.1) vocabulary of 30k pseudo-words; benchmark items of 25-90 words. 1% of rows
copy a window of 13-40 consecutive words of a random item into their answer (case and punctuation changed), 0.5%
copy only 12 words (near misses). Ground truth: the Python-set baseline (the definition written out: every item's
13-gram strings in a set, every row's 13-gram strings looked up). Each method runs in a fresh subprocess that reads
the corpus from Parquet; time excludes that read; peak memory is the rise of the resident set (VmHWM) over it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rss import reset_peak, rss_kib

ROOT = Path(__file__).resolve().parents[1]
DATATROVE_PYTHON = "/tmp/venv-datatrove/bin/python"
NGRAM = 13


# ---------------------------------------------------------------------------------------------------------- corpus


def make_corpus(n_rows: int, n_items: int, seed: int, out: Path) -> dict:
    """rows.parquet (column text) and items.parquet (column text) under `out`; returns what was planted."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < 30_000:
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), size=int(rng.integers(1, 4))))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    # Variants of each word: plain, Capitalized, "word," and "word." (ids + k * 30k pick variant k).
    variants = np.array(vocab + [w.capitalize() for w in vocab] + [w + "," for w in vocab] + [w + "." for w in vocab])

    def texts(count: int, low: int, high: int) -> list[str]:
        lengths = rng.integers(low, high + 1, size=count)
        ids = (rng.zipf(1.1, size=int(lengths.sum())) - 1) % 30_000
        kinds = rng.choice(4, size=len(ids), p=[0.82, 0.06, 0.06, 0.06])
        words = variants[ids + kinds * 30_000]
        out_texts, position = [], 0
        for length in lengths.tolist():
            out_texts.append(" ".join(words[position:position + length].tolist()))
            position += length
        return out_texts

    items = texts(n_items, 25, 90)
    rows = [q + "\n" + a for q, a in zip(texts(n_rows, 15, 60), texts(n_rows, 60, 250))]
    planted = {"contaminated": 0, "near_miss": 0}
    chosen = rng.choice(n_rows, size=int(n_rows * 0.015), replace=False)
    for k, row in enumerate(chosen.tolist()):
        words = items[int(rng.integers(0, n_items))].split()
        near = k % 3 == 2
        length = 12 if near else int(rng.integers(13, 41))
        start = int(rng.integers(0, max(1, len(words) - length + 1)))
        piece = " ".join(words[start:start + length])
        piece = piece.upper() if k % 2 else piece.replace(" ", ", ")
        rows[row] = rows[row] + " " + piece + " and so on."
        planted["near_miss" if near else "contaminated"] += 1
    pq.write_table(pa.table({"text": rows}), out / "rows.parquet")
    pq.write_table(pa.table({"text": items}), out / "items.parquet")
    return planted


# --------------------------------------------------------------------------------------------------------- workers


def worker(method: str, data: Path, n: int, limit: int | None) -> None:
    import gc

    import pyarrow.parquet as pq

    rows = pq.read_table(data / "rows.parquet").column("text").to_pylist()[:limit]
    items = pq.read_table(data / "items.parquet").column("text").to_pylist()
    gc.collect()
    reset_peak()
    base = rss_kib("VmRSS")
    start = time.perf_counter()
    if method == "kdforge":
        sys.path.insert(0, str(ROOT))
        from filters.decontaminate import BenchmarkIndex

        index = BenchmarkIndex(n)
        index.add("bench", items)
        index._build()
        index_seconds = time.perf_counter() - start
        result = index.scan(rows)
        flagged = sorted(result.matches)
        extra = {"unconfirmed_hash_hits": result.unconfirmed_hits}
    elif method == "python_set":
        flagged, index_seconds = _python_set(rows, items, n, start)
        extra = {}
    elif method == "datatrove":
        flagged, index_seconds = _datatrove(rows, items, n, start)
        extra = {}
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    (data / f"{method}.json").write_text(json.dumps(flagged))
    print(json.dumps({"rows": len(rows), "items": len(items), "index_seconds": index_seconds,
                      "scan_seconds": seconds - index_seconds, "seconds": seconds,
                      "peak_mib": (rss_kib("VmHWM") - base) / 1024, "flagged": len(flagged), **extra}))


def _python_set(rows: list[str], items: list[str], n: int, start: float) -> tuple[list[int], float]:
    """What one writes without thinking about speed: normalize with str methods, a set of n-gram strings."""
    import unicodedata

    table = {}
    for c in range(0x10000):
        category = unicodedata.category(chr(c))
        if category[0] in "PSZ" or category == "Cc":
            table[c] = " "
        elif category in ("Mn", "Cf"):
            table[c] = None

    def words(text: str) -> list[str]:
        text = text.lower()
        if not text.isascii():
            text = unicodedata.normalize("NFD", text)
        return text.translate(table).split()

    grams: set[str] = set()
    for item in items:
        w = words(item)
        grams.update(" ".join(w[i:i + n]) for i in range(len(w) - n + 1))
    index_seconds = time.perf_counter() - start
    flagged = []
    for row, text in enumerate(rows):
        w = words(text)
        if any(" ".join(w[i:i + n]) in grams for i in range(len(w) - n + 1)):
            flagged.append(row)
    return flagged, index_seconds


def _datatrove(rows: list[str], items: list[str], n: int, start: float) -> tuple[list[int], float]:
    """datatrove's own indexer hashing (simplify_text, its English word tokenizer, xxhash64) into its index file
    format, then its filter over every row."""
    import types

    import numpy as np
    from datatrove.data import Document
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.typeshelper import Languages
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    config = NGramsDecontConfig(n_grams=n, find_query_ngrams=False, find_overlap_ngrams=False)
    folder = tempfile.mkdtemp(prefix="datatrove-index-")
    # The indexer step insists on lighteval (it loads benchmark tasks from there); its hashing method needs only
    # what its constructor sets up, so it is called on a stand-in holding exactly that.
    indexer = types.SimpleNamespace(config=config, tokenizer=load_word_tokenizer(Languages.english),
                                    hash_func=create_hash_func(config.hash_config))
    hashes: set[int] = set()
    for item in items:
        hashes.update(NGramsDecontIndexer.compute_hashes(indexer, item))
    np.array(sorted(hashes), dtype="<u8").tofile(os.path.join(folder, "bench.index.hashes"))
    decont = NGramsDecontFilter(index_folder=folder, config=config)
    decont.load_index_hashes()
    index_seconds = time.perf_counter() - start
    flagged = []
    for row, text in enumerate(rows):
        if decont.filter(Document(text=text, id=str(row))) is not True:
            flagged.append(row)
    return flagged, index_seconds


# ------------------------------------------------------------------------------------------------------------ main


def run_worker(python: str, method: str, data: Path, n: int, limit: int | None) -> dict | str:
    """The worker's measurements, or (datatrove only) why it could not run."""
    command = [python, __file__, "--worker", method, "--data", str(data), "--ngram", str(n)]
    if limit:
        command += ["--limit", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        if method == "datatrove":
            return (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["flagged_rows"] = set(json.loads((data / f"{method}.json").read_text()))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="1M rows against 100k items")
    parser.add_argument("--rows", type=int, default=None, help="rows (default 50k; --full: 1M)")
    parser.add_argument("--items", type=int, default=None, help="benchmark items (default 5k; --full: 100k)")
    parser.add_argument("--ngram", type=int, default=NGRAM)
    parser.add_argument("--datatrove-python", default=DATATROVE_PYTHON,
                        help="python of a venv with datatrove installed (skipped if it does not exist)")
    parser.add_argument("--datatrove-rows", type=int, default=None,
                        help="datatrove on the first N rows only, its time scaled (default 5k; --full: 20k)")
    parser.add_argument("--baseline-rows", type=int, default=None,
                        help="the Python-set baseline on the first N rows only (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data), args.ngram, args.limit)
        return
    n_rows = args.rows or (1_000_000 if args.full else 50_000)
    n_items = args.items or (100_000 if args.full else 5_000)
    datatrove_rows = min(n_rows, args.datatrove_rows or (20_000 if args.full else 5_000))
    with tempfile.TemporaryDirectory(prefix="kdforge-bench-decont-") as tmp:
        data = Path(tmp)
        start = time.perf_counter()
        planted = make_corpus(n_rows, n_items, args.seed, data)
        print(f"corpus: {n_rows:,} rows, {n_items:,} items, planted {planted['contaminated']:,} contaminated rows "
              f"and {planted['near_miss']:,} 12-word near misses ({time.perf_counter() - start:.0f} s to build); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        results = {"kdforge": run_worker(sys.executable, "kdforge", data, args.ngram, None)}
        results["python_set"] = run_worker(sys.executable, "python_set", data, args.ngram, args.baseline_rows)
        datatrove_problem = f"{args.datatrove_python} does not exist (see the module docstring)"
        if Path(args.datatrove_python).exists():
            outcome = run_worker(args.datatrove_python, "datatrove", data, args.ngram, datatrove_rows)
            if isinstance(outcome, dict):
                results["datatrove"], datatrove_problem = outcome, None
            else:
                datatrove_problem = f"it failed in {args.datatrove_python}: {outcome}"
    reference = results["python_set"]["flagged_rows"]
    checked = results["python_set"]["rows"]
    print(f"\n## Decontamination: word {args.ngram}-grams, {n_rows:,} rows against {n_items:,} benchmark items\n")
    print("| method | rows run | index s | scan s | rows/s | time for all rows (s) | peak MiB | rows flagged | "
          "same rows as the Python set (on its rows) |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"kdforge": "kdforge (numpy hashes + bitmap + searchsorted, hits confirmed)",
             "python_set": "Python set of n-gram strings", "datatrove": "datatrove NGramsDecontFilter"}
    for method, info in results.items():
        rate = info["rows"] / info["scan_seconds"] if info["scan_seconds"] else float("inf")
        total = info["index_seconds"] + n_rows / rate
        common = min(checked, info["rows"])  # compared on the rows both ran
        mine = {r for r in info["flagged_rows"] if r < common}
        theirs = {r for r in reference if r < common}
        agree = "yes" if mine == theirs else f"no ({len(mine - theirs)} extra, {len(theirs - mine)} missed)"
        scaled = "" if info["rows"] == n_rows else " (scaled)"
        print(f"| {names[method]} | {info['rows']:,} | {info['index_seconds']:.1f} | {info['scan_seconds']:.1f} | "
              f"{rate:,.0f} | {total:,.0f}{scaled} | {info['peak_mib']:,.0f} | {info['flagged']:,} | {agree} |")
    fast = results["kdforge"]
    for method in ("python_set", "datatrove"):
        if method in results:
            other = results[method]
            ratio = (other["scan_seconds"] / other["rows"]) / (fast["scan_seconds"] / fast["rows"])
            print(f"\nkdforge scans {ratio:.1f}x faster per row than {names[method]}.", end="")
    print(f"\nkdforge hash hits not confirmed on the words (collisions): {fast['unconfirmed_hash_hits']}.")
    if datatrove_problem:
        print(f"\ndatatrove was not run: {datatrove_problem}; the Python-set baseline stands in for it.")


if __name__ == "__main__":
    main()
