"""Degeneration filters' precision and recall per reason on the labelled set, as a markdown table.

    python bench/degeneration.py                      # the shipped set, default thresholds
    python bench/degeneration.py --scale 0.8          # every fraction threshold x 0.8
    python bench/degeneration.py --data FILE.jsonl --show-errors

The set (tests/filters/data/degeneration_labelled.jsonl, rows {text, label, reasons, source}) is described in
tests/filters/data/README.md: real Gemma-3-270M outputs of the embedded teacher, hand-labelled, plus the 175 shipped
Self-Instruct seed-task outputs as good answers. A text's `reasons` are the reasons a human reader gives it (empty
for a good text); a filter's hit on a reason the reader did not give counts as a false positive of that reason, so
a text flagged `stutter` that the reader called `repetition` lowers both rows. The `any` row scores the yes/no
decision (degenerate or not) and is what `gen filter` acts on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository first: run as a script, bench/ is sys.path[0], and bench/filters.py would shadow the filters package.
sys.path.insert(0, str(ROOT))

from filters.repetition import REASONS, RepetitionConfig, degeneration_reasons  # noqa: E402

DEFAULT_DATA = ROOT / "tests" / "filters" / "data" / "degeneration_labelled.jsonl"


def score(rows: list[dict], config: RepetitionConfig) -> tuple[list[dict], list[list[str]], float]:
    start = time.perf_counter()
    predicted = [degeneration_reasons(r["text"], config) for r in rows]
    return rows, predicted, time.perf_counter() - start


def table(rows: list[dict], predicted: list[list[str]]) -> str:
    lines = ["| reason | labelled | flagged | true pos. | precision | recall |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def row(name: str, truth: list[bool], guess: list[bool]) -> str:
        tp = sum(t and g for t, g in zip(truth, guess))
        pos, flagged = sum(truth), sum(guess)
        precision = f"{tp / flagged:.2f}" if flagged else "–"
        recall = f"{tp / pos:.2f}" if pos else "–"
        return f"| {name} | {pos} | {flagged} | {tp} | {precision} | {recall} |"

    for reason in REASONS:
        lines.append(row(reason, [reason in r["reasons"] for r in rows], [reason in p for p in predicted]))
    lines.append(row("**any** (degenerate vs good)", [r["label"] == "degenerate" for r in rows],
                     [bool(p) for p in predicted]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scale", type=float, default=1.0, help="RepetitionConfig.scale")
    parser.add_argument("--show-errors", action="store_true", help="print every false positive and miss")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows, predicted, seconds = score(rows, RepetitionConfig(scale=args.scale))
    sources = Counter((r["source"], r["label"]) for r in rows)
    print(f"{len(rows)} texts ({', '.join(f'{n} {label} from {src}' for (src, label), n in sorted(sources.items()))});"
          f" scale {args.scale}; {1e3 * seconds / max(1, len(rows)):.2f} ms per text\n")
    print(table(rows, predicted))
    false_pos = [(r, p) for r, p in zip(rows, predicted) if r["label"] == "good" and p]
    missed = [(r, p) for r, p in zip(rows, predicted) if r["label"] == "degenerate" and not p]
    print(f"\ngood texts flagged: {len(false_pos)}; degenerate texts missed: {len(missed)}")
    if args.show_errors:
        for title, items in (("false positives", false_pos), ("missed", missed)):
            print(f"\n## {title}")
            for r, p in items:
                print(f"- [{r['source']}] labelled {r['reasons']} flagged {p}: {r['text'][:200]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
