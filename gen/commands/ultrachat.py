"""`gen ultrachat`: UltraChat-style curation — three sectors of opening requests, then multi-turn dialogues between a
simulated user (the teacher with a persona) and the assistant. See `gen.methods.ultrachat`."""

from __future__ import annotations

import argparse

from gen.commands.common import add_engine_arguments, add_sampling_arguments, add_teacher_arguments
from gen.commands.method_common import add_out_argument

HELP = "UltraChat: world questions, writing tasks and help with documents, as 3-7 turn simulated dialogues"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-dialogues", type=int, default=6, metavar="N",
                        help="dialogues in total, split evenly over the sectors (default 6)")
    parser.add_argument("--sectors", default="world,writing,materials", metavar="LIST",
                        help="comma-separated sectors: world (questions about the world), writing (creation and "
                             "writing), materials (assistance on --documents); default all three")
    parser.add_argument("--topics", default=None, metavar="FILE",
                        help="meta-topics, one per line (default: 30 shipped meta-topics)")
    parser.add_argument("--task-types", default=None, metavar="FILE",
                        help="writing task types, one per line (default: 20 shipped types)")
    parser.add_argument("--documents", default=None, metavar="FILE",
                        help="documents for the materials sector: .jsonl with `text`, or .txt paragraphs "
                             "(default: a few shipped sample documents)")
    parser.add_argument("--personas", default=None, metavar="FILE",
                        help="personas of the simulated user, one per line (default: 20 shipped personas)")
    parser.add_argument("--min-turns", type=int, default=3, metavar="N", help="smallest turn budget (default 3)")
    parser.add_argument("--max-turns", type=int, default=7, metavar="N", help="largest turn budget (default 7)")
    parser.add_argument("--subtopics-per-topic", type=int, default=3, metavar="N")
    parser.add_argument("--questions-per-subtopic", type=int, default=3, metavar="N")
    parser.add_argument("--user-max-tokens", type=int, default=64, metavar="N",
                        help="token limit of a simulated user turn (default 64)")
    add_out_argument(parser, default="runs/ultrachat")
    add_teacher_arguments(parser)
    add_engine_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=192, temperature=0.7)


def run(args: argparse.Namespace) -> int:
    from gen.commands.common import sampling_from_args
    from gen.commands.method_common import finish, method_run
    from gen.errors import UserError
    from gen.methods.inputs import load_lines, shipped_data_path
    from gen.methods.ultrachat import METHOD, SECTORS, UltraChat, UltraChatConfig, load_documents

    names = [s.strip() for s in args.sectors.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTORS]
    if unknown or not names:
        raise UserError(f"--sectors {args.sectors!r}: expected some of {', '.join(SECTORS)}")
    for flag in ("subtopics_per_topic", "questions_per_subtopic", "user_max_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    config = UltraChatConfig(num_dialogues=args.num_dialogues, sectors=tuple(SECTORS[s] for s in names),
                             min_turns=args.min_turns, max_turns=args.max_turns,
                             subtopics_per_topic=args.subtopics_per_topic,
                             questions_per_subtopic=args.questions_per_subtopic, user_max_tokens=args.user_max_tokens)
    topics = load_lines(args.topics or shipped_data_path("ultrachat_meta_topics.txt"))
    task_types = load_lines(args.task_types or shipped_data_path("ultrachat_writing_tasks.txt"))
    personas = load_lines(args.personas or shipped_data_path("ultrachat_personas.txt"))
    documents = load_documents(args.documents)
    sampling = sampling_from_args(args)
    with method_run(args, METHOD, sampling) as run:
        UltraChat(run, config, topics=topics, task_types=task_types, documents=documents,
                  personas=personas).generate()
        return finish(run, "ultrachat")
