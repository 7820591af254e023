"""The judge library (`gen.methods.judge`): rubrics, the tolerant verdict parser, and pointwise/pairwise judging
through the real engine against a scripted judge server (`tests.methods.judge_server`) for exact expectations."""

from __future__ import annotations

import json

import pytest

from gen.data.scores import merge_entry, parse_scores, resolve_score_name, score_value
from gen.engine.engine import build_engine
from gen.engine.spec import EngineSpec
from gen.errors import UserError
from gen.methods.judge import (
    JUDGE_UNPARSEABLE,
    JudgeItem,
    PairItem,
    VerdictError,
    first_position_rate,
    judge_pairwise,
    judge_pointwise,
    judge_rows,
    load_rubric,
    parse_verdict,
    position_flip_rate,
)
from gen.teachers.base import canonical_schema
from gen.teachers.spec import TeacherSpec
from tests.latency_server import LatencyServer
from tests.methods import judge_server


@pytest.fixture
def judge_engine():
    """`judge_engine(reply)` -> (engine over a scripted judge server, the server); both closed after the test."""
    opened = []

    def start(reply):
        server = LatencyServer("fixed:0", reply=reply).start()
        engine = build_engine(TeacherSpec("openai:scripted-judge", base_url=server.v1_url), EngineSpec(progress=False))
        opened.append((engine, server))
        return engine, server

    yield start
    for engine, server in opened:
        engine.close()
        server.stop()


# ------------------------------------------------------------------------------------------------------ rubrics


def test_builtin_rubrics_and_their_verdict_schemas():
    quality, uf, complexity, pairwise = (load_rubric(n) for n in ("quality", "ultrafeedback", "complexity", "pairwise"))
    assert [a.name for a in uf.aspects] == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert all((a.min, a.max) == (1, 5) for a in uf.aspects)
    assert (quality.aspects[0].min, quality.aspects[0].max) == (1, 10)
    assert complexity.target == "instruction" and pairwise.pairwise
    schema = quality.verdict_schema()
    assert schema["required"] == ["rationale", "quality"]
    assert schema["properties"]["quality"] == {"type": "integer", "minimum": 1.0, "maximum": 10.0}
    assert pairwise.verdict_schema()["properties"]["winner"]["enum"] == ["A", "B", "tie"]
    assert len({r.template_hash for r in (quality, uf, complexity, pairwise)}) == 4
    # The instruction rubric never shows the answer.
    prompt = complexity.render(**JudgeItem.from_messages(
        [{"role": "user", "content": "Prove it."}, {"role": "assistant", "content": "SECRET-ANSWER"}],
        target="instruction").variables())
    assert "Prove it." in prompt and "SECRET-ANSWER" not in prompt


def test_rubric_file_and_its_errors(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("name: brevity\ntarget: answer\naspects:\n  - {name: brevity, min: 0, max: 1, integer: false}\n"
                    "template: 'Q: {{ instruction }} A: {{ answer }} -> {{ verdict_format }}'\n")
    rubric = load_rubric(good)
    assert rubric.name == "brevity" and rubric.source == str(good)
    assert parse_verdict(rubric, '{"brevity": 0.25}').value == 0.25
    as_json = tmp_path / "r.json"
    as_json.write_text(json.dumps({"name": "brevity", "target": "answer", "template": rubric.template,
                                   "aspects": [{"name": "brevity", "min": 0, "max": 1, "integer": False}]}))
    assert load_rubric(as_json).template_hash == rubric.template_hash  # same definition, same hash
    for text, words in [
        ("name: x\naspects: []\ntemplate: '{{ verdict_format }}'\n", "at least one aspect"),
        ("name: x\naspects: [{name: a, min: 5, max: 1}]\ntemplate: '{{ verdict_format }}'\n", "min < max"),
        ("name: x\naspects: [{name: a, min: 1, max: 5}]\ntemplate: '{{ nope }} {{ verdict_format }}'\n",
         "unknown variable"),
        ("name: x\naspects: [{name: a, min: 1, max: 5}]\ntemplate: 'no format'\n", "verdict_format"),
        ("name: x\ntarget: both\naspects: [{name: a, min: 1, max: 5}]\ntemplate: x\n", "'target'"),
        ("name: [1\n", "not YAML"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UserError, match=words) as caught:
            load_rubric(bad)
        assert str(bad) in str(caught.value)
    with pytest.raises(UserError, match="not a built-in"):
        load_rubric("nonsense")


# ------------------------------------------------------------------------------------------------------- parser


def test_tolerant_parser_reads_json_and_labelled_lines_but_never_guesses():
    quality, uf, pairwise = load_rubric("quality"), load_rubric("ultrafeedback"), load_rubric("pairwise")
    assert parse_verdict(quality, 'Sure!\n```json\n{"rationale": "ok", "quality": 7}\n```').aspects == {"quality": 7}
    assert parse_verdict(quality, '{"score": "8/10"}').value == 8  # a one-number rubric: score/rating name it
    verdict = parse_verdict(quality, "Rationale: clear and right\n**Score:** 9")
    assert (verdict.value, verdict.rationale, verdict.structured) == (9, "clear and right", False)
    assert parse_verdict(quality, "My rating: [[4]]").value == 4
    lines = "Instruction following: 4\nHonesty - 5\n**Truthfulness**: 3\nhelpfulness: 2/5"
    assert parse_verdict(uf, lines).aspects == {"instruction_following": 4, "honesty": 5, "truthfulness": 3,
                                                "helpfulness": 2}
    assert parse_verdict(uf, lines).value == 3.5  # the mean of the aspects
    assert parse_verdict(pairwise, '{"winner": "B"}').winner == "B"
    assert parse_verdict(pairwise, "Both are fine.\nVerdict: [[tie]]").winner == "tie"
    for rubric, text in [(quality, "It is good."), (quality, '{"quality": 11}'), (quality, "Score: 0"),
                         (uf, '{"honesty": 5, "truthfulness": 5, "helpfulness": 5}'),  # one aspect missing
                         (pairwise, '{"winner": "C"}'), (pairwise, "[[A]] or maybe [[B]]"), (quality, "")]:
        with pytest.raises(VerdictError):
            parse_verdict(rubric, text)


def test_scores_column_helpers():
    text = merge_entry(None, "quality", {"value": 7.0, "aspects": {"quality": 7.0}})
    text = merge_entry(text, "ifd", {"value": 0.8, "model": "hf:x"})
    assert score_value(text, "quality") == 7.0 and score_value(text, "ifd") == 0.8
    assert score_value(text, "quality", aspect="quality") == 7.0 and score_value(text, "nope") is None
    assert set(parse_scores(merge_entry(text, "ifd", None))) == {"quality"}  # the other scorer untouched
    assert resolve_score_name([text, None], "quality") == ("quality", None)
    with pytest.raises(UserError, match="several scorers"):
        resolve_score_name([text], None)
    with pytest.raises(UserError, match="no aspect 'honesty'"):
        resolve_score_name([text], "quality.honesty")


# --------------------------------------------------------------------------------------------- scripted judges


def test_pointwise_retries_once_then_records_unparseable(judge_engine):
    engine, server = judge_engine(judge_server.pointwise_judge)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]}
            for i, answer in enumerate(["score 7", "late 4", "garbage", "lines 2"])]
    rows.append({"messages": [{"role": "user", "content": "no answer yet"}]})
    rubric = load_rubric("quality")
    judgements = judge_rows(engine, rows, rubric)
    assert [j.status for j in judgements] == ["ok", "ok", "unparseable", "ok", "nothing_to_judge"]
    assert [j.value for j in judgements] == [7, 4, None, 2, None]
    # One request per judged row, plus exactly one retry for each of the two refused first replies.
    assert server.requests == 4 + 2
    assert len(judgements[1].replies) == 2 and judgements[1].rationale == "second try"
    assert len(judgements[2].replies) == 2 and judgements[2].raw == "I cannot decide."
    entry = judgements[0].entry()
    assert entry["judge"] == "openai:scripted-judge" and entry["rubric"] == "quality"
    assert entry["template_hash"] == rubric.template_hash and entry["raw"] == judgements[0].raw
    assert judgements[2].entry()["rejected"] == JUDGE_UNPARSEABLE and judgements[2].entry()["value"] is None
    # Asked again: everything (retries included) comes from the engine's cache.
    server.reset_stats()
    again = judge_pointwise(engine, [JudgeItem.from_messages(r["messages"]) for r in rows], rubric)
    assert server.requests == 0 and [j.value for j in again] == [7, 4, None, 2, None]


def test_structured_output_schema_is_set_on_the_request(judge_engine):
    engine, server = judge_engine(judge_server.pointwise_judge)
    rubric = load_rubric("quality")
    from gen.methods.judge import judge_params, rubric_request

    params = judge_params(rubric)
    assert json.loads(params.json_schema) == json.loads(canonical_schema(rubric.verdict_schema()))
    assert params.temperature == 0.0
    # the properties in the rubric's order: a backend that constrains decoding writes the rationale first
    assert list(json.loads(params.json_schema)["properties"]) == ["rationale", "quality"]
    assert judge_params(rubric, structured=False).json_schema is None
    request = rubric_request(rubric, JudgeItem("Q?", "score 3").variables(), params)
    assert request.messages[0] == ("system", rubric.system)
    assert engine.run([request])[0].completion.text == json.dumps({"rationale": "graded 3", "quality": 3})


def test_position_swap_turns_an_always_a_judge_into_ties(judge_engine):
    pairs = [PairItem.from_messages([{"role": "user", "content": f"Q{i}"}], "short", "a much longer answer")
             for i in range(3)]
    pairs.append(PairItem.from_messages([{"role": "user", "content": "Q3"}], "a much longer answer", "short"))
    engine, server = judge_engine(judge_server.always_a_judge)
    verdicts = judge_pairwise(engine, pairs)
    assert server.requests == 2 * len(pairs)  # both orders of every pair
    assert [v.winner for v in verdicts] == ["tie"] * 4
    assert all(v.position_flip and (v.first, v.second) == ("A", "B") for v in verdicts)
    assert position_flip_rate(verdicts) == 1.0 and first_position_rate(verdicts) == 1.0

    engine, server = judge_engine(judge_server.longer_wins_judge)  # a judge without position bias
    verdicts = judge_pairwise(engine, pairs)
    assert [v.winner for v in verdicts] == ["B", "B", "B", "A"]
    assert position_flip_rate(verdicts) == 0.0 and first_position_rate(verdicts) == 0.5
    assert verdicts[0].entry()["position_flip"] is False and len(verdicts[0].entry()["raw"]) == 2
