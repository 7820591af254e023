"""Teacher backends behind one interface (`gen.teachers.base.Teacher`), chosen by a spec string.

| spec                      | backend                                                        | module          |
| ------------------------- | -------------------------------------------------------------- | --------------- |
| `openai:<model>`          | any OpenAI-compatible server (`--base-url`): OpenAI, vllm serve, llama.cpp | `openai_api`    |
| `anthropic:<model>`       | Anthropic's native Messages API                                | `anthropic_api` |
| `vllm:<model-or-path>`    | in-process vLLM; a whole round goes to one `chat` call         | `vllm_engine`   |
| `llamacpp[:<file.gguf>]`  | embedded default: llama.cpp server in-process (xllamacpp), Gemma-3-270M from PyPI | `llamacpp` |
| `hf:<path>`               | a local transformers model (dir or .gguf), batched `generate`, per-request sampling | `hf_local` |

Each backend module declares itself once (`BACKEND = gen.teachers.backend.Backend(...)`: prefix, key variables,
prices, terms) and builds its teacher in `from_spec`; `gen.teachers.registry` lists the modules. The HTTP backends
share `gen.teachers.http_base.HTTPTeacher` (transport choice, credentials, error mapping) and can sit behind an
`gen.teachers.endpoints.EndpointPool` (`--base-url URL1,URL2`).
"""

from __future__ import annotations

from typing import Any

from gen.errors import UserError
from gen.teachers import registry
from gen.teachers.base import Teacher
from gen.teachers.spec import TeacherSpec

DEFAULT_TEACHER = "llamacpp"


def parse_spec(spec: str) -> tuple[str, str]:
    """`backend:model` -> (backend, model); a backend with a default model (`llamacpp`) may be named alone."""
    prefix, _, model = spec.partition(":")
    known = registry.backends()
    if prefix not in known:
        raise UserError(f"--teacher {spec!r}: unknown backend {prefix!r} (expected one of: {', '.join(known)})")
    if not model and known[prefix].model_required:
        raise UserError(f"--teacher {spec!r}: missing model name (write {prefix}:<model>)")
    return prefix, model


def load_teacher(spec: str | TeacherSpec = DEFAULT_TEACHER, **options: Any) -> Teacher:
    """Build the teacher named by `spec`: a `TeacherSpec`, or its name alone (`openai:gpt-4o-mini`) with the backend's
    options as keywords (`options` also add to or override a TeacherSpec's). Each backend module exposes
    `from_spec(model: str, **options) -> Teacher`."""
    if isinstance(spec, TeacherSpec):
        options = {**spec.options(), **options}
        spec = spec.name
    prefix, model = parse_spec(spec)
    return registry.module(prefix).from_spec(model, **options)
