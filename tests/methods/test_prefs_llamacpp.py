"""`gen prefs` end to end on the real embedded model (Gemma-3-270M served by llama.cpp, the session server) through
the CLI and the OpenAI-compatible backend: one candidate sampled twice per prompt, the same model as judge with the
verdict's JSON schema as llama.cpp's structured output. A 270M base model is a weak judge, so the test checks the
run's shape, not its verdicts: every prompt ends as a pair (chosen rated above rejected) or in `rejected` with its
reason, the funnel adds up, and a rerun is all cache hits."""

from __future__ import annotations

import json

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from tests.servers import llamacpp_server  # noqa: F401

PROMPTS = ["What is the capital of France?", "Name a primary colour."]
REASONS = {"preference_tie", "too_few_rated", "judge_unparseable"}


def follows_the_verdict_grammar(verdicts: list[str]) -> bool:
    """The verdict's JSON schema reached llama.cpp: every reply is a prefix of what its JSON grammar allows (an
    object, maybe cut short at the token limit, after optional whitespace; the grammar admits leading whitespace, and
    a 270M model sometimes spends every token there), and at least one reply started the object. A model writing
    free text would start with a word."""
    return all(not v.strip() or v.lstrip().startswith("{") for v in verdicts) and \
        any(v.lstrip().startswith("{") for v in verdicts)


def test_gen_prefs_on_llamacpp(llamacpp_server, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "prefs"
    model = f"openai:{llamacpp_server.model}"
    argv = ["prefs", "--input", str(prompts), "--candidates", model, "-n", "2", "--base-url",
            llamacpp_server.openai_base_url, "--judge", model, "--judge-base-url", llamacpp_server.openai_base_url,
            "--max-new-tokens", "8", "--judge-max-new-tokens", "24", "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    train, rejected = read_table(out, "train").to_pylist(), read_table(out, "rejected").to_pylist()
    assert len(train) + len(rejected) == len(PROMPTS)
    for row in train + rejected:
        assert row["prompt"][-1]["role"] == "user" and row["judge"] == model and len(row["candidates"]) == 2
    verdicts = [c["verdict"] for row in train + rejected for c in row["candidates"]]
    assert follows_the_verdict_grammar(verdicts), verdicts
    for row in train:
        assert 1 <= row["score_rejected"] < row["score_chosen"] <= 10 and row["filters"] == []
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    for row in rejected:
        assert row["filters"] and set(row["filters"]) <= REASONS
    funnel = read_manifest(out)["funnel"]["total"]
    assert funnel["requests"] == funnel["answers"] == 4 and funnel.get("kept", 0) == len(train)
    assert sum(v for k, v in funnel.items() if k in ("rejected:preference_tie", "rejected:too_few_rated")) \
        == len(rejected)
    engines = read_manifest(out)["engines"]
    capsys.readouterr()
    assert main(argv) == 0  # a rerun: all cache hits
    again = read_manifest(out)["engines"]
    assert all(stats["sent"] == 0 for stats in again.values()), again
    assert sum(s["requests"] for s in again.values()) == sum(s["requests"] for s in engines.values())
    assert read_table(out, "train").to_pylist() == train
