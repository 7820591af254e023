"""Ask, parse, and ask once more when the reply cannot be parsed: the judge's one retry, through the engine.

A reply the parser refuses is asked again once, as a *different* request (the prompt ends with a reminder of the
format), so it has its own cache key: a rerun finds both the first reply and the retry's in the request cache and
sends neither again, and the retry is not answered from the cache with the same unparseable text. A reply that
still cannot be parsed is reported as such (`Parsed.unparseable`); the caller records it (a judge: the row goes to
`rejected` with reason `judge_unparseable`) and never substitutes a default.

A request that failed in the engine (after its own retries) or was not sent (budget) is not a reply: it comes back
with `error` set and is neither parsed nor retried here; a rerun of the command sends it again.

(The shared "validate against the schema, retry once" helper of the structured-output work had not been announced
when the judge was written; this is the judge's own, in one module.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gen.teachers.base import ChatRequest, Completion

T = TypeVar("T")

RETRY_NOTE = ("Your previous reply could not be read. Reply again with only the JSON object in the format given "
              "above, and nothing else.")


@dataclass
class Parsed(Generic[T]):
    """One request's outcome: `value` (the parse of the last reply) or why there is none. `replies` are the texts
    received (one, or two after a retry); `problem` why the last one was refused; `error` the engine's error when no
    reply came."""

    value: T | None = None
    replies: list[str] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    problem: str | None = None
    error: str | None = None
    cached: list[bool] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def unparseable(self) -> bool:
        """Replies came, and none could be parsed (after the retry)."""
        return self.value is None and self.error is None

    @property
    def retried(self) -> bool:
        return len(self.replies) > 1

    @property
    def raw(self) -> str | None:
        """The last reply's text."""
        return self.replies[-1] if self.replies else None


def retry_request(request: ChatRequest, note: str = RETRY_NOTE) -> ChatRequest:
    """`request` with `note` appended to its last user message: the same question, its own cache key."""
    messages = list(request.messages)
    for i in range(len(messages) - 1, -1, -1):
        role, content = messages[i]
        if role == "user":
            messages[i] = (role, f"{content}\n\n{note}")
            break
    else:
        messages.append(("user", note))
    return ChatRequest(messages=tuple(messages), params=request.params)


def ask_parsed(engine: Any, requests: Sequence[ChatRequest], parse: Callable[[str], T], *, desc: str = "",
               retry_note: str = RETRY_NOTE, parse_errors: tuple[type[Exception], ...] = (ValueError,)
               ) -> list[Parsed[T]]:
    """Send `requests` through `engine` (in order), parse each reply with `parse` (raising one of `parse_errors`
    when it cannot), ask the refused ones once more (`retry_request`), and return one `Parsed` per request."""
    outcomes: list[Parsed[T]] = [Parsed() for _ in requests]
    retry_positions: list[int] = []
    for position, result in enumerate(engine.run(list(requests), desc=desc) if requests else []):
        _take(outcomes[position], result, parse, parse_errors)
        if outcomes[position].unparseable:
            retry_positions.append(position)
    if retry_positions:
        retries = [retry_request(requests[p], retry_note) for p in retry_positions]
        for position, result in zip(retry_positions, engine.run(retries, desc=f"{desc} (retry)".strip())):
            _take(outcomes[position], result, parse, parse_errors)
    return outcomes


def _take(outcome: Parsed[T], result: Any, parse: Callable[[str], T],
          parse_errors: tuple[type[Exception], ...]) -> None:
    if not result.ok:
        outcome.error = result.error or "failed"
        return
    outcome.error = None
    outcome.completions.append(result.completion)
    outcome.replies.append(result.completion.text)
    outcome.cached.append(bool(result.cached))
    try:
        outcome.value = parse(result.completion.text)
        outcome.problem = None
    except parse_errors as exc:
        outcome.value = None
        outcome.problem = str(exc) or type(exc).__name__
