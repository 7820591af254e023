"""Fused top-k KL (kernels/topk_kl.py): the chunked torch path and the Triton kernels against a float64 reference.

On a machine without CUDA the Triton kernels run under TRITON_INTERPRET=1 (set here, before triton is imported).
Shapes are small but odd; logits are randn at a realistic scale (std 5-30) with peaky rows.
Accuracy rule for low precision (as in Apple's CCE tests): kernel error <= error of torch at the same dtype + tol,
both measured against float64 on the same (rounded) inputs.
"""

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels import topk_kl as tk  # noqa: E402
from kernels.topk_kl import LOSSES, choose_chunk_rows, topk_kl_loss, topk_kl_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = tk.HAS_TRITON and (DEVICE == "cuda" or tk._kernels_interpreted())
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="triton unavailable, or imported before TRITON_INTERPRET=1")

N, H, V = 37, 24, 203


def make_case(n=N, h=H, v=V, k=5, std=10.0, bias=False, tail=True, ignore=True, seed=0, lp_dtype=torch.float32,
              garbage_ignored=True):
    """float64 inputs: student logits ~ std, a teacher correlated with the student, peaky rows, ignored rows."""
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64)
    hid[::5] *= 3.0  # peaky student rows
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * (std / math.sqrt(h))
    b = torch.randn(v, generator=g, dtype=torch.float64) * 2.0 if bias else None
    z = hid @ w.t() + (b if b is not None else 0.0)
    t_logits = z + torch.randn(n, v, generator=g, dtype=torch.float64) * std * 0.5
    t_logits[1::4] *= 3.0  # peaky teacher rows
    logp = torch.log_softmax(t_logits, dim=-1)
    top = logp.topk(k, dim=-1)
    ids = top.indices.to(torch.int32)
    lp = top.values
    tail_lm = None
    if tail and k < v:
        tail_lm = torch.log1p(-lp.exp().sum(-1).clamp(max=1.0)).to(torch.float32)
    lp = lp.to(lp_dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    if ignore:
        labels[3::7] = -100
        if garbage_ignored:  # ignored rows may hold anything: they must never be read
            ids[3::7] = v + 11
            lp[3::7] = float("nan")
    return dict(hidden=hid, weight=w, bias=b, topk_ids=ids, topk_logprobs=lp, tail_logmass=tail_lm, labels=labels)


def run(fn, case, dtype, grad_out=None, **kw):
    """Loss and grads (dh, dW, db) as float64 tensors, inputs cast to `dtype`."""
    hid = case["hidden"].to(DEVICE, dtype).detach().requires_grad_()
    w = case["weight"].to(DEVICE, dtype).detach().requires_grad_()
    b = case["bias"].to(DEVICE, dtype).detach().requires_grad_() if case["bias"] is not None else None
    mv = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    out = fn(hid, w, mv(case["topk_ids"]), mv(case["topk_logprobs"]), mv(case["tail_logmass"]), mv(case["labels"]), b,
             **kw)
    if grad_out is None:
        out.sum().backward()
    else:
        out.backward(grad_out.to(DEVICE, out.dtype))
    grads = [hid.grad, w.grad, b.grad if b is not None else None]
    return [out.detach().double().cpu()] + [x.double().cpu() if x is not None else None for x in grads]


def max_err(a, b):
    return max(((x - y).abs().max().item() if x is not None else 0.0) for x, y in zip(a, b))


def rounded(case, dtype):
    """The case with hidden/weight/bias rounded to `dtype` (float64 again): the ground truth for that dtype."""
    out = dict(case)
    for key in ("hidden", "weight", "bias"):
        if case[key] is not None:
            out[key] = case[key].to(dtype).double()
    return out


# ------------------------------------------------------------------------------------------------ torch path, float64

F64_CASES = [
    # loss, K, T, bias, tail present, ce_weight, reduction
    ("forward_kl_tail", 5, 1.0, False, True, 0.0, "mean"),
    ("forward_kl_tail", 1, 2.0, True, False, 0.0, "sum"),
    ("forward_kl_tail", 64, 2.0, True, True, 0.3, "mean"),
    ("forward_kl_tail", V, 1.0, False, False, 0.0, "mean"),
    ("forward_kl_topk", 5, 2.0, True, True, 0.0, "mean"),
    ("forward_kl_topk", 1, 1.0, False, False, 0.5, "sum"),
    ("reverse_kl", 5, 1.0, False, True, 0.0, "mean"),
    ("reverse_kl", 64, 2.0, True, False, 0.0, "sum"),
    ("jsd", 5, 2.0, True, True, 0.2, "mean"),
    ("jsd", V, 1.0, False, True, 0.0, "mean"),
    ("skew_kl", 64, 1.0, False, True, 0.0, "mean"),
    ("skew_kl", 1, 2.0, True, False, 0.1, "sum"),
]


@pytest.mark.parametrize("loss,k,temp,bias,tail,ce,red", F64_CASES)
def test_torch_path_matches_float64_reference(loss, k, temp, bias, tail, ce, red):
    case = make_case(k=k, bias=bias, tail=tail, std=15.0, seed=k)
    kw = dict(loss=loss, temperature=temp, ce_weight=ce, reduction=red)
    ref = run(topk_kl_reference, case, torch.float64, **kw)
    # a small budget forces several chunks (a 7-row chunk here)
    got = run(topk_kl_loss, case, torch.float64, impl="torch", memory_budget_bytes=7 * V * 8, **kw)
    scale = max(1.0, max(x.abs().max().item() for x in ref if x is not None))
    assert max_err(got, ref) <= 1e-10 * scale
    assert torch.isfinite(ref[0]).all()


@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_float64_torch_path(loss):
    case = make_case(n=7, h=5, v=13, k=3, std=6.0, bias=True, seed=3)
    labels = case["labels"]
    ids, lp, tail = case["topk_ids"], case["topk_logprobs"], case["tail_logmass"]

    def f(hid, w, b):
        return topk_kl_loss(hid, w, ids, lp, tail, labels, b, loss=loss, temperature=1.7, ce_weight=0.3,
                            reduction="none", impl="torch", memory_budget_bytes=3 * 13 * 8)

    inputs = tuple(case[x].clone().requires_grad_() for x in ("hidden", "weight", "bias"))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------------------------ Triton path

TRITON_CASES = [
    ("forward_kl_tail", 5, 1.0, True, True, 0.0),
    ("forward_kl_tail", 64, 2.0, False, False, 0.3),
    ("forward_kl_tail", V, 1.0, True, False, 0.0),
    ("forward_kl_topk", 1, 2.0, True, True, 0.0),
    ("reverse_kl", 5, 2.0, True, True, 0.0),
    ("jsd", 64, 1.0, False, True, 0.5),
    ("skew_kl", 5, 2.0, True, False, 0.0),
]


@needs_triton
@pytest.mark.parametrize("loss,k,temp,bias,tail,ce", TRITON_CASES)
def test_triton_fp32_vs_float64_and_torch(loss, k, temp, bias, tail, ce):
    case = make_case(k=k, bias=bias, tail=tail, std=20.0, seed=10 + k)
    kw = dict(loss=loss, temperature=temp, ce_weight=ce)
    truth = run(topk_kl_reference, rounded(case, torch.float32), torch.float64, **kw)
    torch_same = run(topk_kl_reference, case, torch.float32, **kw)
    tri = run(topk_kl_loss, case, torch.float32, impl="triton", memory_budget_bytes=16 * V * 4, **kw)
    chunked = run(topk_kl_loss, case, torch.float32, impl="torch", memory_budget_bytes=16 * V * 4, **kw)
    for i in range(4):
        if truth[i] is None:
            continue
        scale = max(1.0, truth[i].abs().max().item())
        tol = 2e-6 * scale
        e_ref = (torch_same[i] - truth[i]).abs().max().item()
        assert (tri[i] - truth[i]).abs().max().item() <= e_ref + tol, (i, loss)
        assert (chunked[i] - truth[i]).abs().max().item() <= e_ref + tol, (i, loss)
        assert (tri[i] - chunked[i]).abs().max().item() <= 2 * tol, (i, loss)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("loss,k,temp,bias", [("forward_kl_tail", 64, 1.0, True), ("jsd", 5, 2.0, False),
                                              ("reverse_kl", 1, 1.0, False)])
def test_bf16_error_no_worse_than_torch_bf16(impl, loss, k, temp, bias):
    case = make_case(k=k, bias=bias, std=25.0, seed=20 + k)
    kw = dict(loss=loss, temperature=temp, ce_weight=0.1)
    truth = run(topk_kl_reference, rounded(case, torch.bfloat16), torch.float64, **kw)
    torch_bf16 = run(topk_kl_reference, case, torch.bfloat16, **kw)  # bf16 logits, as a naive implementation has
    got = run(topk_kl_loss, case, torch.bfloat16, impl=impl, memory_budget_bytes=10 * V * 4, **kw)
    for i in range(4):
        if truth[i] is None:
            continue
        scale = max(1.0, truth[i].abs().max().item())
        e_torch = (torch_bf16[i] - truth[i]).abs().max().item()
        e_got = (got[i] - truth[i]).abs().max().item()
        assert e_got <= e_torch + 1e-2 * scale, (i, e_got, e_torch)
    # the loss itself is computed from fp32 logits: far better than bf16 torch, not merely as good
    assert (got[0] - truth[0]).abs().item() <= 1e-4 * max(1.0, truth[0].abs().item())


# ------------------------------------------------------------------------------------------------ semantics


@pytest.mark.parametrize("impl,dtype", [("torch", torch.float64), pytest.param("triton", torch.float32,
                                                                              marks=needs_triton)])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_k_equals_v_is_dense_kl(impl, dtype, temp):
    case = make_case(k=V, std=12.0, ignore=False, seed=5)
    hid, w = case["hidden"], case["weight"]
    teacher_logp = torch.full((N, V), float("nan"), dtype=torch.float64)
    teacher_logp.scatter_(1, case["topk_ids"].long(), case["topk_logprobs"].double())
    student_logq = torch.log_softmax((hid @ w.t()) / temp, dim=-1)
    dense = (teacher_logp.exp() * (teacher_logp - student_logq)).sum(-1).mean() * temp ** 2
    got = run(topk_kl_loss, case, dtype, impl=impl, temperature=temp)[0]
    assert abs(got.item() - dense.item()) <= (1e-10 if dtype == torch.float64 else 1e-5) * max(1.0, dense.item())
    # a (useless) tail_logmass with K == V is ignored: the tail bucket is empty on both sides
    case["tail_logmass"] = torch.full((N,), -3.0)
    again = run(topk_kl_loss, case, dtype, impl=impl, temperature=temp)[0]
    assert abs(again.item() - got.item()) <= 1e-6 * max(1.0, dense.item())


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_tail_exact_when_student_mass_is_on_topk(impl):
    """q_tail ~ exp(-60): log(1 - sum q_k) is log(0) in fp32; the tail log-sum-exp keeps the KL exact."""
    n, h, v, k = 9, 16, 101, 5
    g = torch.Generator().manual_seed(7)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.1
    ids = torch.randperm(v, generator=g)[:k].to(torch.int32).expand(n, k).contiguous()  # same ids on every row
    b = torch.zeros(v, dtype=torch.float64)
    b[ids[0].long()] = 60.0  # the student's top-k logits sit ~60 above the rest: q_tail ~ 1e-26
    lp = torch.log(torch.full((n, k), 0.9 / k, dtype=torch.float64))
    tail = torch.full((n,), math.log(0.1), dtype=torch.float32)
    case = dict(hidden=hid, weight=w, bias=b, topk_ids=ids, topk_logprobs=lp.float(), tail_logmass=tail, labels=None)
    truth = run(topk_kl_reference, rounded(case, torch.float32), torch.float64)
    got = run(topk_kl_loss, case, torch.float32, impl=impl)
    assert truth[0].item() > 5.0  # 0.1 * (log 0.1 + ~60)
    for i in range(4):
        scale = max(1.0, truth[i].abs().max().item())
        assert (got[i] - truth[i]).abs().max().item() <= 1e-5 * scale, i
    # what the precision-losing formula gives in fp32: an infinite loss
    z = (hid.float() @ w.float().t() + b.float())
    q = torch.softmax(z, -1).gather(1, ids.long())
    assert torch.isinf(torch.log1p(-q.sum(-1))).any()


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
def test_all_rows_ignored(impl, red):
    case = make_case(k=5, bias=True)
    case["labels"] = torch.full((N,), -100)
    out = run(topk_kl_loss, case, torch.float32, impl=impl, reduction=red, ce_weight=0.5)
    assert out[0].abs().max().item() == 0.0
    for g in out[1:]:
        assert g is not None and torch.isfinite(g).all() and g.abs().max().item() == 0.0


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_ignored_rows_dropped_and_reductions(impl):
    case = make_case(k=5, bias=True, seed=4)  # ignored rows hold out-of-range ids and NaN logprobs
    keep = case["labels"] != -100
    n_kept = int(keep.sum())
    base = dict(impl=impl, memory_budget_bytes=20 * V * 4, temperature=2.0, ce_weight=0.2)
    s = run(topk_kl_loss, case, torch.float32, reduction="sum", **base)
    m = run(topk_kl_loss, case, torch.float32, reduction="mean", **base)
    per = run(topk_kl_loss, case, torch.float32, reduction="none", **base)
    assert all(torch.isfinite(x).all() for x in s + m + per if x is not None)
    assert abs(s[0].item() - m[0].item() * n_kept) <= 1e-4 * abs(s[0].item())
    for a, b in zip(s[1:], m[1:]):
        assert torch.allclose(a, b * n_kept, rtol=1e-4, atol=1e-6)
    assert (per[0][~keep] == 0).all()
    assert abs(per[0].sum().item() - s[0].item()) <= 1e-4 * abs(s[0].item())
    assert (per[1][~keep] == 0).all() and (s[1][~keep] == 0).all()  # no gradient for ignored rows
    # per-token loss with non-uniform upstream gradient (backward recomputes with row weights)
    wts = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = run(topk_kl_reference, rounded(case, torch.float32), torch.float64, reduction="none", grad_out=wts,
                temperature=2.0, ce_weight=0.2)
    got = run(topk_kl_loss, case, torch.float32, reduction="none", grad_out=wts, **base)
    for a, b in zip(got, truth):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_loss_identities_and_nonnegativity():
    case = make_case(k=5, bias=True, std=8.0, seed=9)
    f = lambda **kw: run(topk_kl_loss, case, torch.float64, impl="torch", temperature=1.5, **kw)  # noqa: E731
    fwd, rev = f(loss="forward_kl_tail"), f(loss="reverse_kl")
    assert max_err(f(loss="jsd", beta=0.0), fwd) < 1e-12
    assert max_err(f(loss="jsd", beta=1.0), rev) < 1e-12
    assert max_err(f(loss="skew_kl", alpha=0.0), fwd) < 1e-12
    per = run(topk_kl_loss, case, torch.float32, impl="torch", reduction="none")[0]
    assert (per >= 0).all()  # exact (K+1)-bucket KL of normalized distributions: no clamping needed
    for loss in LOSSES:
        assert (run(topk_kl_loss, case, torch.float64, impl="torch", loss=loss, reduction="none")[0] >= -1e-12).all()


def test_tail_absent_with_fp16_topk_summing_past_one():
    """Without tail_logmass the tail is max(0, 1 - sum p_k) in fp32; fp16 rounding can push the sum past 1."""
    case = make_case(k=64, tail=False, lp_dtype=torch.float16, seed=2)
    case["topk_logprobs"][:, :3] = torch.tensor([-0.0001, -0.0001, -0.0001], dtype=torch.float16)
    for loss in LOSSES:
        out = run(topk_kl_loss, case, torch.float32, impl="torch", loss=loss)
        ref = run(topk_kl_reference, case, torch.float64, loss=loss)
        assert all(torch.isfinite(x).all() for x in out if x is not None), loss
        assert max_err(out, ref) <= 1e-4 * max(1.0, max(x.abs().max().item() for x in ref if x is not None)), loss


def test_vocab_mismatch_and_bad_inputs_raise():
    case = make_case(k=5, ignore=False)
    args = lambda c: (c["hidden"], c["weight"], c["topk_ids"], c["topk_logprobs"], c["tail_logmass"], c["labels"])  # noqa
    bad = dict(case, topk_ids=case["topk_ids"].clone())
    bad["topk_ids"][2, 1] = V  # teacher id beyond the student vocabulary
    with pytest.raises(ValueError, match="vocab"):
        topk_kl_loss(*args(bad), impl="torch")
    with pytest.raises(ValueError, match="vocab"):
        topk_kl_reference(*args(bad))
    dup = dict(case, topk_ids=case["topk_ids"].clone())
    dup["topk_ids"][0, 1] = dup["topk_ids"][0, 0]
    with pytest.raises(ValueError, match="duplicate"):
        topk_kl_loss(*args(dup), impl="torch")
    small = dict(case, weight=case["weight"][:4])
    with pytest.raises(ValueError, match="vocab"):
        topk_kl_loss(*args(small), impl="torch")
    with pytest.raises(ValueError, match="loss"):
        topk_kl_loss(*args(case), loss="kl")
    with pytest.raises(ValueError, match="labels"):
        topk_kl_loss(*args(dict(case, labels=None)), ce_weight=1.0)


def test_chunk_rows_from_budget():
    assert choose_chunk_rows(4096, 32768, 64 << 20) == 512
    assert choose_chunk_rows(8192, 128256, tk.DEFAULT_BUDGET_CUDA) == 2048
    assert choose_chunk_rows(10, 1000, 1) == 1
    assert choose_chunk_rows(10, 1000, 1 << 30) == 10
    assert choose_chunk_rows(4096, 32768, 64 << 20, buffers=2) == 256


def test_no_grad_inputs_and_fp16_logprobs():
    case = make_case(k=5, lp_dtype=torch.float16)
    with torch.no_grad():
        out = topk_kl_loss(case["hidden"].float(), case["weight"].float(), case["topk_ids"], case["topk_logprobs"],
                           case["tail_logmass"], case["labels"], impl="torch")
    ref = topk_kl_reference(case["hidden"], case["weight"], case["topk_ids"], case["topk_logprobs"],
                            case["tail_logmass"], case["labels"])
    assert abs(out.item() - ref.item()) <= 1e-4 * abs(ref.item())


def test_backward_twice_and_scaled_upstream_gradient():
    """The precomputed grads are handed to autograd; a second backward (retain_graph) recomputes them."""
    case = make_case(k=5, bias=True, seed=6)
    truth = run(topk_kl_reference, case, torch.float64, grad_out=torch.tensor(0.25, dtype=torch.float64))
    hid = case["hidden"].clone().requires_grad_()
    w = case["weight"].clone().requires_grad_()
    out = topk_kl_loss(hid, w, case["topk_ids"], case["topk_logprobs"], case["tail_logmass"], case["labels"],
                       case["bias"], impl="torch")
    for _ in range(2):
        hid.grad = w.grad = None
        (out * 0.25).backward(retain_graph=True)
        assert (hid.grad - truth[1]).abs().max() < 1e-12 and (w.grad - truth[2]).abs().max() < 1e-12


@pytest.mark.parametrize("loss", LOSSES)
def test_row_blocked_head_matches_reference(loss, monkeypatch):
    """On CPU the per-row head runs on row blocks small enough to stay single-threaded; the test shapes are below the
    block size, so shrink it to force 2-row blocks (with a ragged last block) and compare with the float64 reference."""
    k = 5
    monkeypatch.setattr(tk, "_SERIAL_ELEMS", 2 * (k + 2))
    case = make_case(k=k, bias=True, std=15.0, seed=11)
    kw = dict(loss=loss, temperature=2.0, ce_weight=0.25, reduction="none")
    grad_out = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref = run(topk_kl_reference, case, torch.float64, grad_out=grad_out, **kw)
    got = run(topk_kl_loss, case, torch.float64, grad_out=grad_out, impl="torch", **kw)
    scale = max(1.0, max(x.abs().max().item() for x in ref if x is not None))
    assert max_err(got, ref) <= 1e-10 * scale
