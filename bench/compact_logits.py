"""Compact logit shards (`gen logits --format compact`, gen/logits/compact.py) against the exact format on REAL
teacher output: the bundled Gemma-3-270M GGUF through the `hf:` backend, K=64 over its 262,144-token vocabulary.

One capture per format of the same conversations (a few hundred tokens), then per teacher token:
- bytes/token on disk (Arrow shard files, everything included: ids, labels, tail);
- KL(exact ‖ compact) of the K+1-bucket teacher distribution (top-k + tail; the compact buckets renormalized, since
  quantization moves their sum off 1 by a little), mean and max, and the largest log-prob error of a top-k entry;
- the training loss it makes: `forward_kl_tail` (the default loss, fused op) of one fixed student against each
  shard -- the student is Gemma's own final hidden states plus Gaussian noise (a student that is not the teacher) --
  and its relative difference;
- decode cost (µs/token) of the compact reader vs the exact one, the CPU time a training batch pays for the format.

Run standalone (`python bench/compact_logits.py`, ~2 min on 2 cores: the GGUF load dominates) or as the last section of
`bench/distill.py --compact-logits`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

K = 64

CONVERSATIONS = [
    ("Explain why the sky is blue in two sentences.",
     "Sunlight is scattered by the molecules of the air, and short blue wavelengths scatter far more than red ones. "
     "So wherever you look away from the sun, scattered blue light reaches your eyes."),
    ("Write a haiku about autumn rain.", "Cold rain on the roof,\nmaple leaves drift in puddles,\nthe kettle sings low."),
    ("What is 17 times 23?", "17 times 23 is 391."),
    ("Give three tips for a good night's sleep.",
     "1. Keep a regular schedule, even at weekends.\n2. Avoid screens and caffeine in the evening.\n3. Keep the "
     "bedroom dark, quiet and cool."),
    ("Translate 'good morning, how are you?' into French.", "Bonjour, comment allez-vous ?"),
    ("Summarize the plot of Romeo and Juliet in one paragraph.",
     "Two young lovers from feuding families in Verona marry in secret. A street fight leaves Romeo banished, "
     "Juliet fakes her death to escape an arranged marriage, and the message explaining the plan never reaches "
     "Romeo, who poisons himself at her tomb; Juliet wakes, finds him dead, and stabs herself, which finally "
     "reconciles the families."),
    ("Write a Python function that reverses a string.", "def reverse(text):\n    return text[::-1]"),
    ("Name the planets of the solar system in order.",
     "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune."),
]


def measure(work: Path) -> dict:
    import numpy as np
    import torch

    from gen.data.records import make_row
    from gen.data.shards import ShardWriter, open_shard, shard_paths
    from gen.logits.capture import HFLogitTeacher, capture_logits
    from gen.logits.compact import FORMAT_COMPACT, FORMAT_EXACT
    from gen.logits.records import load_logit_columns, logit_shard_stats
    from gen.teachers.llamacpp import TRANSCRIPT_TEMPLATE, bundled_gguf_path
    from kernels.topk_kl import topk_kl_loss

    torch.manual_seed(0)
    source = work / "conversations"
    with ShardWriter(source) as writer:
        writer.write_many([make_row(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                    method="bench", operation=str(i)) for i, (q, a) in enumerate(CONVERSATIONS)])
    started = time.perf_counter()
    teacher = HFLogitTeacher(str(bundled_gguf_path()), dtype="float32", chat_template=TRANSCRIPT_TEMPLATE)
    load_s = time.perf_counter() - started
    for name, fmt in (("exact", FORMAT_EXACT), ("compact", FORMAT_COMPACT)):
        capture_logits(source, work / name, teacher, K, progress=False, batch_size=8, logit_format=fmt)
    stats = {name: logit_shard_stats(work / name) for name in ("exact", "compact")}
    # the Arrow buffers per token, without the fixed per-file overhead (schema, footer) a small capture pays
    payload = {name: sum(open_shard(p).nbytes for p in shard_paths(work / name)) / stats[name]["tokens"]
               for name in ("exact", "compact")}
    exact, compact = load_logit_columns(work / "exact"), load_logit_columns(work / "compact")
    assert exact.ids == compact.ids

    timings = {}
    for name, columns in (("exact", exact), ("compact", compact)):
        t0 = time.perf_counter()
        for _ in range(5):
            for i in range(len(columns)):
                columns.row(i)
        timings[name] = (time.perf_counter() - t0) / 5 / columns.tokens * 1e6
    rows_e = [exact.row(i) for i in range(len(exact))]
    rows_c = [compact.row(i) for i in range(len(compact))]
    cat = {key: np.concatenate([r[key] for r in rows_e]) for key in rows_e[0]}
    cat_c = {key: np.concatenate([r[key] for r in rows_c]) for key in rows_c[0]}

    def buckets(ids, logprobs, tail):
        order = np.argsort(ids, axis=1, kind="stable")  # same bucket order on both sides: by id
        lp = np.take_along_axis(logprobs.astype(np.float64), order, axis=1)
        full = np.concatenate([lp, tail.astype(np.float64)[:, None]], axis=1)
        return full - np.logaddexp.reduce(full, axis=1, keepdims=True), np.take_along_axis(ids, order, axis=1)

    log_p, ids_e = buckets(cat["topk_ids"], cat["topk_logprobs"], cat["tail_logmass"])
    log_q, ids_c = buckets(cat_c["topk_ids"], cat_c["topk_logprobs"], cat_c["tail_logmass"])
    assert np.array_equal(ids_e, ids_c), "compact ids differ from the exact ones"
    p = np.exp(log_p)
    kl = np.where(p > 0, p * (log_p - np.where(np.isfinite(log_q), log_q, -1e30)), 0.0).sum(axis=1)
    lp_e = np.take_along_axis(cat["topk_logprobs"].astype(np.float64), np.argsort(cat["topk_ids"], 1), 1)
    lp_c = np.take_along_axis(cat_c["topk_logprobs"].astype(np.float64), np.argsort(cat_c["topk_ids"], 1), 1)
    finite = np.isfinite(lp_e)
    err = np.abs(lp_e - lp_c)[finite]
    mass_err = np.abs(np.exp(lp_e) - np.exp(lp_c)).sum(axis=1)

    # the training loss of one fixed (noisy) student against each shard, over the assistant positions
    with torch.inference_mode():
        input_ids = torch.from_numpy(cat["input_ids"].astype(np.int64))
        model = teacher.model
        hidden_rows, label_rows = [], []
        for r in rows_e:
            out = model(input_ids=torch.from_numpy(r["input_ids"].astype(np.int64))[None], output_hidden_states=True)
            hidden_rows.append(out.hidden_states[-1][0].float())
            shifted = np.full(len(r["labels"]), -100, dtype=np.int64)
            shifted[:-1] = r["labels"][1:]
            label_rows.append(torch.from_numpy(shifted))
        hidden = torch.cat(hidden_rows)
        hidden = hidden + 0.5 * hidden.std() * torch.randn_like(hidden)
        labels = torch.cat(label_rows)
        weight = model.get_output_embeddings().weight.float()
        losses = {}
        for name, c in (("exact", cat), ("compact", cat_c)):
            losses[name] = float(topk_kl_loss(hidden, weight, torch.from_numpy(c["topk_ids"].astype(np.int64)),
                                              torch.from_numpy(c["topk_logprobs"].astype(np.float32)),
                                              torch.from_numpy(c["tail_logmass"]), labels, impl="torch"))
    teacher.close()
    del input_ids
    return {"tokens": int(exact.tokens), "bytes_per_token": {n: s["bytes_per_token"] for n, s in stats.items()},
            "payload_per_token": payload,
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "logprob_err_max": float(err.max()),
            "logprob_err_mean": float(err.mean()), "topk_mass_err_max": float(mass_err.max()),
            "loss": losses, "decode_us_per_token": timings, "load_s": load_s}


def print_table(r: dict) -> None:
    b = r["bytes_per_token"]
    print(f"\n### Logit shard formats on real teacher output (Gemma-3-270M GGUF via hf:, K={K}, vocab 262,144, "
          f"{r['tokens']} tokens)")
    print("| format | bytes/token on disk (Arrow payload) | KL(exact ‖ format), nats/token mean / max | max abs log-prob error "
          "| forward_kl_tail loss of a fixed student | reader µs/token |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| exact (`logit_format` 1: int32 ids, fp16 log-probs, fp32 tail) | {b['exact']:.0f} ({r['payload_per_token']['exact']:.0f}) | 0 / 0 | 0 "
          f"| {r['loss']['exact']:.6f} | {r['decode_us_per_token']['exact']:.2f} |")
    rel = abs(r["loss"]["compact"] - r["loss"]["exact"]) / abs(r["loss"]["exact"])
    print(f"| compact (`logit_format` 2: Elias-Fano ids, 8-bit sqrt-log codes, fp32 tail) | {b['compact']:.0f} "
          f"({r['payload_per_token']['compact']:.0f}) | {r['kl_mean']:.2e} / {r['kl_max']:.2e} | {r['logprob_err_max']:.4f} (mean {r['logprob_err_mean']:.4f})"
          f" | {r['loss']['compact']:.6f} (rel. diff {rel:.1e}) | {r['decode_us_per_token']['compact']:.2f} |")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print_table(measure(Path(tmp)))


if __name__ == "__main__":
    main()
