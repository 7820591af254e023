"""Bad files through the CLI (issue 18 #8-#11): binary or non-UTF-8 inputs, Parquet/Arrow inputs for every method,
an unusable `--out`, a damaged request cache. Each is one line on stderr, exit 2, no traceback, nothing written.

The binary-input cases run `python -m gen.cli` as a subprocess (what a user sees, traceback or not); the others call
`gen.cli.main` in-process (importing the OpenAI SDK costs seconds per process on this shared machine).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen.cli import main
from gen.data.shards import read_table
from tests.engine.conftest import REPO, gen_command, gen_env, write_instructions

# Not UTF-8 anywhere: NUL bytes, 0xff, a Parquet magic in the middle.
BINARY = bytes(range(256)) * 3 + b"PAR1\x00\xff\xfe"
NO_SERVER = ["--teacher", "openai:test-model", "--base-url", "http://127.0.0.1:9/v1", "--no-progress"]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, command: str, names: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gen {command}: error: ") and names in lines[0], err


# ------------------------------------------------------------------------------------ #8: binary input, every command


@pytest.mark.parametrize("command, flag, suffix", [
    ("label", "--input", ".jsonl"),
    ("evol", "--input", ".jsonl"),
    ("self-instruct", "--seeds", ".jsonl"),
    ("self-chat", "--seeds", ".txt"),
    ("ultrachat", "--documents", ".txt"),
    ("ultrachat", "--topics", ".txt"),
])
def test_binary_input_is_one_line_error(tmp_path, command, flag, suffix):
    binary = tmp_path / f"binary{suffix}"
    binary.write_bytes(BINARY)
    out = tmp_path / "out"
    result = subprocess.run(gen_command(command, flag, str(binary), "--out", str(out), *NO_SERVER), cwd=REPO,
                            env=gen_env(), capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, command, f"{binary}:1: ")
    assert "UTF-8" in result.stderr or "binary" in result.stderr
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("command, flag", [("label", "--input"), ("evol", "--input"), ("self-chat", "--seeds")])
def test_latin1_text_names_the_line(tmp_path, capsys, command, flag):
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"instruction": "fine"}\n' + '{"instruction": "café"}\n'.encode("latin-1"))
    rc, _, err = run_main([command, flag, str(latin1), "--out", str(tmp_path / "out"), *NO_SERVER], capsys)
    assert_one_line_error(rc, err, command, f"{latin1}:2: not UTF-8 text")
    assert not (tmp_path / "out").exists()


def test_binary_chat_template_is_one_line_error(tmp_path, capsys):
    template = tmp_path / "template.jinja"
    template.write_bytes(BINARY)
    rc, _, err = run_main(["logits", "--shards", str(tmp_path), "--teacher", "hf:none", "--out", str(tmp_path / "out"),
                           "--chat-template", str(template)], capsys)
    assert_one_line_error(rc, err, "logits", f"--chat-template {template}: not UTF-8 text")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- #9: Parquet and Arrow inputs for every method


def write_arrow(table: pa.Table, path: Path) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


INSTRUCTIONS = ["List three prime numbers.", "Name a river in Peru.", "Explain what a lever does."]


@pytest.fixture
def table_inputs(tmp_path) -> dict[str, Path]:
    """The same instructions as Parquet, as Arrow holding only `instruction`, and as Parquet named `.jsonl`."""
    table = pa.table({"instruction": INSTRUCTIONS})
    pq.write_table(table, tmp_path / "in.parquet")
    pq.write_table(table, tmp_path / "parquet_named.jsonl")
    return {"parquet": tmp_path / "in.parquet", "arrow": write_arrow(table, tmp_path / "in.arrow"),
            "parquet_named_jsonl": tmp_path / "parquet_named.jsonl"}


@pytest.mark.parametrize("command, flag, fmt, extra", [
    ("evol", "--input", "parquet", ["--rounds", "1", "--no-judge"]),
    ("evol", "--input", "arrow", ["--rounds", "1", "--no-judge"]),
    ("self-chat", "--seeds", "arrow", ["--max-turns", "2"]),
    ("self-chat", "--seeds", "parquet_named_jsonl", ["--max-turns", "2"]),
    ("label", "--input", "parquet_named_jsonl", []),
])
def test_methods_read_parquet_and_arrow_inputs(start_server, table_inputs, tmp_path, command, flag, fmt, extra):
    server = start_server("fixed:0")
    out = tmp_path / "out"
    argv = [command, flag, str(table_inputs[fmt]), "--out", str(out), "--teacher", "openai:test-model",
            "--base-url", server.v1_url, "--no-progress", "--max-new-tokens", "16", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    # every instruction of the file reached the teacher (inside the method's prompt), and rows were written
    for instruction in INSTRUCTIONS:
        assert any(instruction in prompt for prompt in server.prompts), (instruction, server.prompts[:3])
    # rows were written (evol's filters may reject the test server's canned rewrites: those go to `rejected`)
    assert read_table(out, "train").num_rows + read_table(out, "rejected").num_rows > 0


# --------------------------------------------------------------------------------------------- #10: an unusable --out


def existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    return path


def bad_out_argv(command: str, out: Path, inputs: Path, tmp_path: Path) -> list[str]:
    if command == "label":
        return ["label", "--input", str(inputs), "--out", str(out), *NO_SERVER]
    if command == "evol":
        return ["evol", "--input", str(inputs), "--out", str(out), *NO_SERVER]
    if command == "train":
        return ["train", "--student", str(tmp_path / "no-model"), "--data", str(tmp_path), "--out", str(out)]
    return ["publish", str(tmp_path / "run"), "--repo", "someone/data", "--dry-run", str(out)]


def flag_for(command: str) -> str:
    """The prefix of the error: generating commands check OUT when they take its run lock (library code: the path
    alone); train and publish check it in the command (with the flag)."""
    return {"train": "--out ", "publish": "--dry-run "}.get(command, "")


@pytest.mark.parametrize("command", ["label", "evol", "train", "publish"])
@pytest.mark.parametrize("case", ["existing_file", "under_a_file"])
def test_out_that_cannot_be_a_directory(tmp_path, capsys, command, case):
    inputs = write_instructions(tmp_path / "in.jsonl", 2)
    blocker = existing_file(tmp_path)
    out = blocker if case == "existing_file" else blocker / "run"
    rc, _, err = run_main(bad_out_argv(command, out, inputs, tmp_path), capsys)
    expect = "exists and is not a directory" if case == "existing_file" else f"{blocker} is not a directory"
    assert_one_line_error(rc, err, command, f"{flag_for(command)}{out}: ")
    assert expect in err, err
    assert blocker.read_text() == "keep me\n"  # nothing written, nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in.jsonl"]


@contextlib.contextmanager
def read_only_directory(path: Path):
    """`path` made unwritable: mode 0555 for a normal user; for root (who ignores permission bits) the immutable
    attribute (chattr +i). Undone on the way out."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here: no way to make a directory read-only for root")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("command", ["label", "evol", "train", "publish"])
@pytest.mark.parametrize("case", ["inside", "is"])
def test_out_in_a_read_only_directory(tmp_path, capsys, command, case):
    inputs = write_instructions(tmp_path / "in.jsonl", 2)
    with read_only_directory(tmp_path / "locked") as locked:
        out = locked / "run" if case == "inside" else locked
        rc, _, err = run_main(bad_out_argv(command, out, inputs, tmp_path), capsys)
        assert list(locked.iterdir()) == []
    assert_one_line_error(rc, err, command, f"{flag_for(command)}{out}: cannot write")
    assert "permission denied" in err or "read-only" in err


def test_read_only_file_system(tmp_path):
    """A genuinely read-only mount (a read-only bind mount in a private mount namespace) for `gen label --out`."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    inputs = write_instructions(tmp_path / "in.jsonl", 2)
    locked = tmp_path / "ro"
    locked.mkdir()
    argv = " ".join(gen_command("label", "--input", str(inputs), "--out", str(locked / "run"), *NO_SERVER))
    script = f"mount --bind {locked} {locked} && mount -o remount,bind,ro {locked} && exec {argv}"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("no private mount namespace here (unshare -m refused)")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                            env=gen_env(), capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, "label", f"{locked / 'run'}: cannot write")
    assert "read-only file system" in result.stderr
    assert list(locked.iterdir()) == []


def test_os_error_safety_net_names_the_path(tmp_path, capsys):
    """An OSError about a file that no command checks for (here: `gen card -o` into a missing folder) is one line."""
    from gen.data.records import make_row
    from gen.data.shards import ShardWriter, write_manifest

    run = tmp_path / "run"
    with ShardWriter(run) as writer:
        writer.write(make_row(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                              method="label"))
    write_manifest(run, config={"teacher": "openai:x"}, funnel={})
    target = tmp_path / "missing" / "card.md"
    rc, _, err = run_main(["card", str(run), "--repo", "someone/data", "-o", str(target)], capsys)
    assert_one_line_error(rc, err, "card", str(tmp_path / "missing"))
    assert "No such file or directory" in err


# ------------------------------------------------------------------------------------ #11: a damaged request cache


def test_damaged_request_cache(start_server, tmp_path, capsys):
    server = start_server("fixed:0")
    inputs = write_instructions(tmp_path / "in.jsonl", 6)
    out = tmp_path / "run"
    argv = ["label", "--input", str(inputs), "--out", str(out), "--teacher", "openai:test-model",
            "--base-url", server.v1_url, "--no-progress", "--max-new-tokens", "16"]
    assert run_main(argv, capsys)[0] == 0
    rows = read_table(out, "train").to_pylist()
    cache = out / ".cache" / "requests.sqlite"
    for leftover in cache.parent.glob("requests.sqlite-*"):  # WAL and shared-memory files of the closed cache
        leftover.unlink()
    cache.write_bytes(BINARY)

    server.reset_stats()
    rc, _, err = run_main(argv, capsys)
    assert_one_line_error(rc, err, "label", str(cache))
    assert "damaged" in err and "move it aside" in err and "rerun" in err
    assert server.requests == 0 and cache.read_bytes() == BINARY  # nothing sent, nothing overwritten
    assert read_table(out, "train").to_pylist() == rows

    # the recovery the message gives works: rows already in the shards stay, the rest is asked again
    cache.rename(cache.with_name("requests.sqlite.damaged"))
    assert run_main(argv, capsys)[0] == 0
    assert read_table(out, "train").to_pylist() == rows
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["rows"] == 6
