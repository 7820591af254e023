"""The teacher backends, by spec prefix. Adding a backend = its module (with a `BACKEND` descriptor and a
`from_spec`) + its test + one line in `BACKEND_MODULES`.

Backend modules import their heavy dependencies (SDKs, vLLM, xllamacpp) only when a teacher is built, so loading
every descriptor here is cheap and a missing optional dependency only matters to its own users.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from gen.teachers.backend import Backend

BACKEND_MODULES = (
    "gen.teachers.openai_api",
    "gen.teachers.anthropic_api",
    "gen.teachers.vllm_engine",
    "gen.teachers.llamacpp",
    "gen.teachers.hf_local",
)


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, tuple[Backend, ModuleType]]:
    found: dict[str, tuple[Backend, ModuleType]] = {}
    for name in BACKEND_MODULES:
        module = importlib.import_module(name)
        descriptor = module.BACKEND
        if descriptor.prefix in found:
            raise RuntimeError(f"{name}: backend prefix {descriptor.prefix!r} is already taken by "
                               f"{found[descriptor.prefix][1].__name__}")
        found[descriptor.prefix] = (descriptor, module)
    return found


def backends() -> dict[str, Backend]:
    """{prefix: descriptor} of every backend, in registry order."""
    return {prefix: descriptor for prefix, (descriptor, _) in _load().items()}


def backend(prefix: str) -> Backend | None:
    entry = _load().get(prefix)
    return entry[0] if entry else None


def module(prefix: str) -> ModuleType:
    """The module of a registered backend (it has `from_spec(model, **options)`)."""
    return _load()[prefix][1]
