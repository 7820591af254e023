"""`gen magpie -n N --teacher SPEC`: Magpie — instructions drawn from an aligned model with no seeds (the model
completes its own pre-query template as the user), answered by the same teacher. See `gen.methods.magpie`.

Needs a raw-completion path (`/v1/completions` of vllm serve or llama.cpp, the embedded llama.cpp server, in-process
vLLM); Anthropic and OpenAI's hosted chat models have none and stop with one line. The pre-query template comes from
the model's chat template (llama.cpp's server renders it; in-process vLLM with its tokenizer; else the tokenizer of
`--tokenizer`/the model name when it loads offline) or from `--pre-query FILE`."""

from __future__ import annotations

import argparse
from contextlib import contextmanager

from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments, finite_float
from gen.commands.method_common import add_out_argument

HELP = "Magpie: instructions drawn from an aligned model's pre-query template (no seeds), then answered"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--instructions", type=int, default=100, metavar="N",
                        help="queries to draw (kept rows are fewer after the filters; default 100)")
    parser.add_argument("--turns", type=int, default=1, metavar="N",
                        help="user turns per conversation: after its answer the model continues as the user")
    parser.add_argument("--pre-query", default=None, metavar="FILE",
                        help="the pre-query template as a text file (default: from the model's chat template)")
    parser.add_argument("--tokenizer", default=None, metavar="NAME_OR_DIR",
                        help="a Hugging Face tokenizer whose chat template gives the pre-query template, for servers "
                             "that cannot render theirs (vllm serve)")
    parser.add_argument("--query-temperature", type=finite_float, default=1.0, help="for the query (default 1.0)")
    parser.add_argument("--query-top-p", type=finite_float, default=1.0, help="for the query (default 1.0)")
    parser.add_argument("--query-max-tokens", type=int, default=128, metavar="N",
                        help="tokens per query at most; a query cut there is rejected (default 128)")
    parser.add_argument("--near-duplicate-threshold", type=finite_float, default=0.7, metavar="J",
                        help="MinHash Jaccard over word 3-grams at which a query is a near-duplicate (default 0.7)")
    add_out_argument(parser, default="runs/magpie")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    # --temperature/--top-p/--max-new-tokens are the answer's (the paper answers greedily).
    add_sampling_arguments(parser, max_new_tokens=512, temperature=0.0)


def pre_query_template(args: argparse.Namespace, teacher):
    """The pre-query template: --pre-query FILE, else the teacher's own chat template, else --tokenizer's (or the
    model name's, when a tokenizer loads offline); a one-line UserError when none can be had."""
    from pathlib import Path

    from gen.errors import UserError
    from gen.methods.magpie import PreQueryTemplate

    if args.pre_query:
        if args.system:
            raise UserError("--system with --pre-query: write the system turn into the pre-query file itself")
        try:
            return PreQueryTemplate.from_text(Path(args.pre_query).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"--pre-query {args.pre_query}: cannot read it: {exc.strerror or exc}") from None
    if teacher is not None and args.tokenizer is None:
        template = PreQueryTemplate.from_chat_template(teacher.render_chat, system=args.system)
        if template is not None:
            return template
    name = args.tokenizer or args.teacher.split(":", 1)[-1]
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
        template = PreQueryTemplate.from_chat_template(
            lambda messages: tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                           add_generation_prompt=True), system=args.system)
    except Exception:  # no such tokenizer offline, no chat template: ask for the file below
        template = None
    if template is None:
        raise UserError(f"gen magpie: cannot get {args.teacher}'s chat template to build the pre-query template; "
                        "pass --pre-query FILE (the template up to where the user's text starts) or --tokenizer NAME")
    return template


@contextmanager
def _driver_teacher(args: argparse.Namespace, teacher):
    """The teacher the driver asks for its chat template and raw-completion support. One process: the engine's. On
    Ray the workers hold the teachers, so an HTTP teacher (a client, no model) is opened here for those two questions
    and closed; an in-process one (vllm:, embedded llamacpp) is not loaded twice: the template then comes from
    --pre-query or the tokenizer, and the workers' teachers answer for raw completion."""
    if teacher is not None or not getattr(args, "base_url", None):
        yield teacher
        return
    from gen.commands.common import teacher_spec_from_args
    from gen.teachers import load_teacher

    with load_teacher(teacher_spec_from_args(args)) as driver_teacher:
        yield driver_teacher


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import sampling_from_args
    from gen.commands.method_common import finish, method_run
    from gen.errors import UserError
    from gen.methods.magpie import METHOD, Magpie, MagpieConfig

    config = MagpieConfig(instructions=args.instructions, turns=args.turns,
                          query_temperature=args.query_temperature, query_top_p=args.query_top_p,
                          query_max_tokens=args.query_max_tokens,
                          near_duplicate_threshold=args.near_duplicate_threshold)
    if args.teacher.split(":", 1)[0] == "anthropic":  # before a teacher is opened: one line, nothing written
        raise UserError("gen magpie: the anthropic backend has no raw-completion endpoint (Messages API only); "
                        "Magpie needs one: use vllm, llamacpp or an OpenAI-compatible server with --base-url")
    sampling = sampling_from_args(args)
    with method_run(args, METHOD, sampling) as run:
        teacher = getattr(run.engine, "teacher", None)  # None on Ray: the workers hold the teachers
        with _driver_teacher(args, teacher) as teacher:
            if teacher is not None and not teacher.raw_completion:
                raise UserError(f"gen magpie: {teacher.why_no_raw_completion()}")
            template = pre_query_template(args, teacher)
        run.log(f"magpie: pre-query template {template.hash} ({template.source}): {template.prefix!r}")
        Magpie(run, template, config).generate()
        return finish(run, "magpie")
