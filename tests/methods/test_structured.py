"""Structured generation (`--json-schema FILE`, `gen.methods.structured`): the schema travels with every request in
each backend's own form, every answer is validated, a failing one is asked exactly once more, then rejected with
`schema_invalid`; the parsed object is kept in the row's params."""

from __future__ import annotations

import json

import pytest

from gen.cli import main
from gen.data.shards import read_manifest, read_table
from gen.engine.engine import Engine
from gen.methods.structured import AnswerCheck, ask_checked, json_schema_check, retry_request
from gen.teachers.anthropic_api import AnthropicTeacher
from gen.teachers.base import ChatRequest, SamplingParams, canonical_schema
from tests.scripted_server import ScriptedServer, chat_reply
from tests.servers import smollm2_server  # noqa: F401

SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["label"], "additionalProperties": False}


def test_json_schema_check_parses_fenced_json_and_names_where_it_fails():
    check = json_schema_check(SCHEMA)
    assert check.reason == "schema_invalid"
    assert check.parse('{"label": "yes"}') == {"label": "yes"}
    assert check.parse('```json\n{"label": "no"}\n```') == {"label": "no"}
    with pytest.raises(ValueError, match="not JSON"):
        check.parse("yes")
    with pytest.raises(ValueError, match=r"at label: 'maybe' is not one of"):
        check.parse('{"label": "maybe"}')
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        json_schema_check({"type": "no-such-type"})


def test_retry_is_a_different_request_with_the_same_messages():
    first = ChatRequest.make([{"role": "user", "content": "q"}], SamplingParams(seed=7, json_schema="{}"))
    again = retry_request(first)
    assert again.messages == first.messages and again.params.json_schema == "{}"
    assert again.params.seed != 7 and again.cache_key("t") != first.cache_key("t")
    assert retry_request(first) == again  # the same re-ask on every rerun (so it is cached)


def _answer_by_prompt(path: str, body: dict):
    prompt = body["messages"][-1]["content"]
    if prompt == "good":
        return chat_reply('{"label": "yes"}')
    if prompt == "fixed on retry":  # the re-ask carries another seed
        return chat_reply('{"label": "no"}' if body["seed"] != 1 else '{"label": 1}')
    return chat_reply("certainly! yes")  # never JSON


def test_label_json_schema_on_scripted_server_retries_once_then_rejects(tmp_path, capsys):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in ["good", "fixed on retry", "never"]))
    out = tmp_path / "run"
    with ScriptedServer(_answer_by_prompt) as server:
        argv = ["label", "--input", str(inputs), "--out", str(out), "--teacher", "openai:scripted", "--base-url",
                server.base_url + "/v1", "--json-schema", str(schema_file), "--seed", "1", "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
        bodies = server.bodies("/v1/chat/completions")
        sent = [b["messages"][-1]["content"] for b in bodies]
        assert sorted(sent) == ["fixed on retry", "fixed on retry", "good", "never", "never"]  # exactly one retry
        for body in bodies:  # every request carries the schema as OpenAI structured output
            assert body["response_format"] == {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": SCHEMA, "strict": True}}
        kept = {r["messages"][0]["content"]: r for r in read_table(out, "train").to_pylist()}
        rejected = read_table(out, "rejected").to_pylist()
        assert sorted(kept) == ["fixed on retry", "good"]
        assert json.loads(kept["good"]["params"])["parsed"] == {"label": "yes"}
        assert json.loads(kept["fixed on retry"]["params"])["parsed"] == {"label": "no"}
        assert [r["messages"][0]["content"] for r in rejected] == ["never"]
        assert rejected[0]["filters"] == ["schema_invalid"]
        assert "not JSON" in json.loads(rejected[0]["params"])["check_error"]
        funnel = read_manifest(out)["funnel"]
        assert funnel["retried"] == 2 and funnel["rejected:schema_invalid"] == 1
        assert "1 answers did not follow --json-schema" in capsys.readouterr().err

        assert main(argv) == 0  # rerun: both attempts of every row come from the cache
        assert len(server.bodies("/v1/chat/completions")) == 5
        assert read_table(out, "train").num_rows == 2 and read_table(out, "rejected").num_rows == 1


def test_anthropic_sends_the_schema_as_a_forced_tool_and_answers_with_its_input():
    def messages(path: str, body: dict):
        return {"type": "message", "role": "assistant", "stop_reason": "tool_use",
                "content": [{"type": "tool_use", "id": "t1", "name": "answer", "input": {"label": "no"}}],
                "usage": {"input_tokens": 9, "output_tokens": 4}}

    with ScriptedServer(messages) as server:
        engine = Engine(AnthropicTeacher("claude-x", base_url=server.base_url, api_key="k"), progress=False)
        with engine:
            request = ChatRequest.make([{"role": "user", "content": "q"}],
                                       SamplingParams(max_tokens=20, json_schema=canonical_schema(SCHEMA)))
            answers = ask_checked(engine.run, [request], json_schema_check(SCHEMA))
        (path, body), = server.requests
    assert path == "/v1/messages"
    assert body["tools"] == [{"name": "answer", "description": "Give the answer in this structure.",
                              "input_schema": SCHEMA}]
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert answers[0].ok and answers[0].value == {"label": "no"}
    assert json.loads(answers[0].result.completion.text) == {"label": "no"}


def test_a_generic_check_reports_its_own_reason():
    """What the judge reuses: its own parser and reason, the same one retry."""
    def parse_score(text: str) -> int:
        value = int(text.strip())
        if not 1 <= value <= 10:
            raise ValueError(f"score {value} out of range")
        return value

    with ScriptedServer(lambda path, body: chat_reply("11")) as server:
        from gen.teachers.openai_api import OpenAITeacher

        with Engine(OpenAITeacher("m", base_url=server.base_url + "/v1"), progress=False) as engine:
            request = ChatRequest.make([{"role": "user", "content": "rate"}], SamplingParams(seed=3))
            answer, = ask_checked(engine.run, [request], AnswerCheck(parse=parse_score, reason="judge_unparseable"))
        assert len(server.requests) == 2
    assert answer.invalid and answer.reason == "judge_unparseable" and answer.error == "score 11 out of range"


def test_label_json_schema_on_real_llamacpp_every_kept_answer_validates(smollm2_server, tmp_path,  # noqa: F811
                                                                        capsys):
    """On llama.cpp (the aligned SmolLM2, which ends its turns: the base Gemma pads a constrained answer with
    whitespace up to max_tokens)."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in
                              ["Is Paris in France? Answer yes or no.", "Is ice hot?"]))
    out = tmp_path / "run"
    argv = ["label", "--input", str(inputs), "--out", str(out), "--teacher", f"openai:{smollm2_server.model}",
            "--base-url", smollm2_server.openai_base_url, "--json-schema", str(schema_file), "--temperature", "0",
            "--max-new-tokens", "32", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    check = json_schema_check(SCHEMA)
    kept = read_table(out, "train").to_pylist()
    rejected = read_table(out, "rejected").to_pylist()
    assert len(kept) + len(rejected) == 2 and kept  # llama.cpp's grammar makes (at least some) answers valid
    for row in kept:
        parsed = check.parse(row["messages"][-1]["content"])  # raises if the kept answer does not validate
        assert json.loads(row["params"])["parsed"] == parsed
    assert all(r["filters"] == ["schema_invalid"] for r in rejected)
