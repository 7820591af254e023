"""A student made from its teacher by depth pruning (`gen student`): the teacher's tokenizer, embeddings, final norm
and head, and a subset of its decoder layers, copied weight for weight.

This is how DistilBERT initialises its student (one layer out of two of BERT, embeddings shared; its extraction
script keeps layers 0, 2, 4, 7, 9, 11 of 12 -- evenly spaced, first and last included) and what depth pruning of
LLMs does before recovery training (Sheared-LLaMA, Minitron, ShortGPT). Such a student starts close to its teacher
and, above all, shares its tokenizer exactly, which token-level (top-k logit) distillation needs.

Layer choice (`choose_layers`):
- a count N (`"4"`): N layers evenly spaced over the teacher's L, first and last included: round(i * (L-1) / (N-1))
  for i = 0..N-1 (N = 1 keeps layer 0);
- an explicit list (`"0,5,11"`, a single layer as `"7,"`): those teacher layers, in increasing order.

Works on any transformers causal LM whose decoder layers are one `nn.ModuleList` of `num_hidden_layers` entries
(Llama, Gemma 3, Qwen, Mistral, ...), loaded from a checkpoint directory or a `.gguf` file (transformers' GGUF
reader dequantizes it). Per-layer config lists (Gemma 3's and Qwen's `layer_types`: sliding vs full attention) are
cut to the kept layers, so each kept layer keeps its attention kind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen.errors import InvalidSetting, MissingDependency, UserError
from train.trainer import deepspeed_hidden_unless_used


def parse_layer_spec(spec: str | int | Sequence[int]) -> int | list[int]:
    """A count (`"4"`, 4) or an explicit list of layer indices (`"0,5,11"`, `"7,"`, [0, 5]), checked as far as it can
    be without the teacher: a malformed spec, a count below 1, an empty list or a negative index is an
    InvalidSetting on `layers`."""
    if isinstance(spec, int):
        parsed: int | list[int] = spec
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            parsed = [int(part) for part in text.split(",") if part.strip()] if "," in text else int(text)
        except ValueError:
            raise InvalidSetting("layers", f"layers {spec!r}: expected a number of layers (4) or a comma-separated "
                                           f"list of layer indices (0,5,11)") from None
    else:
        parsed = [int(i) for i in spec]
    if isinstance(parsed, int) and parsed < 1:
        raise InvalidSetting("layers", f"layers {parsed}: a student needs at least 1 layer")
    if isinstance(parsed, list):
        if not parsed:
            raise InvalidSetting("layers", f"layers {spec!r}: no layer index given")
        if min(parsed) < 0:
            raise InvalidSetting("layers", f"layers {spec!r}: layer index {min(parsed)} out of range (indices "
                                           f"start at 0)")
        if any(b <= a for a, b in zip(parsed, parsed[1:])):
            raise InvalidSetting("layers", f"layers {spec!r}: layer indices must be increasing, without repeats")
    return parsed


def choose_layers(spec: str | int | Sequence[int], n_layers: int) -> list[int]:
    """The teacher layer indices a student keeps (increasing), from a count or an explicit list (see module doc).
    A bad spec is an InvalidSetting on `layers` naming what is wrong."""
    parsed = parse_layer_spec(spec)
    if isinstance(parsed, int):
        if parsed > n_layers:
            raise InvalidSetting("layers", f"layers {parsed}: more layers than the teacher has ({n_layers})")
        if parsed == 1:
            return [0]
        return [round(i * (n_layers - 1) / (parsed - 1)) for i in range(parsed)]
    if parsed[-1] >= n_layers:
        raise InvalidSetting("layers", f"layers {spec!r}: layer index {parsed[-1]} out of range (the teacher has "
                                       f"{n_layers} layers, 0..{n_layers - 1})")
    return parsed


def _from_pretrained_args(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(directory, from_pretrained kwargs) of a checkpoint directory or a .gguf file; else an InvalidSetting."""
    location = Path(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if location.is_file() and location.suffix == ".gguf":
        try:
            import gguf  # noqa: F401  (transformers' GGUF conversion needs it)
        except ImportError:
            raise MissingDependency("gguf", "gguf") from None
        return location.parent, {**kwargs, "gguf_file": location.name}
    if not (location / "config.json").is_file():
        raise InvalidSetting("teacher", f"teacher {path}: not a local model (a directory with config.json or a "
                                        f".gguf file)")
    return location, kwargs


def teacher_config(path: str | os.PathLike):
    """The teacher's config alone (no weights), to check the layer spec before the slow load."""
    from transformers import AutoConfig

    location, kwargs = _from_pretrained_args(path)
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidSetting("teacher", f"teacher {path}: cannot load ({str(exc).strip().splitlines()[0]})") from None


def load_causal_lm(path: str | os.PathLike, dtype: str | None = None):
    """(model, tokenizer) from a local checkpoint directory or a `.gguf` file (dequantized by transformers'
    GGUF reader); anything else is an InvalidSetting on `teacher`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, kwargs = _from_pretrained_args(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype or "float32"), **kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidSetting("teacher", f"teacher {path}: cannot load ({str(exc).strip().splitlines()[0]})") from None
    # A GGUF model is dequantized on load but keeps its quantizer, which would make save_pretrained refuse it.
    model.hf_quantizer = None
    return model.eval(), tokenizer


def decoder_layers(model) -> tuple[str, Any]:
    """(state-dict prefix, ModuleList) of the model's decoder layers: the ModuleList of `num_hidden_layers`
    entries (e.g. `model.layers`)."""
    import torch

    n = model.config.get_text_config().num_hidden_layers
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == n and name.split(".")[-1] == "layers"]
    if len(found) != 1:
        raise InvalidSetting("teacher", f"teacher {getattr(model, 'name_or_path', '')}: cannot find its decoder layers "
                                        f"(one ModuleList of {n} layers named 'layers'; found {len(found)})")
    return found[0]


def student_config(teacher_config, keep: Sequence[int]):
    """The teacher's config with `num_hidden_layers = len(keep)` and every per-layer list cut to `keep`."""
    import copy

    config = copy.deepcopy(teacher_config)
    text = config.get_text_config()
    n = text.num_hidden_layers
    for name, value in list(vars(text).items()):
        # per-layer settings: lists with one entry per layer whose name says so (layer_types, ...)
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == n:
            setattr(text, name, type(value)(value[i] for i in keep))
    text.num_hidden_layers = len(keep)
    for holder in {id(config): config, id(text): text}.values():
        # A GGUF teacher's config records its quantization ("quant_method: gguf"); the student's weights are plain
        # tensors, and a checkpoint claiming GGUF quantization would not load as a normal one.
        if getattr(holder, "quantization_config", None) is not None:
            del holder.quantization_config
    return config


def depth_pruned(teacher, keep: Sequence[int]):
    """A new model of the teacher's class with only the layers `keep`, every weight copied exactly (kept layer i of
    the student = teacher layer keep[i]); embeddings, final norm and head as the teacher's."""
    import torch

    prefix, _ = decoder_layers(teacher)
    config = student_config(teacher.config, keep)
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) not in new_index:
                continue
            key = f"{prefix}.{new_index[int(index)]}.{rest}"
        state[key] = tensor
    dtype = next(teacher.parameters()).dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the teacher's dtype, so the copied weights keep their bits
    try:
        student = type(teacher)(config)
    finally:
        torch.set_default_dtype(previous)
    missing, unexpected = student.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config.get_text_config(), "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:  # a key left at random init would silently break "made from the teacher"
        raise RuntimeError(f"student weights do not match the teacher's: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return student.eval()


def mlp_importance(model, layer_indices: Sequence[int], sequences: Sequence[Any]) -> dict[int, Any]:
    """Activation importance of each MLP neuron (Minitron's width-pruning criterion): the mean |activation| of the
    intermediate channels (the input of `down_proj`) over every token of `sequences` (1-D token id tensors, run one
    at a time, so no padding enters the mean), for the decoder layers `layer_indices` of `model`."""
    import torch

    _, layers = decoder_layers(model)
    sums: dict[int, torch.Tensor] = {}
    tokens = 0
    hooks = []
    for i in layer_indices:
        def accumulate(module, args, i=i):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[i] = sums.get(i, 0) + x.abs().sum(0).double()
        hooks.append(_mlp_part(layers[i], "down_proj").register_forward_pre_hook(accumulate))
    try:
        with torch.inference_mode():
            for ids in sequences:
                model(input_ids=ids[None], use_cache=False)
                tokens += len(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return {i: sums[i] / max(tokens, 1) for i in layer_indices}


def _mlp_part(layer, name: str):
    """`layer.mlp.<name>` (gate_proj, up_proj or down_proj) as a Linear; else an InvalidSetting on `intermediate`."""
    import torch

    part = getattr(getattr(layer, "mlp", None), name, None)
    if not isinstance(part, torch.nn.Linear):
        raise InvalidSetting("intermediate", f"intermediate: the decoder layers have no gated MLP with a {name} "
                                             f"Linear (mlp.gate_proj/up_proj/down_proj), so width pruning does not "
                                             f"apply to this model")
    return part


def prune_intermediate(student, importance: Sequence[Any], size: int) -> None:
    """Keep, in each decoder layer j of `student`, the `size` MLP neurons with the highest `importance[j]` (in their
    original order): rows of gate_proj and up_proj, columns of down_proj, copied exactly; the config's
    intermediate_size becomes `size`."""
    import torch

    _, layers = decoder_layers(student)
    for layer, scores in zip(layers, importance):
        keep = torch.topk(scores, size).indices.sort().values
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = _mlp_part(layer, name)
            new = torch.nn.Linear(old.in_features, size, bias=old.bias is not None, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight[keep])
                if old.bias is not None:
                    new.bias.copy_(old.bias[keep])
            setattr(mlp, name, new)
        old = _mlp_part(layer, "down_proj")
        new = torch.nn.Linear(size, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, keep])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        mlp.down_proj = new
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size
    student.config.get_text_config().intermediate_size = size


@dataclass(frozen=True)
class StudentSpec:
    """What `make_student` builds: `teacher` (checkpoint dir or .gguf), `layers` (count or list, see
    `choose_layers`), `out` (a new or empty directory), an optional chat template text stored in the student's
    tokenizer, and the dtype the teacher is loaded (and the student saved) in."""

    teacher: str
    layers: str | int | Sequence[int]
    out: str
    chat_template: str | None = None
    dtype: str = "float32"
    # Width pruning of the MLPs (optional): keep `intermediate` neurons per layer, ranked by activation importance
    # over the conversational run `calibration` (its first `calibration_rows` rows, `max_length` tokens each).
    intermediate: int | None = None
    calibration: str | None = None
    calibration_rows: int = 64
    max_length: int = 512


def text_config_width(spec: StudentSpec, config) -> int | None:
    """The checked `spec.intermediate` (None: no width pruning)."""
    if spec.intermediate is None:
        return None
    current = getattr(config.get_text_config(), "intermediate_size", None)
    if not isinstance(current, int):
        raise InvalidSetting("intermediate", "intermediate: the teacher's config has no single intermediate_size")
    if not 1 <= spec.intermediate <= current:
        raise InvalidSetting("intermediate", f"intermediate {spec.intermediate}: must be 1 to the teacher's "
                                             f"intermediate_size {current}")
    if not spec.calibration:
        raise InvalidSetting("calibration", "calibration: width pruning ranks neurons on calibration text; give a "
                                            "conversational run")
    return spec.intermediate


def calibration_sequences(spec: StudentSpec, tokenizer) -> list[Any]:
    """Token id tensors of the first `calibration_rows` rows of the conversational run `spec.calibration`, rendered
    with the tokenizer's chat template (as `gen train` renders them)."""
    import torch

    from train.data import ConversationDataset

    try:
        data = ConversationDataset(spec.calibration, tokenizer, spec.max_length)
    except UserError as exc:
        raise InvalidSetting("calibration", f"calibration {spec.calibration}: {exc}") from None
    return [torch.as_tensor(data[i]["input_ids"], dtype=torch.long)
            for i in range(min(spec.calibration_rows, len(data)))]


def make_student(spec: StudentSpec) -> dict[str, Any]:
    """Load the teacher, keep the chosen layers, save model + tokenizer to `spec.out` (written in a temp sibling
    and renamed into place: a failure leaves nothing half-written). Returns a summary, also saved as
    `student.json` in the output."""
    out = Path(spec.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidSetting("out", f"out {out}: exists and is not an empty directory")
    n_layers = teacher_config(spec.teacher).get_text_config().num_hidden_layers
    keep = choose_layers(spec.layers, n_layers)  # before the (slow) weights load
    width = text_config_width(spec, teacher_config(spec.teacher))
    teacher, tokenizer = load_causal_lm(spec.teacher, spec.dtype)
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    student = depth_pruned(teacher, keep)
    if width is not None:
        sequences = calibration_sequences(spec, tokenizer)
        scores = mlp_importance(teacher, keep, sequences)
        prune_intermediate(student, [scores[i] for i in keep], width)
    summary = {
        "teacher": str(spec.teacher), "teacher_layers": n_layers, "kept_layers": keep,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "vocab_size": int(student.get_output_embeddings().weight.shape[0]), "dtype": spec.dtype,
        "intermediate_size": student.config.get_text_config().intermediate_size,
        "width_pruning": None if width is None else {"criterion": "mean |MLP activation| (Minitron)",
                                                     "calibration": spec.calibration,
                                                     "calibration_rows": spec.calibration_rows},
        "model_type": student.config.model_type, "out": str(out),
    }
    del teacher
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary directory
    try:
        with deepspeed_hidden_unless_used():  # saving goes through accelerate, which would import DeepSpeed
            student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "student.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
