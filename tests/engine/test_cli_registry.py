"""The subcommand registry of `gen`: a missing module is a loud error (issue 12: it was skipped silently, hiding the
command), every command module is registered, and `gen --help` stays fast (no heavy import)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from gen.cli import CORE_COMMANDS, discover_commands
from tests.engine.conftest import REPO, gen_env

HEAVY = ("torch", "transformers", "pyarrow", "numpy", "openai", "aiohttp", "datasets", "ray", "huggingface_hub",
         "trl", "vllm")


def test_a_missing_command_module_fails_loudly(tmp_path):
    """A broken install (gen/commands/stats.py gone): `gen --help` exits non-zero naming the module."""
    shutil.copytree(REPO / "gen", tmp_path / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "gen" / "commands" / "stats.py").unlink()
    env = gen_env()
    env["PYTHONPATH"] = str(tmp_path)
    for argv in (["--help"], ["label", "--help"]):
        result = subprocess.run([sys.executable, "-m", "gen.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "gen: error: the module gen/commands/stats.py is missing: a broken kdforge install (reinstall it)"]


def test_every_command_module_is_a_command_core_ones_first():
    modules = {p.stem for p in (REPO / "gen" / "commands").glob("*.py")
               if "\ndef run(" in p.read_text() and "\nHELP = " in p.read_text()}
    commands = discover_commands()
    assert set(commands.values()) == modules
    assert tuple(commands)[:len(CORE_COMMANDS)] == CORE_COMMANDS


NEW_COMMAND = """
HELP = "a command added by dropping its module into gen/commands/"


def add_arguments(parser):
    parser.add_argument("--times", type=int, default=2)


def run(args):
    print("echo " * args.times)
    return 0
"""


def test_a_new_command_is_its_module_alone(tmp_path):
    """The method plug-in point touches gen/methods/<name>.py and gen/commands/<name>.py only: no registry to edit."""
    shutil.copytree(REPO / "gen", tmp_path / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "gen" / "commands" / "echo_twice.py").write_text(NEW_COMMAND)
    env = gen_env()
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gen.cli", "echo-twice", "--times", "3"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["echo"] * 3
    listed = subprocess.run([sys.executable, "-m", "gen.cli", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "echo-twice" in listed


def test_help_imports_no_heavy_dependency():
    code = ("import sys, gen.cli; gen.cli.build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=gen_env(), capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout
    help_text = subprocess.run([sys.executable, "-m", "gen.cli", "--help"], cwd=REPO, env=gen_env(),
                               capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(name in help_text for name in discover_commands())


PLANTED = """
HELP = "planted"


def add_arguments(parser):
    parser.add_argument("kind")


def run(args):
    if args.kind == "bug":
        raise TypeError("planted bug")
    raise ConnectionResetError(104, "reset by peer")
"""


def test_non_os_errors_keep_their_traceback(tmp_path):
    """The OSError safety net is for paths: a bug (a TypeError in a command planted in a copy of the package) still
    raises with its traceback; so does an OSError that names no file."""
    shutil.copytree(REPO / "gen", tmp_path / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "gen" / "commands" / "stats.py").write_text(PLANTED)
    env = gen_env()
    env["PYTHONPATH"] = str(tmp_path)
    for kind, name in (("bug", "TypeError: planted bug"), ("reset", "ConnectionResetError: [Errno 104]")):
        result = subprocess.run([sys.executable, "-m", "gen.cli", "stats", kind], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Traceback" in result.stderr and name in result.stderr, result.stderr
