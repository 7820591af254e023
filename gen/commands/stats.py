"""`gen stats DIR [--json]`: what a run holds — rows, rejections, tokens, by method/round — and its funnel.

Counts are read from the shards themselves (the source of truth); the manifest adds the teacher, the funnel and
when it was last updated. Works on a run without a manifest (e.g. killed before its first manifest was written).
`--verify` also checks every shard against the sha256 the manifest recorded and fails naming a shard that changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "print a run's counts (rows, rejected, tokens, by method/round, funnel) as a table or JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a kdforge run directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--verify", action="store_true",
                        help="check every shard against the sha256 recorded in manifest.json; fail naming any that "
                             "changed, is missing or is not listed")


def collect(run_dir: str | Path) -> dict[str, Any]:
    """The numbers `gen stats` prints, as a dict (also what `--json` prints)."""
    from gen.data.shards import MANIFEST, list_splits, read_manifest, read_table
    from gen.errors import UserError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    manifest = read_manifest(run_dir) if (run_dir / MANIFEST).exists() else {}
    splits = list_splits(run_dir)
    if not splits and not manifest:
        raise UserError(f"{run_dir}: not a kdforge run directory (no manifest.json, no shards)")
    out: dict[str, Any] = {"run_dir": str(run_dir), "updated": manifest.get("updated"),
                           "teacher": manifest.get("teacher") or manifest.get("config", {}).get("teacher"),
                           "splits": {}, "by_method_round": {}, "rejected_by_reason": {},
                           "funnel": manifest.get("funnel", {})}
    for split in splits:
        table = read_table(run_dir, split)
        names = table.column_names
        entry: dict[str, Any] = {"rows": table.num_rows}
        if "usage" in names:
            usage = table.column("usage").to_pylist()
            entry["prompt_tokens"] = sum((u or {}).get("prompt_tokens") or 0 for u in usage)
            entry["completion_tokens"] = sum((u or {}).get("completion_tokens") or 0 for u in usage)
        out["splits"][split] = entry
        if "method" in names:
            rounds = table.column("round").to_pylist() if "round" in names else [None] * table.num_rows
            for method, rnd in zip(table.column("method").to_pylist(), rounds):
                label = f"{method}" if rnd is None else f"{method} / round {rnd}"
                counts = out["by_method_round"].setdefault(label, {})
                counts[split] = counts.get(split, 0) + 1
        if split == "train" and "scores" in names:  # `gen score`: the distribution of each scorer
            from gen.data.scores import distribution

            scores = distribution(table.column("scores").to_pylist())
            if scores:
                out["scores"] = scores
        if "filters" in names and split != "train":
            for reasons in table.column("filters").to_pylist():
                for reason in reasons or ["(none)"]:
                    out["rejected_by_reason"][reason] = out["rejected_by_reason"].get(reason, 0) + 1
    from gen.logits.records import is_logit_dir, logit_shard_stats

    if "train" in splits and is_logit_dir(run_dir):  # `gen logits` output: size per token, K, teacher
        out["logit_shards"] = logit_shard_stats(run_dir)
    out["by_method_round"] = dict(sorted(out["by_method_round"].items()))
    out["rejected_by_reason"] = dict(sorted(out["rejected_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])))
    out["totals"] = {
        "rows": out["splits"].get("train", {}).get("rows", 0),
        "rejected": out["splits"].get("rejected", {}).get("rows", 0),
        "prompt_tokens": sum(s.get("prompt_tokens", 0) for s in out["splits"].values()),
        "completion_tokens": sum(s.get("completion_tokens", 0) for s in out["splits"].values()),
    }
    return out


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(cells[0]), sep] + [line(row) for row in cells[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items = []
        for key, inner in value.items():
            items.extend(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return items
    return [(prefix, value)]


def render(stats: dict[str, Any]) -> str:
    parts = [f"run: {stats['run_dir']}" + (f"  teacher: {stats['teacher']}" if stats.get("teacher") else "")
             + (f"  updated: {stats['updated']}" if stats.get("updated") else "")]
    t = stats["totals"]
    parts.append(_table(["rows", "rejected", "prompt tokens", "completion tokens", "total tokens"],
                        [[t["rows"], t["rejected"], t["prompt_tokens"], t["completion_tokens"],
                          t["prompt_tokens"] + t["completion_tokens"]]]))
    splits = sorted({s for counts in stats["by_method_round"].values() for s in counts})
    if stats["by_method_round"]:
        parts.append(_table(["method / round"] + splits,
                            [[label] + [counts.get(s, 0) for s in splits]
                             for label, counts in stats["by_method_round"].items()]))
    if stats["rejected_by_reason"]:
        parts.append(_table(["rejected by", "rows"], [[r, n] for r, n in stats["rejected_by_reason"].items()]))
    if stats["funnel"]:
        parts.append(_table(["funnel", "count"], [[k, v] for k, v in _flatten("", stats["funnel"])]))
    if stats.get("logit_shards"):
        ls = stats["logit_shards"]
        parts.append(_table(["logit shards", "rows", "tokens", "loss tokens", "K", "bytes", "bytes/token"],
                            [[ls["teacher"], ls["rows"], ls["tokens"], ls["label_tokens"], ls["k"], ls["bytes"],
                              f"{ls['bytes_per_token']:.1f}"]]))
    if stats.get("scores"):  # score distributions (kept rows)
        parts.append(_table(["score", "rows", "no value", "mean", "min", "median", "max", "histogram (value: rows)"],
                            [[name, d["rows"], d["no_value"], _num(d["mean"]), _num(d["min"]), _num(d["median"]),
                              _num(d["max"]), " ".join(f"{k}:{v}" for k, v in d["histogram"].items()) or "-"]
                             for name, d in stats["scores"].items()]))
    if "verified_shards" in stats:
        parts.append(f"verified: all {stats['verified_shards']} shards match the sha256 in manifest.json")
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    stats = collect(args.run_dir)
    if args.verify:
        from gen.data.verify import check_run

        stats["verified_shards"] = check_run(args.run_dir)
    if args.json:
        json.dump(stats, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(render(stats))
    return 0
