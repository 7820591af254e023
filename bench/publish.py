"""Publishing benchmark: `gen publish --dry-run` (kdforge's export) vs `datasets`' own Parquet writer on the same rows.

    python bench/publish.py                 # 20k kept rows (+10% rejected), 3 repeats, medians
    python bench/publish.py --rows 200000   # bigger run (a few minutes on 2 cores)

The run: three methods, single-turn conversations of 10-60 (instruction) and 20-300 (response) words drawn from a
Zipf(1.1) vocabulary of 20k pseudo-words (so Parquet compression sees text-like entropy, not repeated strings).
Peer: for every config/split, `datasets.Dataset(arrow_table).to_parquet(path)`, which is how `push_to_hub` writes
its shards. kdforge's export is timed in parts: planning (reading the shards, grouping configs), Parquet writing,
the card (facts + Jinja2) and the two plots. Loading: `datasets.load_dataset(folder, config)` of the export,
cold cache. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("evol_instruct", "self_instruct", "ultrachat")


def build_run(out: Path, rows: int, seed: int = 0) -> Path:
    from gen.data.records import make_row
    from gen.data.shards import ShardWriter, write_manifest

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}x{(i * 7919) % 97}" for i in range(20_000)])
    ranks = np.minimum(rng.zipf(1.1, size=rows * 400), len(vocab)) - 1
    cursor = 0

    def text(n: int) -> str:
        nonlocal cursor
        words = vocab[ranks[cursor: cursor + n]]
        cursor += n
        return " ".join(words)

    with ShardWriter(out, "train") as train, ShardWriter(out, "rejected") as rejected:
        for i in range(int(rows * 1.1)):
            method = METHODS[i % 3]
            bad = i % 11 == 0
            row = make_row(
                messages=[{"role": "user", "content": text(10 + i % 51)},
                          {"role": "assistant", "content": text(20 + (i * 37) % 281)}],
                method=method, operation="deepen" if method == "evol_instruct" and i % 2 else None, round=i % 4,
                teacher="openai:gpt-4o-mini@2024-07-18", params={"temperature": 0.7, "template_hash": "abc123"},
                usage={"prompt_tokens": 60, "completion_tokens": 150}, finish_reason="stop",
                filters=["near_duplicate"] if bad else (), duplicate_of="x" if bad else None, id=f"r{i}",
            )
            (rejected if bad else train).write(row)
    write_manifest(out, config={"dedup": {"threshold": 0.7}}, funnel={"total": {"generated": int(rows * 1.1)}})
    return out


def kdforge_export(run: Path, out: Path) -> dict[str, float]:
    from gen.publish.card import card_facts, render_card
    from gen.publish.export import _write_parquet
    from gen.publish.plan import plan_export
    from gen.publish.plots import write_plots

    times = {}
    t = time.perf_counter()
    plan = plan_export(run, include_rejected=True)
    times["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    for config in plan.configs:
        if config.aggregate:
            continue
        for part in config.parts:
            per_file = -(-part.rows // len(part.files))
            for index, name in enumerate(part.files):
                _write_parquet(part.table.slice(index * per_file, per_file), out / name)
    times["parquet"] = time.perf_counter() - t
    t = time.perf_counter()
    (out / "README.md").write_text(render_card(card_facts(plan, repo_id="bench/set")))
    times["card"] = time.perf_counter() - t
    t = time.perf_counter()
    write_plots(plan, out)
    times["plots"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return times


def datasets_export(run: Path, out: Path) -> float:
    """The peer: datasets' Parquet writer, one file per config/split (tables grouped outside the timer)."""
    import datasets

    from gen.publish.plan import plan_export

    plan = plan_export(run, include_rejected=True)
    parts = [(c.name, p) for c in plan.configs if not c.aggregate for p in c.parts]
    t = time.perf_counter()
    for name, part in parts:
        path = out / "data" / name / f"{part.split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset(part.table).to_parquet(str(path))
    return time.perf_counter() - t


def folder_mb(folder: Path, suffix: str = ".parquet") -> float:
    return sum(p.stat().st_size for p in folder.rglob(f"*{suffix}")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="kept rows (rejected: +10%%)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="kdforge-bench-publish-"))
    try:
        t = time.perf_counter()
        run = build_run(work / "run", args.rows)
        built = time.perf_counter() - t
        arrow_mb = folder_mb(run, ".arrow")
        ours, peer, loads = [], [], []
        for r in range(args.repeats):
            out = work / f"kd{r}"
            ours.append(kdforge_export(run, out))
            peer.append(datasets_export(run, work / f"ds{r}"))
            t = time.perf_counter()
            for config in (None, "evol_instruct"):
                datasets.load_dataset(str(out), config, cache_dir=str(work / f"cache{r}"))
            loads.append(time.perf_counter() - t)
        med = {k: statistics.median(t[k] for t in ours) for k in ours[0]}
        peer_med = statistics.median(peer)
        kd_mb, ds_mb = folder_mb(work / "kd0"), folder_mb(work / "ds0")
        print(f"run: {args.rows:,} kept + {int(args.rows * 0.1):,} rejected rows, {arrow_mb:.1f} MB of Arrow shards "
              f"(built in {built:.1f} s); medians of {args.repeats}\n")
        print("| step | kdforge export | datasets `to_parquet` (peer) | ratio |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| plan (read shards, group configs) | {med['plan']:.2f} s | – | |")
        print(f"| Parquet files | {med['parquet']:.2f} s | {peer_med:.2f} s | {med['parquet'] / peer_med:.2f}x |")
        print(f"| card (facts + Jinja2) | {med['card']:.2f} s | – | |")
        print(f"| plots (2 PNG) | {med['plots']:.2f} s | – | |")
        print(f"| total | {med['total']:.2f} s | | |")
        print(f"| Parquet size | {kd_mb:.1f} MB (zstd) | {ds_mb:.1f} MB (snappy) | {kd_mb / ds_mb:.2f}x |")
        print(f"| load_dataset(export) + (export, 'evol_instruct'), cold | {statistics.median(loads):.2f} s | | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
