"""Fused top-k KL distillation: LM head + loss + gradients, exact tail bucket, never the full ``[N, V]`` logits.

One op, three implementations that compute the same numbers:

* ``impl="triton"`` -- Triton kernels (kernels/triton_backend.py: logits GEMM with fp32 accumulation, masked row
  log-sum-exp, the dz pass, and the dh / dW GEMMs with fp32 accumulation), one chunk of rows at a time. The default
  on CUDA tensors. On CPU it runs under ``TRITON_INTERPRET=1`` (set before this module is imported), which is how CI
  tests it.
* ``impl="torch"`` -- the same chunked algorithm in plain torch (kernels/torch_backend.py; runs everywhere; the
  default on CPU).
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

Losses (``loss=``, one spec each in kernels/losses.py), all over the K+1 buckets unless stated, ``P`` teacher buckets, ``Q`` student buckets:

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
this is ``dz = (P - r Q) q + [v in S] (r q_v - p_v)`` (docs/kernels.md): for ``v not in S``,
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

Per chunk of kept rows (`_compute`; the backend runs the three heavy stages): (1) ``z [chunk, V]`` fp32 logits;
(2) gather the K student logits (and the label logit), then set the top-k columns to ``-inf``; (3) the row
log-sum-exp of the masked row -> ``lse_tail`` (and the T = 1 one for CE); (4) the per-row head on ``[chunk, K+1]``
tensors (kernels/head.py with the loss's spec, torch, shared by both backends); (5) dz in place in the buffer, the
top-k (and label) columns written by a scatter; (6) ``dh = dz W`` and ``dW += dz^T h``.

Reductions: ``"mean"`` divides by the number of kept rows (0 when every row is ignored -- not NaN -- with zero
gradients), ``"sum"`` sums over kept rows (what a trainer that divides by a global token count wants), ``"none"``
returns the per-token loss ``[N]`` with zeros at ignored rows. For ``"mean"``/``"sum"`` the backward only scales
the stored gradients; for ``"none"`` it does too when the incoming gradient is the same on every kept row, and
otherwise recomputes the gradients with per-row weights (one more pass).

Errors: a teacher id outside ``[0, V)`` (tokenizer/vocab mismatch between teacher and student), a label outside
``[0, V)``, duplicate ids within a row, or a shape mismatch raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kernels.head import HeadSettings, run_head
from kernels.losses import LOG_P_FLOOR, LOSSES, PARAMS, ReferenceBuckets, check_params, loss_spec
from kernels.torch_backend import TorchStages
from kernels.triton_backend import HAS_TRITON, TritonStages, interpret_mode, kernels_interpreted

__all__ = ["LOSSES", "LOG_P_FLOOR", "HAS_TRITON", "topk_kl_loss", "topk_kl_reference", "TopKKLFunction",
           "choose_chunk_rows"]

REDUCTIONS = ("mean", "sum", "none")

# Transient memory for the [chunk, V] fp32 buffer(s). CUDA: at V = 128256 this gives 2048-row chunks (4 chunks at
# N = 8192, each one pass over W and one read-modify-write of the fp32 dW), well under the 2 GB transient goal.
# CPU: 512-row chunks at V = 32768 (a 64 MiB buffer): the [512, H] x [H, V] logits GEMM runs as fast per row as the
# full-N one, while 256-row chunks cost ~15% more on it; extra memory stays < 1/20 of naive (bench/kernel.py).
DEFAULT_BUDGET_CUDA = 1 << 30
DEFAULT_BUDGET_CPU = 64 << 20
# torch's CPU elementwise ops go multi-threaded above at::internal::GRAIN_SIZE (32768) elements; the per-row head
# works on row blocks of at most this many elements so that its small ops stay single-threaded.
_SERIAL_ELEMS = 32768
# Row chunks are rounded down to a multiple of this when larger (GEMM-friendly), never below 1 row.
CHUNK_ROW_MULTIPLE = 64
_kernels_interpreted = kernels_interpreted  # the tests ask whether the Triton path can run on CPU here


# ----------------------------------------------------------------------------------------------------------------
# Configuration, validation, chunking
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cfg:
    loss: str
    temperature: float
    params: tuple[tuple[str, float], ...]  # the loss parameters (kernels.losses.PARAMS), every one of them
    ce_weight: float
    ignore_index: int
    reduction: str
    memory_budget_bytes: int | None
    impl: str  # "auto" until resolved to "triton" or "torch"

    def loss_params(self) -> dict[str, float]:
        """The parameters the chosen loss's head and reference take."""
        values = dict(self.params)
        return {name: values[name] for name in loss_spec(self.loss).params}


def _make_cfg(loss, temperature, beta, alpha, extra_params, ce_weight, ignore_index, reduction, memory_budget_bytes,
              impl) -> _Cfg:
    params = {name: float(p.default) for name, p in PARAMS.items()}
    params.update({"beta": float(beta), "alpha": float(alpha)})
    params.update({name: float(value) for name, value in extra_params.items()})
    return _Cfg(loss, float(temperature), tuple(params.items()), float(ce_weight), int(ignore_index), reduction,
                memory_budget_bytes, impl)


def _resolve_impl(impl: str, hidden: torch.Tensor) -> str:
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "auto":
        return "triton" if (hidden.is_cuda and HAS_TRITON) else "torch"
    if impl == "triton":
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' but triton is not importable; use impl='torch'")
        if not hidden.is_cuda and not (interpret_mode() and kernels_interpreted()):
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
    loss_spec(cfg.loss)
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
    check_params(dict(cfg.params))


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
# The chunked driver: one loop for both backends; the backend runs the heavy stages, kernels/head.py the rest
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
    rw = sel(row_weight).to(cd) if row_weight is not None else None
    settings = HeadSettings(spec=loss_spec(cfg.loss), params=cfg.loss_params(), temperature=T, ce_weight=ce_w,
                            has_tail=has_tail, two_temps=two_temps, need_grad=need_grad, compute_dtype=cd,
                            row_scale=1.0 / n if (cfg.reduction == "mean" and row_weight is None) else 1.0)

    Stages = TritonStages if cfg.impl == "triton" else TorchStages
    budget = cfg.memory_budget_bytes
    if budget is None:
        budget = DEFAULT_BUDGET_CUDA if hidden.is_cuda else DEFAULT_BUDGET_CPU
    C = choose_chunk_rows(n, V, budget * (4 / (8 if cd == torch.float64 else 4)), Stages.buffers(two_temps))
    stages = Stages(weight, bias, cd, two_temps, T, min(C, n), need_grad)
    loss_kept = torch.empty(n, dtype=cd, device=dev)
    dh_kept = torch.empty(n, H, dtype=hidden.dtype, device=dev) if (need_dh and not all_kept) else None
    block_rows = C if hidden.is_cuda else max(1, _SERIAL_ELEMS // (K + 2))

    for c0 in range(0, n, C):
        c1 = min(n, c0 + C)
        rows = slice(c0, c1)
        h_c = h[rows]
        ids_c = ids[rows]
        # (1) fp32 logits of the chunk [rows, V]; (2) the K student logits (and the label's), top-k columns -> -inf
        z = stages.logits(h_c)
        z_top = z.gather(1, ids_c)
        z_y = z.gather(1, y[rows, None]).squeeze(1) if y is not None else None
        z.scatter_(1, ids_c, float("-inf"))
        # (3) masked row reductions -> lse of the tail (tempered, and at T = 1 for CE)
        lse_tail, lse1_tail, tail_state = stages.tail_lse(z)
        if not has_tail:
            lse_tail = lse1_tail = None
        elif not two_temps:
            lse1_tail = lse_tail if ce_w != 0.0 else None
        # (4) the per-row head (tiny tensors): loss and per-row dz coefficients
        dz_top, coef_a, coef_b = run_head(settings, block_rows, loss_kept[rows], z_top, lse_tail, lse1_tail, z_y,
                                          lp[rows], tail[rows] if tail is not None else None,
                                          rw[rows] if rw is not None else None)
        if not need_grad:
            continue
        # (5) dz in the logits buffer
        if has_tail:
            stages.fill_dz(z, lse_tail, lse1_tail, tail_state, coef_a, coef_b)
        else:
            z.zero_()
        del tail_state
        z.scatter_(1, ids_c, dz_top)
        if ce_w != 0.0:
            scale = settings.row_scale
            lab = (rw[rows] * (-ce_w * scale))[:, None] if rw is not None else \
                torch.full((c1 - c0, 1), -ce_w * scale, dtype=cd, device=dev)
            z.scatter_add_(1, y[rows, None], lab)
        # (6) GEMMs
        if need_dh:
            stages.dh(z, dh[rows] if all_kept else dh_kept[rows])
        if need_dw:
            stages.add_dw(z, h_c, dW, first=c0 == 0)
        if need_db:
            db += z.sum(dim=0)
        del z

    del stages
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
                 loss="forward_kl_tail", temperature=1.0, beta=PARAMS["beta"].default, alpha=PARAMS["alpha"].default,
                 ce_weight=0.0, ignore_index=-100, reduction="mean", memory_budget_bytes=None, impl="auto",
                 **loss_params):
    """hidden [N,H], weight [V,H], topk_ids [N,K] int32/int64, topk_logprobs [N,K] fp16/fp32, tail_logmass [N] fp32 or None,
    labels [N] int64 or None (the next-token ids; rows == ignore_index get no loss and are dropped before any matmul;
    also the hard-label CE targets when ce_weight > 0), bias [V] or None.
    loss: one of LOSSES; beta, alpha (and any further parameter a loss spec declares in kernels.losses.PARAMS, as a
    keyword): the loss parameters, each checked against its declared range whichever loss is chosen.
    reduction: "mean" (over kept rows), "sum", or "none" (per-token [N], zeros at ignored rows).
    impl: "triton" | "torch" (chunked CPU path) | "auto" (triton on CUDA tensors, else torch).
    Returns the loss; differentiable w.r.t. hidden, weight and bias.

    The loss is fp32 (fp64 for fp64 inputs). See the module docstring for the formulas, temperature scaling and
    memory budget."""
    cfg = _make_cfg(loss, temperature, beta, alpha, loss_params, ce_weight, ignore_index, reduction,
                    memory_budget_bytes, "auto")
    _validate(hidden, weight, topk_ids, topk_logprobs, tail_logmass, labels, bias, cfg)
    cfg = replace(cfg, impl=_resolve_impl(impl, hidden))
    return TopKKLFunction.apply(hidden, weight, bias, topk_ids, topk_logprobs, tail_logmass, labels, cfg)


# ----------------------------------------------------------------------------------------------------------------
# Pure-torch reference (materializes [N, V] logits; any dtype)
# ----------------------------------------------------------------------------------------------------------------


def topk_kl_reference(hidden, weight, topk_ids, topk_logprobs, tail_logmass=None, labels=None, bias=None, *,
                      loss="forward_kl_tail", temperature=1.0, beta=PARAMS["beta"].default,
                      alpha=PARAMS["alpha"].default, ce_weight=0.0, ignore_index=-100, reduction="mean",
                      memory_budget_bytes=None, impl="auto", **loss_params):
    """Same arguments and result as :func:`topk_kl_loss`, computed the obvious way in the inputs' dtype.

    logits [n_kept, V] = hidden @ weight.T + bias, full log-softmax, buckets gathered from it, the loss's reference
    formula (kernels/losses.py), autograd for the gradients. ``memory_budget_bytes`` and ``impl`` are accepted and
    ignored. In float64 it is the ground truth of the tests; in bf16 it is the "torch at the same dtype" baseline
    (bf16 logits, as a naive implementation would)."""
    cfg = _make_cfg(loss, temperature, beta, alpha, loss_params, ce_weight, ignore_index, reduction,
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
    logp_top = topk_logprobs[idx].to(dt)
    if K < V:  # the tail bucket: everything off the top-k
        masked = s.scatter(1, ids, float("-inf"))
        logq_tail = torch.logsumexp(masked, dim=-1) - torch.logsumexp(s, dim=-1)
        if tail_logmass is not None:
            logp_tail = tail_logmass[idx].to(dt)
        else:
            tdt = torch.promote_types(dt, torch.float32)  # fp32 (fp64 for fp64 inputs), as the fused path
            logp_tail = (1.0 - logp_top.to(tdt).exp().sum(dim=1)).clamp_min(0.0).log().to(dt)
        buckets = ReferenceBuckets(log_p=torch.cat([logp_top, logp_tail[:, None]], dim=1),
                                   log_q=torch.cat([logq_top, logq_tail[:, None]], dim=1),
                                   logp_top=logp_top, logq_top=logq_top)
    else:
        buckets = ReferenceBuckets(log_p=logp_top, log_q=logq_top, logp_top=logp_top, logq_top=logq_top)
    row = loss_spec(loss).reference(buckets, **cfg.loss_params()) * (T * T)
    if ce_weight != 0.0:
        row = row + ce_weight * (torch.logsumexp(logits, dim=-1) - logits.gather(1, y[:, None]).squeeze(1))
    if reduction == "none":
        return torch.zeros(N, dtype=row.dtype, device=row.device).index_put((idx,), row)
    total = row.sum()
    if reduction == "mean":
        total = total / max(idx.numel(), 1)
    return total
