"""Reading a judge's reply: the verdict a rubric asks for, from structured output or from free text.

With structured output the reply is the verdict's JSON object; without it (a backend that cannot constrain its
output, a small model that ignores the format) the parser is tolerant: the first JSON object anywhere in the text
(inside a code fence, after chatter), else labelled lines (`Score: 7`, `Helpfulness: 4/5`, `Winner: B`, `[[A]]`).
What it never does is guess: a missing aspect, a number outside the rubric's range or a winner that is not A, B or
tie is no verdict (`VerdictError`), and the caller retries once, then rejects the row (`judge_unparseable`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gen.methods.judge.rubric import PAIR_CHOICES, Rubric

JUDGE_UNPARSEABLE = "judge_unparseable"

_DECODER = json.JSONDecoder()
_NUMBER = r"(-?\d+(?:\.\d+)?)"


class VerdictError(ValueError):
    """The reply holds no valid verdict for the rubric (the message says what is missing or wrong)."""


@dataclass(frozen=True)
class Verdict:
    """A parsed verdict: the aspect scores (pointwise) or the winner (pairwise: "A", "B" or "tie"), the rationale,
    and whether it came from a JSON object (`structured`) or from labelled lines."""

    aspects: Mapping[str, float] = field(default_factory=dict)
    winner: str | None = None
    rationale: str | None = None
    structured: bool = True

    @property
    def value(self) -> float | None:
        """The pointwise score: the mean of the aspects (one aspect: its value)."""
        if not self.aspects:
            return None
        return sum(self.aspects.values()) / len(self.aspects)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences and surrounding prose ignored), or None."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _label_pattern(name: str) -> str:
    """`instruction_following` also matches `Instruction following` and `instruction-following`."""
    return r"[\s_\-]*".join(re.escape(part) for part in re.split(r"[_\-\s]+", name) if part)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + _NUMBER + r"\s*(?:/\s*\d+(?:\.\d+)?)?\s*", value)
        return float(match.group(1)) if match else None
    if isinstance(value, Mapping):  # {"rating": 4, "rationale": ...} per aspect
        for key in ("score", "rating", "value"):
            if key in value:
                return _number(value[key])
    return None


def _check_aspects(rubric: Rubric, found: Mapping[str, float | None]) -> dict[str, float]:
    aspects = {}
    for aspect in rubric.aspects:
        value = found.get(aspect.name)
        if value is None:
            raise VerdictError(f"no number for '{aspect.name}'")
        if not aspect.min <= value <= aspect.max:
            raise VerdictError(f"'{aspect.name}' = {value:g} is outside {aspect.min:g}-{aspect.max:g}")
        aspects[aspect.name] = value
    return aspects


def _rationale(obj: Mapping[str, Any]) -> str | None:
    for key in ("rationale", "reasoning", "explanation", "reason"):
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _pointwise_from_object(rubric: Rubric, obj: Mapping[str, Any]) -> Verdict:
    lowered = {re.sub(r"[\s\-]+", "_", str(k).strip().lower()): v for k, v in obj.items()}
    found: dict[str, float | None] = {}
    for aspect in rubric.aspects:
        key = aspect.name.lower()
        value = lowered.get(key)
        if value is None and len(rubric.aspects) == 1:  # a one-number rubric: "score"/"rating" name it too
            value = next((lowered[k] for k in ("score", "rating", "grade") if k in lowered), None)
        found[aspect.name] = _number(value)
    return Verdict(aspects=_check_aspects(rubric, found), rationale=_rationale(obj), structured=True)


def _pointwise_from_lines(rubric: Rubric, text: str) -> Verdict:
    found: dict[str, float | None] = {}
    for aspect in rubric.aspects:
        labels = [_label_pattern(aspect.name)]
        if len(rubric.aspects) == 1:
            labels += ["score", "rating", "grade", "overall"]
        value = None
        for label in labels:
            match = re.search(r"(?im)^[\s*#>\-]*(?:" + label + r")\b[\s*]*[:=\-]\s*\**\s*\[*" + _NUMBER, text)
            if match:
                value = float(match.group(1))
                break
        if value is None and len(rubric.aspects) == 1:
            match = re.search(r"\[\[\s*" + _NUMBER + r"\s*\]\]", text)  # "Rating: [[7]]" style
            value = float(match.group(1)) if match else None
        found[aspect.name] = value
    match = re.search(r"(?im)^[\s*#]*(?:rationale|reasoning|explanation)[\s*]*[:\-]\s*(.+)$", text)
    return Verdict(aspects=_check_aspects(rubric, found), rationale=match.group(1).strip() if match else None,
                   structured=False)


def _winner(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = value.strip().strip("[]*\"'`.").strip()
    for choice in PAIR_CHOICES:
        if cleaned.lower() in (choice.lower(), f"answer {choice.lower()}", f"assistant {choice.lower()}"):
            return choice
    return None


def _pairwise_from_object(obj: Mapping[str, Any]) -> Verdict:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    raw = next((lowered[k] for k in ("winner", "verdict", "better", "choice") if k in lowered), None)
    winner = _winner(raw)
    if winner is None:
        raise VerdictError(f"winner {raw!r} is not one of {', '.join(PAIR_CHOICES)}")
    return Verdict(winner=winner, rationale=_rationale(obj), structured=True)


def _pairwise_from_lines(text: str) -> Verdict:
    match = re.search(r"(?im)^[\s*#>\-]*(?:winner|verdict|better answer)[\s*]*[:=\-]\s*\**\s*(.+?)\s*\**\s*$", text)
    winner = _winner(match.group(1)) if match else None
    if winner is None:
        brackets = re.findall(r"\[\[\s*(A|B|tie)\s*\]\]", text, flags=re.IGNORECASE)
        if len({b.lower() for b in brackets}) == 1:
            winner = _winner(brackets[0])
    if winner is None:
        raise VerdictError("no winner (A, B or tie) in the reply")
    match = re.search(r"(?im)^[\s*#]*(?:rationale|reasoning|explanation)[\s*]*[:\-]\s*(.+)$", text)
    return Verdict(winner=winner, rationale=match.group(1).strip() if match else None, structured=False)


def parse_verdict(rubric: Rubric, text: str) -> Verdict:
    """The verdict in a judge's reply, or VerdictError. A JSON object is read first; if the text holds none (or one
    that is not a verdict), labelled lines are tried."""
    obj = first_json_object(text or "")
    error: VerdictError | None = None
    if obj is not None:
        try:
            return _pairwise_from_object(obj) if rubric.pairwise else _pointwise_from_object(rubric, obj)
        except VerdictError as exc:
            error = exc
    try:
        return _pairwise_from_lines(text or "") if rubric.pairwise else _pointwise_from_lines(rubric, text or "")
    except VerdictError as exc:
        raise (error or exc) from None
