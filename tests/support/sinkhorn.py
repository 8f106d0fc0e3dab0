"""A float64 reference for the Sinkhorn tests, written from the paper and independent of otface.ot."""

from __future__ import annotations

import numpy as np


def reference_sinkhorn(cost: np.ndarray, eps: float, iters: int) -> tuple[float, np.ndarray]:
    """Plain kernel-domain Sinkhorn in float64 (Eq. 7-8), uniform marginals: u^0 = 1,
    v = b / K^T u, u = a / K v. Returns (<P, C>, P) for an (n, m) cost."""
    n, m = cost.shape
    kernel = np.exp(-cost / eps)
    u = np.ones(n)
    for _ in range(iters):
        v = (1 / m) / (kernel.T @ u)
        u = (1 / n) / (kernel @ v)
    plan = u[:, None] * kernel * v[None, :]
    return float((plan * cost).sum()), plan
