"""A float64 reference for the Sinkhorn tests, written from the paper and independent of otface.ot."""

from __future__ import annotations

import numpy as np


def reference_sinkhorn(cost: np.ndarray, eps: float, iters: int, omega: float = 1.0) -> tuple[float, np.ndarray]:
    """Kernel-domain Sinkhorn in float64 (Eq. 7-8), uniform marginals: u^0 = 1, v = b / K^T u,
    u = a / K v, each update over-relaxed, u <- u^(1 - omega) (a / K v)^omega, after the first v
    (omega = 1: plain Sinkhorn). Returns (<P, C>, P) for an (n, m) cost."""
    n, m = cost.shape
    kernel = np.exp(-cost / eps)
    u, v = np.ones(n), np.ones(m)
    for t in range(iters):
        v_new = (1 / m) / (kernel.T @ u)
        v = v_new if t == 0 else v ** (1 - omega) * v_new ** omega
        u = u ** (1 - omega) * ((1 / n) / (kernel @ v)) ** omega
    plan = u[:, None] * kernel * v[None, :]
    return float((plan * cost).sum()), plan
