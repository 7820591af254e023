"""Fused top-k KL distillation: LM head + loss + gradients, exact tail bucket, never the full ``[N, V]`` logits.

One op, three implementations that compute the same numbers:

* ``impl="triton"`` -- Triton kernels (logits GEMM with fp32 accumulation, masked row log-sum-exp, the dz pass, and
  the dh / dW GEMMs with fp32 accumulation), one chunk of rows at a time. The default on CUDA tensors. On CPU it runs
  under ``TRITON_INTERPRET=1`` (set before this module is imported), which is how CI tests it.
* ``impl="torch"`` -- the same chunked algorithm in plain torch (runs everywhere; the default on CPU).
* :func:`topk_kl_reference` -- materializes the logits and lets autograd differentiate; any dtype (float64 in tests).

Inputs (N rows = tokens, H hidden, V student vocabulary, K teacher top-k):
``hidden [N, H]``, ``weight [V, H]`` (the student ``lm_head``), optional ``bias [V]``, ``topk_ids [N, K]`` (int32 or
int64, distinct per row, sorted or not), ``topk_logprobs [N, K]`` (fp16/fp32 teacher log-probabilities at temperature
1), optional ``tail_logmass [N]`` (fp32, log of the teacher mass outside the top-k, from the full teacher
distribution), optional ``labels [N]`` (next-token ids; rows equal to ``ignore_index`` get no loss and are dropped
before any matmul; also the hard-label targets when ``ce_weight > 0``).

Buckets
-------
Per kept row, with student logits ``z = h W^T + b`` (always fp32, also for bf16 inputs) and the top-k set ``S``, both
distributions are seen as (K+1)-category distributions: the K top-k tokens plus one *tail* bucket holding everything
else. Student: ``s = z / T``, ``log q_k = s_k - lse(s)``, ``log q_tail = lse_{v not in S}(s_v) - lse(s)``. The tail
log-mass is a log-sum-exp over the non-top-k logits computed in the same pass (the top-k columns are set to ``-inf``
before the reduction), never ``log(1 - sum q_k)``, which loses all precision when the student puts nearly all its
mass on the teacher's top-k. Teacher: ``p_k = exp(topk_logprobs)``, ``p_tail = exp(tail_logmass)``; when
``tail_logmass`` is None the tail is ``max(0, 1 - sum_k p_k)`` computed in fp32 from the top-k (so a teacher whose
stored top-k already sums to >= 1 has an empty tail; fp64 when the inputs are fp64). When K == V the tail bucket is empty on both sides and is
dropped, so every loss equals its dense (full-vocabulary) value.

Losses (``loss=``), all over the K+1 buckets unless stated, ``P`` teacher buckets, ``Q`` student buckets:

* ``"forward_kl_tail"``: ``KL(P || Q) = sum_b p_b (log p_b - log q_b)`` -- the exact KL of two (K+1)-category
  distributions, >= 0 without clamping (when the teacher buckets sum to 1). Terms with ``p_b = 0`` are 0.
* ``"forward_kl_topk"``: the common variant without tail: both sides renormalized over the top-k,
  ``KL(p/sum p || q/sum q)``; only the K gathered logits receive gradient.
* ``"reverse_kl"``: ``KL(Q || P) = sum_b q_b (log q_b - log p_b)``. A teacher bucket with zero mass would make it
  infinite: teacher log-probabilities are floored at ``LOG_P_FLOOR`` (= -69, about 1e-30) for this loss only.
* ``"jsd"``: generalized JSD as in TRL's GKD: ``M = beta P + (1 - beta) Q``,
  ``JSD = beta KL(P || M) + (1 - beta) KL(Q || M)``; ``beta = 0`` is forward KL (with tail), ``beta = 1`` reverse KL.
* ``"skew_kl"``: skew forward KL (DistiLLM): ``KL(P || alpha P + (1 - alpha) Q)``; ``alpha = 0`` is forward KL.

Temperature: the student is softened by ``T`` (``s = z / T``); the teacher is used as stored (temperature 1: a
top-k cannot be re-tempered exactly, the tail is unknown per token). The KD term is multiplied by ``T**2`` so that
gradient magnitudes stay comparable across temperatures (Hinton et al.): ``d loss / d z = T * d L / d s``.
Hard-label cross-entropy at temperature 1, ``ce = lse(z) - z_y``, is mixed in as ``T**2 * L + ce_weight * ce``; its
log-sum-exp comes from the same pass (the same one as the KD term when T == 1, one more reduction otherwise).

Gradients
---------
All losses are written through ``g_b = dL / d log q_b`` per bucket and ``G = sum_b g_b``. Since
``d log q_k / d s_v = [v = k] - q_v`` and ``d log q_tail / d s_v = [v not in S] q_v / q_tail - q_v``:

    dL/ds_k = g_k - G q_k                               (k in S)
    dL/ds_v = exp(s_v - lse_tail) * (g_tail - G q_tail)  (v not in S)

For forward KL with tail (``g_b = -p_b``), with ``P = sum_k p_k``, ``Q = sum_k q_k`` and ``r = p_tail / q_tail``,
this is the formula of the design doc, ``dz = (P - r Q) q + [v in S] (r q_v - p_v)``: for ``v not in S``,
``q_v (P - r Q) = q_v (P + p_tail - r)`` because ``Q + q_tail = 1`` holds exactly for the student -- no assumption
that the stored fp16 teacher values sum to 1 (they need not). The code evaluates it as
``exp(s_v - lse_tail) * (-p_tail + (P + p_tail) q_tail)``: ``exp(s_v - lse_tail) = q_v / q_tail <= 1`` comes from the
tail reduction itself, so nothing overflows when ``q_tail`` underflows and ``r`` is huge. Per loss:
forward KL ``g_b = -p_b``; reverse KL ``g_b = q_b (log q_b - log p_b + 1)``; JSD ``g_b = (1 - beta) q_b (log q_b -
log m_b)``; skew KL ``g_b = -(1 - alpha) p_b q_b / m_b``; renormalized top-k ``dL/ds_k = qhat_k sum(phat) - phat_k``.

Gradients are computed in the forward pass, chunk by chunk (no recompute): dz is formed in the chunk's fp32 logits
buffer, then ``dh = dz W`` and ``dW += dz^T h`` (dW accumulated in fp32 across chunks, cast to ``weight.dtype`` at
the end; the bias gradient is the fp32 column sum of dz). The chunk size comes from ``memory_budget_bytes`` (the
fp32 ``[chunk, V]`` buffer(s) must fit in it; defaults ``DEFAULT_BUDGET_CUDA`` / ``DEFAULT_BUDGET_CPU``).

Per chunk of kept rows (both fused paths; Triton kernels named in brackets): (1) ``z [chunk, V]`` fp32 logits
[``_mm_kernel``: tiled over V and H, fp32 accumulation, bias in the epilogue -- logits are never rounded to bf16];
(2) gather the K student logits (and the label logit), then set the top-k columns to ``-inf``; (3) online max /
sum-exp over V tiles of the masked row [``_row_lse_kernel``] -> ``lse_tail`` (and the T = 1 one for CE); (4) the
per-row head on ``[chunk, K+1]`` tensors (torch, shared by all paths); (5) dz in place in the buffer
[``_dz_kernel``], the top-k (and label) columns written by a scatter; (6) ``dh = dz W`` and ``dW += dz^T h``
[``_mm_kernel``, fp32 accumulation; dz is cast to bf16 per tile for bf16 weights, as any bf16 GEMM would]. Under
TRITON_INTERPRET the dots run in fp32 on the exact bf16 values (the interpreter's bf16 ``tl.dot`` is wrong).

Reductions: ``"mean"`` divides by the number of kept rows (0 when every row is ignored -- not NaN -- with zero
gradients), ``"sum"`` sums over kept rows (what a trainer that divides by a global token count wants), ``"none"``
returns the per-token loss ``[N]`` with zeros at ignored rows. For ``"mean"``/``"sum"`` the backward only scales
the stored gradients; for ``"none"`` it does too when the incoming gradient is the same on every kept row, and
otherwise recomputes the gradients with per-row weights (one more pass).

Errors: a teacher id outside ``[0, V)`` (tokenizer/vocab mismatch between teacher and student), a label outside
``[0, V)``, duplicate ids within a row, or a shape mismatch raise ``ValueError``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

try:  # Triton is optional: the torch path runs everywhere.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["LOSSES", "topk_kl_loss", "topk_kl_reference", "TopKKLFunction", "choose_chunk_rows"]

LOSSES = ("forward_kl_tail", "forward_kl_topk", "reverse_kl", "jsd", "skew_kl")
REDUCTIONS = ("mean", "sum", "none")

# Reverse-KL / JSD(beta=1) need log p_b > -inf for every bucket; fp16 logprobs can be -inf and a top-k that sums to
# >= 1 leaves an empty tail. exp(-69) ~ 1e-30: far below any mass that matters, finite in fp32.
LOG_P_FLOOR = -69.0
# Transient memory for the [chunk, V] fp32 buffer(s). CUDA: at V = 128256 this gives 2048-row chunks (4 chunks at
# N = 8192, each one pass over W and one read-modify-write of the fp32 dW), well under the 2 GB transient goal.
# CPU: 512-row chunks at V = 32768 (a 64 MiB buffer): the [512, H] x [H, V] logits GEMM runs as fast per row as the
# full-N one, while 256-row chunks cost ~15% more on it; extra memory stays < 1/20 of naive (bench/kernel.py).
DEFAULT_BUDGET_CUDA = 1 << 30
DEFAULT_BUDGET_CPU = 64 << 20
# Row chunks are rounded down to a multiple of this when larger (GEMM-friendly), never below 1 row.
# torch's CPU elementwise ops go multi-threaded above at::internal::GRAIN_SIZE (32768) elements; the per-row head
# works on row blocks of at most this many elements so that its small ops stay single-threaded.
_SERIAL_ELEMS = 32768
CHUNK_ROW_MULTIPLE = 64


# ----------------------------------------------------------------------------------------------------------------
# Configuration, validation, chunking
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cfg:
    loss: str
    temperature: float
    beta: float
    alpha: float
    ce_weight: float
    ignore_index: int
    reduction: str
    memory_budget_bytes: int | None
    impl: str  # resolved: "triton" or "torch"


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # pragma: no cover
        return False
    return isinstance(_dz_kernel, InterpretedFunction)


def _resolve_impl(impl: str, hidden: torch.Tensor) -> str:
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "auto":
        return "triton" if (hidden.is_cuda and HAS_TRITON) else "torch"
    if impl == "triton":
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' but triton is not importable; use impl='torch'")
        if not hidden.is_cuda and not (_interpret_mode() and _kernels_interpreted()):
            raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is first "
                               "imported (triton decides at import/decoration time); use impl='torch' for the CPU path")
    return impl


def choose_chunk_rows(n_rows: int, vocab: int, budget_bytes: int, buffers: int = 1) -> int:
    """Rows per chunk so that ``buffers`` fp32 ``[chunk, V]`` buffers fit in ``budget_bytes`` (at least 1 row)."""
    per_row = max(1, vocab * 4 * buffers)
    rows = max(1, int(budget_bytes) // per_row)
    if rows >= CHUNK_ROW_MULTIPLE:
        rows -= rows % CHUNK_ROW_MULTIPLE
    return max(1, min(rows, max(n_rows, 1)))


def _validate(hidden, weight, topk_ids, topk_logprobs, tail_logmass, labels, bias, cfg: _Cfg):
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {cfg.reduction!r}")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    N, H = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != H:
        raise ValueError(f"hidden size mismatch: hidden has H={H}, weight has H={weight.shape[1]}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != N:
        raise ValueError(f"topk_ids must be [N={N}, K], got {tuple(topk_ids.shape)}")
    if topk_logprobs.shape != topk_ids.shape:
        raise ValueError(f"topk_logprobs {tuple(topk_logprobs.shape)} must match topk_ids {tuple(topk_ids.shape)}")
    K = topk_ids.shape[1]
    if K < 1:
        raise ValueError("K must be >= 1")
    if K > V:
        raise ValueError(f"teacher top-k K={K} > student vocab size V={V}: tokenizer/vocab mismatch between teacher "
                         f"and student")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if not topk_logprobs.is_floating_point():
        raise ValueError(f"topk_logprobs must be floating point, got {topk_logprobs.dtype}")
    if tail_logmass is not None and tuple(tail_logmass.shape) != (N,):
        raise ValueError(f"tail_logmass must be [N={N}], got {tuple(tail_logmass.shape)}")
    if labels is not None and tuple(labels.shape) != (N,):
        raise ValueError(f"labels must be [N={N}], got {tuple(labels.shape)}")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias must be [V={V}], got {tuple(bias.shape)}")
    if cfg.ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight > 0 needs labels (the hard-label targets)")
    if not cfg.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {cfg.temperature}")
    if not 0.0 <= cfg.beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {cfg.beta}")
    if not 0.0 <= cfg.alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {cfg.alpha}")


def _check_ids(ids: torch.Tensor, labels_kept: torch.Tensor | None, V: int, check_labels: bool):
    """Vocabulary range and duplicate checks on the kept rows (one host sync)."""
    if ids.numel() == 0:
        return
    lo, hi = ids.min(), ids.max()
    srt = ids.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any() if ids.shape[1] > 1 else torch.zeros((), dtype=torch.bool, device=ids.device)
    stats = [lo.to(torch.int64), hi.to(torch.int64), dup.to(torch.int64)]
    if check_labels and labels_kept is not None and labels_kept.numel():
        stats += [labels_kept.min().to(torch.int64), labels_kept.max().to(torch.int64)]
    vals = torch.stack(stats).tolist()
    if vals[0] < 0 or vals[1] >= V:
        raise ValueError(f"teacher top-k ids span [{vals[0]}, {vals[1]}] but the student vocab size is V={V}: "
                         f"tokenizer/vocab mismatch between teacher and student")
    if vals[2]:
        raise ValueError("topk_ids has a duplicate id within a row; the K teacher ids of a row must be distinct")
    if len(vals) > 3 and (vals[3] < 0 or vals[4] >= V):
        raise ValueError(f"labels span [{vals[3]}, {vals[4]}] outside the student vocab [0, {V}) (ignore_index rows "
                         f"excluded): tokenizer/vocab mismatch")


# ----------------------------------------------------------------------------------------------------------------
# The per-row "head": bucket losses and their gradients from [C, K] / [C] tensors (shared by every implementation)
# ----------------------------------------------------------------------------------------------------------------


def _teacher_buckets(topk_logprobs: torch.Tensor, tail_logmass: torch.Tensor | None, has_tail: bool, cd):
    """logp_top [C, K] and logp_tail [C] (or None when there is no tail bucket) in compute dtype ``cd``."""
    logp_top = topk_logprobs.to(cd)
    if not has_tail:
        return logp_top, None
    if tail_logmass is not None:
        return logp_top, tail_logmass.to(cd)
    p_tail = (1.0 - logp_top.exp().sum(dim=1)).clamp_min(0.0)
    return logp_top, p_tail.log()


def _plogp_ratio(logp, logx):
    """p * (log p - log x), 0 where p == 0 (also when log x == -inf there)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logx), torch.zeros_like(p))


def _bucket_head(loss: str, s_top, lse_tail, logp_top, logp_tail, beta: float, alpha: float):
    """Loss and gradient w.r.t. the tempered student logits s for one chunk of rows.

    s_top [C, K]: s at the teacher's top-k ids; lse_tail [C]: lse of s over the non-top-k ids (-inf if empty) or
    None when K == V; logp_top [C, K], logp_tail [C] or None: teacher log-probabilities.
    Returns (L [C], ds_top [C, K], coef_tail [C] or None) with dL/ds_v = exp(s_v - lse_tail) * coef_tail off the top-k.
    """
    has_tail = lse_tail is not None
    lse_top = torch.logsumexp(s_top, dim=1)
    if loss == "forward_kl_topk":
        logq_hat = s_top - lse_top[:, None]
        logp_hat = logp_top - torch.logsumexp(logp_top, dim=1, keepdim=True)
        L = _plogp_ratio(logp_hat, logq_hat).sum(dim=1)
        p_hat = logp_hat.exp()
        ds_top = logq_hat.exp() * p_hat.sum(dim=1, keepdim=True) - p_hat
        return L, ds_top, (torch.zeros_like(lse_top) if has_tail else None)
    if has_tail:
        lse_all = torch.logaddexp(lse_top, lse_tail)
        logQ = torch.cat([s_top - lse_all[:, None], (lse_tail - lse_all)[:, None]], dim=1)
        logP = torch.cat([logp_top, logp_tail[:, None]], dim=1)
    else:
        logQ = s_top - lse_top[:, None]
        logP = logp_top
    Q = logQ.exp()
    kind = loss
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl_tail"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    elif kind == "skew_kl" and alpha == 0.0:
        kind = "forward_kl_tail"
    if kind == "forward_kl_tail":
        L = _plogp_ratio(logP, logQ).sum(dim=1)
        g = -logP.exp()
    elif kind == "reverse_kl":
        logPf = logP.clamp_min(LOG_P_FLOOR)
        d = torch.where(Q > 0, logQ - logPf, torch.zeros_like(logQ))
        L = (Q * d).sum(dim=1)
        # g_b = q_b (d_b + 1), G = L + 1, so dL/ds_b = q_b (d_b - L) = q_b ((d_b - d_*) - sum_c q_c (d_c - d_*)).
        # Shifting by the dominant bucket * makes its own term exactly 0: without the shift, fp32 rounding of
        # q_* ~ 1 times d_* ~ 50 costs ~1% relative error on the small gradients of confident rows.
        u = torch.cat([s_top, lse_tail[:, None]], dim=1) if has_tail else s_top  # log q_b + lse_all
        star = Q.argmax(dim=1, keepdim=True)
        dd = (u - u.gather(1, star)) - (logPf - logPf.gather(1, star))
        qdd = torch.where(Q > 0, Q * dd, torch.zeros_like(Q))
        gs = qdd - Q * qdd.sum(dim=1, keepdim=True)
        K = s_top.shape[1]
        return L, gs[:, :K], (gs[:, K] if has_tail else None)
    elif kind == "jsd":
        logM = torch.logaddexp(logP + math.log(beta), logQ + math.log1p(-beta))
        dq = torch.where(Q > 0, logQ - logM, torch.zeros_like(logQ))
        L = beta * _plogp_ratio(logP, logM).sum(dim=1) + (1.0 - beta) * (Q * dq).sum(dim=1)
        g = (1.0 - beta) * Q * dq
    elif kind == "skew_kl":
        logM = torch.logaddexp(logP + math.log(alpha), logQ + math.log1p(-alpha))
        L = _plogp_ratio(logP, logM).sum(dim=1)
        g = -(1.0 - alpha) * (logP + logQ - logM).exp()
    else:  # pragma: no cover - validated earlier
        raise ValueError(loss)
    G = g.sum(dim=1)
    K = s_top.shape[1]
    ds_top = g[:, :K] - G[:, None] * Q[:, :K]
    coef_tail = (g[:, K] - G * Q[:, K]) if has_tail else None
    return L, ds_top, coef_tail


def _ce_head(z_top, lse1_tail, z_y):
    """Hard-label CE at T = 1: (ce [C], dce_top [C, K] = softmax at the top-k, coef1 [C] = q1_tail or None)."""
    lse_top = torch.logsumexp(z_top, dim=1)
    lse_all = torch.logaddexp(lse_top, lse1_tail) if lse1_tail is not None else lse_top
    ce = lse_all - z_y
    dce_top = (z_top - lse_all[:, None]).exp()
    coef1 = (lse1_tail - lse_all).exp() if lse1_tail is not None else None
    return ce, dce_top, coef1


def _finite_or_zero(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _mm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, KD,
                   stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """c[M, N] (+)= a[M, KD] @ b[KD, N] (+ bias[N]), fp32 accumulation; operands cast to DOT_DTYPE per tile."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        mask_m = rm < M
        mask_n = rn < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, KD, BLOCK_K):
            kk = k0 + rk
            a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                        mask=mask_m[:, None] & (kk[None, :] < KD), other=0.0)
            b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                        mask=(kk[:, None] < KD) & mask_n[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision="ieee")
            else:
                acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
        cmask = mask_m[:, None] & mask_n[None, :]
        if ACCUMULATE:
            acc += tl.load(c_ptrs, mask=cmask, other=0.0).to(tl.float32)
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=cmask)

    @triton.jit
    def _row_lse_kernel(z_ptr, m_ptr, se_ptr, m1_ptr, se1_ptr, V, stride_z, inv_t,
                        TWO_TEMPS: tl.constexpr, BLOCK_V: tl.constexpr):
        """Online max / sum-exp over the V tiles of one row of z (top-k columns already -inf).

        Writes m[row], se[row] for s = z * inv_t (lse = m + log se) and, when TWO_TEMPS, m1, se1 for z itself."""
        row = tl.program_id(0)
        base = z_ptr + row.to(tl.int64) * stride_z
        cols = tl.arange(0, BLOCK_V)
        m = tl.full((BLOCK_V,), float("-inf"), tl.float32)
        se = tl.zeros((BLOCK_V,), tl.float32)
        m1 = tl.full((BLOCK_V,), float("-inf"), tl.float32)
        se1 = tl.zeros((BLOCK_V,), tl.float32)
        for v0 in range(0, V, BLOCK_V):
            z = tl.load(base + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32)
            s = z * inv_t
            m_new = tl.maximum(m, s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            se = se * tl.exp(m - m_safe) + tl.exp(s - m_safe)
            m = m_new
            if TWO_TEMPS:
                m1_new = tl.maximum(m1, z)
                m1_safe = tl.where(m1_new == float("-inf"), 0.0, m1_new)
                se1 = se1 * tl.exp(m1 - m1_safe) + tl.exp(z - m1_safe)
                m1 = m1_new
        mr = tl.max(m, axis=0)
        mr_safe = tl.where(mr == float("-inf"), 0.0, mr)
        ser = tl.sum(se * tl.exp(m - mr_safe), axis=0)
        tl.store(m_ptr + row, mr)
        tl.store(se_ptr + row, ser)
        if TWO_TEMPS:
            m1r = tl.max(m1, axis=0)
            m1r_safe = tl.where(m1r == float("-inf"), 0.0, m1r)
            se1r = tl.sum(se1 * tl.exp(m1 - m1r_safe), axis=0)
            tl.store(m1_ptr + row, m1r)
            tl.store(se1_ptr + row, se1r)

    @triton.jit
    def _dz_kernel(z_ptr, lse_ptr, coef_ptr, lse1_ptr, coef1_ptr, V, stride_z, inv_t,
                   TWO_TEMPS: tl.constexpr, BLOCK_V: tl.constexpr):
        """In place over one (row, V tile): z <- exp(z*inv_t - lse) * coef (+ exp(z - lse1) * coef1).

        Top-k columns hold -inf and become 0; their values are written afterwards by the launcher."""
        row = tl.program_id(0)
        pid_v = tl.program_id(1)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask = cols < V
        ptrs = z_ptr + row.to(tl.int64) * stride_z + cols
        z = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
        lse = tl.load(lse_ptr + row)
        coef = tl.load(coef_ptr + row)
        dz = tl.exp(z * inv_t - lse) * coef
        if TWO_TEMPS:
            lse1 = tl.load(lse1_ptr + row)
            coef1 = tl.load(coef1_ptr + row)
            dz += tl.exp(z - lse1) * coef1
        tl.store(ptrs, dz, mask=mask)


def _dot_dtype(*tensors):
    """tl dtype for tl.dot operands, and whether to ask for IEEE fp32 (no TF32)."""
    dts = {t.dtype for t in tensors}
    low = [d for d in (torch.bfloat16, torch.float16) if d in dts]
    if low and not _interpret_mode():  # the interpreter's tl.dot mishandles bf16: dot in fp32 on the exact values
        return (tl.bfloat16 if low[0] == torch.bfloat16 else tl.float16), False
    if torch.float64 in dts and _interpret_mode():
        return tl.float64, True
    return tl.float32, True


def _mm_blocks(M, N, KD):
    if _interpret_mode():  # the interpreter pays per program instance, not per element: few, large programs
        return (min(128, max(16, triton.next_power_of_2(M))), min(256, max(16, triton.next_power_of_2(N))),
                min(128, max(16, triton.next_power_of_2(KD))), 4, 1)
    return 128, 128, 64, 8, 3


def _triton_mm(a, b, out, bias=None, accumulate=False):
    """out[M, N] (+)= a[M, KD] @ b[KD, N] (+ bias) with fp32 accumulation (any strides)."""
    M, KD = a.shape
    N = b.shape[1]
    BM, BN, BK, warps, stages = _mm_blocks(M, N, KD)
    dot_dtype, ieee = _dot_dtype(a, b)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    kw = {} if _interpret_mode() else {"num_warps": warps, "num_stages": stages}
    _mm_kernel[grid](a, b, out, bias if bias is not None else out, M, N, KD,
                     a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
                     HAS_BIAS=bias is not None, ACCUMULATE=accumulate, DOT_DTYPE=dot_dtype, IEEE=ieee,
                     BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, **kw)
    return out


def _v_block(V):
    if _interpret_mode():
        return min(4096, triton.next_power_of_2(V))
    return 2048


# ----------------------------------------------------------------------------------------------------------------
# The chunked driver (one code path; the three heavy stages dispatch to torch or Triton)
# ----------------------------------------------------------------------------------------------------------------


def _compute(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg: _Cfg,
             need_dh: bool, need_dw: bool, need_db: bool, row_weight: torch.Tensor | None = None):
    """Loss per token [N] (0 at ignored rows) and, as requested, dh [N, H], dW [V, H] fp32, db [V] fp32.

    Gradients are those of sum_rows(row_scale * loss_row) where row_scale is row_weight [N] if given, else 1/n_kept
    for reduction="mean" and 1 otherwise."""
    N, H = hidden.shape
    V = weight.shape[0]
    K = topk_ids.shape[1]
    dev = hidden.device
    use_triton = cfg.impl == "triton"
    cd = torch.float64 if hidden.dtype == torch.float64 or weight.dtype == torch.float64 else torch.float32
    T = float(cfg.temperature)
    ce_w = float(cfg.ce_weight)
    has_tail = K < V
    two_temps = ce_w != 0.0 and T != 1.0

    # Drop ignored rows before any matmul.
    if labels is not None:
        keep = labels != cfg.ignore_index
        idx = keep.nonzero().squeeze(1)
        n = idx.numel()
        all_kept = n == N
    else:
        idx, n, all_kept = None, N, True
    sel = (lambda t: t) if all_kept else (lambda t: t.index_select(0, idx))
    h = sel(hidden)
    ids = sel(topk_ids).to(torch.int64)
    lp = sel(topk_logprobs)
    tail = sel(tail_logmass) if tail_logmass is not None else None
    y = sel(labels).to(torch.int64) if (labels is not None and ce_w != 0.0) else None
    _check_ids(ids, y, V, check_labels=y is not None)

    loss_tok = torch.zeros(N, dtype=cd, device=dev)
    # dh: every kept row is written by a chunk's GEMM, so only dropped rows need zeros. dW: the first chunk's GEMM
    # overwrites it (no zero-fill pass over [V, H]); zeros only when no row is kept.
    dh = (torch.empty if all_kept else torch.zeros)(N, H, dtype=hidden.dtype, device=dev) if need_dh else None
    dW = (torch.empty if n > 0 else torch.zeros)(V, H, dtype=cd, device=dev) if need_dw else None
    db = torch.zeros(V, dtype=cd, device=dev) if need_db else None
    if n == 0:
        return loss_tok, dh, dW, db
    need_grad = need_dh or need_dw or need_db
    if cfg.reduction == "mean" and row_weight is None:
        scale_all = 1.0 / n
    else:
        scale_all = 1.0
    rw = sel(row_weight).to(cd) if row_weight is not None else None

    # Operands for the torch path: compute dtype (bf16/fp16 weights upcast once; the Triton path reads them as is).
    if use_triton:
        Wm, bm = weight, bias
    else:
        Wm = weight if weight.dtype == cd else weight.to(cd)
        bm = None if bias is None else (bias if bias.dtype == cd else bias.to(cd))

    budget = cfg.memory_budget_bytes
    if budget is None:
        budget = DEFAULT_BUDGET_CUDA if hidden.is_cuda else DEFAULT_BUDGET_CPU
    buffers = 2 if (two_temps and not use_triton) else 1
    C = choose_chunk_rows(n, V, budget * (4 / (8 if cd == torch.float64 else 4)), buffers)
    loss_kept = torch.empty(n, dtype=cd, device=dev)
    # One [C, V] logits buffer reused by every chunk (torch path): no fresh allocation (and page faults) per chunk.
    zbuf = None if use_triton else torch.empty(min(C, n), V, dtype=cd, device=dev)
    dh_kept = torch.empty(n, H, dtype=hidden.dtype, device=dev) if (need_dh and not all_kept) else None
    inv_t = 1.0 / T

    for c0 in range(0, n, C):
        c1 = min(n, c0 + C)
        rows = c1 - c0
        h_c = h[c0:c1]
        ids_c = ids[c0:c1]
        # --- stage 1: fp32 logits of the chunk [rows, V]
        if use_triton:
            z = torch.empty(rows, V, dtype=cd, device=dev)
            _triton_mm(h_c, weight.t(), z, bias=bias)
        else:
            hc = h_c if h_c.dtype == cd else h_c.to(cd)
            z = zbuf[:rows]
            if bm is None:
                torch.mm(hc, Wm.t(), out=z)
            else:
                torch.addmm(bm, hc, Wm.t(), out=z)
        z_top = z.gather(1, ids_c)
        z_y = z.gather(1, y[c0:c1, None]).squeeze(1) if y is not None else None
        z.scatter_(1, ids_c, float("-inf"))
        # --- stage 2: masked row reductions -> lse of the tail (tempered, and at T = 1 for CE)
        ce_buf = None
        if use_triton:
            m = torch.empty(rows, dtype=cd, device=dev)
            se = torch.empty_like(m)
            m1 = torch.empty_like(m) if two_temps else m
            se1 = torch.empty_like(m) if two_temps else se
            _row_lse_kernel[(rows,)](z, m, se, m1, se1, V, z.stride(0), inv_t,
                                     TWO_TEMPS=two_temps, BLOCK_V=_v_block(V))
            lse_tail = m + se.log()
            lse1_tail = (m1 + se1.log()) if two_temps else None
        else:
            lse1_tail = None
            if two_temps:
                lse1_tail = torch.logsumexp(z, dim=1)
                if need_grad:
                    ce_buf = z.sub(_finite_or_zero(lse1_tail)[:, None]).exp_()
            if T != 1.0:
                z.mul_(inv_t)
            m = z.amax(dim=1)
            z.sub_(_finite_or_zero(m)[:, None]).exp_()  # z <- exp(s - m): q_v / q_tail up to the row sum
            se = z.sum(dim=1)
            lse_tail = m + se.log()
        if not has_tail:
            lse_tail = None
            lse1_tail = None
        elif not two_temps:
            lse1_tail = lse_tail if ce_w != 0.0 else None
        # --- stage 3: the per-row head (tiny tensors), and the per-row dz coefficients
        def head(a, b):
            """Rows a:b of the chunk -> (loss_row [r], dz_top [r, K], coefA [r] or None, coefB [r] or None)."""
            cc = slice(c0 + a, c0 + b)
            lse_t = lse_tail[a:b] if lse_tail is not None else None
            logp_top, logp_tail = _teacher_buckets(lp[cc], tail[cc] if tail is not None else None, has_tail, cd)
            zt = z_top[a:b]
            s_top = zt * inv_t if T != 1.0 else zt
            L, ds_top, coef_tail = _bucket_head(cfg.loss, s_top, lse_t, logp_top, logp_tail, cfg.beta, cfg.alpha)
            loss_row = L * (T * T)
            if ce_w != 0.0:
                ce, dce_top, coef1 = _ce_head(zt, lse1_tail[a:b] if lse1_tail is not None else None,
                                              z_y[a:b])
                loss_row = loss_row + ce_w * ce
            if not need_grad:
                return loss_row, None, None, None
            rs = rw[cc] * scale_all if rw is not None else torch.full((b - a,), scale_all, dtype=cd, device=dev)
            dz_top = T * ds_top
            if ce_w != 0.0:
                dz_top = dz_top + ce_w * dce_top
            dz_top = dz_top * rs[:, None]
            coefA = coefB = None
            if has_tail:
                coefA = T * coef_tail
                if ce_w != 0.0:
                    if two_temps:
                        coefB = ce_w * coef1 * rs
                    else:
                        coefA = coefA + ce_w * coef1
                coefA = coefA * rs
            return loss_row, dz_top, coefA, coefB

        # CPU: torch runs an elementwise op on two threads above GRAIN_SIZE elements; on these [rows, K+1] tensors
        # the thread hand-off costs more than the work (and a lot more on a loaded machine), so the head runs on
        # row blocks small enough to stay on one thread.
        step = rows if hidden.is_cuda else max(1, _SERIAL_ELEMS // (K + 2))
        if step >= rows:
            loss_row, dz_top, coefA, coefB = head(0, rows)
            loss_kept[c0:c1] = loss_row
        else:
            dz_top = torch.empty(rows, K, dtype=cd, device=dev) if need_grad else None
            coefA = torch.empty(rows, dtype=cd, device=dev) if (need_grad and has_tail) else None
            coefB = torch.empty(rows, dtype=cd, device=dev) if (need_grad and has_tail and two_temps) else None
            for a in range(0, rows, step):
                b = min(rows, a + step)
                parts = head(a, b)
                for dst, src in zip((loss_kept[c0:c1], dz_top, coefA, coefB), parts):
                    if dst is not None:
                        dst[a:b] = src
        if not need_grad:
            continue
        # --- stage 4: dz in the logits buffer
        if has_tail:
            if use_triton:
                lse_safe = _finite_or_zero(lse_tail).contiguous()
                lse1_safe = _finite_or_zero(lse1_tail).contiguous() if two_temps else lse_safe
                BV = _v_block(V)
                _dz_kernel[(rows, triton.cdiv(V, BV))](z, lse_safe, coefA.contiguous(), lse1_safe,
                                                       coefB.contiguous() if two_temps else coefA, V, z.stride(0),
                                                       inv_t, TWO_TEMPS=two_temps, BLOCK_V=BV)
            else:
                # z holds exp(s - m); exp(s - lse_tail) = z / se
                z.mul_((coefA / torch.where(se > 0, se, torch.ones_like(se)))[:, None])
                if ce_buf is not None:
                    z.add_(ce_buf.mul_(coefB[:, None]))
                    ce_buf = None
        else:
            z.zero_()
        z.scatter_(1, ids_c, dz_top)
        if ce_w != 0.0:
            lab = (rw[c0:c1] * (-ce_w * scale_all))[:, None] if rw is not None else \
                torch.full((rows, 1), -ce_w * scale_all, dtype=cd, device=dev)
            z.scatter_add_(1, y[c0:c1, None], lab)
        # --- stage 5: GEMMs
        if need_dh:
            out = dh[c0:c1] if all_kept else dh_kept[c0:c1]
            if use_triton:
                _triton_mm(z, weight, out)
            else:
                if out.dtype == cd:
                    torch.mm(z, Wm, out=out)
                else:
                    out.copy_(torch.mm(z, Wm))
        if need_dw:
            if use_triton:
                _triton_mm(z.t(), h_c, dW, accumulate=c0 > 0)
            elif c0 == 0:
                torch.mm(z.t(), h_c if h_c.dtype == cd else h_c.to(cd), out=dW)
            else:
                dW.addmm_(z.t(), h_c if h_c.dtype == cd else h_c.to(cd))
        if need_db:
            db += z.sum(dim=0)
        del z

    del zbuf
    if all_kept:
        loss_tok = loss_kept
    else:
        loss_tok.index_copy_(0, idx, loss_kept)
        if need_dh:
            dh.index_copy_(0, idx, dh_kept)
    return loss_tok, dh, dW, db


def _reduce(loss_tok, labels, cfg: _Cfg, out_dtype):
    if cfg.reduction == "none":
        return loss_tok.to(out_dtype)
    total = loss_tok.sum()
    if cfg.reduction == "mean":
        n = int((labels != cfg.ignore_index).sum()) if labels is not None else loss_tok.numel()
        total = total / max(n, 1)
    return total.to(out_dtype)


class TopKKLFunction(torch.autograd.Function):
    """Fused top-k KL: forward computes the loss and the gradients (chunked, no [N, V] tensor).

    forward(hidden [N, H], weight [V, H], bias [V] or None, topk_ids [N, K] int32/int64, topk_logprobs [N, K]
    fp16/fp32, tail_logmass [N] fp32 or None, labels [N] int64 or None, cfg) -> loss: scalar, or [N] for "none".
    Kept on ctx: dh [N, H] (hidden.dtype), dW [V, H] (fp32 accumulation, stored in weight.dtype), db [V]; handed
    to autograd (scaled in place by the incoming gradient) by the first backward.
    backward(grad_loss: scalar or [N]) -> (dh, dW, db, None...).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg):
        need_dh = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1]
        need_db = bias is not None and ctx.needs_input_grad[2]
        loss_tok, dh, dW, db = _compute(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg,
                                        need_dh, need_dw, need_db)
        out_dtype = torch.float64 if loss_tok.dtype == torch.float64 else torch.float32
        ctx.cfg = cfg
        ctx.grads = (dh, None if dW is None else dW.to(weight.dtype), None if db is None else db.to(bias.dtype))
        # references only (no copies): used if backward runs twice or "none" gets per-row weights
        ctx.save_for_backward(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels)
        return _reduce(loss_tok, labels, cfg, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        cfg = ctx.cfg
        hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None  # hand the tensors over: autograd then stores them as .grad, no copy
        wants = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        row_weight = None
        if cfg.reduction == "none":
            kept = grad_out[labels != cfg.ignore_index] if labels is not None else grad_out
            if kept.numel() and not bool((kept == kept[0]).all()):
                row_weight = grad_out.detach()
            else:
                grad_out = kept[0] if kept.numel() else grad_out.new_zeros(())
        if grads is None or row_weight is not None:  # second backward (retain_graph) or per-row weights: recompute
            _, dh, dW, db = _compute(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg,
                                     *wants, row_weight=row_weight)
            dW = None if dW is None else dW.to(weight.dtype)
            db = None if db is None else db.to(bias.dtype)
            if row_weight is not None:
                return dh, dW, db, None, None, None, None, None
        else:
            dh, dW, db = grads
        if not (grad_out.numel() == 1 and float(grad_out) == 1.0):
            go = grad_out.reshape(())
            dh = None if dh is None else dh.mul_(go.to(dh.dtype))
            dW = None if dW is None else dW.mul_(go.to(dW.dtype))
            db = None if db is None else db.mul_(go.to(db.dtype))
        return dh, dW, db, None, None, None, None, None


def topk_kl_loss(hidden, weight, topk_ids, topk_logprobs, tail_logmass=None, labels=None, bias=None, *,
                 loss="forward_kl_tail", temperature=1.0, beta=0.5, alpha=0.1, ce_weight=0.0,
                 ignore_index=-100, reduction="mean", memory_budget_bytes=None, impl="auto"):
    """hidden [N,H], weight [V,H], topk_ids [N,K] int32/int64, topk_logprobs [N,K] fp16/fp32, tail_logmass [N] fp32 or None,
    labels [N] int64 or None (the next-token ids; rows == ignore_index get no loss and are dropped before any matmul;
    also the hard-label CE targets when ce_weight > 0), bias [V] or None.
    reduction: "mean" (over kept rows), "sum", or "none" (per-token [N], zeros at ignored rows).
    impl: "triton" | "torch" (chunked CPU path) | "auto" (triton on CUDA tensors, else torch).
    Returns the loss; differentiable w.r.t. hidden, weight and bias.

    The loss is fp32 (fp64 for fp64 inputs). See the module docstring for the formulas, temperature scaling and
    memory budget."""
    cfg = _Cfg(loss, float(temperature), float(beta), float(alpha), float(ce_weight), int(ignore_index), reduction,
               memory_budget_bytes, "auto")
    _validate(hidden, weight, topk_ids, topk_logprobs, tail_logmass, labels, bias, cfg)
    cfg = _Cfg(**{**cfg.__dict__, "impl": _resolve_impl(impl, hidden)})
    return TopKKLFunction.apply(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg)


# ----------------------------------------------------------------------------------------------------------------
# Pure-torch reference (materializes [N, V] logits; any dtype)
# ----------------------------------------------------------------------------------------------------------------


def topk_kl_reference(hidden, weight, topk_ids, topk_logprobs, tail_logmass=None, labels=None, bias=None, *,
                      loss="forward_kl_tail", temperature=1.0, beta=0.5, alpha=0.1, ce_weight=0.0,
                      ignore_index=-100, reduction="mean", memory_budget_bytes=None, impl="auto"):
    """Same arguments and result as :func:`topk_kl_loss`, computed the obvious way in the inputs' dtype.

    logits [n_kept, V] = hidden @ weight.T + bias, full log-softmax, buckets gathered from it, autograd for the
    gradients. ``memory_budget_bytes`` and ``impl`` are accepted and ignored. In float64 it is the ground truth of the
    tests; in bf16 it is the "torch at the same dtype" baseline (bf16 logits, as a naive implementation would)."""
    cfg = _Cfg(loss, float(temperature), float(beta), float(alpha), float(ce_weight), int(ignore_index), reduction,
               memory_budget_bytes, "torch")
    _validate(hidden, weight, topk_ids, topk_logprobs, tail_logmass, labels, bias, cfg)
    N = hidden.shape[0]
    V = weight.shape[0]
    K = topk_ids.shape[1]
    dt = torch.promote_types(hidden.dtype, weight.dtype)
    keep = (labels != ignore_index) if labels is not None else torch.ones(N, dtype=torch.bool, device=hidden.device)
    idx = keep.nonzero().squeeze(1)
    ids = topk_ids[idx].long()
    y = labels[idx].long() if (labels is not None and ce_weight != 0.0) else None
    _check_ids(ids, y, V, check_labels=y is not None)
    logits = hidden[idx].to(dt) @ weight.to(dt).t()
    if bias is not None:
        logits = logits + bias.to(dt)
    T = float(temperature)
    s = logits / T
    logq = torch.log_softmax(s, dim=-1)
    logq_top = logq.gather(1, ids)
    has_tail = K < V
    logp_top = topk_logprobs[idx].to(dt)
    if has_tail:
        masked = s.scatter(1, ids, float("-inf"))
        logq_tail = torch.logsumexp(masked, dim=-1) - torch.logsumexp(s, dim=-1)
        if tail_logmass is not None:
            logp_tail = tail_logmass[idx].to(dt)
        else:
            tdt = torch.promote_types(dt, torch.float32)  # fp32 (fp64 for fp64 inputs), as the fused path
            logp_tail = (1.0 - logp_top.to(tdt).exp().sum(dim=1)).clamp_min(0.0).log().to(dt)
        logQ = torch.cat([logq_top, logq_tail[:, None]], dim=1)
        logP = torch.cat([logp_top, logp_tail[:, None]], dim=1)
    else:
        logQ, logP = logq_top, logp_top
    P, Q = logP.exp(), logQ.exp()
    zero = torch.zeros((), dtype=dt, device=hidden.device)

    def kl(logA, logB):  # sum_b a_b (log a_b - log b_b), 0 where a_b == 0
        return torch.where(logA.exp() > 0, logA.exp() * (logA - logB), zero).sum(dim=1)

    if loss == "forward_kl_topk":
        L = kl(logp_top - torch.logsumexp(logp_top, 1, keepdim=True), logq_top - torch.logsumexp(logq_top, 1, keepdim=True))
    elif loss == "forward_kl_tail" or (loss == "jsd" and beta == 0.0) or (loss == "skew_kl" and alpha == 0.0):
        L = kl(logP, logQ)
    elif loss == "reverse_kl" or (loss == "jsd" and beta == 1.0):
        L = kl(logQ, logP.clamp_min(LOG_P_FLOOR))
    elif loss == "jsd":
        logM = torch.logsumexp(torch.stack([logP + math.log(beta), logQ + math.log1p(-beta)]), dim=0)
        L = beta * kl(logP, logM) + (1 - beta) * kl(logQ, logM)
    else:  # skew_kl
        logM = torch.logsumexp(torch.stack([logP + math.log(alpha), logQ + math.log1p(-alpha)]), dim=0)
        L = kl(logP, logM)
    del P, Q
    row = L * (T * T)
    if ce_weight != 0.0:
        row = row + ce_weight * (torch.logsumexp(logits, dim=-1) - logits.gather(1, y[:, None]).squeeze(1))
    if reduction == "none":
        out = torch.zeros(N, dtype=row.dtype, device=row.device).index_put((idx,), row)
        return out
    total = row.sum()
    if reduction == "mean":
        total = total / max(idx.numel(), 1)
    return total
