"""Distillation quality and cost: top-k KD (K=32) against SFT on the same teacher-generated text, and the fused KD
step against the same loss on full logits. Prints two markdown tables. Not a test.

Quality (the whole pipeline, as a user runs it):
  1. a synthetic language with clear structure and real uncertainty: per topic, a Markov chain over 60 words where
     each word allows 3-10 next words with random weights;
  2. a tiny Llama teacher trained (SFT, `train.trainer.train`) on it, so it is distinctive;
  3. the teacher *generates* the training and held-out conversations (sampling at temperature 1);
  4. `gen logits`' capture (HF backend, K=32) over the training conversations;
  5. identical students (same architecture, same init, same steps, batch and LR): one SFT on the teacher's
     text, one top-k KD on the logit shards, and on-policy KD (`gen train --on-policy`, GKD) at lambda 0.5 and 1
     on the same shards' prompts, scored by the teacher in process -- with the offline run's forward KL + tail, and
     at lambda 1 also with GKD's default JSD(0.5) -- plus GKD's recipe at the same total steps: half the steps
     top-k KD, then half fully on-policy (`--no-on-policy` skips these rows);
  6. held-out token-level KL(teacher || student) over the full vocabulary and the perplexity of the teacher's
     held-out text, per assistant token; and on the student's *own* samples of held-out prompts (temperature 1,
     one seed for all), forward KL(teacher || student), reverse KL(student || teacher) and the teacher's
     perplexity of the student's tokens -- the prefixes offline KD never trains on.
Cost: one KD training step (forward + backward of a student with a 32K vocabulary over N tokens, and of one with
Gemma-3's real 262,144-token vocabulary and hidden size 640) with the fused op vs the same loss on materialized
logits (`--kd-impl naive`), each in a fresh process after one warm-up step: median
tokens/s and the peak memory a step adds on top of the model (CPU: peak RSS via /proc VmHWM reset, big allocations
forced to mmap so RSS follows live tensors; CUDA: max_memory_allocated).

    .venv/bin/python bench/distill.py            # ~7 min on 2 shared CPU cores (--skip-real-vocab: ~3.5)
    .venv/bin/python bench/distill.py --quick    # smaller, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

K = 32

# ------------------------------------------------------------------------------------------- synthetic language


def make_language(seed: int = 0, n_words: int = 60, n_topics: int = 4, support=(3, 10)):
    """(words, topics, transitions [topic, state, next]): state n_words is "start"; next n_words is "end".
    Each (topic, word) allows only 3-10 next words, with Dirichlet(1) weights: a teacher that learns the language
    puts nearly all its mass on a few tokens -- the regime where a top-k of 32 captures the teacher."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "be", "do", "pu", "ze", "ga", "fi", "ho", "ly"]
    words: list[str] = []
    while len(words) < n_words:
        word = "".join(rng.choice(syllables, size=int(rng.integers(1, 3))))
        if word not in words:
            words.append(word)
    topics = [f"topic{t}" for t in range(n_topics)]
    transitions = np.zeros((n_topics, n_words + 1, n_words + 1))
    for t in range(n_topics):
        for state in range(n_words + 1):
            allowed = rng.choice(n_words, size=int(rng.integers(*support)), replace=False)
            transitions[t, state, allowed] = rng.dirichlet(np.ones(len(allowed)))
    transitions[:, :n_words, :n_words] *= 0.93
    transitions[:, :n_words, n_words] = 0.07  # end of answer: ~14 words on average
    return words, topics, transitions


def sample_answer(rng, words, transitions, topic_index, max_words=30) -> str:
    out, state = [], len(words)  # start state = the "end" row
    for _ in range(max_words):
        nxt = int(rng.choice(len(words) + 1, p=transitions[topic_index, state]))
        if nxt == len(words):
            break
        out.append(words[nxt])
        state = nxt
    return " ".join(out) if out else words[0]


def prompt_for(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {topic}."}]


# --------------------------------------------------------------------------------------------------- pipeline


def write_run(directory: Path, conversations: list[list[dict]]) -> None:
    from gen.data.records import make_row
    from gen.data.shards import ShardWriter

    with ShardWriter(directory) as writer:
        for i, messages in enumerate(conversations):
            writer.write(make_row(messages=messages, method="bench", operation=str(i)))


def teacher_generate(model_dir: Path, topics: list[str], n: int, seed: int, max_new_tokens: int = 48,
                     batch: int = 64) -> list[list[dict]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    conversations = []
    for start in range(0, n, batch):
        chosen = [topics[(start + i) % len(topics)] for i in range(min(batch, n - start))]
        texts = [tokenizer.apply_chat_template(prompt_for(t), tokenize=False, add_generation_prompt=True)
                 for t in chosen]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        for topic, ids in zip(chosen, out[:, enc["input_ids"].shape[1]:]):
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip() or "ka"
            conversations.append(prompt_for(topic) + [{"role": "assistant", "content": answer}])
    return conversations


def heldout_metrics(teacher_dir: Path, student_dir: Path, heldout: Path) -> dict[str, float]:
    """Per assistant token of the teacher's held-out text: KL(teacher || student) over the full vocabulary (nats)
    and the student's perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import load_training_data

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    data = load_training_data([heldout], tokenizer, max_length=256, packing=False)
    batch = data.collator([data.dataset[i] for i in range(len(data.dataset))])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logp = torch.log_softmax(teacher(**kwargs).logits[:, :-1].double(), -1)
        logq = torch.log_softmax(student(**kwargs).logits[:, :-1].double(), -1)
    y = batch["labels"][:, 1:]
    keep = y != -100
    kl = (logp.exp() * (logp - logq)).sum(-1)[keep].mean()
    nll = -logq.gather(-1, y.clamp_min(0)[..., None])[..., 0][keep].mean()
    teacher_nll = -logp.gather(-1, y.clamp_min(0)[..., None])[..., 0][keep].mean()
    return {"kl": float(kl), "ppl": float(nll.exp()), "teacher_ppl": float(teacher_nll.exp()),
            "tokens": int(keep.sum())}


def own_sample_metrics(teacher_dir: Path, student_dir: Path, topics: list[str], n: int, *, seed: int = 5,
                       max_new_tokens: int = 48) -> dict[str, float]:
    """Per token the student writes itself: it samples (temperature 1, as at inference) one answer to each of `n`
    held-out prompts, and the teacher scores every completion position (its EOS included) -- forward
    KL(teacher || student) and reverse KL(student || teacher) over the full vocabulary (nats), and the teacher's
    perplexity of the student's tokens. This is the prefix distribution offline KD never trains on and on-policy KD
    does (GKD's train/inference mismatch). Same seed for every student."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.on_policy import sample_completions

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    prompts = []
    for i in range(n):
        text = tokenizer.apply_chat_template(prompt_for(topics[i % len(topics)]), tokenize=False,
                                             add_generation_prompt=True)
        prompts.append(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        completions = sample_completions(student, prompts, pad_id=tokenizer.pad_token_id,
                                         eos_ids=[tokenizer.eos_token_id], temperature=1.0,
                                         max_new_tokens=max_new_tokens)
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    keep = torch.zeros((n, width - 1), dtype=torch.bool)  # position t predicts token t + 1
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, : len(p) + len(c)] = torch.cat([p, c])
        attention_mask[i, : len(p) + len(c)] = 1
        keep[i, len(p) - 1: len(p) + len(c) - 1] = True
    with torch.no_grad():
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        logp = torch.log_softmax(teacher(**kwargs).logits[:, :-1].double(), -1)[keep]
        logq = torch.log_softmax(student(**kwargs).logits[:, :-1].double(), -1)[keep]
    y = input_ids[:, 1:][keep]
    kl = (logp.exp() * (logp - logq)).sum(-1)
    # standard error of the per-token mean by a bootstrap over whole samples (tokens of one sample are correlated)
    row_of = keep.nonzero()[:, 0]
    kl_sums = torch.zeros(n, dtype=torch.float64).index_add_(0, row_of, kl).numpy()
    counts = keep.sum(1).double().numpy()
    picks = np.random.default_rng(0).integers(0, n, size=(200, n))
    boot = kl_sums[picks].sum(1) / counts[picks].sum(1)
    return {"own_kl": float(kl.mean()), "own_kl_se": float(boot.std()),
            "own_reverse_kl": float((logq.exp() * (logq - logp)).sum(-1).mean()),
            "own_teacher_ppl": float((-logp.gather(-1, y[:, None])).mean().exp()),
            "own_tokens": int(keep.sum()), "own_length": float(keep.sum()) / n}


def quality(args, work: Path) -> tuple[list[tuple], dict]:
    import numpy as np

    from gen.logits.capture import HFLogitTeacher, capture_logits
    from tests.tiny_models import build_tiny_llama, build_tokenizer
    from train.config import LossConfig
    from train.trainer import TrainConfig, train

    words, topics, transitions = make_language()
    rng = np.random.default_rng(1)
    truth = []
    for i in range(args.teacher_rows):
        t = i % len(topics)
        truth.append(prompt_for(topics[t]) + [{"role": "assistant",
                                               "content": sample_answer(rng, words, transitions, t)}])
    corpus = [m["content"] for conv in truth[:400] for m in conv]
    tokenizer = build_tokenizer(vocab_size=512, corpus=corpus)
    timings = {}

    t0 = time.perf_counter()
    write_run(work / "truth", truth)
    teacher_dir = build_tiny_llama(work / "teacher-init", tokenizer=tokenizer, hidden_size=128, layers=2, heads=4,
                                   intermediate_size=256, seed=0)
    quiet = {"logging_steps": 10_000, "save_steps": 10_000, "max_length": 128}
    train(TrainConfig(student=str(teacher_dir), data=[str(work / "truth")], out=str(work / "teacher"),
                      max_steps=args.teacher_steps, batch_size=32, lr=3e-3, scheduler="cosine", warmup=0.05,
                      **quiet))
    timings["teacher training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generated = teacher_generate(work / "teacher", topics, args.train_rows + args.heldout_rows, seed=2)
    write_run(work / "teacher-text", generated[: args.train_rows])
    write_run(work / "heldout", generated[args.train_rows:])
    timings["teacher generation"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    teacher = HFLogitTeacher(str(work / "teacher"))
    captured = capture_logits(work / "teacher-text", work / "logits", teacher, K, progress=False, batch_size=64)
    timings["logit capture"] = time.perf_counter() - t0

    student_init = build_tiny_llama(work / "student-init", tokenizer=tokenizer, hidden_size=64, layers=2, heads=2,
                                    intermediate_size=128, seed=7)

    def evaluate(student_dir: Path) -> dict[str, float]:
        return {**heldout_metrics(work / "teacher", student_dir, work / "heldout"),
                **own_sample_metrics(work / "teacher", student_dir, topics, args.own_samples)}

    rows = [("student before training", evaluate(student_init))]
    # Every student: same init, steps, batch, LR schedule and prompts. The on-policy runs read the KD run's logit
    # shards: at lambda 0.5 about half the micro-batches are those offline rows, the rest (and all at lambda 1) the
    # student's own samples of the same rows' prompts, scored by the teacher in process (exact tail, K=32) with the
    # offline run's divergence (forward KL + tail), so only where the tokens come from differs; the GKD-default
    # JSD(0.5) is a row of its own.
    on_policy = {"teacher": f"hf:{work / 'teacher'}", "gen_temperature": 1.0, "gen_max_new_tokens": 48}
    students = [("SFT on teacher text", "sft", work / "teacher-text", {}),
                (f"top-k KD (K={K}, forward KL + tail)", "kd", work / "logits", {}),
                ("on-policy KD, λ=0.5 (forward KL + tail)", "onpolicy05", work / "logits",
                 {**on_policy, "on_policy": 0.5, "on_policy_loss": "forward_kl_tail"}),
                ("on-policy KD, λ=1 (forward KL + tail)", "onpolicy1", work / "logits",
                 {**on_policy, "on_policy": 1.0, "on_policy_loss": "forward_kl_tail"}),
                ("on-policy KD, λ=1 (JSD β=0.5, GKD's default)", "onpolicy1jsd", work / "logits",
                 {**on_policy, "on_policy": 1.0, "on_policy_loss": "jsd"})]
    if args.on_policy:
        # GKD starts on-policy training from a supervised student: half the steps top-k KD, then half on-policy
        # (two cosine schedules of half the steps each; the same total number of optimizer steps)
        students.append((f"top-k KD {args.student_steps // 2} steps, then on-policy λ=1 (forward KL + tail) "
                         f"{args.student_steps - args.student_steps // 2}", "kd-then-onpolicy", work / "logits",
                         {**on_policy, "on_policy": 1.0, "on_policy_loss": "forward_kl_tail"}))
    else:
        students = students[:2]

    def run(init: Path, out: Path, data: Path, steps: int, extra: dict) -> None:
        train(TrainConfig(student=str(init), data=[str(data)], out=str(out), max_steps=steps, batch_size=16,
                          lr=2e-3, scheduler="cosine", warmup=0.05, loss=LossConfig(), **extra, **quiet))

    for name, slug, data, extra in students:
        t0 = time.perf_counter()
        out = work / slug
        if slug == "kd-then-onpolicy":
            run(student_init, work / "kd-half", work / "logits", args.student_steps // 2, {})
            run(work / "kd-half", out, data, args.student_steps - args.student_steps // 2, extra)
        else:
            run(student_init, out, data, args.student_steps, extra)
        timings[name] = time.perf_counter() - t0
        rows.append((name, evaluate(out)))
    # the teacher against itself: KL 0 by construction, and its perplexity of its own samples (the own-sample metric's
    # floor)
    rows.append(("(the teacher itself)", evaluate(work / "teacher")))
    return rows, {"timings": timings, "captured": captured}


# ------------------------------------------------------------------------------------------------- step cost


def step_worker(impl: str, tokens: int, vocab: int, hidden: int, reps: int) -> dict:
    """Runs in a fresh process: one student, one batch; returns tokens/s (median over reps) and peak memory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.config import LossConfig
    from train.losses import batch_loss_sum

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=4096)
    model = LlamaForCausalLM(config).to(device)
    B = 4
    L = tokens // B
    input_ids = torch.randint(0, vocab, (B, L), device=device)
    labels = input_ids.clone()
    labels[:, : L // 4] = -100  # a prompt part with no loss, as in chat data
    topk = torch.stack([torch.randperm(vocab, device=device)[:K] for _ in range(8)])  # distinct ids per row
    topk_ids = topk[torch.randint(0, 8, (B, L), device=device)].to(torch.int32)
    logprobs = torch.log_softmax(torch.randn(B, L, K, device=device) * 2, -1) - 0.1
    batch = {"input_ids": input_ids, "labels": labels, "teacher_topk_ids": topk_ids,
             "teacher_topk_logprobs": logprobs.sort(-1, descending=True).values.half(),
             "teacher_tail_logmass": torch.full((B, L), -2.3, device=device),
             "teacher_mask": torch.ones(B, L, dtype=torch.bool, device=device)}
    cfg = LossConfig(impl=impl)
    decoder, head = model.get_decoder(), model.get_output_embeddings()

    def step():
        hidden_states = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
        total, _ = batch_loss_sum(hidden_states, head.weight, None, batch, cfg)
        (total / (labels[:, 1:] != -100).sum()).backward()
        model.zero_grad(set_to_none=True)

    def proc_status_mb(key: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    step()  # warm-up: lazy initializations and first-touch page faults are not part of a step
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)
        base = proc_status_mb("VmRSS")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = proc_status_mb("VmHWM") - base
    return {"impl": impl, "tokens_per_s": tokens / statistics.median(times), "step_s": statistics.median(times),
            "peak_mb": peak, "device": str(device)}


def step_cost(args, tokens: int | None = None, vocab: int | None = None, hidden: int | None = None) -> list[dict]:
    results = []
    tokens, vocab, hidden = tokens or args.step_tokens, vocab or args.step_vocab, hidden or args.step_hidden
    for impl in ("fused", "naive"):
        cmd = [sys.executable, __file__, "--_step", impl, "--step-tokens", str(tokens), "--step-vocab",
               str(vocab), "--step-hidden", str(hidden), "--step-reps", str(args.step_reps),
               "--threads", str(args.threads)]
        # glibc: allocations >= 128 KiB come from (and go back to) mmap, so resident memory follows live tensors
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


# ------------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (~1 min)")
    parser.add_argument("--teacher-rows", type=int, default=1600)
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--train-rows", type=int, default=512)
    parser.add_argument("--heldout-rows", type=int, default=128)
    parser.add_argument("--student-steps", type=int, default=400,
                        help="optimizer steps of every student (at 150, before offline KD has converged, on-policy "
                             "KD did not win here; at 400 it did on the student's own samples: docs/training.md)")
    parser.add_argument("--step-tokens", type=int, default=1024)
    parser.add_argument("--step-vocab", type=int, default=32768)
    parser.add_argument("--step-hidden", type=int, default=128)
    parser.add_argument("--step-reps", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--own-samples", type=int, default=512,
                        help="samples each student writes for the own-sample metrics (the topic prompts in turn)")
    parser.add_argument("--no-on-policy", dest="on_policy", action="store_false",
                        help="skip the on-policy KD rows of the quality table (gen train --on-policy)")
    parser.add_argument("--skip-real-vocab", action="store_true",
                        help="skip the step-cost row at Gemma-3's 262,144-token vocabulary")
    parser.add_argument("--real-vocab-tokens", type=int, default=1024,
                        help="tokens per step of the real-vocabulary row")
    # compact logit shards: exact vs compact on real Gemma-3-270M output, bench/compact_logits.py
    parser.add_argument("--compact-logits", action="store_true",
                        help="also measure the compact logit format on the bundled Gemma GGUF (~2 min)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these tiny models gain nothing from more, and on a shared "
                             "machine extra OpenMP threads mostly spin)")
    parser.add_argument("--_step", choices=["fused", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args._step:
        print(json.dumps(step_worker(args._step, args.step_tokens, args.step_vocab, args.step_hidden,
                                     args.step_reps)))
        return
    if args.quick:
        args.teacher_rows, args.teacher_steps, args.train_rows = 1200, 150, 256
        args.heldout_rows, args.student_steps, args.step_reps, args.own_samples = 64, 60, 3, 128

    import transformers

    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    if not args.skip_quality:
        with tempfile.TemporaryDirectory(prefix="kdforge-bench-") as tmp:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's per-log prints
                rows, info = quality(args, Path(tmp))
        print(f"\n### Quality: identical students, {args.student_steps} steps x 16 sequences, lr 2e-3, on "
              f"{args.train_rows} teacher-generated conversations; held-out: {args.heldout_rows} more "
              f"({rows[0][1]['tokens']} assistant tokens)\n")
        print("On the teacher's held-out text: KL(teacher ‖ student) and the student's perplexity. On the student's "
              f"own samples ({args.own_samples} samples of the topic prompts in turn -- the language has no other "
              "prompts, so what is held out is the samples --, temperature 1, same seed for every student): "
              "forward KL(teacher ‖ student) ± its standard error (bootstrap over samples), reverse KL(student ‖ "
              "teacher), and the teacher's perplexity of the student's tokens. KL in nats/token over the full "
              "vocabulary.\n")
        print("| student | teacher text: KL | teacher text: perplexity | own samples: KL | own samples: reverse KL "
              "| own samples: teacher perplexity | own sample length (tokens) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, m in rows:
            print(f"| {name} | {m['kl']:.4f} | {m['ppl']:.3f} | {m['own_kl']:.4f} ± {m['own_kl_se']:.4f} | {m['own_reverse_kl']:.4f} | "
                  f"{m['own_teacher_ppl']:.3f} | {m['own_length']:.1f} |")
        sft, kd = rows[1][1], rows[2][1]
        if len(rows) > 4:  # the on-policy rows (before the teacher's own)
            print("\nOwn-sample KL / top-k KD's (< 1: better than offline KD on the student's own samples): "
                  + "; ".join(f"{name}: {m['own_kl'] / kd['own_kl']:.2f}" for name, m in rows[3:-1]))
        print(f"\nKD / SFT held-out KL ratio: {kd['kl'] / sft['kl']:.3f} (goal < 1). Logit shards: "
              f"{info['captured']['bytes_per_token']:.0f} bytes/token at K={K}. Stage seconds: "
              + ", ".join(f"{k} {v:.1f}" for k, v in info["timings"].items()))
    shapes = [(args.step_tokens, args.step_vocab, args.step_hidden, "")]
    if not args.skip_real_vocab:
        # Gemma-3-270M's shape (the bundled teacher, and `gen student`'s 2-layer student of it): vocabulary
        # 262,144, hidden 640; a random 2-layer Llama of that shape stands in (the step's cost is the head's).
        shapes.append((args.real_vocab_tokens, 262_144, 640, " (Gemma-3 vocabulary)"))
    for tokens, vocab, hidden, label in shapes:
        fused, naive = step_cost(args, tokens, vocab, hidden)
        print(f"\n### KD training step{label} (student forward + backward + loss), {tokens} tokens, vocab "
              f"{vocab}, hidden {hidden}, K={K}, device {fused['device']}, median of {args.step_reps} steps\n")
        print("| loss path | peak memory added by the step (MiB) | tokens/s | step (s) |")
        print("| --- | ---: | ---: | ---: |")
        for r, name in ((fused, "fused top-k KL op (`--kd-impl fused`)"),
                        (naive, "same loss on full logits (`naive`)")):
            print(f"| {name} | {r['peak_mb']:.0f} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} |")
        print(f"\nfused / full-logits: memory {fused['peak_mb'] / max(naive['peak_mb'], 1e-9):.2f}x, speed "
              f"{fused['tokens_per_s'] / naive['tokens_per_s']:.2f}x. Full logits alone would be "
              f"{tokens * vocab * 4 / 2**20:.0f} MiB in fp32.")
    print(f"\nTotal bench time {time.perf_counter() - started:.0f} s.")
    if args.compact_logits:
        from bench.compact_logits import measure, print_table

        with tempfile.TemporaryDirectory() as tmp:
            print_table(measure(Path(tmp)))


if __name__ == "__main__":
    main()
