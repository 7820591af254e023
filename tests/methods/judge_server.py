"""A scripted judge for exact expectations: the real local OpenAI-compatible server of `tests.latency_server`, whose
replies are decided by the text it is asked to judge (no patched client: requests go through the engine and the
HTTP backend as any judge's would).

Pointwise (the built-in `quality` rubric): the answer under "Answer to grade:" says how to reply —
`score N` -> a JSON verdict of N; `garbage` -> text with no verdict, every time; `late N` -> no verdict the first
time, a verdict of N when the request carries the retry note (the judge's one retry); `lines N` -> a free-text
verdict (`Score: N`). Pairwise: `always_a_judge` always answers "A" (pure position bias); `longer_wins_judge`
prefers the longer answer whatever its position.
"""

from __future__ import annotations

import json
import re

from gen.methods.judge import RETRY_NOTE

_ANSWER = re.compile(r"Answer to grade:\n<<<\n(.*?)\n>>>", re.S)
_PAIR = re.compile(r"Answer A:\n<<<\n(.*?)\n>>>\n\nAnswer B:\n<<<\n(.*?)\n>>>", re.S)


def _prompt(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def pointwise_judge(body: dict) -> str:
    prompt = _prompt(body)
    match = _ANSWER.search(prompt)
    answer = match.group(1) if match else ""
    kind, _, number = answer.partition(" ")
    if kind == "score":
        return json.dumps({"rationale": f"graded {number}", "quality": int(number)})
    if kind == "late":
        if RETRY_NOTE in prompt:
            return f'```json\n{{"rationale": "second try", "quality": {int(number)}}}\n```'
        return "This answer seems fine to me."
    if kind == "lines":
        return f"Rationale: plain text\nScore: {int(number)}"
    return "I cannot decide."  # garbage: never a verdict


def always_a_judge(body: dict) -> str:
    return json.dumps({"rationale": "the first one", "winner": "A"})


def longer_wins_judge(body: dict) -> str:
    a, b = _PAIR.search(_prompt(body)).groups()
    return json.dumps({"rationale": "longer", "winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"})
