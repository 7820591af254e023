"""A trained student -> a Hugging Face Hub model repo: the model card (README.md) written from the run, and the push.

    check_push(repo_id)                                   before training: the repo id, HF_HUB_OFFLINE, the token
    model_card_facts(out_dir, repo_id, eval_dir=None)     every fact the card shows, from OUT/train_summary.json
    render_model_card(facts) -> str                       README.md (YAML front matter + datasets_cards/model_card.md.j2)
    push_student(out_dir, repo_id, ...) -> PushResult     stage the student's files + card, check them, ONE commit

What goes out: the files `gen train` saved in OUT (the full student, or its LoRA adapter with `--lora`), the
tokenizer, the loss curve PNG and the card -- not the checkpoints, the tensorboard logs, the merged copy or the local
run records (train_summary.json, log_history.json, training_args.bin). The card links each training dataset to its
Hub repo when `gen publish` pushed it (the run's published.json; for logit shards, the run they were captured
from), and shows `gen eval`'s eval.json when there is one. Token rules are `gen publish`'s (gen/publish/hub.py): the
token comes from HF_TOKEN or `hf auth login`, never a flag, and every text file that goes out (card, configs,
tokenizer) is checked for the environment's credentials first.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gen.errors import UserError
from gen.publish.hub import UploadResult, check_hub_access, upload
from gen.publish.leaks import check_files_for_secrets, environment_secrets
from gen.publish.pipeline import published_repo
from gen.publish.repo_id import check_repo_id

MODEL_CARD_TEMPLATE = "model_card.md.j2"
LOSS_CURVE = "loss_curve.png"
# OUT's local records and by-products: never pushed
LOCAL_ONLY = {"train_summary.json", "log_history.json", "training_args.bin", "README.md", "eval.json"}
# Text files of the push: checked for credentials (weights are numbers the training wrote)
TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja", ".model", ".yaml", ".yml")
_HUB_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


@dataclass
class PushResult:
    card: str
    files: list[str]
    upload: UploadResult


def check_push(repo_id: str) -> str:
    """Everything that can fail before training: the repo id, HF_HUB_OFFLINE, the token."""
    check_repo_id(repo_id)
    check_hub_access("gen train")
    return repo_id


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dataset_entry(directory: str) -> dict[str, Any]:
    """One training dataset: its name, kind and the Hub dataset repo it was published to (for logit shards: the
    repo of the conversational run they were captured from, read from their manifest)."""
    path = Path(directory)
    manifest = _read_json(path / "manifest.json") or {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    repo = published_repo(path)
    kind = "conversations (SFT)"
    if "logits" in manifest or config.get("command") == "logits":
        kind = "teacher logit shards (KD)"
        source = config.get("shards")
        if repo is None and isinstance(source, str):
            repo = published_repo(source)
    return {"name": path.name or str(path), "kind": kind, "repo_id": repo}


def _eval_results(eval_dir: str | os.PathLike | None) -> list[tuple[str, str]]:
    """`gen eval`'s eval.json as (metric, value) rows: its scalars and short lists (e.g. a confidence interval)."""
    if eval_dir is None:
        return []
    path = Path(eval_dir) / "eval.json"
    if not path.is_file():
        return []
    results = _read_json(path)
    if not isinstance(results, dict):
        raise UserError(f"{path}: not a JSON object (expected `gen eval`'s eval.json)")
    rows = []
    for name, value in results.items():
        if isinstance(value, (int, float, str, bool)) and not isinstance(value, bool):
            rows.append((name, _fmt(value)))
        elif isinstance(value, list) and len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
            rows.append((name, "[" + ", ".join(_fmt(float(v)) for v in value) + "]"))
    return rows


def model_card_facts(out_dir: str | os.PathLike, repo_id: str, eval_dir: str | os.PathLike | None = None
                     ) -> dict[str, Any]:
    """What the card shows, from `out_dir`/train_summary.json (written by `gen train`) and `eval_dir`/eval.json."""
    out = Path(out_dir)
    summary = _read_json(out / "train_summary.json")
    if not isinstance(summary, dict) or "steps" not in summary:
        raise UserError(f"{out}: no train_summary.json from `gen train` (train first, then push)")
    student = str(summary.get("student") or "")
    student_is_hub_id = bool(_HUB_ID.match(student)) and not Path(student).exists()
    lora = summary.get("lora")
    metadata = _read_json(out / "adapter_config.json") if lora else None
    k = None
    for directory in summary.get("data") or []:
        k = k or ((_read_json(Path(directory) / "manifest.json") or {}).get("logits") or {}).get("k")
    datasets = [_dataset_entry(d) for d in summary.get("data") or []]
    front: dict[str, Any] = {"library_name": "peft" if lora else "transformers", "pipeline_tag": "text-generation"}
    if student_is_hub_id:
        front["base_model"] = student
    hub_datasets = sorted({d["repo_id"] for d in datasets if d["repo_id"]})
    if hub_datasets:
        front["datasets"] = hub_datasets
    front["tags"] = ["kdforge", "distillation" if summary.get("teacher") else "sft"] + (["lora", "peft"] if lora
                                                                                         else [])
    evaluation = summary.get("eval")
    return {
        "front_matter": front, "repo_id": check_repo_id(repo_id), "student": student,
        "student_link": f"https://huggingface.co/{student}" if student_is_hub_id else None,
        "teacher": summary.get("teacher"), "k": k, "loss": summary.get("loss") or {}, "steps": summary["steps"],
        "tokens": summary.get("tokens") or 0, "examples": summary.get("examples") or 0,
        "rows": summary.get("rows") or {"conversational": 0, "logit": 0}, "train_loss": summary.get("train_loss"),
        "first_logged_loss": summary.get("first_logged_loss"), "last_logged_loss": summary.get("last_logged_loss"),
        "datasets": datasets, "loss_curve": LOSS_CURVE,
        "lora": {"r": lora["r"], "alpha": lora["alpha"], "targets": ", ".join(
            sorted(metadata["target_modules"]) if metadata and isinstance(metadata.get("target_modules"), list)
            else [str(lora.get("target_modules"))]), "trainable": lora["parameters"]["trainable"],
                 "total": lora["parameters"]["total"]} if lora else None,
        "evaluation": evaluation, "eval_results": _eval_results(eval_dir),
    }


def render_model_card(facts: dict[str, Any]) -> str:
    """README.md: `---` + YAML front matter (yaml.safe_dump) + `---` + the Jinja2 body."""
    from gen.publish.card import _environment  # the dataset card's Jinja2 environment and filters

    body = _environment().get_template(MODEL_CARD_TEMPLATE).render(fmt=_fmt, **facts)
    front = yaml.safe_dump(facts["front_matter"], sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{body.strip()}\n"


def student_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files of OUT that go to the Hub (see the module docstring)."""
    out = Path(out_dir)
    files = [p for p in sorted(out.iterdir()) if p.is_file() and p.name not in LOCAL_ONLY
             and not p.name.startswith(".")]
    if not any(p.name.endswith(".safetensors") or p.name.endswith(".bin") for p in files):
        raise UserError(f"{out}: no saved model or adapter weights to push")
    return files


def push_student(out_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                 eval_dir: str | os.PathLike | None = None, endpoint: str | None = None) -> PushResult:
    """Create the model repo if needed and push the student, its card and loss curve in ONE commit."""
    check_push(repo_id)
    out = Path(out_dir)
    card = render_model_card(model_card_facts(out, repo_id, eval_dir))
    files = student_files(out)
    secrets = environment_secrets()
    with tempfile.TemporaryDirectory(prefix="kdforge-push-") as staging_dir:
        staging = Path(staging_dir)
        for path in files:  # links, not copies: weights can be many GB
            (staging / path.name).symlink_to(path.resolve())
        (staging / "README.md").write_text(card, encoding="utf-8")
        with tempfile.TemporaryDirectory(prefix="kdforge-push-text-") as text_dir:
            for path in staging.iterdir():  # the secret check reads the text files only
                if path.name.endswith(TEXT_SUFFIXES):
                    (Path(text_dir) / path.name).write_bytes(path.read_bytes())
            try:
                check_files_for_secrets(Path(text_dir), secrets)
            except UserError as exc:  # name the file where the user would find it
                raise UserError(str(exc).replace(text_dir, str(out), 1)) from None
        steps = (_read_json(out / "train_summary.json") or {}).get("steps")
        result = upload(staging, repo_id, private=private, endpoint=endpoint, repo_type="model", managed_prefixes=(),
                        commit_message=f"kdforge: student after {steps} training steps",
                        commit_description="Pushed by `gen train --push-to-hub` (kdforge).")
    return PushResult(card, sorted([p.name for p in files] + ["README.md"]), result)
