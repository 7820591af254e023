"""IFD (instruction-following difficulty) with a tiny random Llama: the formula against an independent float64
computation, batching, the choices for system prompts / multi-turn rows / empty answers, and `gen score --ifd` then
`gen filter --ifd-max / --top-fraction` through the CLI."""

from __future__ import annotations

import math

import pytest

from gen.cli import main
from gen.data.records import make_row
from gen.data.scores import parse_scores
from gen.data.shards import ShardWriter, read_manifest, read_table, write_manifest
from tests.servers import tiny_llama_dir  # noqa: F401  (session fixture)

ANSWER = "river river river river river river river river"
ROWS = [
    {"id": "echo", "messages": [{"role": "user", "content": "river " * 30}, {"role": "assistant", "content": ANSWER}]},
    {"id": "unrelated", "messages": [{"role": "user", "content": "What is the capital of France, and why?"},
                                     {"role": "assistant", "content": ANSWER}]},
    {"id": "system", "system": "Be nice.", "messages": [{"role": "user", "content": "Say hello"},
                                                         {"role": "assistant", "content": "Hello there, friend."}]},
    {"id": "multi", "messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                                 {"role": "user", "content": "Q2 longer"},
                                 {"role": "assistant", "content": "A2 is longer here."}]},
    {"id": "empty", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]},
]


@pytest.fixture(scope="module")
def scorer(tiny_llama_dir):  # noqa: F811
    from gen.logits.ifd import IFDScorer

    s = IFDScorer(str(tiny_llama_dir), batch_rows=4)
    yield s
    s.close()


def reference_ifd(model_dir, messages: list[dict]) -> float:
    """IFD from scratch: the chat template's prompt/full renders, a float64 copy of the model, one row at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    answer = f_ids[len(p_ids):]

    def ce(ids: list[int], n: int) -> float:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits[len(ids) - n - 1: len(ids) - 1], -1)
        return -sum(float(logp[i, t]) for i, t in enumerate(ids[len(ids) - n:])) / n

    return math.exp(ce(f_ids, len(answer))) / math.exp(ce([tok.bos_token_id] + answer, len(answer)))


def test_ifd_equals_an_independent_float64_computation(scorer, tiny_llama_dir):  # noqa: F811
    values = scorer.score(ROWS)
    system_messages = [{"role": "system", "content": "Be nice."}] + ROWS[2]["messages"]
    for row, messages in [(0, ROWS[0]["messages"]), (2, system_messages), (3, ROWS[3]["messages"])]:
        assert values[row].ifd == pytest.approx(reference_ifd(tiny_llama_dir, messages), rel=1e-5)
    # Multi-turn: only the last answer is scored (its 15 tokens incl. the end-of-turn marker), given all before it.
    assert values[3].answer_tokens == 15
    assert values[4] is None  # empty answer: no score


def test_batched_equals_unbatched(scorer, tiny_llama_dir):  # noqa: F811
    from gen.logits.ifd import IFDScorer

    one = IFDScorer(str(tiny_llama_dir), batch_rows=1).score(ROWS)
    capped = IFDScorer(str(tiny_llama_dir), batch_rows=8, max_batch_tokens=250)
    sizes = [len(b) for b in capped._batches([0, 1, 2, 3], capped.pairs(ROWS))]
    assert sizes == [1, 1, 2]  # 204, 68, 55, 54 tokens: 2 rows x 2 sequences x 68 > 250; 2 x 2 x 55 <= 250
    for rows in (scorer.score(ROWS), capped.score(ROWS)):
        assert [v is None for v in rows] == [v is None for v in one]
    for batched, single in list(zip(scorer.score(ROWS), one)) + list(zip(capped.score(ROWS), one)):
        if single is None:
            assert batched is None
            continue
        assert batched.ifd == pytest.approx(single.ifd, rel=1e-6)
        assert batched.ppl_conditioned == pytest.approx(single.ppl_conditioned, rel=1e-6)


def test_instruction_holding_the_answer_tokens_lowers_ifd(scorer):
    # Same answer, same unconditioned perplexity; an instruction made of the answer's tokens predicts it better than
    # an unrelated one (with this fixed random model: a property of the weights, measured, so it could fail).
    echo, unrelated = scorer.score(ROWS[:2])
    assert echo.ppl_unconditioned == pytest.approx(unrelated.ppl_unconditioned, rel=1e-9)
    assert echo.ifd < unrelated.ifd


def test_truncation_keeps_the_answer_head_and_the_context_tail(tiny_llama_dir):  # noqa: F811
    from transformers import AutoTokenizer

    from gen.logits.ifd import ifd_pair
    from gen.logits.records import conversation, tokenize_conversation

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    full, labels = tokenize_conversation(tok, conversation(ROWS[0]))
    first = int((labels != -100).argmax())
    pair = ifd_pair(tok, ROWS[0], 20, tok.bos_token_id)
    assert pair.answer_len == 19 and len(pair.conditioned) == 20
    assert pair.conditioned.tolist() == full[first - 1: first + 19].tolist()
    assert pair.unconditioned.tolist() == [tok.bos_token_id] + full[first: first + 19].tolist()


def build_run(path):
    rows = [make_row(messages=r["messages"], method="label", teacher="llamacpp:test", system=r.get("system"))
            for r in ROWS]
    with ShardWriter(path, "train", max_rows=3) as writer:
        writer.write_many(rows)
    write_manifest(path, config={"method": "label"}, funnel={})
    return [r["id"] for r in rows]


def test_score_ifd_then_filter_cli(tmp_path, tiny_llama_dir, scorer, capsys):  # noqa: F811
    run = tmp_path / "run"
    ids = build_run(run)
    assert main(["filter", str(run), "--ifd-max", "1.0", "--keep-repetitive"]) == 2
    assert "has no IFD scores" in capsys.readouterr().err
    assert main(["score", str(run), "--ifd", f"hf:{tiny_llama_dir}"]) == 0
    assert "4 scored, 0 reused, 1 without answer tokens" in capsys.readouterr().out
    table = read_table(run, "train").to_pylist()
    expected = {r["id"]: v.ifd for r, v in zip(ROWS, scorer.score(ROWS)) if v is not None}
    by_id = {row["id"]: parse_scores(row["scores"])["ifd"] for row in table}
    assert [row["id"] for row in table] == ids[:4]
    for i, row_id in enumerate(ids[:4]):
        assert by_id[row_id]["value"] == pytest.approx(expected[ROWS[i]["id"]], rel=1e-6)
        assert by_id[row_id]["value"] == pytest.approx(
            by_id[row_id]["ppl_conditioned"] / by_id[row_id]["ppl_unconditioned"], rel=1e-9)
    assert [r["filters"] for r in read_table(run, "rejected").to_pylist()] == [["ifd_no_answer"]]
    # A rerun with the same model and rows recomputes nothing (and loads no model).
    before = read_table(run, "train").column("scores").to_pylist()
    assert main(["score", str(run), "--ifd", str(tiny_llama_dir)]) == 0
    assert "0 scored, 4 reused" in capsys.readouterr().out
    assert read_table(run, "train").column("scores").to_pylist() == before
    # A chat template given explicitly is part of the model's identity: rescored (same template, same values).
    template = tmp_path / "template.jinja"
    template.write_text(scorer.tokenizer.chat_template)
    assert main(["score", str(run), "--ifd", str(tiny_llama_dir), "--ifd-chat-template", str(template)]) == 0
    assert "4 scored, 0 reused" in capsys.readouterr().out
    rescored = [parse_scores(t)["ifd"] for t in read_table(run, "train").column("scores").to_pylist()]
    assert [e["value"] for e in rescored] == [parse_scores(t)["ifd"]["value"] for t in before]
    assert main(["score", str(run), "--ifd", str(tiny_llama_dir), "--ifd-chat-template", str(tmp_path / "no")]) == 2
    assert "--ifd-chat-template" in capsys.readouterr().err
    # Bad values: one line each, nothing changed.
    for flags, message in [(["--ifd-max", "0"], "--ifd-max 0.0: must be positive"),
                           (["--top-fraction", "1.5"], "--top-fraction 1.5: must be in (0, 1]")]:
        assert main(["filter", str(run), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["score", str(run), "--ifd", str(tmp_path / "nope")]) == 2
    assert "--ifd" in capsys.readouterr().err
    # --ifd-max 1.0 drops rows with IFD >= 1; --top-fraction 0.5 keeps the highest-IFD half of the rest.
    values = {i: by_id[i]["value"] for i in ids[:4]}
    below = [i for i in ids[:4] if values[i] < 1.03]
    assert 0 < len(below) < 4
    out = tmp_path / "out"
    assert main(["filter", str(run), "--out", str(out), "--ifd-max", "1.03", "--top-fraction", "0.5",
                 "--keep-repetitive"]) == 0
    top = sorted(below, key=lambda i: -values[i])[: math.ceil(len(below) / 2)]
    assert sorted(read_table(out, "train").column("id").to_pylist()) == sorted(top)
    reasons = {r["id"]: r["filters"] for r in read_table(out, "rejected").to_pylist() if r["id"] in values}
    assert reasons == {i: ["ifd_above_max"] if values[i] >= 1.03 else ["ifd_below_top_fraction"]
                       for i in ids[:4] if i not in top}
    manifest = read_manifest(out)
    assert manifest["config"]["filters"]["filter"]["ifd_max"] == 1.03
    counts = {"ifd_above_max": 4 - len(below), "ifd_below_top_fraction": len(below) - len(top)}
    assert manifest["funnel"]["filter"]["by_reason"] == {k: v for k, v in counts.items() if v}
    assert manifest["funnel"]["filter"]["ifd_unscored_kept"] == 0  # every train row has its IFD
    # --top-fraction alone: the 2 highest of 4; --ifd-max 1.0 alone: this random model's IFDs are all >= 1.
    assert main(["filter", str(run), "--out", str(tmp_path / "top"), "--top-fraction", "0.5", "--keep-repetitive"]) == 0
    highest = sorted(values, key=lambda i: -values[i])[:2]
    assert sorted(read_table(tmp_path / "top", "train").column("id").to_pylist()) == sorted(highest)
    assert all(v >= 1.0 for v in values.values())
    assert main(["filter", str(run), "--out", str(tmp_path / "max"), "--ifd-max", "1.0", "--keep-repetitive"]) == 0
    assert "4 rows -> 0 kept" in capsys.readouterr().out
