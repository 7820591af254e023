"""The per-row "head" of the fused top-k KL op: from a chunk's gathered logits and row log-sum-exps ([C, K] and [C]
tensors, never [C, V]) to the loss per row and the per-row gradient coefficients. Shared by both backends.

The loss itself comes from its spec (kernels/losses.py); this module builds the K+1 buckets the specs read, adds
the temperature scaling, the hard-label cross-entropy and the row weights, and runs the head on row blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from kernels.losses import LossSpec


def teacher_buckets(topk_logprobs: torch.Tensor, tail_logmass: torch.Tensor | None, has_tail: bool, cd):
    """logp_top [C, K] and logp_tail [C] (or None when there is no tail bucket) in compute dtype ``cd``."""
    logp_top = topk_logprobs.to(cd)
    if not has_tail:
        return logp_top, None
    if tail_logmass is not None:
        return logp_top, tail_logmass.to(cd)
    p_tail = (1.0 - logp_top.exp().sum(dim=1)).clamp_min(0.0)
    return logp_top, p_tail.log()


class Buckets:
    """Teacher and student as (K+1)-category distributions for one block of rows (K when there is no tail).

    s_top [C, K]: tempered student logits at the teacher's top-k ids; lse_tail [C]: lse of the tempered logits over
    the non-top-k ids (-inf if that mass underflows) or None when K == V; logp_top [C, K], logp_tail [C] or None:
    teacher log-probabilities. The bucket tensors are built on first use (the top-k-only loss needs none)."""

    def __init__(self, s_top, lse_tail, logp_top, logp_tail):
        self.s_top, self.lse_tail, self.logp_top, self.logp_tail = s_top, lse_tail, logp_top, logp_tail
        self.has_tail = lse_tail is not None
        self.k = s_top.shape[1]
        self.lse_top = torch.logsumexp(s_top, dim=1)

    @cached_property
    def log_q(self) -> torch.Tensor:
        if not self.has_tail:
            return self.s_top - self.lse_top[:, None]
        lse_all = torch.logaddexp(self.lse_top, self.lse_tail)
        return torch.cat([self.s_top - lse_all[:, None], (self.lse_tail - lse_all)[:, None]], dim=1)

    @cached_property
    def log_p(self) -> torch.Tensor:
        return torch.cat([self.logp_top, self.logp_tail[:, None]], dim=1) if self.has_tail else self.logp_top

    @cached_property
    def q(self) -> torch.Tensor:
        return self.log_q.exp()

    @cached_property
    def log_q_unnormalized(self) -> torch.Tensor:
        """log q_b + lse_all, straight from the logits (no rounding through lse_all)."""
        return torch.cat([self.s_top, self.lse_tail[:, None]], dim=1) if self.has_tail else self.s_top

    def split(self, ds: torch.Tensor):
        """dL/ds per bucket [C, K+1] -> (ds_top [C, K], ds_tail [C] or None)."""
        return ds[:, :self.k], (ds[:, self.k] if self.has_tail else None)

    def from_log_q_grad(self, g: torch.Tensor):
        """From g_b = dL/d log q_b: d log q_k / d s_v = [v = k] - q_v gives dL/ds_b = g_b - G q_b, G = sum_b g_b."""
        return self.split(g - g.sum(dim=1)[:, None] * self.q)

    def no_tail_grad(self):
        return torch.zeros_like(self.lse_top) if self.has_tail else None


def ce_head(z_top, lse1_tail, z_y):
    """Hard-label CE at T = 1: (ce [C], dce_top [C, K] = softmax at the top-k, coef1 [C] = q1_tail or None)."""
    lse_top = torch.logsumexp(z_top, dim=1)
    lse_all = torch.logaddexp(lse_top, lse1_tail) if lse1_tail is not None else lse_top
    ce = lse_all - z_y
    dce_top = (z_top - lse_all[:, None]).exp()
    coef1 = (lse1_tail - lse_all).exp() if lse1_tail is not None else None
    return ce, dce_top, coef1


def finite_or_zero(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


@dataclass(frozen=True)
class HeadSettings:
    """What the head needs beyond the row tensors, fixed for one call of the op."""

    spec: LossSpec
    params: dict
    temperature: float
    ce_weight: float
    has_tail: bool
    two_temps: bool  # CE at T = 1 needs its own tail reduction (T != 1 and ce_weight != 0)
    need_grad: bool
    compute_dtype: torch.dtype
    row_scale: float  # 1/n for reduction="mean" without row weights, else 1


def head_rows(st: HeadSettings, z_top, lse_tail, lse1_tail, z_y, topk_logprobs, tail_logmass, row_weight):
    """One block of rows (every argument sliced to it; None where absent) -> (loss_row [r], dz_top [r, K],
    coef_a [r] or None, coef_b [r] or None): the loss gradient w.r.t. the (untempered) logits is dz_top at the
    top-k ids and, off the top-k, ``exp(s_v - lse_tail) * coef_a + exp(z_v - lse1_tail) * coef_b``."""
    T, ce_w = st.temperature, st.ce_weight
    logp_top, logp_tail = teacher_buckets(topk_logprobs, tail_logmass, st.has_tail, st.compute_dtype)
    s_top = z_top * (1.0 / T) if T != 1.0 else z_top
    loss, ds_top, coef_tail = st.spec.head(Buckets(s_top, lse_tail, logp_top, logp_tail), **st.params)
    loss_row = loss * (T * T)
    if ce_w != 0.0:
        ce, dce_top, coef1 = ce_head(z_top, lse1_tail, z_y)
        loss_row = loss_row + ce_w * ce
    if not st.need_grad:
        return loss_row, None, None, None
    rs = row_weight * st.row_scale if row_weight is not None else \
        torch.full((z_top.shape[0],), st.row_scale, dtype=st.compute_dtype, device=z_top.device)
    dz_top = T * ds_top
    if ce_w != 0.0:
        dz_top = dz_top + ce_w * dce_top
    dz_top = dz_top * rs[:, None]
    coef_a = coef_b = None
    if st.has_tail:
        coef_a = T * coef_tail
        if ce_w != 0.0:
            if st.two_temps:
                coef_b = ce_w * coef1 * rs
            else:
                coef_a = coef_a + ce_w * coef1
        coef_a = coef_a * rs
    return loss_row, dz_top, coef_a, coef_b


def _rows(t, a, b):
    return None if t is None else t[a:b]


def run_head(st: HeadSettings, block_rows: int, loss_out, z_top, lse_tail, lse1_tail, z_y, topk_logprobs,
             tail_logmass, row_weight):
    """`head_rows` over a chunk, `block_rows` rows at a time; the loss goes to `loss_out` [C]; returns (dz_top,
    coef_a, coef_b) for the whole chunk (None where not needed).

    Why blocks: on CPU torch runs an elementwise op on two threads above GRAIN_SIZE elements; on these [rows, K+1]
    tensors the thread hand-off costs more than the work (and a lot more on a loaded machine)."""
    args = (z_top, lse_tail, lse1_tail, z_y, topk_logprobs, tail_logmass, row_weight)
    rows = z_top.shape[0]
    if block_rows >= rows:
        loss_row, dz_top, coef_a, coef_b = head_rows(st, *args)
        loss_out[:] = loss_row
        return dz_top, coef_a, coef_b
    cd, dev, k = st.compute_dtype, z_top.device, z_top.shape[1]
    dz_top = torch.empty(rows, k, dtype=cd, device=dev) if st.need_grad else None
    coef_a = torch.empty(rows, dtype=cd, device=dev) if (st.need_grad and st.has_tail) else None
    coef_b = torch.empty(rows, dtype=cd, device=dev) if (st.need_grad and st.has_tail and st.two_temps) else None
    for a in range(0, rows, block_rows):
        b = min(rows, a + block_rows)
        parts = head_rows(st, *(_rows(t, a, b) for t in args))
        for dst, src in zip((loss_out, dz_top, coef_a, coef_b), parts):
            if dst is not None:
                dst[a:b] = src
    return dz_top, coef_a, coef_b
