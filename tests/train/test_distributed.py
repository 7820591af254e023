"""`gen train` beyond one process, on CPU (gloo):

- data parallel: `gen train` under `torchrun --nproc_per_node 2` (2 x batch 2) logs the same loss curve and saves the
  same student as one process with batch 4 -- the loss-token normalization spans ranks (num_items_in_batch is the
  global count; DDP averages gradients, the trainer scales by the number of processes);
- DeepSpeed ZeRO-3: the shipped config under `accelerate launch` (2 CPU processes) gives that same loss curve and
  student (the op runs as the lm_head's forward);
- sharded lm_head: 2 ranks with the student under FSDP2 (`fully_shard`, root unit resharded after forward, so the
  lm_head weight is a vocabulary-sharded DTensor when the loss runs) or FSDP1 (FullyShardedDataParallel with
  use_orig_params: lm_head.weight a 1-D slice of the flat shard after forward) give the loss, lm_head gradient and
  updated weights of one unsharded process;
- the shipped accelerate configs resolve through accelerate's own launch-argument code.

This file is also the FSDP worker: `python -m torch.distributed.run ... tests/train/test_distributed.py fsdp2 ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "train" / "configs"
LR = 0.5  # SGD step of the FSDP2 check: large enough that a wrong lm_head gradient moves the weights visibly


def _distributed_env(tmp_path: Path) -> dict[str, str]:
    """os.environ (offline hub, test caches from tests/conftest.py) plus one thread per rank and the repo on the path."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               HF_HOME=env.get("HF_HOME", str(tmp_path / "hf")))
    return env


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, cwd=REPO, env=_distributed_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _logged(out: Path) -> list[dict]:
    return [entry for entry in json.loads((out / "log_history.json").read_text()) if "loss" in entry]


def _train_argv(student_dir, logit_shards, conversations) -> list[str]:
    """KD shards + SFT rows, 6 steps, seed 3; the batch size and --out are added per run."""
    return ["train", "--student", str(student_dir), "--data", str(logit_shards), str(conversations),
            "--max-steps", "6", "--lr", "3e-3", "--scheduler", "constant", "--max-length", "256",
            "--logging-steps", "1", "--save-steps", "100", "--kd-weight", "0.8", "--seed", "3"]


@pytest.fixture(scope="module")
def one_process(tiny_pair, conversations, logit_shards, tmp_path_factory) -> Path:
    """The reference: `gen train` in one process with the global batch of 4."""
    from gen.cli import main

    out = tmp_path_factory.mktemp("one-process")
    assert main([*_train_argv(tiny_pair[2], logit_shards, conversations), "--batch-size", "4", "--out", str(out)]) == 0
    return out


def _assert_same_training(one: Path, two: Path, student_dir: Path) -> None:
    """Same logged loss curve (loss, grad norm, KD/SFT split) and the same saved student."""
    from safetensors.torch import load_file

    single, distributed = _logged(one), _logged(two)
    assert [e["step"] for e in single] == [e["step"] for e in distributed] == [1, 2, 3, 4, 5, 6]
    # each step's batch mixes KD and SFT positions somewhere in the run, so both halves of the split are compared
    assert any("kd_loss" in e for e in single) and any("sft_loss" in e for e in single)
    for a, b in zip(single, distributed):
        for key in ("loss", "grad_norm", "kd_loss", "sft_loss"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:  # measured: equal to ~1e-7 relative (summation order differs across ranks)
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])
    losses = [e["loss"] for e in distributed]
    assert max(losses) - min(losses) > 0.1  # a curve that moves, not a flat comparison

    before = load_file(student_dir / "model.safetensors")
    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, w in weights_one.items():
        torch.testing.assert_close(weights_two[name], w, rtol=1e-4, atol=2e-5, msg=name)
    assert (weights_one["lm_head.weight"] - before["lm_head.weight"]).abs().max() > 1e-3


def test_torchrun_two_processes_give_the_loss_curve_of_one(tiny_pair, conversations, logit_shards, one_process,
                                                            tmp_path):
    """1 process x batch 4 vs 2 processes x batch 2 (DDP, gloo)."""
    student_dir = tiny_pair[2]
    two = tmp_path / "two"
    _torchrun(["-m", "gen.cli", *_train_argv(student_dir, logit_shards, conversations), "--batch-size", "2",
               "--out", str(two)], tmp_path)
    _assert_same_training(one_process, two, student_dir)


def test_accelerate_launch_deepspeed_zero3_gives_the_loss_curve_of_one(tiny_pair, conversations, logit_shards,
                                                                        one_process, tmp_path):
    """The shipped ZeRO-3 config (2 processes, fp32, DeepSpeed on CPU/gloo) under `accelerate launch`: every
    parameter, lm_head included, is partitioned, and the fused op runs as the lm_head's forward so that ZeRO-3
    gathers it for the op and again for its backward. Without that the backward failed on the 0-element weight
    placeholder; and saving from rank 0 alone left its ZeRO-3 gather without the other rank."""
    student_dir = tiny_pair[2]
    config = tmp_path / "deepspeed_zero3.yaml"
    shipped = (CONFIGS / "deepspeed_zero3.yaml").read_text()
    assert "num_processes: 8" in shipped and "mixed_precision: bf16" in shipped
    config.write_text(shipped.replace("num_processes: 8", "num_processes: 2")
                      .replace("mixed_precision: bf16", "mixed_precision: 'no'"))
    two = tmp_path / "zero3"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "gen.cli",
           *_train_argv(student_dir, logit_shards, conversations), "--batch-size", "2", "--out", str(two)]
    # DeepSpeed's CPU backend JIT-compiles its shared-memory collective op (C++, ~40 s) at start: into this test's
    # temp dir, not ~/.cache/torch_extensions
    env = {**_distributed_env(tmp_path), "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["distributed"] == {"processes": 2, "type": "DEEPSPEED", "zero_stage": 3,
                                      "loss_ran_inside": "lm_head (DeepSpeed ZeRO-3)"}
    _assert_same_training(one_process, two, student_dir)

# ---------------------------------------------------------------------------------------------------------------
# FSDP2: the lm_head sharded over the vocabulary at loss time
# ---------------------------------------------------------------------------------------------------------------


def _global_batch(student_dir: str, data_dirs: list[str], n: int = 4):
    """(items, collator): the first n/2 logit rows (KD) and the first n/2 conversational rows (SFT), KD weight mixed
    with CE below, so the step exercises the op's KD and SFT paths."""
    from transformers import AutoTokenizer

    from train.data import load_training_data

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    data = load_training_data(data_dirs, tokenizer, max_length=256, packing=False)
    half = data.n_logit_rows  # logit rows come first, then conversational rows (as --data is ordered below)
    picks = list(range(n // 2)) + list(range(half, half + n - n // 2))
    return [data.dataset[i] for i in picks], data.collator


def fsdp_worker(version: int, student_dir: str, data_dirs: list[str], out: str) -> None:
    """Run under torchrun (2 ranks, gloo): shard the student with FSDP as accelerate does, give rank r items
    [2r, 2r + 1] of the global batch, take one step through DistillTrainer.compute_loss, and write (rank 0) the mean
    loss, the lm_head gradient and the updated weights.
    - version 2 (`fsdp.yaml`): `fully_shard` on every decoder layer, then the root, reshard_after_forward=True;
    - version 1 (`fsdp1.yaml`): FullyShardedDataParallel, transformer-layer auto wrap, FULL_SHARD, use_orig_params."""
    import functools

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy, fully_shard
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, TrainingArguments

    from train.config import LossConfig
    from train.trainer import DistillTrainer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if version == 2:
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
    else:
        wrap = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={type(model.model.layers[0])})
        model = FullyShardedDataParallel(model, auto_wrap_policy=wrap, sharding_strategy=ShardingStrategy.FULL_SHARD,
                                         use_orig_params=True, device_id=torch.device("cpu"))
    head = model.module.lm_head if version == 1 else model.lm_head
    args = TrainingArguments(output_dir=str(Path(out).parent / f"args-{rank}"), report_to="none", use_cpu=True,
                             remove_unused_columns=False, average_tokens_across_devices=True)
    trainer = DistillTrainer(model=model, args=args, loss_config=LossConfig(kd_weight=0.7, temperature=2.0))
    assert trainer.accelerator.num_processes == world
    items, collator = _global_batch(student_dir, data_dirs, n=2 * world)
    num_items = (collator(items)["shift_labels"] != -100).sum()  # the step's loss tokens over every rank
    batch = collator(items[2 * rank: 2 * rank + 2])

    with torch.no_grad():  # the setting under test: after a forward, the root unit's lm_head is a shard
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
    if version == 2:
        sharded_after_forward = isinstance(head.weight, DTensor)
        local_shape = tuple(head.weight.to_local().shape) if sharded_after_forward else None
    else:  # use_orig_params: the parameter becomes a flat 1-D view of this rank's shard of the root's flat parameter
        sharded_after_forward = head.weight.dim() == 1
        local_shape = tuple(head.weight.shape)

    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=num_items)
    loss.backward()
    if version == 2:
        grad = head.weight.grad.full_tensor()
    else:
        with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
            grad = head.weight.grad.clone()
    optimizer.step()
    # the trainer's loss is (this rank's loss sum / global tokens) x world: the mean over ranks is the step's loss
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    if version == 2:
        weights = {name: p.full_tensor() for name, p in model.named_parameters()}
    else:
        with FullyShardedDataParallel.summon_full_params(model):
            weights = {name.replace("_fsdp_wrapped_module.", ""): p.detach().clone()
                       for name, p in model.module.named_parameters()}
    gather_errors = _check_gather_full_weight(mesh, rank, world)
    if rank == 0:
        torch.save({"loss": float(mean_loss) / world, "sharded_after_forward": sharded_after_forward,
                    "local_shape": local_shape, "lm_head_grad": grad, "weights": weights,
                    "gather_errors": gather_errors}, out)
    dist.barrier()
    dist.destroy_process_group()


def _check_gather_full_weight(mesh, rank: int, world: int) -> dict[str, float]:
    """train.trainer.gather_full_weight on its own: a [V, H] weight sharded over the vocabulary as a DTensor, each
    rank with its own hidden states. Against the op on the plain weight: the loss and dX of this rank, and dW
    averaged over ranks (what data parallelism applies). Returns the largest abs errors (all ranks)."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor

    from kernels.topk_kl import topk_kl_loss
    from train.trainer import gather_full_weight

    V, H, N, K = 50, 16, 12, 5  # V not a multiple of the world size: uneven shards
    torch.manual_seed(0)
    weight = torch.randn(V, H, dtype=torch.float64)  # same on every rank
    torch.manual_seed(100 + rank)
    hidden = torch.randn(N, H, dtype=torch.float64)
    ids = torch.stack([torch.randperm(V)[:K] for _ in range(N)])
    logprobs = torch.log_softmax(torch.randn(N, K, dtype=torch.float64), -1) - 0.3
    tail = torch.full((N,), float(torch.log1p(-torch.tensor(-0.3).exp())), dtype=torch.float64)

    def run(w):
        h = hidden.clone().requires_grad_()
        loss = topk_kl_loss(h, w, ids, logprobs, tail, reduction="sum", temperature=1.5)
        loss.backward()
        return loss.detach(), h.grad

    plain = weight.clone().requires_grad_()
    loss_ref, dh_ref = run(plain)
    dw_ref = plain.grad.clone()
    dist.all_reduce(dw_ref)
    dw_ref /= world
    sharded = torch.nn.Parameter(distribute_tensor(weight.clone(), mesh, [Shard(0)]))
    loss, dh = run(gather_full_weight(sharded))
    errors = torch.tensor([(loss - loss_ref).abs().item(), (dh - dh_ref).abs().max().item(),
                           (sharded.grad.full_tensor() - dw_ref).abs().max().item(),
                           float(dw_ref.abs().max()), (plain.grad - dw_ref).abs().max().item()],
                          dtype=torch.float64)
    dist.all_reduce(errors, op=dist.ReduceOp.MAX)
    # dW_rank_spread: how far this rank's own dW is from the average -- a gather without the reduce would be off by it
    return dict(zip(("loss", "dX", "dW", "dW_scale", "dW_rank_spread"), errors.tolist()))


@pytest.mark.parametrize("version", [2, 1])
def test_fsdp_sharded_lm_head_matches_one_unsharded_process(version, tiny_pair, conversations, logit_shards,
                                                             tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from train.config import LossConfig
    from train.trainer import DistillTrainer

    _, _, student_dir = tiny_pair
    data_dirs = [str(logit_shards), str(conversations)]
    out = tmp_path / f"fsdp{version}.pt"
    _torchrun([str(Path(__file__)), f"fsdp{version}", str(student_dir), str(out), *data_dirs], tmp_path)
    sharded = torch.load(out)

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    vocab = model.lm_head.weight.shape[0]
    assert sharded["sharded_after_forward"]
    if version == 2:
        assert sharded["local_shape"] == (vocab // 2, model.config.hidden_size)
    else:  # one flat shard of the root unit (embeddings, final norm, lm_head): not a [V, H] matrix at all
        assert len(sharded["local_shape"]) == 1 and sharded["local_shape"][0] < vocab * model.config.hidden_size
    errors = sharded["gather_errors"]
    assert errors["dW_scale"] > 1e-2 and errors["dW_rank_spread"] > 1e-2 and errors["loss"] < 1e-10 and errors["dX"] < 1e-12 and errors["dW"] < 1e-12, \
        errors
    args = TrainingArguments(output_dir=str(tmp_path / "single"), report_to="none", use_cpu=True,
                             remove_unused_columns=False)
    trainer = DistillTrainer(model=model, args=args, loss_config=LossConfig(kd_weight=0.7, temperature=2.0))
    items, collator = _global_batch(str(student_dir), data_dirs, n=4)
    batch = collator(items)
    assert batch["teacher_mask"].any() and not batch["teacher_mask"].all()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=(batch["shift_labels"] != -100).sum())
    loss.backward()
    lm_head_grad = model.lm_head.weight.grad.clone()
    optimizer.step()

    assert sharded["loss"] == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(sharded["lm_head_grad"], lm_head_grad, rtol=1e-4, atol=1e-6)
    assert lm_head_grad.abs().max() > 1e-3
    updated = dict(model.named_parameters())
    assert sharded["weights"].keys() == updated.keys()
    for name, weight in sharded["weights"].items():
        torch.testing.assert_close(weight, updated[name].detach(), rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# accelerate configs: resolved by accelerate's own launcher code (what `accelerate launch` would run)
# ---------------------------------------------------------------------------------------------------------------


def _resolve(config: str, *overrides: str):
    """(args, defaults) as `accelerate launch --config_file CONFIG OVERRIDES -m gen.cli train` resolves them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), *overrides,
                                               "-m", "gen.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


@pytest.mark.parametrize("config, version", [("fsdp.yaml", 2), ("fsdp1.yaml", 1), ("fsdp_2nodes.yaml", 2)])
def test_fsdp_configs_resolve_through_accelerate(config, version, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    two_nodes = "2nodes" in config
    overrides = ["--machine_rank", "1", "--main_process_ip", "192.0.2.7", "--main_process_port", "29611"] \
        if two_nodes else []
    args, _ = _resolve(config, *overrides)
    assert args.use_fsdp and not args.use_deepspeed and args.mixed_precision == "bf16"
    assert (args.num_machines, args.num_processes) == ((2, 16) if two_nodes else (1, 8))
    env = prepare_multi_gpu_env(args)  # the environment each launched rank gets
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == str(version)
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert args.nproc_per_node == "8"
    if two_nodes:  # torchrun on this node: 2 nodes, rank from the command line, rendezvous at node 0
        assert (args.nnodes, args.node_rank, args.rdzv_endpoint) == ("2", 1, "192.0.2.7:29611")
    if version == 2:  # the plugin a launched rank builds from that environment (FSDP1's needs a GPU to build)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


@pytest.mark.parametrize("config", ["deepspeed_zero3.yaml", "deepspeed_zero3_2nodes.yaml"])
def test_deepspeed_configs_resolve_through_accelerate(config):
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    two_nodes = "2nodes" in config
    args, defaults = _resolve(config, *(["--machine_rank", "1", "--main_process_ip", "192.0.2.7"] if two_nodes else []))
    assert args.use_deepspeed and not args.use_fsdp
    assert (args.num_machines, args.num_processes) == ((2, 16) if two_nodes else (1, 8))
    # as accelerate's launch_command does before building the DeepSpeed environment
    args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert cmd is None  # one node, or 2 nodes with the "standard" launcher: torchrun on every node, no pdsh/hostfile
    if two_nodes:
        assert (args.machine_rank, args.main_process_ip) == (1, "192.0.2.7")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("fsdp1", "fsdp2"):
    fsdp_worker(int(sys.argv[1][-1]), sys.argv[2], sys.argv[4:], sys.argv[3])
