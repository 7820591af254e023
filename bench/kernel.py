"""Benchmark the fused top-k KL op (kernels/topk_kl.py): time and peak extra memory for forward + backward.

    python bench/kernel.py                       # CPU, the anchor shape: N=4096 H=512 V=32768 K=64 fp32, 2 threads
    python bench/kernel.py --quick               # a small CPU preset (seconds)
    python bench/kernel.py --device cuda --preset llama8b   # N=8192 H=4096 V=128256 K=64 bf16 (+ Liger if importable)
    python bench/kernel.py --interleave 5        # floor and ours alternated 5x in ONE process (time ratio only)

--interleave R is for a shared/loaded machine: separate subprocesses see different load, so the time ratio of the
table can swing by 20%; alternating floor / ours in one process and taking the median of the R per-pair ratios
(wall and process CPU time) is far steadier. It prints that ratio instead of the table (no memory figures).

Rows: naive torch (materialized [N, V] logits, autograd: kernels.topk_kl.topk_kl_reference), the matmul floor (the
three GEMMs alone: logits, dh, dW), our chunked torch path, the Triton path (CUDA only) and Liger's
LigerFusedLinearJSD (CUDA only, when importable; it distils from a full teacher head, so it does more work than a
top-k loss -- shown as the figure to beat).

Every row runs in its own subprocess, so one row's allocations never flatter or penalize another.
Memory "beyond the gradients" = peak during one forward+backward - memory before it - the gradient tensors
(dh [N, H] and dW [V, H]; these must exist in any implementation). CUDA: torch.cuda.max_memory_allocated. CPU:
the process's RSS high-water mark (resource.getrusage ru_maxrss, exact, kernel-maintained) minus the RSS just before
the measured call (psutil); tracemalloc cannot see torch's allocations. The first call is the measured one for memory
(its high-water is not polluted by earlier calls); times are the median of --reps further calls.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    "anchor": dict(N=4096, H=512, V=32768, K=64, dtype="float32"),
    "quick": dict(N=512, H=128, V=4096, K=16, dtype="float32"),
    "llama8b": dict(N=8192, H=4096, V=128256, K=64, dtype="bfloat16"),
}
H100_BF16_DENSE_TFLOPS = 989.4


def _inputs(cfg, device, seed=0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = getattr(torch, cfg["dtype"])
    N, H, V, K = cfg["N"], cfg["H"], cfg["V"], cfg["K"]
    h = (torch.randn(N, H, generator=g) ).to(device, dt).requires_grad_()
    w = (torch.randn(V, H, generator=g) * (10.0 / H ** 0.5)).to(device, dt).requires_grad_()  # logit std ~10
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(min(N, 64))])
    ids = ids.repeat((N + 63) // 64, 1)[:N].to(torch.int32)
    lp = torch.log_softmax(torch.randn(N, K + 1, generator=g) * 3, dim=-1)
    tail = lp[:, -1].float()
    lp = lp[:, :K].to(torch.float16)
    labels = torch.randint(0, V, (N,), generator=g)
    return h, w, ids.to(device), lp.to(device), tail.to(device), labels.to(device)


def _worker(args):
    import torch

    torch.set_num_threads(args.threads)
    cfg = json.loads(args.cfg)
    dev = args.device
    cuda = dev == "cuda"
    os.environ.setdefault("TRITON_INTERPRET", "0")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels.topk_kl import topk_kl_loss, topk_kl_reference

    h, w, ids, lp, tail, labels = _inputs(cfg, dev)
    grad_bytes = h.numel() * h.element_size() + w.numel() * w.element_size()
    impl = args.worker
    if impl == "pair":
        return _pair(args, h, w, ids, lp, tail, labels)

    if impl == "naive":
        def step():
            topk_kl_reference(h, w, ids, lp, tail, labels).backward()
    elif impl == "floor":
        def step():  # the three GEMMs of any fused implementation: logits, dh = dz W, dW = dz^T h
            with torch.no_grad():
                z = h @ w.t()
                h.grad = z @ w
                w.grad = z.t() @ h
    elif impl in ("torch", "triton"):
        budget = args.budget

        def step():
            topk_kl_loss(h, w, ids, lp, tail, labels, impl=impl, memory_budget_bytes=budget).backward()
    elif impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearJSD  # noqa: F401

        jsd = LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)
        th = h.detach().clone()
        tw = w.detach().clone()

        def step():
            jsd(h, w, th, tw, labels).backward()
    else:
        raise SystemExit(f"unknown impl {impl}")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def clear():
        h.grad = None
        w.grad = None

    # measured call (memory), after everything else exists
    clear()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        import psutil

        base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = max(0, peak - base - grad_bytes)
    times = []
    for _ in range(args.reps):
        clear()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(impl=impl, time=statistics.median(times), first=first, extra=extra, times=times)))


def _pair(args, h, w, ids, lp, tail, labels):
    """Alternate the matmul floor and the chunked torch path in this process; per-pair time ratios (wall and CPU)."""
    import torch

    from kernels.topk_kl import topk_kl_loss

    def floor():
        with torch.no_grad():
            z = h @ w.t()
            h.grad = z @ w
            w.grad = z.t() @ h

    def ours():
        topk_kl_loss(h, w, ids, lp, tail, labels, impl="torch", memory_budget_bytes=args.budget).backward()

    res = {"floor": [], "torch": []}
    for rep in range(args.reps + 1):  # the first round warms up and is dropped
        for name, fn in (("floor", floor), ("torch", ours)):
            h.grad = None
            w.grad = None
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            if rep:
                res[name].append((time.perf_counter() - t0, time.process_time() - c0))
    out = {}
    for k, col in (("wall", 0), ("cpu", 1)):
        f = [r[col] for r in res["floor"]]
        o = [r[col] for r in res["torch"]]
        out[k] = dict(floor=statistics.median(f), torch=statistics.median(o),
                      ratio=statistics.median(b / a for a, b in zip(f, o)))
    print(json.dumps(dict(impl="pair", **out)))


def _run_row(impl, args, cfg):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--cfg", json.dumps(cfg),
           "--device", args.device, "--threads", str(args.threads), "--reps", str(args.reps)]
    if args.budget is not None:
        cmd += ["--budget", str(args.budget)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
        return dict(impl=impl, error=tail[0][:120])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS))
    ap.add_argument("--quick", action="store_true", help="the small 'quick' preset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget", type=int, default=None, help="memory_budget_bytes for the fused op (default: op's)")
    ap.add_argument("--impls", default=None, help="comma list of rows (naive,floor,torch,triton,liger)")
    ap.add_argument("--interleave", type=int, default=0, metavar="R",
                    help="alternate floor and the torch path R times in one process; print median per-pair ratios")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)

    preset = args.preset or ("quick" if args.quick else ("llama8b" if args.device == "cuda" else "anchor"))
    cfg = PRESETS[preset]
    impls = args.impls.split(",") if args.impls else (
        ["naive", "floor", "torch", "triton", "liger"] if args.device == "cuda" else ["naive", "floor", "torch"])
    N, H, V, K = cfg["N"], cfg["H"], cfg["V"], cfg["K"]
    flops = 6.0 * N * H * V
    print(f"# top-k KL fwd+bwd  preset={preset} N={N} H={H} V={V} K={K} {cfg['dtype']} device={args.device} "
          f"threads={args.threads} reps={args.reps}  6NHV={flops / 1e12:.3f} TFLOP")
    if args.interleave:
        args.reps = args.interleave
        r = _run_row("pair", args, cfg)
        if "error" in r:
            print(f"unavailable: {r['error']}")
            return 1
        print(f"| {f'interleaved x{args.interleave}':<16} | {'floor':>9} | {'torch':>9} | "
              f"{'median pair ratio torch/floor':>29} |")
        print(f"|{'-' * 18}|{'-' * 11}|{'-' * 11}|{'-' * 31}|")
        for k in ("wall", "cpu"):
            print(f"| {k + ' time':<16} | {r[k]['floor']:>7.3f} s | {r[k]['torch']:>7.3f} s | {r[k]['ratio']:>29.3f} |")
        return 0
    rows = [_run_row(i, args, cfg) for i in impls]
    ok = {r["impl"]: r for r in rows if "error" not in r}
    naive, floor = ok.get("naive"), ok.get("floor")
    hdr = f"| {'impl':<7} | {'time fwd+bwd':>12} | {'extra mem':>10} | {'x naive time':>12} | {'x floor time':>12} | " \
          f"{'mem / naive':>11} | {'TFLOP/s (6NHV)':>14} |"
    if args.device == "cuda":
        hdr += f" {'% of peak':>9} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r['impl']:<7} | unavailable: {r['error']}")
            continue
        t, m = r["time"], r["extra"]
        line = (f"| {r['impl']:<7} | {t * 1e3:>9.1f} ms | {m / 2**20:>6.0f} MiB | "
                f"{(t / naive['time']) if naive else float('nan'):>12.2f} | "
                f"{(t / floor['time']) if floor else float('nan'):>12.2f} | "
                f"{(m / naive['extra']) if naive and naive['extra'] else float('nan'):>11.3f} | "
                f"{flops / t / 1e12:>14.2f} |")
        if args.device == "cuda":
            line += f" {100 * flops / t / 1e12 / args.peak_tflops:>8.1f}% |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
