"""Backends that the main venv cannot run still fail the right way there: one line that names the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gen.errors import UserError
from gen.teachers import load_teacher

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_without_vllm_installed_names_the_extra():
    # A child process where `import vllm` fails, whatever this venv holds.
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from gen.errors import MissingDependency\n"
            "from gen.teachers import load_teacher\n"
            "try:\n    load_teacher('vllm:some/model')\n"
            "except MissingDependency as exc:\n    print('ERROR', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("ERROR ") and "kdforge[vllm]" in line and "\n" not in line


def test_http_options_do_not_apply_to_the_in_process_vllm_backend():
    with pytest.raises(UserError, match="--base-url"):
        load_teacher("vllm:some/model", base_url="http://127.0.0.1:8000/v1")
