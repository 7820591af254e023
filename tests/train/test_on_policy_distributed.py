"""`gen train --on-policy` beyond one process (CPU, gloo, 2 ranks under torchrun).

What holds, and why it is exact: the on/off decision per micro-batch comes from one `random.Random(seed)` that every
rank (and a single process) draws identically; each rank's micro-batch is its own share of the global batch (the
data sampler's shards), and the student writes the completions of *its* prompts. With greedy sampling
(`gen_temperature 0`) a completion depends only on its prompt and the weights, not on which rank or which batch
neighbours it had (left padding is masked; positions follow the mask), so 2 ranks x batch 2 see exactly the
samples of 1 process x batch 4, and the loss-token normalization spanning ranks makes the whole loss curve that of
one process. (With temperature > 0 each rank draws from its own seeded stream, so no exact 1-vs-2 match exists;
the one-process kill/resume test covers the sampling stream's restore.)

The 2-rank run is also killed after step 3 and resumed to step 6 in the same launch: the curve after the resume is
still the one-process curve, so each rank's saved sampler state (`on_policy_state_<rank>.pt`: the decision stream,
its sampling stream and counters) was restored. Each rank's state shows it sampled its own prompts: the two ranks'
counters differ and add up to the one process's.

This file is also the 2-rank worker: `python -m torch.distributed.run ... tests/train/test_on_policy_distributed.py
worker ...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))


def _config(student_dir, teacher_dir, data: list[str], out, batch_size: int, **extra):
    from train.trainer import TrainConfig

    return TrainConfig(student=str(student_dir), data=data, out=str(out), max_steps=6, batch_size=batch_size,
                       lr=3e-3, scheduler="constant", max_length=256, logging_steps=1, save_steps=3, seed=3,
                       teacher=f"hf:{teacher_dir}", on_policy=0.5, gen_temperature=0.0, gen_max_new_tokens=8,
                       **extra)


def worker(student_dir: str, teacher_dir: str, out: str, data: list[str]) -> None:
    """2 ranks x batch 2: stopped after step 3 (a kill: checkpoint-3 is on disk), then resumed to step 6."""
    from tests.train.test_on_policy import StopAt
    from train.trainer import train

    train(_config(student_dir, teacher_dir, data, out, 2, extra_callbacks=[StopAt(3)]))
    train(_config(student_dir, teacher_dir, data, out, 2, resume=True))


def _sampler_state(checkpoint: Path, rank: int) -> dict:
    return torch.load(checkpoint / f"on_policy_state_{rank}.pt", weights_only=True)


def test_two_ranks_sample_their_own_prompts_and_resume_on_the_curve_of_one_process(tiny_pair, conversations,
                                                                                    logit_shards, tmp_path):
    from tests.train.test_distributed import _logged, _torchrun
    from train.trainer import train

    _, teacher_dir, student_dir = tiny_pair
    data = [str(logit_shards), str(conversations)]  # KD shards and SFT rows, mixed with on-policy micro-batches
    one = tmp_path / "one"
    train(_config(student_dir, teacher_dir, data, one, 4))
    two = tmp_path / "two"
    _torchrun([str(Path(__file__)), "worker", str(student_dir), str(teacher_dir), str(two), *data], tmp_path)

    single, distributed = _logged(one), _logged(two)
    assert [e["step"] for e in single] == [e["step"] for e in distributed] == [1, 2, 3, 4, 5, 6]
    fractions = [e["on_policy_fraction"] for e in single]
    assert 0 in fractions and 1 in fractions  # on-policy and offline steps, before and after the kill
    for a, b in zip(single, distributed):
        assert b["on_policy_fraction"] == a["on_policy_fraction"], a["step"]
        assert b["gen_tokens"] == a["gen_tokens"], a["step"]  # the two ranks' samples together = one process's
        for key in ("loss", "grad_norm", "kd_loss", "sft_loss"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])
    losses = [e["loss"] for e in distributed]
    assert max(losses) - min(losses) > 0.1  # a curve that moves
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["distributed"]["processes"] == 2 and summary["resumed_from"].endswith("checkpoint-3")

    # each rank's sampler state: the same decision stream, its own sampling stream, its own prompts' samples
    for step in (3, 6):
        reference = _sampler_state(one / f"checkpoint-{step}", 0)
        ranks = [_sampler_state(two / f"checkpoint-{step}", rank) for rank in (0, 1)]
        assert ranks[0]["decide"] == ranks[1]["decide"] == reference["decide"], step
        assert not torch.equal(ranks[0]["sampling"]["cpu"], ranks[1]["sampling"]["cpu"]), step
        for counter in ("on_policy_batches", "batches"):  # the same decisions: every rank counts the process's
            assert ranks[0]["totals"][counter] == ranks[1]["totals"][counter] == reference["totals"][counter] > 0
        for counter in ("gen_tokens", "score_tokens"):  # the two ranks' samples together are the one process's
            per_rank = [r["totals"][counter] for r in ranks]
            assert sum(per_rank) == reference["totals"][counter], (step, counter, per_rank)
        # scored tokens = prompt + completion: the two ranks scored different prompts (the random student runs to
        # gen_max_new_tokens on every row, so its completion lengths alone would not tell them apart)
        scored = [r["totals"]["score_tokens"] for r in ranks]
        assert min(scored) > 0 and scored[0] != scored[1], (step, scored)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
