"""A finished kdforge run built by hand (make_row + ShardWriter + write_manifest), so the publishing tests do not
depend on the generation methods: two methods (several configs), evolution rounds with lineage, and a rejected split
with reasons and duplicate_of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gen.data.records import make_row
from gen.data.shards import ShardWriter, write_manifest

TEACHER = "llamacpp:gemma-3-270m-q4_k_m.gguf@a5fd3b62230a"
EVOL_OPERATIONS = ("add_constraints", "deepen", "concretize", "breadth")


def _params(temperature: float, template_hash: str) -> dict:
    return {"max_tokens": 256, "temperature": temperature, "top_p": 0.95, "seed": 1234, "template_hash": template_hash}


def build_run(out: Path, *, evol_roots: int = 30, rounds: int = 3, self_instruct: int = 25, max_rows: int = 40,
              extra_text: str = "", funnel: dict | None = None) -> Path:
    """Write a run to `out` and return it (`funnel=` overrides the recorded funnel). Counts: evol_instruct `evol_roots * (rounds + 1)` candidate rows (round 0
    seeds + one evolution per round), every 5th evolution rejected; self_instruct `self_instruct` rows, every 4th a
    near-duplicate of the previous one. `extra_text` is appended to one answer (to plant a secret)."""
    kept, rejected = [], []
    for r in range(evol_roots):
        parent = None
        root = None
        instruction = f"Explain topic number {r} in simple terms."
        for rnd in range(rounds + 1):
            op = None if rnd == 0 else EVOL_OPERATIONS[(r + rnd) % len(EVOL_OPERATIONS)]
            if rnd:
                instruction = f"{instruction} Then add constraint {rnd} ({op})."
            answer = " ".join(["word"] * (5 + 7 * rnd + r % 11)) + f" answer {r}-{rnd}."
            bad = rnd > 0 and (r + rnd) % 5 == 0
            row = make_row(
                messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}],
                method="evol_instruct", operation=op, round=rnd, parent_id=parent, root_id=root,
                teacher=TEACHER if rnd else "input",  # round-0 seeds were not generated, as in `gen evol`
                params=_params(0.7, "evol0a1b2c3d"), usage={"prompt_tokens": 40 + rnd, "completion_tokens": 9 + r},
                finish_reason="stop",
                filters=(["no_new_information"] if r % 2 else ["apology", "too_short"]) if bad else (),
            )
            (rejected if bad else kept).append(row)
            if not bad:
                parent = row["id"]
                root = root or row["id"]
    previous_id = None
    for i in range(self_instruct):
        duplicate = i % 4 == 3 and previous_id is not None
        text = f"Write a haiku about the number {i - 1 if duplicate else i}."
        answer = f"Numbers fall like rain | {i} | the end" + (f" {extra_text}" if extra_text and i == 0 else "")
        row = make_row(
            messages=[{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
            method="self_instruct", round=0, teacher=TEACHER, params=_params(0.7, "si99887766aa"),
            usage={"prompt_tokens": 120, "completion_tokens": 20}, finish_reason="length" if i % 7 == 0 else "stop",
            filters=["rouge_l_duplicate"] if duplicate else (), duplicate_of=previous_id if duplicate else None,
            id=f"si-{i:04d}",
        )
        (rejected if duplicate else kept).append(row)
        if not duplicate:
            previous_id = row["id"]
    with ShardWriter(out, "train", max_rows=max_rows) as writer:
        writer.write_many(kept)
    with ShardWriter(out, "rejected", max_rows=max_rows) as writer:
        writer.write_many(rejected)
    # The funnel in the shape kdforge's methods record (gen.methods.base.Funnel): totals and per-round stages.
    recorded: dict = {"total": {"generated": 0, "kept": 0}, "rounds": {}}
    for row in kept + rejected:
        stages = ["generated"] + ([f"rejected:{r}" for r in row["filters"]] if row["filters"] else ["kept"])
        per_round = recorded["rounds"].setdefault(str(row["round"]), {})
        for stage in stages:
            recorded["total"][stage] = recorded["total"].get(stage, 0) + 1
            per_round[stage] = per_round.get(stage, 0) + 1
    config = {
        "method": "evol_instruct+self_instruct", "teacher": "llamacpp", "rounds": rounds,
        "seed_file": "shared/data/self_instruct_seed_tasks.jsonl", "seed": 1234,
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256},
        "dedup": {"minhash_threshold": 0.7, "num_perm": 128, "ngram": 5, "rouge_l_threshold": 0.7},
        "api_key": "sk-should-be-redacted",
    }
    write_manifest(out, config=config, funnel=funnel if funnel is not None else recorded)
    return out


ROOT = Path(__file__).resolve().parents[2]


def run_gen(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m gen.cli ARGS` in a subprocess (this checkout importable, no API keys), as a user runs it."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN")}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "gen.cli", *args], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The error a failed `gen COMMAND` printed: exit 2, exactly one stderr line `gen COMMAND: error: ...`, no
    traceback. Returns the message after the prefix."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gen {command}: error: "), proc.stderr
    return lines[0].removeprefix(f"gen {command}: error: ")
