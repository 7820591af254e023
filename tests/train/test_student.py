"""`gen student` (issue 14): a student made from its teacher keeps the chosen decoder layers, the embeddings, final
norm and head bit for bit, loads with AutoModelForCausalLM, passes `gen train`'s tokenizer check against logits
captured from the teacher and trains; bad layer specs are one-line errors naming --layers."""

from __future__ import annotations

import json

import pytest
import torch

from gen.cli import main
from tests.tiny_models import build_tiny_llama
from train.student import choose_layers


@pytest.mark.parametrize("spec, n_layers, expected", [
    ("6", 12, [0, 2, 4, 7, 9, 11]),  # DistilBERT's choice for 12 -> 6
    ("2", 18, [0, 17]),
    ("4", 4, [0, 1, 2, 3]),
    ("1", 4, [0]),
    ("3", 18, [0, 8, 17]),
    ("0,5,11", 12, [0, 5, 11]),
    ("7,", 12, [7]),
    (" 1, 3 ", 4, [1, 3]),
])
def test_choose_layers(spec, n_layers, expected):
    assert choose_layers(spec, n_layers) == expected


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory, tiny_tokenizer):
    """A 4-layer tiny Llama with untied embeddings and head (so both are checked separately)."""
    return build_tiny_llama(tmp_path_factory.mktemp("teacher4"), tokenizer=tiny_tokenizer, layers=4, seed=3)


def run_gen(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_student_keeps_the_chosen_layers_bit_for_bit(teacher4, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    rc, stdout, err = run_gen(["student", "--teacher", teacher4, "--layers", "1,3", "--out", out], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["kept_layers"] == [1, 3] and summary["teacher_layers"] == 4
    assert json.loads((out / "student.json").read_text()) == summary
    teacher = AutoModelForCausalLM.from_pretrained(teacher4).state_dict()
    student_model = AutoModelForCausalLM.from_pretrained(out)
    assert student_model.config.num_hidden_layers == 2
    assert len(student_model.model.layers) == 2
    student = student_model.state_dict()
    expected = {}
    for key, tensor in teacher.items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers."):].split(".", 1)
            if int(index) in (1, 3):
                expected[f"model.layers.{[1, 3].index(int(index))}.{rest}"] = tensor
        else:
            expected[key] = tensor
    assert set(student) == set(expected)
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert key in student
    for key, tensor in expected.items():
        assert torch.equal(student[key], tensor), key  # bit for bit
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher4).get_vocab()


def test_evenly_spaced_count_and_per_layer_config(teacher4, tmp_path, capsys):
    """`--layers 2` of 4 keeps layers 0 and 3; a per-layer config list (layer_types) is cut to the kept layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher4)
    teacher.config.layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    teacher.config.sliding_window = 64
    variant = tmp_path / "teacher-variant"
    teacher.save_pretrained(variant)
    (variant / "tokenizer.json").write_bytes((teacher4 / "tokenizer.json").read_bytes())
    (variant / "tokenizer_config.json").write_bytes((teacher4 / "tokenizer_config.json").read_bytes())
    out = tmp_path / "student"
    rc, stdout, err = run_gen(["student", "--teacher", variant, "--layers", "2", "--out", out], capsys)
    assert rc == 0, err
    assert json.loads(stdout)["kept_layers"] == [0, 3]
    config = AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 2 and config.layer_types == ["full_attention", "sliding_attention"]
    student = LlamaForCausalLM.from_pretrained(out)
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)


@pytest.mark.parametrize("spec, names", [
    ("0", "--layers 0: a student needs at least 1 layer"),
    ("5", "--layers 5: more layers than the teacher has (4)"),
    ("0,4", "--layers '0,4': layer index 4 out of range (the teacher has 4 layers, 0..3)"),
    ("-1,2", "layer index -1 out of range"),
    ("2,1", "must be increasing"),
    ("two", "--layers 'two': expected a number of layers"),
    (",", "--layers ',': no layer index given"),
])
def test_bad_layer_specs_are_one_line_errors(teacher4, tmp_path, capsys, spec, names):
    out = tmp_path / "student"
    rc, _, err = run_gen(["student", "--teacher", teacher4, f"--layers={spec}", "--out", out], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gen student: error: ") and names in lines[0], err
    assert not out.exists()  # nothing written


def test_not_a_teacher_and_non_empty_out_are_one_line_errors(teacher4, tmp_path, capsys):
    rc, _, err = run_gen(["student", "--teacher", tmp_path / "nope", "--layers", "1", "--out", tmp_path / "s"], capsys)
    assert rc == 2 and err.startswith("gen student: error: --teacher ") and "no such file" in err, err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc, _, err = run_gen(["student", "--teacher", teacher4, "--layers", "1", "--out", busy], capsys)
    assert rc == 2 and "--out" in err and "not an empty directory" in err, err
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1


def test_student_trains_on_logits_captured_from_its_teacher(tiny_pair, logit_shards, tmp_path, capsys):
    """The student of tiny_pair's teacher passes `gen train`'s tokenizer check against that teacher's logit shards
    (`logit_shards`: `gen logits`' capture with the hf: backend) and trains. Made from the teacher, it starts far
    closer to it than the random student of the same tokenizer does (first logged KD loss), and training moves it."""
    from transformers import AutoModelForCausalLM

    _, teacher_dir, random_student = tiny_pair
    student = tmp_path / "student"
    rc, _, err = run_gen(["student", "--teacher", teacher_dir, "--layers", "1,", "--out", student], capsys)
    assert rc == 0, err
    first_loss = {}
    for name, init in (("made", student), ("random", random_student)):
        out = tmp_path / f"trained-{name}"
        rc, stdout, err = run_gen(["train", "--student", init, "--data", logit_shards, "--out", out,
                                   "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--logging-steps", "1",
                                   "--save-steps", "1000"], capsys)
        assert rc == 0, err
        summary = json.loads(stdout[stdout.index("{\n"):])
        assert summary["steps"] == 3 and summary["rows"]["logit"] > 0
        first_loss[name] = summary["first_logged_loss"]
    assert 0 < first_loss["made"] < 0.1 * first_loss["random"], first_loss
    before = AutoModelForCausalLM.from_pretrained(student).model.layers[0].mlp.up_proj.weight
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "trained-made").model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after)


def test_student_config_drops_a_gguf_quantization_record(teacher4):
    """A GGUF teacher's config says `quant_method: gguf`; the student's weights are plain tensors."""
    from transformers import AutoConfig

    from train.student import student_config

    config = AutoConfig.from_pretrained(teacher4)
    config.quantization_config = {"quant_method": "gguf", "gguf_file": "model.gguf", "dequantize": False}
    student = student_config(config, [0, 3])
    assert student.num_hidden_layers == 2 and getattr(student, "quantization_config", None) is None
    assert config.num_hidden_layers == 4 and config.quantization_config["quant_method"] == "gguf"  # untouched


def test_width_pruning_keeps_the_most_active_mlp_neurons(teacher4, conversations, tmp_path, capsys):
    """`--intermediate 48` (of 128) with a calibration run: each kept layer keeps the 48 neurons with the highest
    mean |activation| in the teacher (computed here independently), rows of gate/up and columns of down copied
    exactly, in their original order; attention weights and embeddings stay bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import ConversationDataset

    out = tmp_path / "student"
    rc, stdout, err = run_gen(["student", "--teacher", teacher4, "--layers", "1,3", "--intermediate", "48",
                               "--calibration", conversations, "--calibration-rows", "10", "--out", out], capsys)
    assert rc == 0, err
    assert json.loads(stdout)["intermediate_size"] == 48
    teacher = AutoModelForCausalLM.from_pretrained(teacher4).eval()
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.intermediate_size == 48
    data = ConversationDataset(conversations, AutoTokenizer.from_pretrained(teacher4), 512)
    activations = {1: [], 3: []}
    hooks = [teacher.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda m, args, i=i: activations[i].append(args[0][0].abs())) for i in activations]
    with torch.no_grad():
        for k in range(10):
            teacher(input_ids=torch.as_tensor(data[k]["input_ids"], dtype=torch.long)[None])
    for hook in hooks:
        hook.remove()
    for j, i in enumerate((1, 3)):
        keep = torch.cat(activations[i]).mean(0).topk(48).indices.sort().values
        t_mlp, s_mlp = teacher.model.layers[i].mlp, student.model.layers[j].mlp
        assert torch.equal(s_mlp.gate_proj.weight, t_mlp.gate_proj.weight[keep])
        assert torch.equal(s_mlp.up_proj.weight, t_mlp.up_proj.weight[keep])
        assert torch.equal(s_mlp.down_proj.weight, t_mlp.down_proj.weight[:, keep])
        assert torch.equal(student.model.layers[j].self_attn.q_proj.weight, teacher.model.layers[i].self_attn.q_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    capsys.readouterr()  # the loads above print progress bars
    rc, _, err = run_gen(["student", "--teacher", teacher4, "--layers", "2", "--intermediate", "48",
                          "--out", tmp_path / "s2"], capsys)
    assert rc == 2 and "--calibration" in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = run_gen(["student", "--teacher", teacher4, "--layers", "2", "--intermediate", "500",
                          "--calibration", conversations, "--out", tmp_path / "s3"], capsys)
    assert rc == 2 and "--intermediate 500: must be 1 to the teacher's intermediate_size 128" in err, err
