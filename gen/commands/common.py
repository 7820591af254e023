"""Flags every generating command shares (teacher, engine, sampling) and the helpers that turn them into objects.

    def add_arguments(parser):
        add_teacher_arguments(parser)          # --teacher, --base-url, --system
        add_engine_arguments(parser)           # --concurrency, --rpm, --tpm, --timeout, --max-tokens, --max-cost, ...
        add_sampling_arguments(parser, temperature=0.7)

    def run(args):
        engine = open_engine(args, args.out)   # cache at OUT/.cache/requests.sqlite
        params = sampling_from_args(args)
        ... write_manifest(args.out, config=run_config(args), funnel=...)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gen.errors import UserError
from gen.teachers.base import SamplingParams

_SAMPLING_DEFAULTS = {"max_new_tokens": 512, "temperature": 0.7, "top_p": 1.0, "presence_penalty": 0.0,
                      "frequency_penalty": 0.0, "seed": None}


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher")
    group.add_argument("--teacher", default="llamacpp", metavar="SPEC",
                       help="openai:<model> | anthropic:<model> | vllm:<model> | llamacpp[:<file.gguf>] "
                            "(default: the embedded llama.cpp teacher). Keys come from OPENAI_API_KEY / "
                            "ANTHROPIC_API_KEY only.")
    group.add_argument("--base-url", default=None, metavar="URL",
                       help="OpenAI-compatible endpoint (vllm serve, llama.cpp, a proxy) or Anthropic endpoint; "
                            "openai:<model> also takes URL1,URL2,... (replicas of one model: balanced by requests "
                            "in flight, an endpoint failing 3 times in a row is taken out and probed again later)")
    group.add_argument("--transport", default=None, choices=("aiohttp", "sdk"),
                       help="HTTP client of the openai/anthropic/llamacpp teachers: aiohttp (default; ~0.2 ms CPU "
                            "per request) or sdk (the official SDK over httpx; 5-12 ms CPU per request)")
    group.add_argument("--tensor-parallel-size", type=int, default=None, metavar="N",
                       help="vllm: GPUs one in-process engine spans (vLLM's tensor_parallel_size; with --ray, the GPUs "
                            "each actor asks Ray for unless --gpus-per-worker says otherwise)")
    group.add_argument("--system", default=None, metavar="TEXT",
                       help="system message sent with every request (recorded in each row's `system`)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("request engine")
    group.add_argument("--concurrency", type=int, default=16, metavar="N",
                       help="requests in flight at the start (grows while healthy, halves on 429; default 16)")
    group.add_argument("--max-concurrency", type=int, default=256, metavar="N",
                       help="ceiling for adaptive concurrency (default 256)")
    group.add_argument("--rpm", type=float, default=None, help="at most this many requests per minute")
    group.add_argument("--tpm", type=float, default=None, help="at most this many tokens per minute")
    group.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request attempt")
    group.add_argument("--max-retries", type=int, default=6, metavar="N",
                       help="retries after the first attempt on 429/5xx/timeouts/resets (default 6)")
    group.add_argument("--max-tokens", type=int, default=None, metavar="N",
                       help="stop cleanly once this run has spent N tokens (prompt + completion; cache hits free)")
    group.add_argument("--max-cost", type=float, default=None, metavar="USD",
                       help="stop cleanly once this run has spent about this many dollars (known models or --price)")
    group.add_argument("--price", default=None, metavar="IN:OUT",
                       help="dollars per 1M input:output tokens, overriding the built-in price table")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scale_arguments(parser)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ray`, `--workers`, `--unit-size`, `--redis`: the same command on a Ray cluster (see `gen.scale`)."""
    group = parser.add_argument_group("scale (Ray)")
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run units of work on Ray actors, each with its own teacher: `--ray` or `--ray local` "
                            "starts a local cluster; `--ray auto`, `--ray HOST:6379` or `--ray ray://HOST:10001` "
                            "joins one (every node needs kdforge installed and its own API keys)")
    group.add_argument("--workers", type=int, default=2, metavar="N",
                       help="Ray actors, each owning a teacher (default 2; with --ray)")
    group.add_argument("--unit-size", type=int, default=None, metavar="N",
                       help="items (evol) or requests (other methods) per unit of work (default: evol cuts a "
                            "round into ~16 units of at most 256 items; others 64 requests)")
    group.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                       help="GPUs Ray gives each actor (default 1 for vllm: teachers on a cluster with GPUs, else "
                            "0); set the teacher's tensor parallelism to match")
    group.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per actor (default 1)")
    group.add_argument("--redis", default=None, metavar="URL",
                       help="keep the near-duplicate MinHash index in Redis (redis://HOST:6379/0), shared by all "
                            "workers so that a near-copy made by another worker is caught before it is paid for")


def add_sampling_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Sampling flags; `defaults` overrides any of max_new_tokens, temperature, top_p, presence_penalty,
    frequency_penalty, seed for this command."""
    unknown = set(defaults) - set(_SAMPLING_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sampling defaults: {sorted(unknown)}")
    d = {**_SAMPLING_DEFAULTS, **defaults}
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"], metavar="N",
                       help=f"tokens per completion (default {d['max_new_tokens']})")
    group.add_argument("--temperature", type=float, default=d["temperature"], help=f"default {d['temperature']}")
    group.add_argument("--top-p", type=float, default=d["top_p"], help=f"default {d['top_p']}")
    group.add_argument("--presence-penalty", type=float, default=d["presence_penalty"])
    group.add_argument("--frequency-penalty", type=float, default=d["frequency_penalty"])
    group.add_argument("--seed", type=int, default=d["seed"], help="sampling seed (where the backend supports it)")


def sampling_from_args(args: argparse.Namespace, **overrides: Any) -> SamplingParams:
    """SamplingParams from the sampling flags (`overrides` win, e.g. a method's own max_tokens for one step)."""
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not 0.0 <= args.temperature <= 2.0:
        raise UserError(f"--temperature {args.temperature}: must be within [0, 2]")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p {args.top_p}: must be within (0, 1]")
    params = SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        presence_penalty=getattr(args, "presence_penalty", 0.0),
        frequency_penalty=getattr(args, "frequency_penalty", 0.0),
        seed=getattr(args, "seed", None),
    )
    return params.replace(**overrides) if overrides else params


def load_teacher_from_args(args: argparse.Namespace):
    """The teacher named by --teacher (and --base-url). Unknown specs and missing keys are UserErrors."""
    from gen.teachers import load_teacher

    options: dict[str, Any] = {}
    if getattr(args, "base_url", None):
        options["base_url"] = args.base_url
    if getattr(args, "transport", None):
        options["transport"] = args.transport
    if getattr(args, "tensor_parallel_size", None):
        if args.tensor_parallel_size < 1:
            raise UserError(f"--tensor-parallel-size {args.tensor_parallel_size}: must be at least 1")
        options["tensor_parallel_size"] = args.tensor_parallel_size
    return load_teacher(args.teacher, **options)


def open_engine(args: argparse.Namespace, out_dir: str | os.PathLike | None, teacher=None):
    """An `Engine` configured by the engine flags, with its request cache at `OUT/.cache/requests.sqlite`
    (in memory when `out_dir` is None). The engine owns the teacher: `engine.close()` closes both."""
    from gen.engine.engine import Engine, default_cache_path
    from gen.teachers.pricing import parse_price

    price = None
    if getattr(args, "price", None):
        try:
            price = parse_price(args.price)
        except ValueError as exc:
            raise UserError(f"--price {args.price!r}: {exc}") from None
    for flag in ("concurrency", "max_concurrency", "max_retries"):
        value = getattr(args, flag, None)
        if value is not None and value < (0 if flag == "max_retries" else 1):
            raise UserError(f"--{flag.replace('_', '-')} {value}: out of range")
    if getattr(args, "ray", None) and teacher is None:
        return open_distributed_engine(args, out_dir, price)
    if teacher is None:
        teacher = load_teacher_from_args(args)
    try:
        return Engine(
            teacher,
            cache_path=default_cache_path(out_dir) if out_dir is not None else None,
            concurrency=args.concurrency,
            max_concurrency=getattr(args, "max_concurrency", 256),
            rpm=args.rpm,
            tpm=args.tpm,
            timeout=args.timeout,
            max_retries=getattr(args, "max_retries", 6),
            max_total_tokens=args.max_tokens,
            max_cost=args.max_cost,
            progress=not args.no_progress,
            price=price,
        )
    except BaseException:
        teacher.close()
        raise


def open_distributed_engine(args: argparse.Namespace, out_dir, price=None):
    """`--ray`: the cluster of actors (each opens the teacher named by the flags) behind the engine interface."""
    from gen.engine.engine import default_cache_path
    from gen.scale.cluster import RayCluster
    from gen.scale.request_units import DEFAULT_UNIT_REQUESTS, DistributedEngine

    gpus = args.gpus_per_worker
    if gpus is None:
        vllm = str(args.teacher).startswith("vllm:")
        gpus = float(getattr(args, "tensor_parallel_size", None) or 1) if vllm and _cluster_has_gpus() else 0.0
    cluster = RayCluster(args, workers=args.workers, address=args.ray, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=gpus, progress=not args.no_progress)
    try:
        return DistributedEngine(cluster, cache_path=default_cache_path(out_dir) if out_dir is not None else None,
                                 unit_size=args.unit_size or DEFAULT_UNIT_REQUESTS, max_total_tokens=args.max_tokens,
                                 max_cost=args.max_cost, price=price)
    except BaseException:
        cluster.close()
        raise


def _cluster_has_gpus() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's configuration for the manifest: every flag (paths as strings), redacted of secrets."""
    from gen.data.shards import redact

    config: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        if name.startswith("_") or callable(value):
            continue
        if isinstance(value, Path):
            value = str(value)
        config[name] = value
    return redact(config)


def engine_summary(engine) -> str:
    """One line for stderr at the end of a command: what was sent, cached, failed and spent (plus one line per
    endpoint when the teacher has several)."""
    s = engine.stats
    parts = [f"{s['requests']} requests", f"{s['sent']} sent", f"{s['cache_hits']} from cache",
             f"{s['failures']} failed", f"{s['prompt_tokens'] + s['completion_tokens']} tokens"]
    if s.get("cost") is not None:
        parts.append(f"${s['cost']:.4f}")
    if s.get("seconds"):
        parts.append(f"{s['seconds']:.1f} s")
    line = ", ".join(parts)
    if engine.exhausted:
        line += " — budget exhausted (rerun with a larger --max-tokens/--max-cost to continue from the cache)"
    for url, e in (s.get("endpoints") or {}).items():  # a teacher over several endpoints: one line each
        line += (f"\n  endpoint {url}: {e['requests']} requests, {e['failures']} failed, {e['ejections']} ejections"
                 + ("" if e["healthy"] else " (out of service)"))
    return line


def print_summary(engine, file=None) -> None:
    print(engine_summary(engine), file=file or sys.stderr)


def read_chat_template(path: str | None) -> str | None:
    """The text of a `--chat-template FILE` flag (None when the flag is absent); an unreadable file is a UserError."""
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--chat-template {path}: {exc.strerror}") from None
