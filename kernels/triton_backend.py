"""Triton backend of the fused top-k KL op: the three heavy stages of a chunk as Triton kernels.

- logits ``z = h W^T + b`` [``_mm_kernel``: tiled over V and H, fp32 accumulation, bias in the epilogue -- logits
  are never rounded to bf16];
- online max / sum-exp over the V tiles of each masked row [``_row_lse_kernel``] -> lse of the tail (and of the
  untempered row for CE at T = 1);
- dz in place in the logits buffer [``_dz_kernel``], then ``dh = dz W`` and ``dW += dz^T h`` [``_mm_kernel``, fp32
  accumulation; dz is cast to bf16 per tile for bf16 weights, as any bf16 GEMM would].

On CUDA tensors this is the default. On CPU it runs under ``TRITON_INTERPRET=1`` (set before triton is first
imported), which is how CI tests it; there the dots run in fp32 on the exact bf16 values (the interpreter's bf16
``tl.dot`` is wrong).
"""

from __future__ import annotations

import os

import torch

from kernels.head import finite_or_zero

try:  # Triton is optional: the torch backend runs everywhere.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_interpreted() -> bool:
    """Whether the kernels were decorated under TRITON_INTERPRET (then they run on CPU tensors)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # pragma: no cover
        return False
    return isinstance(_dz_kernel, InterpretedFunction)


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
    if low and not interpret_mode():  # the interpreter's tl.dot mishandles bf16: dot in fp32 on the exact values
        return (tl.bfloat16 if low[0] == torch.bfloat16 else tl.float16), False
    if torch.float64 in dts and interpret_mode():
        return tl.float64, True
    return tl.float32, True


def _mm_blocks(M, N, KD):
    if interpret_mode():  # the interpreter pays per program instance, not per element: few, large programs
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
    kw = {} if interpret_mode() else {"num_warps": warps, "num_stages": stages}
    _mm_kernel[grid](a, b, out, bias if bias is not None else out, M, N, KD,
                     a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
                     HAS_BIAS=bias is not None, ACCUMULATE=accumulate, DOT_DTYPE=dot_dtype, IEEE=ieee,
                     BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, **kw)
    return out


def _v_block(V):
    if interpret_mode():
        return min(4096, triton.next_power_of_2(V))
    return 2048



class TritonStages:
    """The heavy stages of one call of the op (kernels/topk_kl.py, `_compute`), chunk by chunk, in Triton.

    weight [V, H] and bias are read as stored (bf16 stays bf16; the GEMMs accumulate in fp32); each chunk gets a
    fresh fp32 (fp64 for fp64 inputs) ``[rows, V]`` logits buffer."""

    @staticmethod
    def buffers(two_temps: bool) -> int:
        """fp32 [chunk, V] buffers alive at once (the memory budget divides by it): the logits only."""
        return 1

    def __init__(self, weight, bias, compute_dtype, two_temps: bool, temperature: float, max_rows: int,
                 need_grad: bool):
        self.weight, self.bias, self.cd, self.two_temps = weight, bias, compute_dtype, two_temps
        self.inv_t = 1.0 / temperature
        self.V = weight.shape[0]

    def logits(self, h_c):
        z = torch.empty(h_c.shape[0], self.V, dtype=self.cd, device=h_c.device)
        return _triton_mm(h_c, self.weight.t(), z, bias=self.bias)

    def tail_lse(self, z):
        """z [rows, V] with the top-k columns at -inf -> (lse of the tempered row, lse of the untempered row when
        two temperatures are needed else None, backend state for `fill_dz`)."""
        rows = z.shape[0]
        m = torch.empty(rows, dtype=self.cd, device=z.device)
        se = torch.empty_like(m)
        m1 = torch.empty_like(m) if self.two_temps else m
        se1 = torch.empty_like(m) if self.two_temps else se
        _row_lse_kernel[(rows,)](z, m, se, m1, se1, self.V, z.stride(0), self.inv_t,
                                 TWO_TEMPS=self.two_temps, BLOCK_V=_v_block(self.V))
        return m + se.log(), ((m1 + se1.log()) if self.two_temps else None), None

    def fill_dz(self, z, lse_tail, lse1_tail, state, coef_a, coef_b):
        """z <- exp(s - lse_tail) * coef_a (+ exp(z - lse1_tail) * coef_b), in place; top-k columns become 0."""
        lse_safe = finite_or_zero(lse_tail).contiguous()
        lse1_safe = finite_or_zero(lse1_tail).contiguous() if self.two_temps else lse_safe
        BV = _v_block(self.V)
        _dz_kernel[(z.shape[0], triton.cdiv(self.V, BV))](z, lse_safe, coef_a.contiguous(), lse1_safe,
                                                          coef_b.contiguous() if self.two_temps else coef_a, self.V,
                                                          z.stride(0), self.inv_t, TWO_TEMPS=self.two_temps,
                                                          BLOCK_V=BV)

    def dh(self, dz, out):
        _triton_mm(dz, self.weight, out)

    def add_dw(self, dz, h_c, dW, first: bool):
        _triton_mm(dz.t(), h_c, dW, accumulate=not first)
