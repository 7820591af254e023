"""Magpie (Xu et al. 2024, arXiv 2406.08464): instructions drawn from an *aligned* model with no seed at all.

The model is sent only its *pre-query template* — its chat template up to where a user message's text starts
(`<|im_start|>user\n` for ChatML, with the template's system turn before it) — as a raw completion
(`TextRequest`: no chat template is applied on top). Having been trained to answer what follows that prefix, it
writes what a user would ask. The same teacher then answers the query through its chat API. With `turns > 1` the
model is given the whole conversation so far followed by the next user turn's opening and writes the next query.

    template = PreQueryTemplate.from_chat_template(teacher.render_chat, system=None)   # or .from_text(file text)
    Magpie(run, template, MagpieConfig(instructions=100)).generate()

Filters, as the paper applies them, on the query pool BEFORE any answer is paid for: `empty_query` (no words),
`truncated_query` (cut by max_tokens), `not_a_query` (neither a question nor a task: e.g. the model answered
instead of asking), `repeated_query` (the same text, normalized, earlier in the pool) and `near_duplicate_query`
(MinHash, `filters.minhash.MinHashIndex`, word 3-grams at Jaccard >= 0.7 against every query kept before it); then on
the answers: `empty_answer` and the degeneration reasons of `filters.repetition`. Every rejection is a row of the
`rejected` split. Everything is deterministic given (seed, teacher answers): query i always carries the same
per-request seed, so a rerun after a kill reads every finished request from the cache and writes only missing rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from filters.repetition import dialogue_degeneration_reasons
from gen.data.records import content_id
from gen.errors import InvalidSetting
from gen.methods.base import MethodRun
from gen.teachers.base import ChatRequest, Completion, SamplingParams, TextRequest

METHOD = "magpie"
EMPTY_QUERY, TRUNCATED_QUERY, NOT_A_QUERY = "empty_query", "truncated_query", "not_a_query"
REPEATED_QUERY, NEAR_DUPLICATE_QUERY, EMPTY_ANSWER = "repeated_query", "near_duplicate_query", "empty_answer"

# Placeholder turns rendered through the chat template and then cut out: text no template writes by itself.
_SENTINELS = ("MAGPIEUSERONEQZX", "MAGPIEASSISTANTQZX", "MAGPIEUSERTWOQZX")


@dataclass(frozen=True)
class PreQueryTemplate:
    """The text before a first user message (`prefix`), and, when known from a chat template, what goes between a
    user message and the assistant's (`user_end`) and between an assistant message and the next user's
    (`turn_end`): enough to write any conversation as the template would, and to continue it as the user."""

    prefix: str
    user_end: str | None = None
    turn_end: str | None = None
    source: str = "chat_template"

    @property
    def hash(self) -> str:
        blob = "\x1f".join([self.prefix, self.user_end or "", self.turn_end or ""])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> PreQueryTemplate:
        """A pre-query template given as text (`--pre-query FILE`): single-turn only."""
        if not text.strip():
            raise InvalidSetting("pre_query", "pre_query: the pre-query template is empty")
        return cls(prefix=text, source="file")

    @classmethod
    def from_chat_template(cls, render: Callable[[Sequence[Mapping[str, str]]], str | None],
                           system: str | None = None) -> PreQueryTemplate | None:
        """Render [system?, user, assistant, user] with placeholder texts and cut at them; None when `render`
        cannot (the caller asks for a template file instead)."""
        one, answer, two = _SENTINELS
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": one}, {"role": "assistant", "content": answer},
            {"role": "user", "content": two}]
        text = render(messages)
        if not text or any(s not in text for s in _SENTINELS):
            return None
        prefix, rest = text.split(one, 1)
        user_end, rest = rest.split(answer, 1)
        turn_end = rest.split(two, 1)[0]
        return cls(prefix=prefix, user_end=user_end, turn_end=turn_end)

    def query_stop(self) -> tuple[str, ...]:
        """Where a user turn ends: the first marker of `user_end` (e.g. `<|im_end|>`), besides the model's EOS."""
        if not self.user_end or not self.user_end.strip():
            return ()
        return (self.user_end.strip().split("\n")[0].strip(),)

    def continuation(self, turns: Sequence[tuple[str, str]]) -> str:
        """The prompt for the next query after complete (query, answer) turns."""
        if self.user_end is None or self.turn_end is None:
            raise InvalidSetting("turns", "turns: a multi-turn Magpie run needs the chat template (not a pre-query "
                                          "file): the template says how a turn ends")
        return self.prefix + "".join(q + self.user_end + a + self.turn_end for q, a in turns)


@dataclass(frozen=True)
class MagpieConfig:
    instructions: int = 100  # queries drawn (raw completions); rows kept are fewer after the filters
    turns: int = 1
    query_temperature: float = 1.0  # the paper's settings for the query
    query_top_p: float = 1.0
    query_max_tokens: int = 128
    near_duplicate_threshold: float = 0.7

    def __post_init__(self) -> None:
        if self.instructions < 1:
            raise InvalidSetting("instructions", f"instructions {self.instructions}: must be at least 1")
        if self.turns < 1:
            raise InvalidSetting("turns", f"turns {self.turns}: must be at least 1")
        if self.query_max_tokens < 1:
            raise InvalidSetting("query_max_tokens", f"query_max_tokens {self.query_max_tokens}: must be at least 1")
        if not 0.0 <= self.query_temperature <= 2.0:
            raise InvalidSetting("query_temperature", f"query_temperature {self.query_temperature}: must be within "
                                                      "[0, 2]")
        if not 0.0 < self.query_top_p <= 1.0:
            raise InvalidSetting("query_top_p", f"query_top_p {self.query_top_p}: must be within (0, 1]")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise InvalidSetting("near_duplicate_threshold", "near_duplicate_threshold: must be within (0, 1]")


# A query is a question or a task: it asks (ends with "?", or opens like a question) or it tells the assistant to do
# something (opens with a request verb). What it must not be: an answer (the model replied instead of asking).
_QUESTION_OPENERS = frozenset(
    "what what's whats how why when where which who whom whose is are am was were do does did can could would will "
    "should shall may might has have had isn't aren't don't doesn't didn't can't any".split())
_TASK_OPENERS = frozenset(
    "write explain describe list give create make tell help compose draft summarize summarise translate compare "
    "generate provide suggest name calculate find solve rewrite edit design plan outline analyze analyse evaluate "
    "classify convert recommend show teach define identify discuss imagine please i i'm i've im my we our let's "
    "lets consider develop build implement prove fix debug review correct choose rank sort extract brainstorm "
    "paraphrase simplify elaborate share determine estimate predict recommend craft propose".split())
_ANSWER_OPENERS = re.compile(r"^\s*(sure\b|certainly\b|of course\b|absolutely\b|as an ai\b|i'm sorry\b|"
                             r"i am sorry\b|hello\b|hi\b|thank you\b|thanks\b|great question\b)", re.IGNORECASE)
_WORD = re.compile(r"[\w']+")


def query_reasons(text: str, finish_reason: str | None) -> list[str]:
    """Why a drawn query is not one (the per-query filters; duplicates are judged over the pool)."""
    words = _WORD.findall(text.lower())
    if not words:
        return [EMPTY_QUERY]
    if finish_reason == "length":
        return [TRUNCATED_QUERY]
    asks = text.rstrip().endswith("?") or words[0] in _QUESTION_OPENERS or words[0] in _TASK_OPENERS \
        or "?" in text
    if not asks or _ANSWER_OPENERS.match(text):
        return [NOT_A_QUERY]
    return []


def normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


@dataclass
class Conversation:
    index: int
    turns: list[tuple[str, str]] = field(default_factory=list)  # complete (query, answer) turns
    query: str | None = None  # the pending query
    completions: list[Completion] = field(default_factory=list)
    ended_by: str | None = None


class Magpie:
    def __init__(self, run: MethodRun, template: PreQueryTemplate, config: MagpieConfig):
        if config.turns > 1 and (template.user_end is None or template.turn_end is None):
            template.continuation([])  # raises the one-line reason
        self.run = run
        self.template = template
        self.config = config

    # ------------------------------------------------------------------------------------------------ requests
    def _query_params(self, conversation: Conversation) -> SamplingParams:
        return self.run.params_for("query", conversation.index, len(conversation.turns),
                                   max_tokens=self.config.query_max_tokens, temperature=self.config.query_temperature,
                                   top_p=self.config.query_top_p, stop=self.template.query_stop())

    def query_request(self, conversation: Conversation) -> TextRequest:
        return TextRequest(self.template.continuation(conversation.turns) if conversation.turns
                           else self.template.prefix, self._query_params(conversation))

    def answer_request(self, conversation: Conversation) -> ChatRequest:
        messages = [m for q, a in conversation.turns for m in
                    ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        messages.append({"role": "user", "content": conversation.query or ""})
        return ChatRequest.make(messages, self.run.params_for("answer", conversation.index, len(conversation.turns)),
                                system=self.run.system)

    # ------------------------------------------------------------------------------------------------ the loop
    def generate(self) -> list[Conversation]:
        from filters.minhash import MinHashIndex

        run, config = self.run, self.config
        conversations = [Conversation(i) for i in range(config.instructions)]
        seen: set[str] = set()
        index = MinHashIndex(threshold=config.near_duplicate_threshold, shingle="word", ngram=3)
        active = conversations
        for turn in range(1, config.turns + 1):
            if not active or run.stopped:
                break
            results = run.ask([self.query_request(c) for c in active], desc=f"magpie queries (turn {turn})",
                              round=turn)
            asking = []
            for c, result in zip(active, results):
                if not result.ok:
                    c.ended_by = "failed"
                    continue
                c.completions.append(result.completion)
                query = result.completion.text.strip()
                reasons = query_reasons(query, result.completion.finish_reason)
                if not reasons:
                    key = normalized(query)
                    if key in seen:
                        reasons = [REPEATED_QUERY]
                    elif index.check_and_add(c.index * 1000 + turn, query) is not None:
                        reasons = [NEAR_DUPLICATE_QUERY]
                    seen.add(key)
                run.funnel.add("queries", 1, turn)
                if reasons:
                    self._reject_query(c, query, reasons, turn)
                    continue
                c.query = query
                asking.append(c)
            # Answers are paid for only now, for the queries that passed every filter over the whole pool.
            answers = run.ask([self.answer_request(c) for c in asking], desc=f"magpie answers (turn {turn})",
                              round=turn)
            still = []
            for c, result in zip(asking, answers):
                if not result.ok:
                    c.ended_by = "failed"
                    continue
                c.completions.append(result.completion)
                c.turns.append((c.query or "", result.completion.text.strip()))
                c.query = None
                still.append(c)
            active = still
        for c in conversations:
            if c.turns and c.ended_by in (None, "query_filtered"):
                self._write(c)
        run.commit(extra={"magpie": {"instructions": config.instructions, "turns": config.turns,
                                     "pre_query_hash": self.template.hash, "pre_query_source": self.template.source}})
        return conversations

    # ------------------------------------------------------------------------------------------------ rows
    def draw_id(self, c: Conversation) -> str:
        """The lineage root of a conversation: its draw (run seed, query number, template), as no seed exists."""
        return content_id(METHOD, self.run.seed, c.index, self.template.hash)

    def _params(self, c: Conversation) -> dict[str, Any]:
        return {"pre_query_hash": self.template.hash, "pre_query_source": self.template.source, "draw": c.index,
                "query_temperature": self.config.query_temperature, "query_top_p": self.config.query_top_p,
                "query_max_tokens": self.config.query_max_tokens, "turns": len(c.turns),
                "max_turns": self.config.turns}

    def _messages(self, c: Conversation) -> list[dict[str, str]]:
        return [m for q, a in c.turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]

    def _reject_query(self, c: Conversation, query: str, reasons: list[str], turn: int) -> None:
        if c.turns:  # a later turn's query failed: the conversation ends with the turns it has
            c.ended_by = "query_filtered"
            self.run.funnel.add(f"later_query_{reasons[0]}", 1, turn)
            return
        c.ended_by = "rejected"
        row = self.run.row(messages=[{"role": "user", "content": query}], operation="query", round=turn,
                           root_id=self.draw_id(c), params=self._params(c), completions=c.completions,
                           system=self.run.system)
        self.run.reject(row, reasons, round=turn)

    def _write(self, c: Conversation) -> None:
        run = self.run
        messages = self._messages(c)
        row = run.row(messages=messages, operation=METHOD, round=len(c.turns), root_id=self.draw_id(c),
                      params=self._params(c), completions=c.completions, system=run.system)
        if not c.turns[-1][1] or any(not a for _, a in c.turns):
            run.reject(row, EMPTY_ANSWER, round=len(c.turns))
            return
        degenerate = dialogue_degeneration_reasons(messages)
        if degenerate:
            run.reject(row, degenerate, round=len(c.turns))
            return
        run.keep(row, round=len(c.turns))
