"""Pointwise judging: a rubric applied to one answer (or one instruction) at a time, through the engine.

Each item becomes one request: the rubric's system message and its template rendered with the item (the last
answer, the request it answers, the earlier turns), sampled with the judge's params (temperature 0 by default) and
the rubric's verdict schema as structured output (`SamplingParams.json_schema`; `structured=False` leaves it out).
Replies are parsed by `gen.methods.judge.verdict` and an unparseable one is asked once more
(`gen.methods.judge.retry`). Each `Judgement` records the judge (teacher id), rubric name and hash, the raw reply,
the parsed aspect scores and rationale, or why there is no score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gen.methods.judge.retry import Parsed, ask_parsed
from gen.methods.judge.rubric import Rubric
from gen.methods.judge.verdict import JUDGE_UNPARSEABLE, Verdict, VerdictError, parse_verdict
from gen.teachers.base import ChatRequest, SamplingParams

DEFAULT_JUDGE_MAX_TOKENS = 384


def verdict_schema_text(rubric: Rubric) -> str:
    """The rubric's verdict schema as `SamplingParams.json_schema` text, its properties in the rubric's order
    (`rationale` first, then the aspects). Not `canonical_schema`, which sorts keys: backends that constrain
    decoding (vLLM's structured outputs, llama.cpp's grammar) emit the properties in the schema's order, and sorted
    keys would make the judge give its scores before the reasoning the prompt asks for first. The text is the same
    for the same rubric, so cache keys stay stable."""
    return json.dumps(rubric.verdict_schema(), ensure_ascii=False, separators=(",", ":"))


def judge_params(rubric: Rubric, base: SamplingParams | None = None, *, structured: bool = True) -> SamplingParams:
    """The sampling params of a rubric's requests: `base` (default: temperature 0, 384 tokens) with the rubric's
    verdict schema as structured output (none when `structured` is False)."""
    base = base or SamplingParams(max_tokens=DEFAULT_JUDGE_MAX_TOKENS, temperature=0.0)
    return base.replace(json_schema=verdict_schema_text(rubric) if structured else None)


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: the `instruction` (the request the answer answers), the `answer` (None when the rubric
    targets the instruction), and the `context` before the instruction (earlier turns, a system message)."""

    instruction: str
    answer: str | None = None
    context: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_messages(cls, messages: Sequence[Mapping[str, str]], system: str | None = None,
                      target: str = "answer") -> JudgeItem | None:
        """The item of a conversation: its last assistant turn and the user turn before it (target `answer`), or
        its last user turn (target `instruction`: the answer, if any, is not shown). None when the conversation has
        nothing to judge (no assistant turn for `answer`, no user turn)."""
        turns = [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in messages]
        if system and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": system})
        answer = None
        end = len(turns)
        if target == "answer":
            last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)
            if last is None:
                return None
            answer, end = turns[last]["content"], last
        elif target == "instruction":
            first_answer = next((i for i, t in enumerate(turns) if t["role"] == "assistant"), None)
            end = len(turns) if first_answer is None else first_answer  # the task as first posed
        user = next((i for i in range(end - 1, -1, -1) if turns[i]["role"] == "user"), None)
        if user is None:
            return None
        return cls(instruction=turns[user]["content"], answer=answer, context=tuple(turns[:user]))

    def variables(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "answer": self.answer or "", "context": [dict(t) for t in self.context]}


def rubric_request(rubric: Rubric, variables: Mapping[str, Any], params: SamplingParams) -> ChatRequest:
    """The judge's request: the rubric's system message and its template rendered with `variables`."""
    return ChatRequest.make([{"role": "user", "content": rubric.render(**variables)}], params, system=rubric.system)


@dataclass
class Judgement:
    """One pointwise judgement. `status`: `ok` (scores parsed), `unparseable` (no verdict after the retry: reject
    the row with reason `judge_unparseable`), `failed` (the request failed or the budget stopped it: `error`; a
    rerun asks again) or `nothing_to_judge` (no answer/instruction in the row)."""

    status: str
    judge: str
    rubric: str
    template_hash: str
    verdict: Verdict | None = None
    raw: str | None = None
    replies: list[str] = field(default_factory=list)
    problem: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def unparseable(self) -> bool:
        return self.status == "unparseable"

    @property
    def value(self) -> float | None:
        return self.verdict.value if self.verdict is not None else None

    @property
    def aspects(self) -> dict[str, float]:
        return dict(self.verdict.aspects) if self.verdict is not None else {}

    @property
    def rationale(self) -> str | None:
        return self.verdict.rationale if self.verdict is not None else None

    def entry(self) -> dict[str, Any]:
        """The judgement as its scorer entry in the `scores` column (`gen.data.scores`): value, aspects, rationale,
        judge, rubric, template_hash, the raw reply, and `retried`; an unparseable one has value None and
        `rejected: judge_unparseable`."""
        entry: dict[str, Any] = {"value": self.value, "aspects": self.aspects, "rationale": self.rationale,
                                 "judge": self.judge, "rubric": self.rubric, "template_hash": self.template_hash,
                                 "raw": self.raw, "retried": len(self.replies) > 1}
        if self.unparseable:
            entry["rejected"] = JUDGE_UNPARSEABLE
            entry["problem"] = self.problem
        return entry


def judgement_from(parsed: Parsed[Verdict], *, judge: str, rubric: Rubric) -> Judgement:
    """A Judgement from one `ask_parsed` outcome."""
    if parsed.error is not None:
        status = "failed"
    elif parsed.ok:
        status = "ok"
    else:
        status = "unparseable"
    return Judgement(status=status, judge=judge, rubric=rubric.name, template_hash=rubric.template_hash,
                     verdict=parsed.value, raw=parsed.raw, replies=list(parsed.replies), problem=parsed.problem,
                     error=parsed.error,
                     prompt_tokens=sum(c.prompt_tokens for c in parsed.completions),
                     completion_tokens=sum(c.completion_tokens for c in parsed.completions))


def judge_pointwise(engine: Any, items: Sequence[JudgeItem | None], rubric: Rubric,
                    params: SamplingParams | None = None, *, desc: str = "judge") -> list[Judgement]:
    """One Judgement per item (in order), all requests through `engine` in one batch (and one batch of retries).
    `params`: `judge_params(rubric)` by default. A None item is `nothing_to_judge`."""
    if rubric.pairwise:
        raise ValueError(f"rubric {rubric.name} compares pairs: use judge_pairwise")
    params = params or judge_params(rubric)
    judge = str(getattr(engine, "teacher_id", "unknown"))
    positions = [i for i, item in enumerate(items) if item is not None]
    requests = [rubric_request(rubric, items[i].variables(), params) for i in positions]
    parsed = ask_parsed(engine, requests, lambda text: parse_verdict(rubric, text), desc=desc,
                        parse_errors=(VerdictError,))
    judgements = [Judgement(status="nothing_to_judge", judge=judge, rubric=rubric.name,
                            template_hash=rubric.template_hash) for _ in items]
    for position, outcome in zip(positions, parsed):
        judgements[position] = judgement_from(outcome, judge=judge, rubric=rubric)
    return judgements


def judge_rows(engine: Any, rows: Sequence[Mapping[str, Any]], rubric: Rubric, params: SamplingParams | None = None,
               *, desc: str = "judge") -> list[Judgement]:
    """`judge_pointwise` over rows of the common schema (`messages`, `system`): each row's last answer, or its
    instruction for a rubric whose target is `instruction`."""
    items = [JudgeItem.from_messages(row["messages"], row.get("system"), rubric.target) for row in rows]
    return judge_pointwise(engine, items, rubric, params, desc=desc)
