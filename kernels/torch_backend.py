"""Torch backend of the fused top-k KL op: the same chunked algorithm as kernels/triton_backend.py in plain torch
(runs everywhere; the default on CPU).

Operands are cast once to the compute dtype (fp32, fp64 for fp64 inputs); one ``[chunk, V]`` logits buffer is reused
by every chunk (no fresh allocation, and page faults, per chunk). The masked row reduction leaves
``exp(s - max)`` in that buffer, so the tail gradient ``exp(s_v - lse_tail) * coef`` is one in-place scale.
"""

from __future__ import annotations

import torch

from kernels.head import finite_or_zero


class TorchStages:
    """The heavy stages of one call of the op (kernels/topk_kl.py, `_compute`), chunk by chunk, in torch."""

    @staticmethod
    def buffers(two_temps: bool) -> int:
        """fp32 [chunk, V] buffers alive at once: the logits, plus exp(z - lse1) for CE at a second temperature."""
        return 2 if two_temps else 1

    def __init__(self, weight, bias, compute_dtype, two_temps: bool, temperature: float, max_rows: int,
                 need_grad: bool):
        cd = compute_dtype
        self.cd, self.two_temps, self.temperature, self.need_grad = cd, two_temps, temperature, need_grad
        self.W = weight if weight.dtype == cd else weight.to(cd)
        self.b = None if bias is None else (bias if bias.dtype == cd else bias.to(cd))
        self.zbuf = torch.empty(max_rows, weight.shape[0], dtype=cd, device=weight.device)

    def logits(self, h_c):
        hc = h_c if h_c.dtype == self.cd else h_c.to(self.cd)
        z = self.zbuf[:h_c.shape[0]]
        if self.b is None:
            torch.mm(hc, self.W.t(), out=z)
        else:
            torch.addmm(self.b, hc, self.W.t(), out=z)
        return z

    def tail_lse(self, z):
        """z [rows, V] with the top-k columns at -inf -> (lse of the tempered row, lse of the untempered row when
        two temperatures are needed else None, state for `fill_dz`). Leaves exp(s - max) in z."""
        lse1_tail = ce_buf = None
        if self.two_temps:
            lse1_tail = torch.logsumexp(z, dim=1)
            if self.need_grad:  # exp(z - lse1), the CE part of dz
                ce_buf = z.sub(finite_or_zero(lse1_tail)[:, None]).exp_()
        if self.temperature != 1.0:
            z.mul_(1.0 / self.temperature)
        m = z.amax(dim=1)
        z.sub_(finite_or_zero(m)[:, None]).exp_()  # z <- exp(s - m): q_v / q_tail up to the row sum
        se = z.sum(dim=1)
        return m + se.log(), lse1_tail, (se, ce_buf)

    def fill_dz(self, z, lse_tail, lse1_tail, state, coef_a, coef_b):
        """z <- exp(s - lse_tail) * coef_a (+ exp(z - lse1_tail) * coef_b), in place (z holds exp(s - m))."""
        se, ce_buf = state
        z.mul_((coef_a / torch.where(se > 0, se, torch.ones_like(se)))[:, None])
        if ce_buf is not None:
            z.add_(ce_buf.mul_(coef_b[:, None]))

    def dh(self, dz, out):
        if out.dtype == self.cd:
            torch.mm(dz, self.W, out=out)
        else:
            out.copy_(torch.mm(dz, self.W))

    def add_dw(self, dz, h_c, dW, first: bool):
        hc = h_c if h_c.dtype == self.cd else h_c.to(self.cd)
        if first:
            torch.mm(dz.t(), hc, out=dW)
        else:
            dW.addmm_(dz.t(), hc)
