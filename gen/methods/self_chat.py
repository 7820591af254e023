"""Self-chat (Baize, Xu et al. 2023, arXiv 2304.01196): one teacher plays both the person and the assistant.

Inputs: seed questions (`--seeds FILE`: .txt one per line, or .jsonl/.json with a question/instruction field; a short
list ships as the default). Output: one row per dialogue, `messages` alternating user/assistant and starting with
the seed question, `method="self_chat"`, `operation="self_chat"`, `parent_id` = `root_id` = the seed's id; `params`
record the turns taken, the tokens spent and why the dialogue ended (`end_marker`, `max_turns`, `token_budget`).

How a dialogue is generated: the self-chat template (`self_chat.txt`) describes a transcript whose lines start with
`[Human]` or `[AI]`; each request shows the transcript so far and asks for the next line, with the *other*
speaker's marker as a stop sequence, so one request yields exactly one turn. Either side may write `[END]` (the
person when it has nothing left to ask): the text before it is kept and the dialogue ends. The dialogue also ends
after `max_turns` assistant turns or once its completions have used `max_tokens_per_dialog` tokens. A dialogue always
ends on an assistant turn (a trailing person turn is dropped). Rejected: `empty_reply` (the assistant said nothing
in its first turn), and the degeneration reasons of `filters.repetition` (`repetition`, `stutter`,
`enumeration_without_content`, `repeated_list_items`) when a generated turn (either side, after the seed) loops:
the dialogue stops at that turn (no more requests for it; `ended_by: degenerate_turn`) and the rejected row keeps the
transcript up to and including the looping turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from filters.repetition import degeneration_reasons, dialogue_degeneration_reasons
from gen.errors import InvalidSetting
from gen.methods.base import MethodRun
from gen.methods.inputs import SeedItem
from gen.methods.parsing import cut_at_speaker_label
from gen.methods.templates import load_template
from gen.teachers.base import ChatRequest, Completion

METHOD = "self_chat"
HUMAN, AI, END = "[Human]", "[AI]", "[END]"
EMPTY_REPLY = "empty_reply"


@dataclass(frozen=True)
class SelfChatConfig:
    max_turns: int = 4  # assistant turns
    max_tokens_per_dialog: int = 1024  # completion tokens over the whole dialogue

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise InvalidSetting("max_turns", f"max_turns {self.max_turns}: must be at least 1")
        if self.max_tokens_per_dialog < 1:
            raise InvalidSetting("max_tokens_per_dialog",
                                 f"max_tokens_per_dialog {self.max_tokens_per_dialog}: must be at least 1")


@dataclass
class SelfChatDialogue:
    seed: SeedItem
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (speaker marker, text)
    completions: list[Completion] = field(default_factory=list)
    ended_by: str | None = None
    degenerate: list[str] = field(default_factory=list)  # the reasons of the turn that stopped it, if one did

    @property
    def tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)

    @property
    def ai_turns(self) -> int:
        return sum(1 for speaker, _ in self.transcript if speaker == AI)

    def next_speaker(self) -> str:
        return AI if self.transcript[-1][0] == HUMAN else HUMAN


_OWN_LABELS = {
    HUMAN: re.compile(r"^\s*(\[human\]|human\s*:|user\s*:|person\s*:)\s*", re.IGNORECASE),
    AI: re.compile(r"^\s*(\[ai\]|ai\s*:|assistant\s*:)\s*", re.IGNORECASE),
}


def clean_turn(text: str, speaker: str) -> tuple[str, bool]:
    """(the turn's text, whether it ended the conversation): strip the speaker's own repeated marker(s), cut at
    [END] (which ends the dialogue) and wherever another speaker's turn starts (a marker that slipped past the stop
    sequence, or a transcript label like "Human:" / "User:" that a base model writes)."""
    text = text.strip()
    while True:
        stripped = _OWN_LABELS[speaker].sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    ended = False
    if END.lower() in text.lower():
        text, ended = text[:text.lower().index(END.lower())], True
    other = HUMAN if speaker == AI else AI
    if other.lower() in text.lower():
        text = text[:text.lower().index(other.lower())]
    return cut_at_speaker_label("\n" + text), ended


def to_messages(transcript: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """[Human] -> user, [AI] -> assistant; the dialogue is cut after its last assistant turn."""
    messages = [{"role": "user" if speaker == HUMAN else "assistant", "content": text} for speaker, text in transcript]
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


class SelfChat:
    def __init__(self, run: MethodRun, config: SelfChatConfig):
        self.run = run
        self.config = config
        self.template = load_template("self_chat")

    def _request(self, d: SelfChatDialogue) -> ChatRequest:
        speaker = d.next_speaker()
        content = self.template.render(human=HUMAN, ai=AI, end=END, transcript=d.transcript, next=speaker)
        other = HUMAN if speaker == AI else AI
        remaining = self.config.max_tokens_per_dialog - d.tokens
        params = self.run.params_for("turn", d.seed.id, len(d.transcript),
                                     max_tokens=max(1, min(self.run.sampling.max_tokens, remaining)),
                                     stop=(other, f"\n{other}"))
        return ChatRequest.make([{"role": "user", "content": content}], params)

    def chat(self, seeds: Sequence[SeedItem]) -> list[SelfChatDialogue]:
        run = self.run
        dialogues = [SelfChatDialogue(seed=s, transcript=[(HUMAN, s.instruction)]) for s in seeds]
        run.funnel.add("seeds", len(dialogues))
        active = list(dialogues)
        step = 0
        while active and not run.stopped:
            step += 1
            results = run.ask([self._request(d) for d in active], desc=f"self-chat turn {step}", round="dialogue")
            still = []
            for d, result in zip(active, results):
                if not result.ok:
                    d.ended_by = "failed"
                    continue
                speaker = d.next_speaker()
                d.completions.append(result.completion)
                text, ended = clean_turn(result.completion.text, speaker)
                if text:
                    d.transcript.append((speaker, text))
                    # A looping turn (either side) stops the dialogue here: nothing more is paid for it, and it is
                    # rejected with the turn's reasons (`write`).
                    d.degenerate = degeneration_reasons(text)
                elif speaker == AI:
                    ended = True  # an assistant with nothing to say ends the dialogue
                if d.degenerate:
                    d.ended_by = "degenerate_turn"
                elif ended:
                    d.ended_by = "end_marker"
                elif d.ai_turns >= self.config.max_turns:
                    d.ended_by = "max_turns"
                elif d.tokens >= self.config.max_tokens_per_dialog:
                    d.ended_by = "token_budget"
                elif not text:
                    d.ended_by = "end_marker"  # the person had nothing to say
                else:
                    still.append(d)
            active = still
        return dialogues

    def write(self, dialogues: Sequence[SelfChatDialogue]) -> None:
        run = self.run
        for d in dialogues:
            if d.ended_by in (None, "failed"):
                continue  # a rerun finishes it from the cache
            messages = to_messages(d.transcript)
            params = {"template_hash": self.template.hash, "turns": d.ai_turns, "dialog_tokens": d.tokens,
                      "ended_by": d.ended_by, "max_turns": self.config.max_turns,
                      "max_tokens_per_dialog": self.config.max_tokens_per_dialog}
            if d.degenerate:  # the whole transcript, the looping turn included (even a person's last turn)
                looped = [{"role": "user" if speaker == HUMAN else "assistant", "content": text}
                          for speaker, text in d.transcript]
                run.reject(run.row(messages=looped, operation=METHOD, parent_id=d.seed.id, root_id=d.seed.id,
                                   params=params, completions=d.completions), d.degenerate)
                continue
            if not messages:
                row = run.row(messages=[{"role": "user", "content": d.seed.instruction}], operation=METHOD,
                              parent_id=d.seed.id, root_id=d.seed.id, params=params, completions=d.completions)
                run.reject(row, EMPTY_REPLY)
                continue
            row = run.row(messages=messages, operation=METHOD, parent_id=d.seed.id, root_id=d.seed.id,
                          params=params, completions=d.completions)
            degenerate = dialogue_degeneration_reasons(messages)
            if degenerate:
                run.reject(row, degenerate)
                continue
            run.funnel.add("dialogues")
            run.funnel.add("turns", d.ai_turns)
            run.keep(row)

    def generate(self, seeds: Sequence[SeedItem]) -> list[SelfChatDialogue]:
        dialogues = self.chat(seeds)
        self.write(dialogues)
        self.run.commit(extra={"self_chat": {"max_turns": self.config.max_turns,
                                             "max_tokens_per_dialog": self.config.max_tokens_per_dialog}})
        return dialogues
