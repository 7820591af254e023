"""Answers of a fixed shape: parse and validate every answer, re-ask ONCE for those that fail, report the rest.

Used for `--json-schema FILE` (reason `schema_invalid`: the answer must be JSON following the schema, which the
backend was also asked to enforce — `SamplingParams.json_schema`) and by any caller whose answers must parse, e.g.
a judge's verdicts (its own parse callable and reason, e.g. `judge_unparseable`):

    check = json_schema_check(schema)                  # or AnswerCheck(parse=my_parser, reason="judge_unparseable")
    answers = ask_checked(run.ask, requests, check)    # any callable: list of ChatRequest -> engine Results
    for a in answers:
        a.ok (parsed), a.value (the parsed object), a.result (the engine Result of the answer used),
        a.invalid (answered, but failed the check twice: reject the row with `check.reason`), a.error

Why once: a constrained backend rarely fails (a cut-off answer at max_tokens, a server that ignores the schema), and
a second failure says the request itself is the problem; more retries would only spend more. The retry is a
different request (a fresh per-request seed, derived from the first: a seeded backend would otherwise sample the
very same answer), so it has its own cache key, and a rerun asks the same two requests and reads both from the
cache: the outcome is the same on every rerun. A failed *request* (no answer after the engine's retries) is not a
check failure: it is left to the caller as usual (a rerun retries it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gen.methods.base import derive_seed
from gen.teachers.base import ChatRequest, canonical_schema

SCHEMA_INVALID = "schema_invalid"
RETRY_MARKER = "structured-retry"

# A JSON answer some models wrap in a Markdown fence although asked for JSON alone.
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL | re.IGNORECASE)


class AnswerInvalid(ValueError):
    """Raised by a parse callable: the answer does not have the expected shape (the message says why)."""


@dataclass(frozen=True)
class AnswerCheck:
    """How to read an answer: `parse(text)` returns the parsed value or raises `ValueError` (e.g. `AnswerInvalid`,
    `json.JSONDecodeError`); `reason` is the rejection reason of an answer that fails twice."""

    parse: Callable[[str], Any]
    reason: str


@dataclass
class CheckedAnswer:
    """One request's outcome. `result`: the engine Result of the answer used (the retry's when there was one);
    `value`: the parsed answer when `ok`; `invalid`: answered twice, failed the check twice; `error`: why it failed
    (the check's message, or the request's own error when it got no answer); `retried`: a second request was sent."""

    result: Any
    value: Any = None
    ok: bool = False
    invalid: bool = False
    error: str | None = None
    retried: bool = False
    reason: str | None = None  # the check's rejection reason, when `invalid`


def parse_json_text(text: str) -> Any:
    """The JSON value of an answer (a surrounding ```json fence is tolerated); `AnswerInvalid` if it is not JSON."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AnswerInvalid(f"not JSON: {exc}") from None


def json_schema_check(schema: Mapping[str, Any], reason: str = SCHEMA_INVALID) -> AnswerCheck:
    """A check that an answer is JSON valid under `schema` (with `jsonschema`'s validator for the schema's draft).
    The schema itself is checked here: an invalid schema is a `ValueError` naming what is wrong."""
    import jsonschema

    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None
    validator = validator_class(schema)

    def parse(text: str) -> Any:
        value = parse_json_text(text)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise AnswerInvalid(f"does not follow the schema at {where}: {error.message}")
        return value

    return AnswerCheck(parse=parse, reason=reason)


def schema_params(schema: Mapping[str, Any]) -> str:
    """What `SamplingParams.json_schema` holds for `schema` (so the backend constrains its decoding to it)."""
    return canonical_schema(schema)


def retry_request(request: ChatRequest) -> ChatRequest:
    """The one re-ask of a request whose answer failed its check: the same messages with a fresh sampling seed
    derived from the first (a different cache key and, on a seeded backend, a different sample)."""
    seed = derive_seed(RETRY_MARKER, request.params.seed, request.cache_key(RETRY_MARKER))
    return ChatRequest(messages=request.messages, params=request.params.replace(seed=seed))


def _check(check: AnswerCheck, result: Any) -> tuple[bool, Any, str | None]:
    try:
        return True, check.parse(result.completion.text), None
    except ValueError as exc:
        return False, None, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def ask_checked(ask: Callable[[Sequence[ChatRequest]], Sequence[Any]], requests: Sequence[ChatRequest],
                check: AnswerCheck) -> list[CheckedAnswer]:
    """Ask `requests` (through `ask`, e.g. `MethodRun.ask` or `engine.run`), check each answer, re-ask those that
    fail once (all in one second batch), and return one `CheckedAnswer` per request, in order."""
    results = list(ask(list(requests)))
    answers: list[CheckedAnswer] = []
    again: list[int] = []
    for index, result in enumerate(results):
        if not result.ok:
            answers.append(CheckedAnswer(result=result, error=result.error))
            continue
        ok, value, error = _check(check, result)
        answers.append(CheckedAnswer(result=result, value=value, ok=ok, error=error))
        if not ok:
            again.append(index)
    if again:
        retried = list(ask([retry_request(results[i].request) for i in again]))
        for index, result in zip(again, retried):
            first = answers[index]
            if not result.ok:  # the re-ask got no answer: like any failed request, a rerun tries it again
                answers[index] = CheckedAnswer(result=result, error=result.error, retried=True)
                continue
            ok, value, error = _check(check, result)
            answers[index] = CheckedAnswer(result=result, value=value, ok=ok, invalid=not ok,
                                           error=error if not ok else None, retried=True,
                                           reason=None if ok else check.reason)
            if not ok and first.error and error != first.error:
                answers[index].error = f"{error} (first answer: {first.error})"
    return answers


__all__ = ["SCHEMA_INVALID", "AnswerCheck", "AnswerInvalid", "CheckedAnswer", "ask_checked", "json_schema_check",
           "parse_json_text", "retry_request", "schema_params"]
