"""Heuristic quality filters, each with a named reason.

A rejected row carries the names of every check it failed (its `filters` column), so the funnel can say how many
rows each rule removed. The checks look at the instruction (first user message), the answers (assistant messages)
and the finish reason; they are plain functions over texts so the methods can call them inside generation
(Evol-Instruct's eliminator uses `is_refusal` and `only_punctuation_and_stopwords`).

Reasons:
- `empty_answer`: an assistant message that is empty or only whitespace.
- `truncated`: `finish_reason == "length"`: the teacher stopped at its token limit, the answer is cut off.
- `refusal`: the (last) answer refuses or apologizes instead of answering (`is_refusal`).
- `copies_question`: the answer repeats the instruction (ROUGE-L >= 0.9 and not more than 1.5× its length),
  a classic failure of small teachers that would teach the student to echo.
- `too_short` / `too_long`: the last answer outside [min_chars, max_chars] characters.
- `non_text_task`: the instruction asks for something a text model cannot do or see (images, audio, video,
  diagrams, attachments), Self-Instruct's rule (§2.3: "image, picture, graph"). Its code also dropped "file",
  "map", "plot" and "go to"; those words are common in text tasks (coding, stories), so they are left out here.
- `trivial_instruction`: the instruction is only punctuation and stop words.
- degeneration (`filters.repetition`, on every user and assistant message): `repetition` (Gopher's repetition
  rules), `stutter`, `enumeration_without_content`, `repeated_list_items`; `QualityConfig.repetition` holds their
  thresholds (None switches them off).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from filters.repetition import RepetitionConfig, row_degeneration_reasons
from filters.rouge import rouge_l, tokenize

EMPTY_ANSWER = "empty_answer"
TRUNCATED = "truncated"
REFUSAL = "refusal"
COPIES_QUESTION = "copies_question"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NON_TEXT_TASK = "non_text_task"
TRIVIAL_INSTRUCTION = "trivial_instruction"
REASONS = (EMPTY_ANSWER, TRUNCATED, REFUSAL, COPIES_QUESTION, TOO_SHORT, TOO_LONG, NON_TEXT_TASK,
           TRIVIAL_INSTRUCTION)

# Common English function words: a text made only of these (and punctuation) carries no task.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just let me more most my myself no nor not now
    of off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves ok okay yes please
    thanks thank hi hello hey etc s t d ll m re ve""".split()
)

# Refusal / apology openings and the phrases models use to decline. Matched on the lowercased first 300 characters
# (a refusal comes first; an answer that mentions "I cannot" deep inside is usually a real answer).
_REFUSAL_PATTERNS = re.compile(
    r"""(
        \bas\s+an?\s+(ai|artificial\s+intelligence|language\s+model|large\s+language\s+model|ai\s+language\s+model|
            ai\s+assistant|assistant)\b[^.]{0,80}\b(cannot|can't|can\s+not|unable|not\s+able|don't|do\s+not|
            am\s+not|won't)
      | \bi\s*(?:'m|\s+am)\s+(?:really\s+|very\s+|so\s+)?sorry\b
      | \bi\s+(?:sincerely\s+)?apologi[sz]e\b
      | ^\s*(?:my\s+)?apologies\b
      | ^\s*sorry\b
      | \bi\s*(?:cannot|can't|can\s+not|could\s+not|couldn't|won't|will\s+not|am\s+unable\s+to|'m\s+unable\s+to|
            am\s+not\s+able\s+to|'m\s+not\s+able\s+to|am\s+not\s+allowed\s+to|must\s+decline\s+to)\s+
            (?:help|assist|provide|comply|fulfil+|answer|do\s+that|do\s+this|create|generate|write|complete|
               perform|access|browse|view|see|open|engage|support|share|give)\b
      | \bi\s+(?:must|have\s+to)\s+(?:respectfully\s+)?decline\b
      | \b(?:this|that|your)\s+request\s+(?:is|goes)\s+(?:against|beyond|outside)\b
    )""",
    re.VERBOSE,
)
# An answer this long that merely opens with "Sorry, ..." usually goes on to answer; longer ones need a stronger cue.
_SHORT_APOLOGY_WORDS = 60
_APOLOGY_ONLY = re.compile(r"^\s*(?:i\s*(?:'m|\s+am)\s+sorry|sorry|i\s+apologi[sz]e|(?:my\s+)?apologies)\b")

# Things a text-only model can neither see nor produce (Self-Instruct drops instructions that mention them).
_NON_TEXT = re.compile(
    r"""\b(images?|pictures?|photos?|photographs?|graphs?|drawings?|draw|diagrams?|flowcharts?|videos?|audio|music|
        recordings?|attachments?|attached|screenshots?)\b""",
    re.VERBOSE,
)


def is_refusal(text: str) -> bool:
    """True when the text declines or apologizes instead of answering ("I'm sorry, but I cannot...",
    "As an AI language model, I can't..."). A long answer that opens with "Sorry," but goes on is not a refusal
    unless it also says it cannot help."""
    head = text.strip().lower().replace("’", "'")[:300]
    if not head:
        return False
    match = _REFUSAL_PATTERNS.search(head)
    if match is None:
        return False
    if _APOLOGY_ONLY.match(head) and len(text.split()) > _SHORT_APOLOGY_WORDS:
        # "Sorry for the confusion! Here is the corrected code: ..." -- look for a real refusal cue after the opening.
        rest = head[_APOLOGY_ONLY.match(head).end():]
        return re.search(r"\b(cannot|can't|can\s+not|unable|not\s+able|won't|decline)\b", rest) is not None
    return True


def only_punctuation_and_stopwords(text: str) -> bool:
    """True when the text has no token outside `STOPWORDS` (empty and punctuation-only texts included)."""
    return all(token in STOPWORDS for token in tokenize(text))


def mentions_non_text(text: str) -> bool:
    """True when an instruction refers to images, audio, video, diagrams... (Self-Instruct's keyword rule)."""
    return _NON_TEXT.search(text.lower()) is not None


def copies_question(instruction: str, answer: str, threshold: float = 0.9) -> bool:
    """True when the answer is (nearly) the instruction again: ROUGE-L >= threshold and at most 1.5× its length."""
    if not instruction.strip() or not answer.strip():
        return False
    if len(answer) > 1.5 * len(instruction) + 20:
        return False
    return rouge_l(instruction, answer) >= threshold


@dataclass(frozen=True)
class QualityConfig:
    """Which checks run and their bounds (None / False switches a check off). Character counts on the last answer."""

    min_chars: int | None = 1
    max_chars: int | None = None
    truncated: bool = True
    refusal: bool = True
    copies_question: float | None = 0.9
    non_text_task: bool = True
    trivial_instruction: bool = True
    repetition: RepetitionConfig | None = RepetitionConfig()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_reasons(
    instruction: str,
    answers: Sequence[str],
    finish_reason: str | None = None,
    config: QualityConfig = QualityConfig(),
) -> list[str]:
    """Names of the checks a conversation fails (empty list: keep). `answers`: every assistant message, in order;
    the answer-level checks other than emptiness look at the last one."""
    reasons: list[str] = []
    last = answers[-1] if answers else ""
    if not answers or any(not a.strip() for a in answers):
        reasons.append(EMPTY_ANSWER)
    if config.truncated and finish_reason == "length":
        reasons.append(TRUNCATED)
    if config.refusal and last.strip() and is_refusal(last):
        reasons.append(REFUSAL)
    if config.copies_question is not None and copies_question(instruction, last, config.copies_question):
        reasons.append(COPIES_QUESTION)
    length = len(last.strip())
    if config.min_chars is not None and length < config.min_chars and EMPTY_ANSWER not in reasons:
        reasons.append(TOO_SHORT)
    if config.max_chars is not None and length > config.max_chars:
        reasons.append(TOO_LONG)
    if config.non_text_task and mentions_non_text(instruction):
        reasons.append(NON_TEXT_TASK)
    if config.trivial_instruction and only_punctuation_and_stopwords(instruction):
        reasons.append(TRIVIAL_INSTRUCTION)
    return reasons


def row_quality_reasons(row: Mapping[str, Any], config: QualityConfig = QualityConfig()) -> list[str]:
    """`quality_reasons` of a conversational row (`messages` = [{role, content}, ...], optional `finish_reason`)."""
    messages = row.get("messages") or []
    instruction = next((m["content"] or "" for m in messages if m["role"] == "user"), "")
    answers = [m["content"] or "" for m in messages if m["role"] == "assistant"]
    reasons = quality_reasons(instruction, answers, row.get("finish_reason"), config)
    if config.repetition is not None:
        reasons += row_degeneration_reasons(row, config.repetition)
    return reasons
