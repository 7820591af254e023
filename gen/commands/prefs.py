"""`gen prefs --input PROMPTS --candidates SPEC[,SPEC...] -n N --judge SPEC --out DIR`: preference pairs for DPO.

UltraFeedback-style: every candidate model answers every prompt N times, the judge rates each answer with a
pointwise rubric (`--rubric`, default `quality`), and the best and the worst rated answers of a prompt become one
row of `OUT/train` in the layout TRL's `DPOTrainer` reads as is (`prompt`, `chosen`, `rejected` as conversations,
plus `score_chosen` / `score_rejected` and every rated candidate). A prompt whose answers all got the same score goes
to `OUT/rejected` with reason `preference_tie`; one with fewer than two rated answers with `too_few_rated` (and
`judge_unparseable` when the judge's verdicts could not be read). The work is `gen.methods.prefs`; this module is
its flags.

Candidates are any teacher specs: `llamacpp` (the embedded teacher), `llamacpp:FILE.gguf`, `hf:PATH` (a student
sampling itself, in this process), `vllm:PATH`, `openai:MODEL`, `anthropic:MODEL`. Their endpoint flags are the
teacher flags, shared by every candidate they apply to: `--base-url` goes to each openai:/anthropic: candidate (so
two openai: candidates are two models behind one OpenAI-compatible server, e.g. `vllm serve` with two models or a
proxy), `--transport` to the HTTP ones, `--tensor-parallel-size` to vllm: ones. Each engine (every candidate and
the judge) gets the engine flags; budgets (`--max-tokens`, `--max-cost`) apply to each engine on its own. The
candidates are opened one after the other (two local models are never loaded together), then the judge.

Resuming: every request goes through the run's cache (OUT/.cache/requests.sqlite), so a rerun of the same command
sends only what never completed and writes no row twice. Exit status: 0 done, 3 a budget stopped an engine (rerun
with a larger budget to finish from the cache), 4 some requests failed after retries (their prompts have no row
yet; rerun), 2 a user error.
"""

from __future__ import annotations

import argparse
import sys

from gen.commands.common import add_engine_arguments, add_judge_arguments, add_sampling_arguments

HELP = "preference pairs (prompt/chosen/rejected, for gen train --dpo): candidates answer, a judge rates"

EXIT_BUDGET = 3
EXIT_FAILURES = 4
# Backends each teacher flag applies to (the others would refuse it as an unknown option).
_BASE_URL_BACKENDS = ("openai", "anthropic")
_TRANSPORT_BACKENDS = ("openai", "anthropic", "llamacpp")
_TENSOR_PARALLEL_BACKENDS = ("vllm",)
# gen.methods.prefs.DEFAULT_CHUNK, written out: importing the method (pyarrow) would slow down `gen --help`.
DEFAULT_CHUNK = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PROMPTS",
                        help=".jsonl/.json/.txt/.arrow/.parquet with `instruction` or `messages` per row, or a run dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory (created; reruns resume)")
    parser.add_argument("--candidates", default="llamacpp", metavar="SPEC[,SPEC...]",
                        help="the models that answer, comma-separated teacher specs: llamacpp[:FILE.gguf], hf:PATH "
                             "(e.g. the student itself), vllm:PATH, openai:MODEL, anthropic:MODEL (default llamacpp)")
    parser.add_argument("-n", "--n", type=int, default=2, metavar="N",
                        help="answers per prompt from each candidate (default 2; each with its own seed)")
    parser.add_argument("--field", default=None, metavar="NAME",
                        help="take the instruction from this field instead of `instruction`/`messages`")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="N",
                        help=f"prompts rated and committed at a time (default {DEFAULT_CHUNK})")
    group = parser.add_argument_group("candidates' endpoints (shared by every candidate they apply to)")
    group.add_argument("--base-url", default=None, metavar="URL",
                       help="endpoint of every openai:/anthropic: candidate (URL1,URL2,...: replicas)")
    group.add_argument("--transport", default=None, choices=("aiohttp", "sdk"),
                       help="HTTP client of the openai/anthropic/llamacpp candidates (default aiohttp)")
    group.add_argument("--tensor-parallel-size", type=int, default=None, metavar="N",
                       help="vllm candidates: GPUs one in-process engine spans")
    group.add_argument("--system", default=None, metavar="TEXT",
                       help="system message of every prompt that has none (kept in the `prompt` column)")
    add_judge_arguments(parser, rubric_default="quality")
    add_engine_arguments(parser)
    add_sampling_arguments(parser, temperature=0.8)


def candidate_specs(args: argparse.Namespace) -> list:
    """--candidates as TeacherSpecs, each given the endpoint flags that apply to its backend; a malformed,
    repeated or unknown spec is a UserError naming it."""
    from gen.errors import UserError
    from gen.teachers import parse_spec
    from gen.teachers.spec import TeacherSpec

    names = [name.strip() for name in args.candidates.split(",")]
    if not all(names):
        raise UserError(f"--candidates {args.candidates!r}: an empty spec (write SPEC[,SPEC...])")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"--candidates: {', '.join(repeated)} named twice (use -n for more answers per candidate)")
    if args.tensor_parallel_size is not None and args.tensor_parallel_size < 1:
        raise UserError(f"--tensor-parallel-size {args.tensor_parallel_size}: must be at least 1")
    specs = []
    for name in names:
        try:
            backend, model = parse_spec(name)
            if backend == "hf":  # a missing student directory fails now, not after the other candidates ran
                from gen.logits.capture import check_hf_model_path

                check_hf_model_path(model)
        except UserError as exc:
            raise UserError(str(exc).replace("--teacher", "--candidates")) from None
        specs.append(TeacherSpec(
            name=name,
            base_url=args.base_url if backend in _BASE_URL_BACKENDS else None,
            transport=args.transport if backend in _TRANSPORT_BACKENDS else None,
            tensor_parallel_size=args.tensor_parallel_size if backend in _TENSOR_PARALLEL_BACKENDS else None))
    for flag, value, backends in (("--base-url", args.base_url, _BASE_URL_BACKENDS),
                                  ("--transport", args.transport, _TRANSPORT_BACKENDS),
                                  ("--tensor-parallel-size", args.tensor_parallel_size, _TENSOR_PARALLEL_BACKENDS)):
        if value and not any(spec.backend in backends for spec in specs):
            raise UserError(f"{flag}: no candidate it applies to ({' or '.join(b + ':' for b in backends)}); the "
                            f"judge's is --judge-{flag[2:]}")
    return specs


def _opener(spec, args: argparse.Namespace, out: str):
    """A function opening the engine of one teacher spec with the run's cache (on Ray with --ray)."""
    from gen.commands.common import engine_spec_from_args, scale_spec_from_args
    from gen.engine.engine import build_engine, default_cache_path

    engine_spec = engine_spec_from_args(args)
    scale_spec = scale_spec_from_args(args)
    cache_path = default_cache_path(out)

    def open_engine():
        if scale_spec is not None:
            from gen.scale.distributed import build_distributed_engine

            return build_distributed_engine(spec, engine_spec, scale_spec, cache_path)
        return build_engine(spec, engine_spec, cache_path)

    return open_engine


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gen.commands.common import (
        judge_sampling_from_args,
        judge_spec_from_args,
        run_config,
        sampling_from_args,
    )
    from gen.commands.method_common import reject_redis_flag, run_seed
    from gen.data.inputs import read_inputs
    from gen.data.lock import run_lock
    from gen.data.outdir import open_run_dir
    from gen.errors import UserError
    from gen.methods.judge import load_rubric
    from gen.methods.prefs import METHOD, PrefsSpec, build_preferences
    from gen.teachers import parse_spec

    # Every flag's own check first (nothing opened, nothing written), then the inputs, the lock, the models.
    for flag, value in (("-n", args.n), ("--limit", args.limit), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    reject_redis_flag(args, METHOD)
    candidates = candidate_specs(args)
    try:
        parse_spec(args.judge)
    except UserError as exc:
        raise UserError(str(exc).replace("--teacher", "--judge")) from None
    judge = judge_spec_from_args(args)
    rubric = load_rubric(args.rubric)
    if rubric.pairwise or rubric.target != "answer":
        raise UserError(f"--rubric {args.rubric}: gen prefs rates each answer on its own; {rubric.name} rates "
                        f"{'pairs' if rubric.pairwise else 'the instruction'} (target: {rubric.target})")
    spec = PrefsSpec(n=args.n, params=sampling_from_args(args), rubric=rubric,
                     judge_params=judge_sampling_from_args(args, rubric), seed=run_seed(args),
                     chunk_size=args.chunk_size)
    inputs = read_inputs(args.input, field=args.field, limit=args.limit)
    if args.system:
        inputs = [row if row.system else replace(row, system=args.system) for row in inputs]
    out = open_run_dir(args.out)
    config = {**run_config(args), "method": METHOD}
    with run_lock(out, METHOD):  # one writer per run directory, taken before any request is sent
        outcome = build_preferences([(c.name, _opener(c, args, str(out))) for c in candidates],
                                    _opener(judge, args, str(out)), inputs, out, spec, config=config)
    total = outcome.funnel.total
    print(f"gen prefs: {len(inputs)} prompts x {len(candidates)} candidate(s) x {args.n} -> "
          f"{total.get('kept', 0)} pairs in {out / 'train'}, {outcome.rows_on_disk.get('rejected', 0)} rows in "
          f"{out / 'rejected'}; manifest: {out / 'manifest.json'}")
    print()
    print(outcome.funnel.table())
    for name, stats in outcome.engines.items():
        print(f"engine {name}: " + " ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)
    if outcome.first_error:
        print(f"gen prefs: {outcome.failed} requests failed (their prompts have no row yet; rerun to retry); first "
              f"error: {outcome.first_error}", file=sys.stderr)
    if outcome.exhausted:
        print("gen prefs: stopped by the budget; rerun with a larger --max-tokens/--max-cost to finish from the cache",
              file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_FAILURES if outcome.failed else 0
