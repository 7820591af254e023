"""The dataset card's plots (PNG under assets/): length distribution of kept rows, rows per method and round, and
the score distribution of kept rows when `gen score` scored them.

Deterministic bytes for the same rows (no timestamp or version in the PNG), so republishing sends nothing new.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gen.data.preferences import chosen_conversations, is_preference_table

if TYPE_CHECKING:
    from gen.publish.plan import ExportPlan

LENGTH_PLOT = "assets/length_distribution.png"
ROWS_PLOT = "assets/rows_per_method_round.png"
SCORES_PLOT = "assets/score_distribution.png"  # only when the kept rows have scores
# Scorers plotted side by side at most (the others are in the card's table).
_MAX_SCORE_PANELS = 4
# Messages per slice when counting words for the length plot (bounds the memory of the split words).
_WORD_COUNT_SLICE = 65_536


def _word_counts(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row: words of the first user message and words of all assistant turns. Shapes [rows], [rows].

    Vectorised over the flattened messages (Arrow splits on whitespace, numpy sums per row with bincount): no
    Python loop over rows.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    messages = table.column("messages").combine_chunks()
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    roles = flat.field("role").to_numpy(zero_copy_only=False)
    content = pc.fill_null(flat.field("content"), "")
    # Whitespace-split word counts, a slice at a time: the split materialises every word, so bound its memory.
    words = np.concatenate([
        pc.list_value_length(pc.utf8_split_whitespace(content.slice(start, _WORD_COUNT_SLICE))).to_numpy(
            zero_copy_only=False)
        for start in range(0, len(content), _WORD_COUNT_SLICE)
    ] or [np.zeros(0, np.int64)]).astype(np.int64)
    assistant = roles == "assistant"
    response = np.bincount(parents[assistant], weights=words[assistant], minlength=n).astype(np.int64)
    user = np.flatnonzero(roles == "user")
    instruction = np.zeros(n, np.int64)
    if user.size:
        rows, first = np.unique(parents[user], return_index=True)
        instruction[rows] = words[user[first]]
    return instruction, response


def write_plots(plan: ExportPlan, out_dir: str | Path) -> dict[str, Path]:
    """Write the card's two PNGs under `out_dir` (assets/...). Returns {"length": path, "rows": path}; none if the
    run has no kept rows. Deterministic bytes (no timestamp or version in the PNG), so republishing is a no-op."""
    train, rejected = plan.train, plan.rejected
    if train.num_rows == 0:
        return {}
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; also what makes the output reproducible
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    paths = {"length": out_dir / LENGTH_PLOT, "rows": out_dir / ROWS_PLOT}
    png_metadata = {"Software": None}

    # a preference run (`gen prefs`): the prompt and the chosen answer
    instruction, response = _word_counts(chosen_conversations(train) if is_preference_table(train) else train)
    # Fixed margins instead of constrained/tight layout: those redraw the figure to measure it, tripling the cost.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.78, wspace=0.25)
    for ax, values, title in ((axes[0], instruction, "instruction (first user turn)"),
                              (axes[1], response, "response (all assistant turns)")):
        top = max(1, int(np.percentile(values, 99))) if values.size else 1
        ax.hist(np.clip(values, 0, top), bins=min(40, top + 1), color="#4c72b0", edgecolor="white")
        ax.set_title(f"{title}\nmedian {int(np.median(values))} words, n={values.size:,}", fontsize=10)
        ax.set_xlabel("words (clipped at the 99th percentile)")
        ax.set_ylabel("rows")
    fig.suptitle("Length distribution of kept rows", fontsize=11)
    fig.savefig(paths["length"], dpi=100, metadata=png_metadata)
    plt.close(fig)

    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "rejected": 0})
    for split_name, table in (("train", train), ("rejected", rejected)):
        if table.num_rows == 0:
            continue
        for method, rnd in zip(table.column("method").to_pylist(), table.column("round").to_pylist()):
            counts[f"{method} / round {rnd}" if rnd is not None else str(method)][split_name] += 1
    labels = sorted(counts)
    kept = np.array([counts[k]["train"] for k in labels])
    dropped = np.array([counts[k]["rejected"] for k in labels])
    height = 0.4 * len(labels) + 1.7
    fig, ax = plt.subplots(figsize=(8, height))
    left = min(0.55, 0.09 + 0.0125 * max(len(label) for label in labels))
    fig.subplots_adjust(left=left, right=0.97, bottom=0.9 / height, top=1 - 0.45 / height)
    y = np.arange(len(labels))
    ax.barh(y, kept, color="#55a868", label="kept (train)")
    if dropped.any():
        ax.barh(y, dropped, left=kept, color="#c44e52", label="rejected")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("Rows per method and round", fontsize=11)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)  # below the axes: never over a bar
    fig.savefig(paths["rows"], dpi=100, metadata=png_metadata)
    plt.close(fig)

    scores = score_values(train)
    if scores:
        paths["scores"] = out_dir / SCORES_PLOT
        _plot_scores(plt, scores, paths["scores"], png_metadata)
    return paths


def score_values(table: pa.Table) -> dict[str, list[float]]:
    """Each scorer's values over the kept rows (`gen.data.scores`; rows without a value left out), by name."""
    from gen.data.scores import distribution, scores_texts, values_of

    texts = scores_texts(table)
    names = [name for name in distribution(texts) if "." not in name]
    values = {name: [v for v in values_of(texts, name) if v is not None] for name in names}
    return {name: v for name, v in values.items() if v}


def _plot_scores(plt, scores: dict[str, list[float]], path: Path, png_metadata: dict) -> None:
    """One histogram per scorer (the first `_MAX_SCORE_PANELS` by name): integer scores get one bar per value."""
    names = sorted(scores)[:_MAX_SCORE_PANELS]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names) + 0.8, 3.4), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.78, wspace=0.3)
    for ax, name in zip(axes[0], names):
        values = np.asarray(scores[name], dtype=float)
        if np.all(values == np.round(values)) and values.max() - values.min() <= 40:
            bins = np.arange(values.min() - 0.5, values.max() + 1.5)
        else:
            bins = 20
        ax.hist(values, bins=bins, color="#8172b3", edgecolor="white")
        ax.set_title(f"{name}\nmean {values.mean():.2f}, median {np.median(values):g}, n={values.size:,}", fontsize=10)
        ax.set_xlabel("score")
        ax.set_ylabel("rows")
    fig.suptitle("Score distribution of kept rows", fontsize=11)
    fig.savefig(path, dpi=100, metadata=png_metadata)
    plt.close(fig)
