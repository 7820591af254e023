"""Teacher backends behind one interface (`gen.teachers.base.Teacher`), chosen by a spec string.

| spec                      | backend                                                        | module          |
| ------------------------- | -------------------------------------------------------------- | --------------- |
| `openai:<model>`          | any OpenAI-compatible server (`--base-url`): OpenAI, vllm serve, llama.cpp | `openai_api`    |
| `anthropic:<model>`       | Anthropic's native Messages API                                | `anthropic_api` |
| `vllm:<model-or-path>`    | in-process vLLM; a whole round goes to one `chat` call         | `vllm_engine`   |
| `llamacpp[:<file.gguf>]`  | embedded default: llama.cpp server in-process (xllamacpp), Gemma-3-270M from PyPI | `llamacpp` |

Backends are imported only when chosen, so a missing optional dependency only matters to its own users.
"""

from __future__ import annotations

import importlib
from typing import Any

from gen.errors import UserError
from gen.teachers.base import Teacher
from gen.teachers.spec import TeacherSpec

DEFAULT_TEACHER = "llamacpp"

_BACKENDS = {
    "openai": "gen.teachers.openai_api",
    "anthropic": "gen.teachers.anthropic_api",
    "vllm": "gen.teachers.vllm_engine",
    "llamacpp": "gen.teachers.llamacpp",
}


def parse_spec(spec: str) -> tuple[str, str]:
    """`backend:model` -> (backend, model); `llamacpp` alone means the embedded default model."""
    backend, _, model = spec.partition(":")
    if backend not in _BACKENDS:
        raise UserError(f"--teacher {spec!r}: unknown backend {backend!r} (expected one of: {', '.join(_BACKENDS)})")
    if not model and backend != "llamacpp":
        raise UserError(f"--teacher {spec!r}: missing model name (write {backend}:<model>)")
    return backend, model


def load_teacher(spec: str | TeacherSpec = DEFAULT_TEACHER, **options: Any) -> Teacher:
    """Build the teacher named by `spec`: a `TeacherSpec`, or its name alone (`openai:gpt-4o-mini`) with the backend's
    options as keywords (`options` also add to or override a TeacherSpec's). Each backend module exposes
    `from_spec(model: str, **options) -> Teacher`."""
    if isinstance(spec, TeacherSpec):
        options = {**spec.options(), **options}
        spec = spec.name
    backend, model = parse_spec(spec)
    module = importlib.import_module(_BACKENDS[backend])
    return module.from_spec(model, **options)
