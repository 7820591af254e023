"""Shared by the publishing tests: one hand-built run and its dry-run export (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen.cli import main as gen_main
from tests.publish.runs import build_run

REPO = "alice/kd-set"
# Small enough that the run's splits are cut into several Parquet files (exercises -NNNNN-of-NNNNN naming).
SMALL_FILE_MB = "0.02"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def export(run_dir, tmp_path_factory) -> Path:
    """`gen publish --dry-run` of the run with its rejected split, several files per split."""
    out = tmp_path_factory.mktemp("export") / "repo"
    code = gen_main(["publish", str(run_dir), "--repo", REPO, "--dry-run", str(out), "--include-rejected",
                     "--max-file-mb", SMALL_FILE_MB])
    assert code == 0
    return out
