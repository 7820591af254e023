"""Fused distillation kernels (Triton) with their torch references. Depends on torch and triton only."""
