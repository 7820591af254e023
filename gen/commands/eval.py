"""`gen eval --student PATH --prompts FILE|RUN --judge SPEC --baseline RUN|SPEC --out DIR`: does the student beat
the baseline (usually its teacher) on held-out prompts, by how much, and how sure is that?

The student answers every prompt (`vllm:PATH` when vLLM is installed, else `hf:PATH`; or name one), the baseline's
answers come from a run (matched by prompt) or from another model, and the judge compares each pair in both orders
(a verdict that flips with the order is a tie). OUT gets eval.json (n, wins, ties, losses, win_rate, win_rate_ci,
lc_win_rate, position_flip_rate, mean lengths, judge, rubric, rejected), eval.md with eval.png, pairs.jsonl and
rejected.jsonl; the table is printed. `--logits DIR` adds the student's held-out teacher KL and perplexity.

Every request goes through the engine's cache in OUT/.cache: a rerun is all cache hits, a killed run resumes.
Exit status: 0 done; 4 some requests failed after their retries (not counted; a rerun retries them); 2 a user error.
The work is `gen.methods.evaluation`; this module is its flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from gen.commands.common import add_engine_arguments, add_sampling_arguments

HELP = "judge a student's answers against a baseline's (win rate, CI, length-controlled win rate)"

EXIT_FAILURES = 4
MODEL_PREFIXES = ("hf:", "vllm:")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, metavar="PATH",
                        help="the student: a local model directory (vllm:PATH when vLLM is installed, else "
                             "hf:PATH), or hf:PATH / vllm:PATH to choose")
    parser.add_argument("--prompts", required=True, metavar="FILE|RUN",
                        help="held-out prompts: .jsonl/.json/.txt/.arrow/.parquet (instruction or messages) or a run")
    parser.add_argument("--baseline", required=True, metavar="RUN|SPEC",
                        help="a run directory whose rows answer the prompts (e.g. the teacher's run), or a model "
                             "spec that answers them now (llamacpp, openai:MODEL, hf:PATH, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; reruns resume)")
    parser.add_argument("--judge", default="llamacpp", metavar="SPEC",
                        help="the judge: any teacher spec (default: the embedded llama.cpp model)")
    parser.add_argument("--base-url", default=None, metavar="URL", help="the judge's endpoint (HTTP judges)")
    parser.add_argument("--transport", default=None, choices=("aiohttp", "sdk"), help="the judge's HTTP client")
    parser.add_argument("--baseline-base-url", default=None, metavar="URL",
                        help="the endpoint of a --baseline model spec (HTTP backends)")
    parser.add_argument("--rubric", default="pairwise", metavar="NAME|FILE",
                        help="pairwise rubric (default: the built-in `pairwise`)")
    parser.add_argument("--judge-max-tokens", type=int, default=None, metavar="N",
                        help="tokens per judge reply (default: the judge library's)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    parser.add_argument("--logits", default=None, metavar="DIR",
                        help="held-out logit shards (gen logits): also report the student's teacher KL and perplexity")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="bootstrap resamples of the win-rate interval (default 2000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, metavar="N", help="seed of the bootstrap (default 0)")
    parser.add_argument("--round-size", type=int, default=64, metavar="N",
                        help="prompts per round of an in-process generator (a kill loses at most one; default 64)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="hf: students: sequences per generate call (default 16)")
    parser.add_argument("--logits-batch-size", type=int, default=8, metavar="N", help=argparse.SUPPRESS)
    add_engine_arguments(parser)
    add_sampling_arguments(parser, temperature=0.0)


def student_spec(value: str):
    """--student as a TeacherSpec: hf:PATH / vllm:PATH as given, a bare path through vLLM when it is installed."""
    from gen.errors import UserError
    from gen.logits.capture import check_hf_model_path
    from gen.teachers.spec import TeacherSpec

    if value.startswith(MODEL_PREFIXES):
        prefix, _, path = value.partition(":")
    else:
        prefix, path = ("vllm" if importlib.util.find_spec("vllm") is not None else "hf"), value
    try:
        check_hf_model_path(path)
    except UserError as exc:
        raise UserError(str(exc).replace(f"--teacher hf:{path}", f"--student {value}")) from None
    return TeacherSpec(name=f"{prefix}:{path}"), path


def baseline_source(args: argparse.Namespace):
    """(run directory, None) or (None, TeacherSpec) for --baseline."""
    from gen.data.shards import shard_paths
    from gen.errors import UserError
    from gen.teachers import parse_spec
    from gen.teachers.spec import TeacherSpec

    value = args.baseline
    path = Path(value)
    if path.is_dir():
        if not shard_paths(path, "train"):
            raise UserError(f"--baseline {value}: a directory but not a kdforge run (no train/*.arrow shards)")
        if args.baseline_base_url:
            raise UserError("--baseline-base-url: only for a --baseline model spec, not a run directory")
        return str(path), None
    try:
        parse_spec(value)
    except UserError:
        raise UserError(f"--baseline {value}: neither a run directory nor a model spec (llamacpp, openai:MODEL, "
                        f"hf:PATH, ...)") from None
    return None, TeacherSpec(name=value, base_url=args.baseline_base_url or None)


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import engine_spec_from_args, sampling_from_args
    from gen.data.lock import run_lock
    from gen.data.outdir import check_out_dir, open_run_dir
    from gen.errors import UserError
    from gen.methods.evaluation.compare import EvalSpec, evaluate, read_prompts
    from gen.methods.evaluation.report import table_lines, write_reports
    from gen.teachers import parse_spec
    from gen.teachers.spec import TeacherSpec

    if getattr(args, "ray", None):
        raise UserError("--ray: gen eval runs in one process")
    for flag, value, least in (("--limit", args.limit, 1), ("--bootstrap", args.bootstrap, 1),
                               ("--round-size", args.round_size, 1), ("--judge-max-tokens", args.judge_max_tokens, 1),
                               ("--batch-size", args.batch_size, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: must be at least {least}")
    # Every flag's own check first (cheap, nothing loaded), then the lock, then the models.
    student, student_path = student_spec(args.student)
    if args.batch_size is not None and student.backend != "hf":
        raise UserError("--batch-size: only for an hf: student (vLLM batches by itself)")
    try:
        parse_spec(args.judge)
    except UserError as exc:
        raise UserError(str(exc).replace("--teacher", "--judge")) from None
    judge = TeacherSpec(name=args.judge, base_url=args.base_url or None, transport=args.transport)
    baseline_run, baseline_model = baseline_source(args)
    if args.logits is not None and not Path(args.logits).is_dir():
        raise UserError(f"--logits {args.logits}: no such directory")
    spec = EvalSpec(student=student, judge=judge, baseline_run=baseline_run, baseline_model=baseline_model,
                    engine=engine_spec_from_args(args), params=sampling_from_args(args), rubric=args.rubric,
                    judge_max_tokens=args.judge_max_tokens, bootstrap=args.bootstrap, seed=args.bootstrap_seed,
                    round_size=args.round_size,
                    student_options={"batch_size": args.batch_size} if args.batch_size is not None else {})
    prompts = read_prompts(args.prompts, args.limit)
    check_out_dir(args.out)
    out = open_run_dir(args.out)
    with run_lock(out, "eval"):
        result = evaluate(prompts, out, spec)
        if args.logits is not None:
            from train.heldout import heldout_teacher_kl

            result.summary["heldout"] = heldout_teacher_kl(student_path, args.logits,
                                                           batch_size=args.logits_batch_size)
        write_reports(out, result.summary, result.judged, result.rejected)
    summary = result.summary
    print(f"gen eval: {summary['student']} vs {summary['baseline']}, judged by {summary['judge']}")
    print("\n".join(table_lines(summary)))
    print(f"gen eval: wrote {out / 'eval.json'} and {out / 'eval.md'}")
    failures = sum(n for reason, n in summary["rejected"]["reasons"].items() if reason.endswith("_failed"))
    if failures:
        print(f"gen eval: {failures} prompt(s) have no verdict because a request failed; rerun to retry them",
              file=sys.stderr)
        return EXIT_FAILURES
    return 0

