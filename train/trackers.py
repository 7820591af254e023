"""`gen train --report-to`: the experiment tracker the Trainer logs to (transformers' own integrations).

tensorboard writes event files under OUT/runs/ with no network (a core dependency, what the tests use); wandb and
trackio are optional packages: without them the run stops before loading anything, in one line that says so."""

from __future__ import annotations

import importlib.util

from gen.errors import InvalidSetting

# tracker -> the package transformers imports for it, and how to install it
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb, then `wandb login` or WANDB_MODE=offline"),
    "trackio": ("trackio", "pip install trackio"),
}


def check_tracker(report_to: str) -> None:
    """InvalidSetting naming the tracker when its package is not installed ("none" needs nothing)."""
    if report_to == "none":
        return
    if report_to not in TRACKER_PACKAGES:
        raise InvalidSetting("report_to", f"report_to {report_to}: unknown; one of none, {', '.join(TRACKER_PACKAGES)}")
    package, install = TRACKER_PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        raise InvalidSetting("report_to", f"report_to {report_to}: the {package} package is not installed ({install}); "
                                          f"or use tensorboard (offline) or none")
