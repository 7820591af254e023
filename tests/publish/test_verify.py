"""A shard changed after it was written (issue 18 #4): still valid Arrow, so only the manifest's sha256 tells.
`gen publish` (dry run and real) and `gen card` refuse it naming the shard; `gen stats --verify` checks on demand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gen.cli import main as gen_main
from gen.data.shards import read_table
from tests.publish.conftest import REPO
from tests.publish.hub_server import HubServer
from tests.publish.runs import build_run, one_line_error, run_gen

TOKEN = "hf_kdforgeFAKEtoken0123456789abcdefXYZ"
ORIGINAL, TAMPERED = b"answer 1-1.", b"answer 1-9."  # one answer of the run, and the same length rewritten


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("verify") / "run", evol_roots=3, rounds=2, self_instruct=4)


@pytest.fixture
def tampered(clean_run, tmp_path) -> Path:
    """A copy of the run whose first train shard has one string rewritten in place, inside its record batch."""
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    shard = run / "train" / "train-00000.arrow"
    data = shard.read_bytes()
    assert data.count(ORIGINAL) == 1 and TAMPERED not in data
    shard.write_bytes(data.replace(ORIGINAL, TAMPERED))
    # Still a valid Arrow file, with the changed value: nothing but the hash can tell.
    texts = json.dumps(read_table(run, "train").column("messages").to_pylist())
    assert TAMPERED.decode() in texts and ORIGINAL.decode() not in texts
    return run


def test_stats_verify_passes_on_an_untouched_run(clean_run):
    proc = run_gen("stats", str(clean_run), "--verify")
    assert proc.returncode == 0, proc.stderr
    shards = len(list(clean_run.glob("*/*.arrow")))
    assert f"verified: all {shards} shards match the sha256 in manifest.json" in proc.stdout


def test_stats_verify_names_the_changed_shard(tampered):
    assert run_gen("stats", str(tampered)).returncode == 0  # plain stats reads what is there, as before
    message = one_line_error(run_gen("stats", str(tampered), "--verify"), "stats")
    assert message.startswith(f"{tampered / 'train' / 'train-00000.arrow'}: its sha256 differs from the one in "
                              "manifest.json")


def test_publish_and_card_refuse_a_changed_shard(tampered, tmp_path):
    out = tmp_path / "out"
    message = one_line_error(run_gen("publish", str(tampered), "--repo", REPO, "--dry-run", str(out)), "publish")
    assert message.startswith(f"{tampered / 'train' / 'train-00000.arrow'}: its sha256 differs")
    assert not out.exists()
    message = one_line_error(run_gen("card", str(tampered), "--repo", REPO), "card")
    assert "train-00000.arrow: its sha256 differs" in message


def test_a_real_publish_of_a_changed_shard_sends_nothing(tampered):
    with HubServer(TOKEN) as hub:
        proc = run_gen("publish", str(tampered), "--repo", REPO,
                       env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
                            "HF_HUB_DISABLE_XET": "1"})
        assert "train-00000.arrow: its sha256 differs" in one_line_error(proc, "publish")
        assert hub.requests == []


def test_missing_and_unlisted_shards_are_named_too(clean_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    shard = run / "rejected" / "rejected-00000.arrow"
    shard.rename(run / "rejected" / "rejected-00007.arrow")  # the listed one is gone, an unlisted one appeared
    assert gen_main(["stats", str(run), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gen stats: error: {shard}: listed in manifest.json but missing (and 1 more shard(s) that do not "
                   "match)")
    assert gen_main(["publish", str(run), "--repo", REPO, "--dry-run", str(tmp_path / "out")]) == 2
    assert "rejected-00000.arrow: listed in manifest.json but missing" in capsys.readouterr().err


def test_a_run_without_a_manifest_cannot_be_verified(clean_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    (run / "manifest.json").unlink()
    assert gen_main(["stats", str(run)]) == 0  # stats works without a manifest
    capsys.readouterr()
    assert gen_main(["stats", str(run), "--verify"]) == 2
    assert capsys.readouterr().err.strip() == f"gen stats: error: {run / 'manifest.json'}: no manifest (is this a " \
                                              "kdforge run directory?)"
