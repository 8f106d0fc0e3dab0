"""The OTFace optimal-transport loss over hard sample groups (papers/otface.txt Eq. 6, 9; SPEC §1).

    L_OT = sum_h [OT(M(a_h), M(p_h)) - OT(M(a_h), M(n_h)) + margin]_+          # Eq. 9

Hard groups (a, p, n) are mined on the detached embeddings (Algorithm 1, :mod:`.mining`). A
feature map f_conv(x) (C, h, w) is read as n = h*w points of R^C with mass 1/n each (Eq. 6), the
cost between two maps is the cosine distance between their points, and OT is the entropic
Sinkhorn value <P, C> (:mod:`otface.ot.sinkhorn`). Each distinct unordered pair {i, j} of samples
is solved once, as OT(M(min), M(max)), ``chunk_size`` problems at a time: OT is symmetric at
convergence, and after a finite number of iterations the two orientations differ by no more than
the Sinkhorn convergence error. The gradient reaches the feature maps only; the embeddings get
none from this loss.

Memory: under the (default) envelope gradient each solved problem keeps its gradients to the
points, 2 * h*w * C floats, until the backward pass; the transient peak of a chunk is about
2 * chunk_size * (h*w)^2 floats (cost and plan). The unrolled gradient keeps each problem's
kernel (h*w)^2 plus O(iters * h*w) floats, or O(iters) plans when a small eps forces the log
domain, and runs several times slower (benchmarks/bench_sinkhorn.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from otface.losses.mining import mine_hard_groups, unique_pairs
from otface.options import OT_MAX_ITERS, OT_OMEGA, OT_TOL, REDUCTIONS
from otface.ot.sinkhorn import check_solver_args, cosine_sinkhorn


class OTLossOutput(NamedTuple):
    """The loss (scalar tensor), the number of hard groups and of distinct OT problems solved."""

    loss: Tensor
    num_groups: int
    num_pairs: int


class OTLoss(nn.Module):
    """L_OT of Eq. 9 over the hard groups of a mini-batch.

    Args:
        eps, iters, tol, grad, omega: Sinkhorn settings (:func:`otface.ot.sinkhorn`; tol and omega:
            :mod:`otface.ot.schedule`); by default each problem stops once its value is estimated
            within 1e-3 (relative), over-relaxed by 1.6, after at most 500 iterations.
        margin: margin inside the hinge [.]_+ of Eq. 9 (0 in the paper).
        mining_margin: a group is hard when cos(a, p) + mining_margin < cos(a, n) (Eq. 1).
        max_groups: keep only this many hardest groups (None: all).
        reduction: "sum" over groups (Eq. 9) or "mean".
        chunk_size: OT problems solved at once (bounds the transient memory).
    """

    def __init__(
        self,
        eps: float = 0.05,
        iters: int = OT_MAX_ITERS,
        tol: float | None = OT_TOL,
        grad: str = "envelope",
        omega: float = OT_OMEGA,
        margin: float = 0.0,
        mining_margin: float = 0.0,
        max_groups: int | None = None,
        reduction: str = "sum",
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        check_solver_args(eps, iters, tol, grad, omega)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if max_groups is not None and (isinstance(max_groups, bool) or not isinstance(max_groups, int)
                                       or max_groups < 1):
            raise ValueError(f"max_groups must be None or an integer >= 1, got {max_groups!r}")
        self.eps, self.iters, self.tol, self.grad, self.omega = eps, iters, tol, grad, omega
        self.margin, self.mining_margin, self.max_groups = margin, mining_margin, max_groups
        self.reduction, self.chunk_size = reduction, chunk_size

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, iters={self.iters}, tol={self.tol}, grad={self.grad!r}, omega={self.omega}, "
                f"margin={self.margin}, "
                f"mining_margin={self.mining_margin}, max_groups={self.max_groups}, "
                f"reduction={self.reduction!r}, chunk_size={self.chunk_size}")

    def pair_values(self, points: Tensor, pairs: Tensor) -> Tensor:
        """OT values (Q,) float32 between points[pairs[:, 0]] and points[pairs[:, 1]] (Eq. 6), where
        points is (N, n, C), in chunks of ``chunk_size`` problems."""
        # index_select, not points[index]: its backward (index_add) sums in a fixed order on every
        # thread count, where advanced indexing's (index_put with accumulate) does not on the CPU
        values = [
            cosine_sinkhorn(points.index_select(0, chunk[:, 0]), points.index_select(0, chunk[:, 1]),
                            self.eps, self.iters, self.tol, self.grad, omega=self.omega)
            for chunk in pairs.split(self.chunk_size)
        ]
        return torch.cat(values).float() if values else points.new_zeros(0, dtype=torch.float32)

    def forward(self, feature_maps: Tensor, embeddings: Tensor, labels: Tensor) -> OTLossOutput:
        """feature_maps (N, C, h, w), embeddings (N, E), labels (N,) -> OTLossOutput (Eq. 9)."""
        if feature_maps.ndim != 4:
            raise ValueError(f"feature_maps must be (N, C, h, w), got shape {tuple(feature_maps.shape)}")
        if not feature_maps.is_floating_point():
            raise TypeError(f"feature_maps must be a float tensor, got {feature_maps.dtype}")
        if embeddings.ndim != 2 or embeddings.shape[0] != feature_maps.shape[0]:
            raise ValueError(f"embeddings must be (N, E) with N = {feature_maps.shape[0]} (the feature maps' batch), "
                             f"got shape {tuple(embeddings.shape)}")
        groups = mine_hard_groups(embeddings, labels, self.max_groups, self.mining_margin)
        if len(groups) == 0:  # a zero that keeps the graph connected (e.g. for DDP)
            return OTLossOutput(feature_maps.sum(dtype=torch.float32) * 0.0, 0, 0)
        pairs, ap_index, an_index = unique_pairs(groups)
        points = feature_maps.flatten(2).transpose(1, 2)  # (N, h*w, C), Eq. 6
        values = self.pair_values(points, pairs)
        ap, an = values.index_select(0, ap_index), values.index_select(0, an_index)
        hinge = torch.relu(ap - an + self.margin)  # Eq. 9
        loss = hinge.sum() if self.reduction == "sum" else hinge.mean()
        return OTLossOutput(loss, len(groups), len(pairs))
