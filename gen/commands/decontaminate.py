"""`gen decontaminate DIR --against FILE|DIR ...`: move rows that overlap benchmark items to `rejected`.

A train row is contaminated when its text (all message contents: the instruction and the answers) shares a run of
--ngram consecutive normalized words (13 by default, as GPT-3) with an item of a benchmark; the rule, the
normalization, the skipped short items and the hashing are `filters.decontaminate`'s. Benchmarks: `.jsonl`,
`.json`, `.parquet`, `.arrow` files (read with `gen.data.inputs.iter_records`), a `datasets` `save_to_disk` folder
(one benchmark per split of a DatasetDict), or a folder of such files. An item's text is its --field columns joined
(default: those of FIELD_GUESSES it has, in that order; the command says which it used).

A contaminated row moves to the `rejected` split with `filters` += [contaminated] and `duplicate_of` =
`<benchmark>#<item>` (the benchmark's name as printed, the item's 0-based position in it: for JSONL the n-th
non-blank line), naming the first benchmark in --against order that it overlaps; the row schema is unchanged. The
manifest gets `funnel.decontaminate` (rows checked, per benchmark: items, fields, rows contaminated and the rate)
and `config.filters.decontaminate`; the dataset card shows the rates. Output and safety as `gen dedup` (default in
place, swapped in atomically). Rows rejected as contaminated by an earlier pass are counted again in the rates (so a
rerun reports the same rates), and a rerun that finds nothing new with the same settings leaves DIR untouched.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = "move rows sharing a word n-gram (13 by default) with a benchmark item to `rejected` (reason contaminated)"

# Text columns guessed when --field is not given, in the order an item's text is assembled (prompt side first).
FIELD_GUESSES = ("question", "prompt", "instruction", "input", "problem", "query", "context", "passage", "text",
                 "turns", "messages", "choices", "options", "answer", "solution", "output", "response", "completion",
                 "canonical_solution")
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".arrow")
STEP = "decontaminate"
SHOW_EXAMPLES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory")
    parser.add_argument("--against", nargs="+", action="extend", required=True, metavar="FILE|DIR",
                        help="benchmark files (.jsonl/.json/.parquet/.arrow) or folders (datasets save_to_disk, "
                             "or a folder of such files); each is reported separately")
    parser.add_argument("--ngram", type=int, default=13,
                        help="words in the shared run that counts as contamination (default 13, as GPT-3)")
    parser.add_argument("--field", nargs="+", action="extend", default=None, metavar="NAME",
                        help="the benchmark's text column(s) (default: the usual ones it has: "
                             + ", ".join(FIELD_GUESSES[:6]) + ", ..., answer, solution, output)")
    parser.add_argument("--out", default=None, metavar="OUT", help="write here instead of rewriting DIR in place")


# ------------------------------------------------------------------------------------------------ benchmark files


@dataclass
class Benchmark:
    label: str  # the name in duplicate_of, the manifest and the card
    path: Path
    items: list[str]
    fields: list[str]


def _record_sources(path: Path) -> list[tuple[str, Path, list[Path]]]:
    """(label suffix, where, files) per benchmark found at `path`: one for a file, one per split of a DatasetDict."""
    from gen.errors import UserError

    if not path.exists():
        raise UserError(f"--against {path}: no such file or directory")
    if not path.is_dir():
        return [("", path, [path])]
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"--against {path}/dataset_dict.json: not a datasets DatasetDict description") from None
        return [(f"/{split}", path / split, _dataset_files(path / split)) for split in splits]
    if (path / "state.json").is_file():
        return [("", path, _dataset_files(path))]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"--against {path}: a folder with no benchmark files (expected a datasets save_to_disk "
                        f"folder, or {', '.join(FILE_SUFFIXES)} files)")
    return [("", path, files)]


def _dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a `datasets` save_to_disk folder, in order (its state.json lists them)."""
    from gen.errors import UserError

    try:
        state = json.loads((folder / "state.json").read_text())
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--against {folder}/state.json: not a datasets save_to_disk state file") from None
    return files


def _records(files: list[Path]) -> Iterator[tuple[str, Any]]:
    from gen.data.inputs import iter_records

    for file in files:
        for location, record, _ in iter_records(file, flag="--against"):
            yield location, record


def _strings(value: Any, depth: int = 0) -> list[str]:
    """The text inside a field value: a string, or the strings inside lists / mappings (choices, chat turns)."""
    if isinstance(value, str):
        return [value]
    if depth >= 3:
        return []
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v, depth + 1)]
    return []


def read_benchmark(path: Path, fields: list[str] | None) -> list[Benchmark]:
    """The benchmark(s) at `path` with their item texts; an unusable file is a UserError naming it."""
    from gen.errors import UserError

    benchmarks = []
    for suffix, where, files in _record_sources(path):
        records = []
        columns: dict[str, None] = {}
        for location, record in _records(files):
            if not isinstance(record, Mapping):
                raise UserError(f"{location}: expected an object with text fields, got {type(record).__name__}")
            records.append(record)
            columns.update(dict.fromkeys(map(str, record)))
        if not records:
            raise UserError(f"--against {where}: no items")
        available = ", ".join(columns) or "none"
        if fields:
            missing = [f for f in fields if f not in columns]
            if missing:
                raise UserError(f"--against {where}: no column {missing[0]!r} (columns: {available})")
            chosen = list(fields)
        else:
            chosen = [f for f in FIELD_GUESSES if f in columns]
            if not chosen:
                raise UserError(f"--against {where}: none of the usual text columns (columns: {available}); "
                                f"name them with --field")
        items = ["\n".join(s for f in chosen for s in _strings(record.get(f))) for record in records]
        benchmarks.append(Benchmark(label=(path.name or path.resolve().name) + suffix, path=where, items=items,
                                    fields=chosen))
    return benchmarks


def _unique_labels(benchmarks: list[Benchmark]) -> None:
    """Two benchmarks with one name (test.jsonl from two folders) are told apart by their paths."""
    seen: dict[str, int] = {}
    for b in benchmarks:
        seen[b.label] = seen.get(b.label, 0) + 1
    for b in benchmarks:
        if seen[b.label] > 1:
            b.label = str(b.path)


# ------------------------------------------------------------------------------------------------------- rows


def conversation_texts(table) -> list[str]:
    """Each row's message contents (instruction and answers) joined by newlines, built by Arrow kernels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    messages = table.column("messages").combine_chunks()
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    contents = pc.fill_null(pc.list_flatten(messages).field("content"), "")
    return pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n").to_pylist()


def _previously_contaminated(run_dir: Path):
    """Rows an earlier pass rejected as contaminated (they stay in `rejected`; they count in the rates)."""
    import pyarrow as pa

    from filters.decontaminate import CONTAMINATED
    from gen.data.shards import read_table, shard_paths

    if not shard_paths(run_dir, "rejected"):
        return None
    rejected = read_table(run_dir, "rejected")
    if rejected.num_rows == 0 or "filters" not in rejected.column_names or "messages" not in rejected.column_names:
        return None
    mask = [CONTAMINATED in (reasons or ()) for reasons in rejected.column("filters").to_pylist()]
    return rejected.filter(pa.array(mask, type=pa.bool_()))


# ------------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from gen.data.rewrite import rewriting
    from gen.errors import UserError

    if args.ngram < 1:
        raise UserError(f"--ngram {args.ngram}: must be at least 1")
    # Benchmarks are read before the run is locked: a bad --against costs the run nothing, not even a wait.
    benchmarks = [b for path in args.against for b in read_benchmark(Path(path), args.field)]
    _unique_labels(benchmarks)
    # The run's lock from before its rows are read until the new run is in place (gen.data.rewrite).
    with rewriting(Path(args.run_dir), Path(args.out) if args.out else None, STEP):
        return _decontaminate(args, benchmarks)


def _decontaminate(args: argparse.Namespace, benchmarks: list[Benchmark]) -> int:
    from filters.decontaminate import CONTAMINATED, BenchmarkIndex
    from gen.data.rejections import Rejections
    from gen.data.rewrite import load_train, rewrite_run
    from gen.data.shards import MANIFEST, read_manifest

    run_dir = Path(args.run_dir)
    table = load_train(run_dir)

    index = BenchmarkIndex(args.ngram)
    for b in benchmarks:
        stats = index.add(b.label, b.items)
        short = f", {stats.too_short:,} shorter than {args.ngram} words (skipped)" if stats.too_short else ""
        print(f"gen decontaminate: {b.label}: {stats.items:,} items (fields {', '.join(b.fields)}){short}")

    texts = conversation_texts(table)
    earlier = _previously_contaminated(run_dir)
    earlier_texts = conversation_texts(earlier) if earlier is not None else []
    result = index.scan(texts + earlier_texts)

    ids = table.column("id").to_pylist()
    rejected = Rejections()
    for row, matches in sorted(result.matches.items()):
        if row < len(texts):  # the others were rejected by an earlier pass: counted, not moved again
            first = matches[0]
            rejected.add(row, [CONTAMINATED], f"{benchmarks[first.benchmark].label}#{first.item}")
    checked = len(texts) + len(earlier_texts)
    by_benchmark = {}
    for b, stats, matched in zip(benchmarks, index.stats, result.rows_matched):
        by_benchmark[b.label] = {
            "items": stats.items, "items_indexed": stats.indexed, "items_too_short": stats.too_short,
            "fields": b.fields, "rows_contaminated": matched,
            "rate": round(matched / checked, 6) if checked else 0.0,
        }
    settings = {"ngram": args.ngram, "against": [b.label for b in benchmarks], "short_items": "skipped",
                "text": "all message contents", "normalization": "lowercase, accents stripped, punctuation and "
                "symbols split words", "hash": "64-bit n-gram hashes, every hit confirmed on the words"}
    funnel = rejected.funnel_entry(len(texts), rows_checked=checked, rows_rejected_earlier=len(earlier_texts),
                                   by_benchmark=by_benchmark, unconfirmed_hash_hits=result.unconfirmed_hits)

    in_place = args.out is None or Path(args.out).resolve() == run_dir.resolve()
    if in_place and not len(rejected) and (run_dir / MANIFEST).exists():
        previous = read_manifest(run_dir)
        earlier_settings = ((previous.get("config") or {}).get("filters") or {}).get(STEP)
        earlier_funnel = (previous.get("funnel") or {}).get(STEP) or {}
        if earlier_settings == settings and earlier_funnel.get("by_benchmark") == by_benchmark:
            print(f"gen decontaminate: {checked:,} rows checked, nothing new; {run_dir} unchanged")
            return 0

    destination = rewrite_run(run_dir, Path(args.out) if args.out else None, table, rejected, step=STEP,
                              settings=settings, funnel_entry=funnel)
    rates = ", ".join(f"{label} {v['rows_contaminated']:,} ({100 * v['rate']:.2f}%)"
                      for label, v in by_benchmark.items())
    print(f"gen decontaminate: {len(texts):,} rows -> {funnel['kept']:,} kept, {len(rejected):,} rejected as "
          f"contaminated in {destination}; rows overlapping each benchmark: {rates}")
    for row in sorted(rejected.by_position)[:SHOW_EXAMPLES]:
        first = result.matches[row][0]
        print(f"  row {ids[row]} ~ {rejected.get(row)[1]}: \"{first.ngram}\"")
    return 0
