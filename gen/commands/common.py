"""Flags every generating command shares (teacher, engine, scale, sampling) and the helpers that turn them into
the typed specs the library takes (`TeacherSpec`, `EngineSpec`, `ScaleSpec`, `SamplingParams`).

    def add_arguments(parser):
        add_teacher_arguments(parser)          # --teacher, --base-url, --system
        add_engine_arguments(parser)           # --concurrency, --rpm, --tpm, --timeout, --max-tokens, --max-cost, ...
        add_sampling_arguments(parser, temperature=0.7)

    def run(args):
        engine = open_engine(args, args.out)   # cache at OUT/.cache/requests.sqlite; on Ray with --ray
        params = sampling_from_args(args)
        ... write_manifest(args.out, config=run_config(args), funnel=...)

Flags stop here: each is validated once, in the `*_from_args` function that reads it, with the flag's name in the
error; below `gen.commands` only specs travel (into Ray actors too). Errors the library raises about a setting
(`InvalidSetting`) are given the flag's name on the way out (`flag_error`, applied by `gen.cli.main`). Every
float flag of every command takes `finite_float` (a NaN budget or threshold compares false with everything and
would silently switch its check off).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from gen.engine.spec import EngineSpec, ScaleSpec
from gen.errors import InvalidSetting, UserError
from gen.teachers.base import SamplingParams
from gen.teachers.spec import TeacherSpec

_SAMPLING_DEFAULTS = {"max_new_tokens": 512, "temperature": 0.7, "top_p": 1.0, "presence_penalty": 0.0,
                      "frequency_penalty": 0.0, "seed": None}


def finite_float(text: str) -> float:
    """The argparse type of every float flag: a finite number (`nan`, `inf` and `-inf` are refused with the flag's
    name, by argparse)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher")
    group.add_argument("--teacher", default="llamacpp", metavar="SPEC",
                       help="openai:<model> | anthropic:<model> | vllm:<model> | llamacpp[:<file.gguf>] | hf:<path> "
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
    group.add_argument("--rpm", type=finite_float, default=None, help="at most this many requests per minute")
    group.add_argument("--tpm", type=finite_float, default=None, help="at most this many tokens per minute")
    group.add_argument("--timeout", type=finite_float, default=120.0, metavar="S", help="seconds per request attempt")
    group.add_argument("--max-retries", type=int, default=6, metavar="N",
                       help="retries after the first attempt on 429/5xx/timeouts/resets (default 6)")
    group.add_argument("--max-tokens", type=int, default=None, metavar="N",
                       help="stop cleanly once this run has spent N tokens (prompt + completion; cache hits free)")
    group.add_argument("--max-cost", type=finite_float, default=None, metavar="USD",
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
    group.add_argument("--gpus-per-worker", type=finite_float, default=None, metavar="G",
                       help="GPUs Ray gives each actor (default 1 for vllm: teachers on a cluster with GPUs, else "
                            "0); set the teacher's tensor parallelism to match")
    group.add_argument("--cpus-per-worker", type=finite_float, default=1.0, metavar="C",
                       help="CPUs per actor (default 1)")
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
    group.add_argument("--temperature", type=finite_float, default=d["temperature"],
                       help=f"default {d['temperature']}")
    group.add_argument("--top-p", type=finite_float, default=d["top_p"], help=f"default {d['top_p']}")
    group.add_argument("--presence-penalty", type=finite_float, default=d["presence_penalty"])
    group.add_argument("--frequency-penalty", type=finite_float, default=d["frequency_penalty"])
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


def teacher_spec_from_args(args: argparse.Namespace) -> TeacherSpec:
    """The teacher named by --teacher, --base-url, --transport and --tensor-parallel-size."""
    tensor_parallel = getattr(args, "tensor_parallel_size", None)
    if tensor_parallel is not None and tensor_parallel < 1:
        raise UserError(f"--tensor-parallel-size {tensor_parallel}: must be at least 1")
    return TeacherSpec(name=args.teacher, base_url=getattr(args, "base_url", None) or None,
                       transport=getattr(args, "transport", None) or None, tensor_parallel_size=tensor_parallel)


def engine_spec_from_args(args: argparse.Namespace) -> EngineSpec:
    """The request engine's settings from the engine flags (--concurrency, --rpm, --max-cost, --price, ...)."""
    from gen.teachers.pricing import parse_price

    price = None
    if getattr(args, "price", None):
        try:
            price = parse_price(args.price)
        except ValueError as exc:
            raise UserError(f"--price {args.price!r}: {exc}") from None
        if not (math.isfinite(price.input_per_million) and math.isfinite(price.output_per_million)):
            raise UserError(f"--price {args.price!r}: prices must be finite numbers")
    spec = EngineSpec(
        concurrency=args.concurrency,
        max_concurrency=getattr(args, "max_concurrency", 256),
        rpm=args.rpm,
        tpm=args.tpm,
        timeout=args.timeout,
        max_retries=getattr(args, "max_retries", 6),
        max_total_tokens=args.max_tokens,
        max_cost=args.max_cost,
        price=price,
        progress=not args.no_progress,
    )
    for flag, value, least in (("--concurrency", spec.concurrency, 1), ("--max-concurrency", spec.max_concurrency, 1),
                               ("--max-retries", spec.max_retries, 0)):
        if value < least:
            raise UserError(f"{flag} {value}: must be at least {least}")
    for flag, value in (("--timeout", spec.timeout), ("--rpm", spec.rpm), ("--tpm", spec.tpm),
                        ("--max-tokens", spec.max_total_tokens), ("--max-cost", spec.max_cost)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {value}: must be positive")
    return spec


def scale_spec_from_args(args: argparse.Namespace) -> ScaleSpec | None:
    """The Ray run the scale flags ask for (--ray, --workers, --unit-size, ...); None without --ray."""
    if not getattr(args, "ray", None):
        return None
    spec = ScaleSpec(address=args.ray, workers=args.workers, unit_size=args.unit_size,
                     gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                     redis_url=getattr(args, "redis", None))
    if spec.workers < 1:
        raise UserError(f"--workers {spec.workers}: must be at least 1")
    if spec.unit_size is not None and spec.unit_size < 1:
        raise UserError(f"--unit-size {spec.unit_size}: must be at least 1")
    for flag, value in (("--gpus-per-worker", spec.gpus_per_worker), ("--cpus-per-worker", spec.cpus_per_worker)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{flag} {value}: must be at least 0")
    return spec


# Settings whose flag is not `--` + the setting's name with dashes (`max_turns` -> `--max-turns`).
_FLAG_OF_SETTING = {"max_total_tokens": "--max-tokens", "address": "--ray", "redis_url": "--redis"}
_FLAG_HINTS = {"max_cost": "pass --price IN:OUT (dollars per 1M tokens) or use --max-tokens"}


def flag_error(exc: InvalidSetting) -> UserError:
    """The library's error about a setting (an `EngineSpec`/`ScaleSpec` field, a method config's field) as the CLI
    says it: naming the flag that set it. `gen.cli` applies this to every `InvalidSetting` a command lets through."""
    flag = _FLAG_OF_SETTING.get(exc.setting, "--" + exc.setting.replace("_", "-"))
    message = str(exc)
    if message.startswith(f"{exc.setting} "):  # "concurrency 0: ..." -> "--concurrency 0: ..."
        message = flag + message[len(exc.setting):]
    else:
        message = f"{flag}: {message}"
    hint = _FLAG_HINTS.get(exc.setting)
    return UserError(f"{message}; {hint}" if hint else message)


def open_engine(args: argparse.Namespace, out_dir: str | os.PathLike | None, teacher=None):
    """The engine the flags ask for, with its request cache at `OUT/.cache/requests.sqlite` (in memory when
    `out_dir` is None): one process (`build_engine`), or with --ray a cluster of actors behind the same interface
    (`build_distributed_engine`). `teacher`, if given, is an open teacher to use instead of --teacher (one process).
    The engine owns the teacher (or the cluster): `engine.close()` closes both."""
    from gen.engine.engine import build_engine, default_cache_path

    teacher_spec = teacher_spec_from_args(args)
    engine_spec = engine_spec_from_args(args)
    scale_spec = scale_spec_from_args(args)
    cache_path = default_cache_path(out_dir) if out_dir is not None else None
    if scale_spec is not None and teacher is None:
        from gen.scale.distributed import build_distributed_engine

        return build_distributed_engine(teacher_spec, engine_spec, scale_spec, cache_path)
    return build_engine(teacher if teacher is not None else teacher_spec, engine_spec, cache_path)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's configuration for the manifest: every flag (paths as strings), redacted of secrets."""
    from gen.data.secrets import redact

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
    except UnicodeDecodeError as exc:
        raise UserError(f"--chat-template {path}: not UTF-8 text (byte {exc.start})") from None


# ------------------------------------------------------------------------------------------------------------------
# Judge flags (the teacher as judge: `gen score`, and the commands built on the judge). The judge is a
# teacher spec like --teacher, with its own endpoint flags; the engine flags (--concurrency, budgets, --timeout, ...)
# are shared: every engine a command opens gets the same settings.


def add_judge_arguments(parser: argparse.ArgumentParser, *, rubric_default: str | None = None) -> None:
    """--judge SPEC, --judge-base-url, --judge-transport, --judge-tensor-parallel-size, --judge-max-new-tokens,
    --judge-temperature, --judge-free-text; with `rubric_default`, also --rubric NAME|FILE."""
    group = parser.add_argument_group("judge")
    group.add_argument("--judge", default="llamacpp", metavar="SPEC",
                       help="the judge, any teacher spec: openai:<model> | anthropic:<model> | vllm:<model> | "
                            "llamacpp[:<file.gguf>] (default: the embedded llama.cpp teacher); keys from the "
                            "environment (OPENAI_API_KEY, ANTHROPIC_API_KEY)")
    group.add_argument("--judge-base-url", default=None, metavar="URL",
                       help="the judge's OpenAI-compatible or Anthropic endpoint (URL1,URL2,...: replicas)")
    group.add_argument("--judge-transport", default=None, choices=("aiohttp", "sdk"),
                       help="HTTP client of an openai/anthropic/llamacpp judge (default aiohttp)")
    group.add_argument("--judge-tensor-parallel-size", type=int, default=None, metavar="N",
                       help="vllm judge: GPUs one in-process engine spans")
    group.add_argument("--judge-max-new-tokens", type=int, default=384, metavar="N",
                       help="tokens per verdict (rationale + scores; default 384)")
    group.add_argument("--judge-temperature", type=finite_float, default=0.0,
                       help="judge sampling temperature (default 0: the same verdict on every rerun)")
    group.add_argument("--judge-free-text", action="store_true",
                       help="do not ask for structured output (the verdict's JSON schema); the reply is parsed "
                            "from free text")
    if rubric_default is not None:
        group.add_argument("--rubric", default=rubric_default, metavar="NAME|FILE",
                           help="quality (1-10), ultrafeedback (4 aspects, 1-5), complexity (the instruction, 1-10), "
                                f"or a rubric file .yaml/.json (default {rubric_default})")


def judge_spec_from_args(args: argparse.Namespace) -> TeacherSpec:
    """The judge named by --judge, --judge-base-url, --judge-transport and --judge-tensor-parallel-size."""
    tensor_parallel = getattr(args, "judge_tensor_parallel_size", None)
    if tensor_parallel is not None and tensor_parallel < 1:
        raise UserError(f"--judge-tensor-parallel-size {tensor_parallel}: must be at least 1")
    return TeacherSpec(name=args.judge, base_url=getattr(args, "judge_base_url", None) or None,
                       transport=getattr(args, "judge_transport", None) or None, tensor_parallel_size=tensor_parallel)


def judge_sampling_from_args(args: argparse.Namespace, rubric) -> SamplingParams:
    """The judge's sampling params for `rubric` (a `gen.methods.judge.Rubric`): --judge-max-new-tokens,
    --judge-temperature, and its verdict schema as structured output unless --judge-free-text."""
    from gen.methods.judge import judge_params

    if args.judge_max_new_tokens < 1:
        raise UserError(f"--judge-max-new-tokens {args.judge_max_new_tokens}: must be at least 1")
    if not 0.0 <= args.judge_temperature <= 2.0:
        raise UserError(f"--judge-temperature {args.judge_temperature}: must be within [0, 2]")
    base = SamplingParams(max_tokens=args.judge_max_new_tokens, temperature=args.judge_temperature)
    return judge_params(rubric, base, structured=not getattr(args, "judge_free_text", False))


def open_judge_engine(args: argparse.Namespace, out_dir: str | os.PathLike | None):
    """The judge's engine (as `open_engine`, for --judge): its requests cached in `OUT/.cache/requests.sqlite`
    beside the run's own (the judge's id is part of every cache key); on Ray with --ray."""
    from gen.engine.engine import build_engine, default_cache_path

    judge_spec = judge_spec_from_args(args)
    engine_spec = engine_spec_from_args(args)
    scale_spec = scale_spec_from_args(args)
    cache_path = default_cache_path(out_dir) if out_dir is not None else None
    if scale_spec is not None:
        from gen.scale.distributed import build_distributed_engine

        return build_distributed_engine(judge_spec, engine_spec, scale_spec, cache_path)
    return build_engine(judge_spec, engine_spec, cache_path)
