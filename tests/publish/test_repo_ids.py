"""Repo ids are validated as the Hub does (issue 18 #15), wherever one is taken: `gen publish --repo` (dry run and
real), `gen card --repo`, and the library's publish/upload/card functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen.cli import main as gen_main
from gen.errors import UserError
from gen.publish.hub import upload
from gen.publish.pipeline import publish
from tests.publish.runs import build_run, one_line_error, run_gen

BAD = [
    "a/..",  # the reported ones
    "a/b.git",
    "../../etc",
    "no-owner",  # the Hub's URL and create-repo need namespace/name
    "a/b/c",
    "/b",
    "a/",
    "a/.hidden",
    "a/b-",
    "-a/b",
    "a/b--c",
    "a/b..c",
    "a b/c",
    "a/b\nc",
    "é/b",
    "a/b.GIT",  # huggingface_hub 2.4 misses these two: .git in another case, and at the end of the namespace
    "a.git/b",
    "a/" + "x" * 97,
    "",
]
GOOD = ["alice/kd-set", "Org_1/my.data-set", "a/b", "OWNER/NAME", "a/" + "x" * 96]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("ids") / "run", evol_roots=2, rounds=1, self_instruct=3)


@pytest.mark.parametrize("repo_id", BAD, ids=repr)
def test_bad_repo_ids_are_refused_by_publish_and_card(small_run, tmp_path, capsys, repo_id):
    out = tmp_path / "out"
    flag = f"--repo={repo_id}"  # one argument, so that argparse takes `-a/b` as the value, not an option
    for argv in (["publish", str(small_run), flag, "--dry-run", str(out)], ["publish", str(small_run), flag],
                 ["card", str(small_run), flag]):
        assert gen_main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"gen {argv[0]}: error: --repo {repo_id!r}: ")
        assert captured.err.count("\n") == 1 and captured.err.endswith("\n")  # one line, even for an id with a newline
    assert not out.exists()
    for call in (lambda: publish(small_run, repo_id, dry_run_dir=out), lambda: upload(small_run, repo_id)):
        with pytest.raises(UserError, match=r"^repo id "):
            call()


@pytest.mark.parametrize("repo_id", GOOD)
def test_good_repo_ids_pass(small_run, tmp_path, capsys, repo_id):
    card = tmp_path / "README.md"
    assert gen_main(["card", str(small_run), "--repo", repo_id, "-o", str(card)]) == 0
    assert f'load_dataset("{repo_id}")' in card.read_text()
    assert gen_main(["publish", str(small_run), "--repo", repo_id, "--dry-run", str(tmp_path / "out")]) == 0


def test_the_reported_ids_through_the_command_line(small_run, tmp_path):
    proc = run_gen("publish", str(small_run), "--repo", "a/..", "--dry-run", str(tmp_path / "out"))
    assert one_line_error(proc, "publish").startswith("--repo 'a/..': Repo id must use alphanumeric chars")
    proc = run_gen("card", str(small_run), "--repo", "../../etc")
    assert one_line_error(proc, "card") == ("--repo '../../etc': expected OWNER/NAME: a namespace and a name "
                                            "separated by one '/'")
    assert proc.stdout == ""
