"""Pairwise judging: answer A against answer B for one request, asked in both orders.

LLM judges favour a position (often the first answer). Each pair is therefore asked twice, as (A, B) and as
(B, A); the second verdict is mapped back to the original labels. When the two agree, that is the verdict; when
they disagree the verdict flipped with the order and counts as a tie (`position_flip` is True), so a judge that
always says "the first one" produces only ties. `position_flip_rate` over the verdicts is the judge's position bias
that callers report (`gen eval`, `bench/judge.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gen.methods.judge.pointwise import Judgement, judge_params, judgement_from, rubric_request
from gen.methods.judge.retry import ask_parsed
from gen.methods.judge.rubric import Rubric, load_rubric
from gen.methods.judge.verdict import JUDGE_UNPARSEABLE, VerdictError, parse_verdict
from gen.teachers.base import SamplingParams

_SWAP = {"A": "B", "B": "A", "tie": "tie"}


@dataclass(frozen=True)
class PairItem:
    """One comparison: the request (`instruction`, with earlier turns in `context`) and the two answers."""

    instruction: str
    answer_a: str
    answer_b: str
    context: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_messages(cls, prompt: Sequence[Mapping[str, str]], answer_a: str, answer_b: str,
                      system: str | None = None) -> PairItem:
        """The pair for a conversation `prompt` that ends with the user's request (a trailing assistant turn, if
        any, is dropped: the two answers replace it)."""
        turns = [dict(m) for m in prompt]
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
        if last_user is None:
            raise ValueError("a pair needs a user request")
        context = tuple({"role": str(t["role"]), "content": str(t["content"] or "")} for t in turns[:last_user])
        if system and not any(t["role"] == "system" for t in context):
            context = ({"role": "system", "content": system},) + context
        return cls(instruction=str(turns[last_user]["content"] or ""), answer_a=answer_a, answer_b=answer_b,
                   context=context)

    def variables(self, swapped: bool = False) -> dict[str, Any]:
        a, b = (self.answer_b, self.answer_a) if swapped else (self.answer_a, self.answer_b)
        return {"instruction": self.instruction, "answer_a": a, "answer_b": b, "context": [dict(t) for t in self.context]}


@dataclass
class PairVerdict:
    """Both orders of one pair. `first`: the verdict with A shown first; `second`: the verdict with B shown first,
    mapped back to the original labels ("A" still means answer A). `winner`: the agreed verdict, "tie" when they
    disagree (`position_flip`), None when either order has no verdict (`status` `unparseable` or `failed`)."""

    status: str
    judge: str
    rubric: str
    template_hash: str
    first: str | None = None
    second: str | None = None
    orders: list[Judgement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def position_flip(self) -> bool:
        """The verdict changed when the answers swapped places."""
        return self.ok and self.first != self.second

    @property
    def winner(self) -> str | None:
        if not self.ok:
            return None
        return self.first if self.first == self.second else "tie"

    def entry(self) -> dict[str, Any]:
        """What to record: winner, both orders' verdicts and raw replies, the flip, judge, rubric, hash."""
        entry: dict[str, Any] = {"winner": self.winner, "first": self.first, "second": self.second,
                                 "position_flip": self.position_flip, "judge": self.judge, "rubric": self.rubric,
                                 "template_hash": self.template_hash,
                                 "raw": [j.raw for j in self.orders],
                                 "rationale": [j.rationale for j in self.orders]}
        if self.status == "unparseable":
            entry["rejected"] = JUDGE_UNPARSEABLE
        return entry


def judge_pairwise(engine: Any, pairs: Sequence[PairItem], rubric: Rubric | None = None,
                   params: SamplingParams | None = None, *, desc: str = "judge pairs") -> list[PairVerdict]:
    """One PairVerdict per pair (in order): 2 requests per pair (both orders) in one engine batch, each unparseable
    reply asked once more. `rubric`: the built-in `pairwise` by default (any rubric with target `pair`)."""
    rubric = rubric or load_rubric("pairwise")
    if not rubric.pairwise:
        raise ValueError(f"rubric {rubric.name} scores one answer: use judge_pointwise")
    params = params or judge_params(rubric)
    judge = str(getattr(engine, "teacher_id", "unknown"))
    requests = []
    for pair in pairs:
        requests.append(rubric_request(rubric, pair.variables(swapped=False), params))
        requests.append(rubric_request(rubric, pair.variables(swapped=True), params))
    parsed = ask_parsed(engine, requests, lambda text: parse_verdict(rubric, text), desc=desc,
                        parse_errors=(VerdictError,))
    verdicts = []
    for i in range(len(pairs)):
        orders = [judgement_from(parsed[2 * i], judge=judge, rubric=rubric),
                  judgement_from(parsed[2 * i + 1], judge=judge, rubric=rubric)]
        if any(j.status == "failed" for j in orders):
            status = "failed"
        elif any(j.unparseable for j in orders):
            status = "unparseable"
        else:
            status = "ok"
        first = orders[0].verdict.winner if orders[0].ok else None
        second = _SWAP[orders[1].verdict.winner] if orders[1].ok else None
        verdicts.append(PairVerdict(status=status, judge=judge, rubric=rubric.name,
                                    template_hash=rubric.template_hash, first=first, second=second, orders=orders))
    return verdicts


def position_flip_rate(verdicts: Sequence[PairVerdict]) -> float | None:
    """The share of judged pairs whose verdict flipped with the order (None when no pair was judged)."""
    judged = [v for v in verdicts if v.ok]
    if not judged:
        return None
    return sum(v.position_flip for v in judged) / len(judged)


def first_position_rate(verdicts: Sequence[PairVerdict]) -> float | None:
    """How often the judge picked whichever answer was shown first (over both orders of the judged pairs; 0.5 for
    an unbiased judge that never says tie): a second view of position bias."""
    picks = []
    for v in verdicts:
        if not v.ok:
            continue
        picks.append(v.orders[0].verdict.winner == "A")
        picks.append(v.orders[1].verdict.winner == "A")
    return sum(picks) / len(picks) if picks else None
