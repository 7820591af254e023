"""The loss curve of a run as a PNG, from the Trainer's `log_history` (one dict per log: step, loss, kd_loss, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_loss_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "training loss") -> Path:
    """Plot `loss` (and the `kd_loss` / `sft_loss` split, and `eval_loss`, when logged) against `step`; returns the
    PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    # eval_loss: logged every --eval-steps when the run has evaluation data
    for key, style in (("loss", "-"), ("kd_loss", "--"), ("sft_loss", ":"), ("eval_loss", "-.")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, marker="." if len(points) < 50 else None, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
