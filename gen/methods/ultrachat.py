"""UltraChat-style curation (Ding et al. 2023, arXiv 2305.14233): meta-information -> opening requests -> multi-turn
dialogues between a simulated user and the assistant.

Three sectors (`operation` of each row):
- `questions_about_the_world`: meta-topics (a shipped list of 30, `--topics FILE` to replace) -> sub-topics
  (teacher) -> questions (teacher) -> dialogues.
- `creation_and_writing`: writing task types (`--task-types FILE`) x meta-topics -> writing requests (teacher).
- `assistance_on_materials`: user documents (`--documents FILE`: .jsonl with `text`, or .txt with one document per
  blank-line-separated paragraph; a few sample documents ship as the default) x {rewrite, summarize, continue,
  question} -> a request about the document (teacher), sent together with the document.

Dialogue: each dialogue samples a turn budget in [min_turns, max_turns] (3-7 by default; a turn is one user message
and the assistant's reply) and a persona. The assistant (the teacher) answers; then the teacher, prompted as the user
with the persona and the conversation so far, writes the next user message, or the stop marker when it has nothing
left to ask. The dialogue ends at the budget or at the stop marker. All active dialogues advance together, one
engine batch per half-turn.

Rows: `messages` alternate user/assistant starting with the opening request, `method="ultrachat"`,
`parent_id` = the opening request's id, `root_id` = the meta-topic / task type / document it came from; `params`
record the persona, the turn budget, the turns taken and why the dialogue ended. Rejections: `unparseable` (a
sub-topic/question list that yields nothing), `duplicate_question` (an opening already used), `empty_reply` (the
assistant returned nothing), and the degeneration reasons of `filters.repetition` (`repetition`, `stutter`,
`enumeration_without_content`, `repeated_list_items`) when a generated turn (either side, after the opening) loops:
the dialogue stops at that turn (no further half-turn is requested; `ended_by: degenerate_turn`) and is rejected
with the looping turn as its last message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from filters.repetition import degeneration_reasons, dialogue_degeneration_reasons
from gen.data.records import content_id
from gen.errors import InvalidSetting
from gen.methods.base import MethodRun
from gen.methods.inputs import load_documents  # noqa: F401  (read here by `gen ultrachat` and the tests)
from gen.methods.parsing import cut_at_speaker_label, parse_list_reply, strip_prefix_labels
from gen.methods.templates import load_template
from gen.teachers.base import ChatRequest, Completion

METHOD = "ultrachat"
WORLD, WRITING, MATERIALS = "questions_about_the_world", "creation_and_writing", "assistance_on_materials"
SECTORS = {"world": WORLD, "writing": WRITING, "materials": MATERIALS}
STOP_MARKER = "[DONE]"
MATERIAL_TASKS = {
    "rewrite": "rewrite it in a different way (for example for another reader, in another tone or in another form)",
    "summarize": "summarize it",
    "continue": "continue writing it",
    "question": "answer a specific question about it (write the question)",
}
UNPARSEABLE, DUPLICATE_QUESTION, EMPTY_REPLY = "unparseable", "duplicate_question", "empty_reply"


@dataclass(frozen=True)
class UltraChatConfig:
    num_dialogues: int = 6
    sectors: tuple[str, ...] = (WORLD, WRITING, MATERIALS)
    min_turns: int = 3
    max_turns: int = 7
    subtopics_per_topic: int = 3
    questions_per_subtopic: int = 3
    requests_per_pair: int = 2
    user_max_tokens: int = 64
    list_max_tokens: int = 160

    def __post_init__(self) -> None:
        if self.min_turns < 1:
            raise InvalidSetting("min_turns", f"min_turns {self.min_turns}: must be at least 1")
        if self.max_turns < self.min_turns:
            raise InvalidSetting("max_turns", f"max_turns {self.max_turns}: must be at least the smallest turn "
                                              f"budget, {self.min_turns}")
        if self.num_dialogues < 1:
            raise InvalidSetting("num_dialogues", f"num_dialogues {self.num_dialogues}: must be at least 1")


@dataclass
class Opening:
    """A first user message and where it came from."""

    text: str
    sector: str
    root: str  # meta-topic, task type or document id
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return content_id("opening", self.sector, self.text)


@dataclass
class Dialogue:
    opening: Opening
    persona: str
    budget: int
    messages: list[dict[str, str]] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    ended_by: str | None = None  # "budget" | "user_done" | "empty_reply" | "degenerate_turn" | "failed"
    degenerate: list[str] = field(default_factory=list)  # the reasons of the turn that stopped it, if one did

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")


def split_counts(total: int, sectors: Sequence[str]) -> dict[str, int]:
    """`total` dialogues over the sectors as evenly as possible (earlier sectors get the remainder)."""
    base, extra = divmod(total, len(sectors))
    return {s: base + (1 if i < extra else 0) for i, s in enumerate(sectors)}


def _clean_item(text: str) -> str:
    return re.sub(r"\s+", " ", text.split("\n")[0]).strip().strip('"').strip()


class UltraChat:
    def __init__(self, run: MethodRun, config: UltraChatConfig, *, topics: Sequence[str], task_types: Sequence[str],
                 documents: Sequence[dict[str, str]], personas: Sequence[str]):
        self.run = run
        self.config = config
        self.topics, self.task_types, self.documents, self.personas = topics, task_types, documents, personas
        self.list_params = run.sampling.replace(max_tokens=min(config.list_max_tokens, run.sampling.max_tokens))
        self.user_params = run.sampling.replace(max_tokens=min(config.user_max_tokens, run.sampling.max_tokens))
        self._used_openings: set[str] = set()

    # ------------------------------------------------------------------------------------------ opening requests
    def _list_request(self, template: str, key: tuple, **variables: Any) -> ChatRequest:
        content = load_template(template).render(**variables)
        return ChatRequest.make([{"role": "user", "content": content}], self.run.params_for(*key, base=self.list_params))

    def _reject_list(self, result: Any, template: str, sector: str, root: str) -> None:
        row = self.run.row(messages=[{"role": "user", "content": result.request.messages[-1][1]},
                                     {"role": "assistant", "content": result.completion.text}],
                           operation=sector, root_id=content_id("root", sector, root),
                           params={"template_hash": load_template(template).hash, "stage": "opening"},
                           completions=[result.completion])
        self.run.reject(row, UNPARSEABLE, round=sector)

    def _add_opening(self, openings: list[Opening], opening: Opening, limit: int, completion: Completion) -> None:
        if len(openings) >= limit or not opening.text:
            return
        key = opening.text.lower()
        if key in self._used_openings:
            row = self.run.row(messages=[{"role": "user", "content": opening.text}], operation=opening.sector,
                               parent_id=opening.id, root_id=content_id("root", opening.sector, opening.root),
                               params={"stage": "opening", **opening.detail}, completions=[completion])
            self.run.reject(row, DUPLICATE_QUESTION, round=opening.sector)
            return
        self._used_openings.add(key)
        openings.append(opening)

    def _openings_from_lists(self, pairs: Sequence[tuple[str, str]], results: Sequence[Any], template: str,
                             sector: str, per_reply: int, count: int,
                             make: Callable[[str, str, str], Opening]) -> list[Opening]:
        """Each list reply -> up to `per_reply` openings, `make(item, *pair)`; a reply with no usable item is
        recorded as a rejection under its pair's first element (the meta-topic or task type)."""
        openings: list[Opening] = []
        for pair, result in zip(pairs, results):
            if not result.ok:
                continue
            items = [item for item in (_clean_item(x) for x in parse_list_reply(result.completion.text)) if item]
            if not items:
                self._reject_list(result, template, sector, pair[0])
            for item in items[:per_reply]:
                self._add_opening(openings, make(item, *pair), count, result.completion)
        return openings

    def world_openings(self, count: int) -> list[Opening]:
        """Meta-topics -> sub-topics -> questions (two teacher stages)."""
        cfg, run = self.config, self.run
        per_topic = cfg.subtopics_per_topic * cfg.questions_per_subtopic
        rng = run.rng("world", "topics")
        topics = rng.sample(list(self.topics), min(len(self.topics), max(1, math.ceil(count / per_topic))))
        results = run.ask([self._list_request("ultrachat_subtopics", ("subtopics", t), n=cfg.subtopics_per_topic,
                                              topic=t) for t in topics], desc="sub-topics", round=WORLD)
        pairs = []
        for topic, result in zip(topics, results):
            if not result.ok:
                continue
            subtopics = [_clean_item(s) for s in parse_list_reply(result.completion.text)][:cfg.subtopics_per_topic]
            subtopics = [s for s in subtopics if s]
            if not subtopics:
                self._reject_list(result, "ultrachat_subtopics", WORLD, topic)
            pairs += [(topic, s) for s in subtopics]
        # Only as many sub-topics as the count needs (in a fixed interleaved order across topics).
        pairs = sorted(pairs, key=lambda p: ([s for t, s in pairs if t == p[0]].index(p[1]), topics.index(p[0])))
        pairs = pairs[:max(1, math.ceil(count / cfg.questions_per_subtopic))]
        results = run.ask([self._list_request("ultrachat_questions", ("questions", t, s), n=cfg.questions_per_subtopic,
                                              topic=t, subtopic=s) for t, s in pairs], desc="questions", round=WORLD)
        return self._openings_from_lists(
            pairs, results, "ultrachat_questions", WORLD, cfg.questions_per_subtopic, count,
            lambda q, topic, subtopic: Opening(q, WORLD, topic, {"meta_topic": topic, "sub_topic": subtopic}))

    def writing_openings(self, count: int) -> list[Opening]:
        """Task types x meta-topics -> writing requests (one teacher stage)."""
        cfg, run = self.config, self.run
        rng = run.rng("writing", "pairs")
        n_pairs = max(1, math.ceil(count / cfg.requests_per_pair))
        pairs = [(rng.choice(list(self.task_types)), rng.choice(list(self.topics))) for _ in range(n_pairs)]
        results = run.ask([self._list_request("ultrachat_writing_requests", ("writing", i, ty, to),
                                              n=cfg.requests_per_pair, task_type=ty, topic=to)
                           for i, (ty, to) in enumerate(pairs)], desc="writing requests", round=WRITING)
        return self._openings_from_lists(
            pairs, results, "ultrachat_writing_requests", WRITING, cfg.requests_per_pair, count,
            lambda r, task_type, topic: Opening(r, WRITING, task_type, {"task_type": task_type, "topic": topic}))

    def material_openings(self, count: int) -> list[Opening]:
        """Documents x {rewrite, summarize, continue, question} -> one request per document, sent with it."""
        run = self.run
        jobs = []
        for i in range(count):
            doc = self.documents[i % len(self.documents)]
            kind = run.rng("materials", i, doc["id"]).choice(sorted(MATERIAL_TASKS))
            jobs.append((doc, kind))
        template = load_template("ultrachat_material_request")
        requests = [ChatRequest.make([{"role": "user", "content": template.render(document=doc["text"],
                                                                                  task=MATERIAL_TASKS[kind])}],
                                     run.params_for("material", i, doc["id"], kind, base=self.user_params))
                    for i, (doc, kind) in enumerate(jobs)]
        openings: list[Opening] = []
        for (doc, kind), result in zip(jobs, run.ask(requests, desc="material requests", round=MATERIALS)):
            if not result.ok:
                continue
            ask = strip_prefix_labels(result.completion.text.strip(), ("message", "user", "request"))
            ask = cut_at_speaker_label(ask).split("\n\n")[0].strip()
            if not ask:
                self._reject_list(result, "ultrachat_material_request", MATERIALS, doc["id"])
                continue
            opening = Opening(f"{ask}\n\n{doc['text']}", MATERIALS, doc["id"], {"document_id": doc["id"], "task": kind})
            self._add_opening(openings, opening, count, result.completion)
        return openings

    # ------------------------------------------------------------------------------------------------ dialogues
    def _user_request(self, d: Dialogue) -> ChatRequest:
        content = load_template("ultrachat_user_simulator").render(persona=d.persona, history=d.messages,
                                                                   stop_marker=STOP_MARKER)
        return ChatRequest.make([{"role": "user", "content": content}],
                                self.run.params_for("user", d.opening.id, d.turns, base=self.user_params))

    def converse(self, openings: Sequence[Opening]) -> list[Dialogue]:
        """Run all dialogues to their end, half-turn by half-turn (one engine batch each)."""
        run, cfg = self.run, self.config
        dialogues = []
        for opening in openings:
            rng = run.rng("dialogue", opening.id)
            dialogues.append(Dialogue(opening=opening, persona=rng.choice(list(self.personas)),
                                      budget=rng.randint(cfg.min_turns, cfg.max_turns),
                                      messages=[{"role": "user", "content": opening.text}]))
        active = list(dialogues)
        while active and not run.stopped:
            turn = max(d.turns for d in active) + 1
            results = run.ask([ChatRequest.make(d.messages, run.params_for("assistant", d.opening.id, d.turns),
                                                system=run.system)
                               for d in active], desc=f"assistant turn {turn}", round="dialogue")
            still = []
            for d, result in zip(active, results):
                if not result.ok:
                    d.ended_by = "failed"
                    continue
                d.completions.append(result.completion)
                text = result.completion.text.strip()
                if not text:
                    d.ended_by = EMPTY_REPLY
                    continue
                d.messages.append({"role": "assistant", "content": text})
                d.degenerate = degeneration_reasons(text)
                if d.degenerate:  # a looping answer: stop here, nothing more is paid for this dialogue
                    d.ended_by = "degenerate_turn"
                elif d.turns >= d.budget:
                    d.ended_by = "budget"
                else:
                    still.append(d)
            if not still or run.stopped:
                break
            results = run.ask([self._user_request(d) for d in still], desc=f"user turn {turn + 1}", round="dialogue")
            active = []
            for d, result in zip(still, results):
                if not result.ok:
                    d.ended_by = "failed"
                    continue
                d.completions.append(result.completion)
                text = strip_prefix_labels(result.completion.text.strip(), ("[you]", "you", "user", "message"))
                text = cut_at_speaker_label(text)  # a base model may run on into the assistant's turn
                if STOP_MARKER.lower() in text.lower():
                    text = text[:text.lower().index(STOP_MARKER.lower())].strip()
                    d.ended_by = "user_done"  # nothing left to ask: the dialogue ends after the assistant's turn
                    continue
                if not text:
                    d.ended_by = "user_done"
                    continue
                d.messages.append({"role": "user", "content": text})
                d.degenerate = degeneration_reasons(text)
                if d.degenerate:  # a looping follow-up: the assistant is not asked to answer it
                    d.ended_by = "degenerate_turn"
                    continue
                active.append(d)
        return dialogues

    def write(self, dialogues: Sequence[Dialogue]) -> None:
        run = self.run
        for d in dialogues:
            if d.ended_by in (None, "failed"):
                continue  # unfinished (budget stop or failed request): a rerun completes it from the cache
            params = {"persona": d.persona, "turn_budget": d.budget, "turns": d.turns, "ended_by": d.ended_by,
                      "template_hash": load_template("ultrachat_user_simulator").hash, **d.opening.detail}
            row = run.row(messages=d.messages, operation=d.opening.sector, parent_id=d.opening.id, system=run.system,
                          root_id=content_id("root", d.opening.sector, d.opening.root), params=params,
                          completions=d.completions)
            degenerate = d.degenerate or dialogue_degeneration_reasons(d.messages)
            if d.ended_by == EMPTY_REPLY or d.turns == 0:
                run.reject(row, EMPTY_REPLY, round=d.opening.sector)
            elif degenerate:
                run.reject(row, degenerate, round=d.opening.sector)
            else:
                run.funnel.add("dialogues", 1, d.opening.sector)
                run.funnel.add("turns", d.turns, d.opening.sector)
                run.keep(row, round=d.opening.sector)

    def generate(self) -> list[Dialogue]:
        counts = split_counts(self.config.num_dialogues, self.config.sectors)
        builders = {WORLD: self.world_openings, WRITING: self.writing_openings, MATERIALS: self.material_openings}
        openings: list[Opening] = []
        for sector in self.config.sectors:
            if counts[sector] and not self.run.stopped:
                found = builders[sector](counts[sector])
                self.run.funnel.add("openings", len(found), sector)
                openings += found
        self.run.commit()
        dialogues = self.converse(openings)
        self.write(dialogues)
        self.run.commit(extra={"ultrachat": {"sectors": list(self.config.sectors),
                                             "turns": [self.config.min_turns, self.config.max_turns]}})
        return dialogues
