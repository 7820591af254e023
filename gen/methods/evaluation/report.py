"""`gen eval`'s outputs: eval.json (the summary), pairs.jsonl (every judged pair with both verdicts), rejected.jsonl
(prompts without a verdict, with their reason), eval.png (win/tie/loss bar and outcome against length difference)
and eval.md (the table and the plot). Each file is written atomically; the PNG has no timestamp, so the same
results give the same bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gen.data.shards import atomic_write_bytes

PLOT = "eval.png"


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table_lines(summary: Mapping[str, Any]) -> list[str]:
    """The summary as a Markdown table (printed by the command and put in eval.md)."""
    ci = summary.get("win_rate_ci")
    lengths = summary["mean_length"]
    rows = [
        ("judged pairs (n)", str(summary["n"])),
        ("wins / ties / losses", f"{summary['wins']} / {summary['ties']} / {summary['losses']}"),
        ("win rate (ties half)", _pct(summary["win_rate"])),
        ("95% bootstrap CI", "n/a" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"),
        ("length-controlled win rate", _pct(summary["lc_win_rate"])),
        ("position flip rate", _pct(summary["position_flip_rate"])),
        ("mean length student / baseline (chars)",
         " / ".join("n/a" if lengths[k] is None else f"{lengths[k]:.0f}" for k in ("student", "baseline"))),
        ("rejected (no verdict)", f"{summary['rejected']['count']} "
                                  f"{json.dumps(summary['rejected']['reasons']) if summary['rejected']['count'] else ''}"
         .strip()),
    ]
    heldout = summary.get("heldout")
    if heldout:
        rows.append(("held-out teacher KL (nats/token)", f"{heldout['kl']:.4f}"))
        rows.append(("held-out perplexity", f"{heldout['perplexity']:.3f}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return lines


def write_plot(summary: Mapping[str, Any], judged: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Two panels: the win/tie/loss counts, and each pair's outcome against its length difference (what the
    length-controlled win rate corrects for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(9, 3.4))
    counts = [summary["wins"], summary["ties"], summary["losses"]]
    bars.bar(["win", "tie", "loss"], counts, color=["#2a9d8f", "#bbbbbb", "#e76f51"])
    bars.set_title(f"student vs baseline (n={summary['n']})")
    bars.set_ylabel("pairs")
    differences = [j["student_length"] - j["baseline_length"] for j in judged]
    outcomes = [j["outcome"] for j in judged]
    scatter.scatter(differences, outcomes, s=14, alpha=0.6, color="#264653")
    scatter.axvline(0, color="#999999", linewidth=0.8)
    scatter.set_yticks([0.0, 0.5, 1.0], ["loss", "tie", "win"])
    scatter.set_xlabel("length difference, student - baseline (chars)")
    scatter.set_title("outcome by length difference")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()


def markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# gen eval", "",
             f"- student: `{summary['student']}`", f"- baseline: `{summary['baseline']}`",
             f"- judge: `{summary['judge']}`, rubric `{summary['rubric']['name']}` "
             f"(template {summary['rubric']['template_hash']})",
             f"- prompts: {summary['prompts']}", "", *table_lines(summary), "",
             f"![win/tie/loss and outcome by length difference]({PLOT})", "",
             "Win rate counts ties (and verdicts that flip when the answers swap places) as half a win; the interval "
             "is a seeded percentile bootstrap; the length-controlled win rate is a logistic regression of the outcome "
             "on the standardized length difference, read at zero difference (see docs/evaluation.md).", ""]
    return "\n".join(lines)


def write_reports(out: str | Path, summary: Mapping[str, Any], judged: Sequence[Mapping[str, Any]],
                  rejected: Sequence[Mapping[str, Any]]) -> None:
    out = Path(out)
    atomic_write_bytes(out / "pairs.jsonl", _jsonl(judged))
    atomic_write_bytes(out / "rejected.jsonl", _jsonl(rejected))
    write_plot(summary, judged, out / PLOT)
    atomic_write_bytes(out / "eval.md", markdown(summary).encode("utf-8"))
    # Last: eval.json is the sign of a finished evaluation.
    atomic_write_bytes(out / "eval.json", (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
