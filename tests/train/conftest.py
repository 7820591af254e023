"""Shared fixtures for the trainer and logit-capture tests: one tokenizer, a tiny teacher and student that share it,
a small conversational run and the teacher's logit shards over it (built once per session, a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from gen.data.records import make_row
from gen.data.shards import ShardWriter
from tests.tiny_models import build_tiny_llama, build_tokenizer

K = 16


def synthetic_conversations(n: int, seed: int = 0) -> list[dict]:
    """Rows with varied lengths: counting tasks, some with a system message, some with two turns."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        start, step, length = int(rng.integers(0, 90)), int(rng.integers(1, 4)), int(rng.integers(3, 12))
        answer = " ".join(str(start + step * j) for j in range(length))
        messages = [{"role": "user", "content": f"Count from {start} by {step}, {length} numbers."},
                    {"role": "assistant", "content": answer}]
        if i % 3 == 2:
            messages += [{"role": "user", "content": "Again, backwards."},
                         {"role": "assistant", "content": " ".join(reversed(answer.split()))}]
        rows.append(make_row(messages=messages, method="test", operation=str(i),
                             system="Answer with numbers only." if i % 4 == 1 else None))
    return rows


def write_conversations(directory, rows) -> None:
    with ShardWriter(directory) as writer:
        writer.write_many(rows)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tiny_tokenizer):
    """(tokenizer, teacher_dir, student_dir): two different random Llamas over one tokenizer."""
    root = tmp_path_factory.mktemp("tiny_pair")
    tokenizer = tiny_tokenizer
    teacher = build_tiny_llama(root / "teacher", tokenizer=tokenizer, seed=1, hidden_size=64, layers=2)
    student = build_tiny_llama(root / "student", tokenizer=tokenizer, seed=2, hidden_size=64, layers=1)
    return tokenizer, teacher, student


@pytest.fixture(scope="session")
def conversations(tmp_path_factory):
    directory = tmp_path_factory.mktemp("conversations")
    write_conversations(directory, synthetic_conversations(24))
    return directory


@pytest.fixture(scope="session")
def logit_shards(tiny_pair, conversations, tmp_path_factory):
    from gen.logits.capture import HFLogitTeacher, capture_logits

    _, teacher_dir, _ = tiny_pair
    out = tmp_path_factory.mktemp("logits")
    teacher = HFLogitTeacher(str(teacher_dir))
    capture_logits(conversations, out, teacher, K, progress=False, batch_size=8)
    return out
