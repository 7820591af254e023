"""A rerun never undoes what a later step decided (issue 18 #1), on the real embedded model (Gemma-3-270M served by
llama.cpp) through the CLI: `gen label`, then `gen dedup --minhash` moves the near-duplicates to `rejected`, then the
same `gen label` again sends nothing and writes nothing: it used to put every rejected row back into `train`
(750 rows for 500 ids in the report). The same after `gen filter`."""

from __future__ import annotations

import json

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.servers import llamacpp_server  # noqa: F401

TOPICS = ["the city of Paris in France", "the river Nile in Egypt", "the mountains of Nepal in Asia",
          "the forests of Canada in the north"]


def instructions() -> list[str]:
    """Pairs of near-duplicates: the same 14 words but the last (word 3-gram Jaccard 11/13 > 0.7)."""
    out = []
    for topic in TOPICS:
        for when in ("today", "now"):
            out.append(f"Write one short sentence about the long history of {topic} {when}")
    return out


def ids_by_split(out) -> dict[str, list[str]]:
    return {split: read_table(out, split).column("id").to_pylist() for split in ("train", "rejected")}


def assert_each_id_once(splits: dict[str, list[str]], n: int) -> None:
    every = splits["train"] + splits["rejected"]
    assert len(every) == n and len(set(every)) == n, {k: len(v) for k, v in splits.items()}


def test_rerun_after_dedup_and_filter_keeps_their_decisions(llamacpp_server, tmp_path, capsys):  # noqa: F811
    questions = instructions()
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    out = tmp_path / "run"
    label = ["label", "--input", str(inputs), "--out", str(out), "--teacher", f"openai:{llamacpp_server.model}",
             "--base-url", llamacpp_server.openai_base_url, "--temperature", "0", "--max-new-tokens", "16",
             "--no-progress"]
    assert main(label) == 0, capsys.readouterr().err
    assert len(read_table(out, "train")) == len(questions)

    assert main(["dedup", str(out), "--minhash"]) == 0
    after_dedup = ids_by_split(out)
    assert len(after_dedup["rejected"]) == len(TOPICS)  # one of each pair
    assert_each_id_once(after_dedup, len(questions))

    assert main(label) == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["funnel"]["engine"]["sent"] == 0
    assert manifest["funnel"]["rows_written"] == 0
    assert manifest["funnel"]["rows_already_on_disk"] == len(questions)
    assert ids_by_split(out) == after_dedup  # the rejected rows stay rejected, nothing is duplicated
    assert manifest["splits"]["train"]["rows"] == len(TOPICS)
    assert manifest["config"]["filters"]["dedup"]["on"] == "instruction"  # the dedup's record is kept ...
    assert manifest["funnel"]["dedup"]["rejected"] == len(TOPICS)  # ... with its counts

    # gen filter: reject the longest answers still in train, then rerun the label again.
    lengths = [len(row["messages"][-1]["content"].strip()) for row in read_table(out, "train").to_pylist()]
    assert max(lengths) > 1, lengths
    assert main(["filter", str(out), "--keep-truncated", "--copies-question", "0",
                 "--max-chars", str(max(lengths) - 1)]) == 0
    after_filter = ids_by_split(out)
    assert len(after_filter["rejected"]) > len(TOPICS)
    assert_each_id_once(after_filter, len(questions))

    assert main(label) == 0, capsys.readouterr().err
    assert ids_by_split(out) == after_filter
    manifest = read_manifest(out)
    assert manifest["funnel"]["engine"]["sent"] == 0 and manifest["funnel"]["rows_written"] == 0
    assert sum(split["rows"] for split in manifest["splits"].values()) == len(questions)
    assert set(manifest["config"]["filters"]) == {"dedup", "filter"} and {"dedup", "filter"} <= set(manifest["funnel"])
