"""Center loss (Wen et al., ECCV 2016; SPEC §3).

    L_C = 1/2 mean_i ||x_i - c_{y_i}||^2                                       # Eq. 2
    c_j <- c_j - alpha * delta c_j,
    delta c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])             # Eq. 4, Algorithm 1

Eq. 2 sums over the m samples of the mini-batch; the authors' Caffe layer (ydwen/caffe-face)
divides by the batch size, and so do we, so that the weight lambda does not depend on it. The
centers are a buffer, moved by the update rule only (in training mode, after the loss is taken
with the old centers), never by the optimizer: the loss gives them no gradient.

Under torch.distributed (data parallelism), the update uses the whole global batch: the detached
embeddings and labels of all processes are gathered first, so that every process applies the same
update and holds the same centers. Local batch sizes must be equal on all processes (the batch
samplers guarantee it). The loss value stays the mean over the local batch, like the other losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from otface.losses.base import AUX_LOSSES
from otface.losses.checks import checked_batch, mean_or_zero
from otface.parallel import all_gathered


@AUX_LOSSES.register("center")
class CenterLoss(nn.Module):
    """1/2 mean_i ||x_i - c_{y_i}||^2 on the raw (unnormalised) embeddings.

    Args:
        embedding_size: E.
        num_classes: C.
        alpha: rate of the center update (paper: 0.5, in [0, 1]).

    Attributes:
        centers: (C, E) float32 buffer, initialised U(-sqrt(3/E), sqrt(3/E)) as the authors'
            Caffe "xavier" center filler.
    """

    def __init__(self, embedding_size: int, num_classes: int, alpha: float = 0.5) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"need embedding_size >= 1 and num_classes >= 1, got {embedding_size}, {num_classes}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.embedding_size, self.num_classes, self.alpha = embedding_size, num_classes, float(alpha)
        bound = math.sqrt(3.0 / embedding_size)
        self.register_buffer("centers", torch.empty(num_classes, embedding_size).uniform_(-bound, bound))

    @torch.no_grad()
    def update_centers(self, embeddings: Tensor, labels: Tensor) -> None:
        """c_j <- c_j - alpha * delta c_j for the classes j present in the batch (Eq. 4).

        (N, E) embeddings, (N,) labels: the local batch. Under torch.distributed the batches of all
        processes are gathered first (a collective: every process must call this, with the same N),
        so the update is that of the global batch on every process.
        """
        embeddings = all_gathered(embeddings.detach().to(self.centers.dtype))
        labels = all_gathered(labels)
        classes, index = labels.unique(return_inverse=True)
        counts = torch.bincount(index, minlength=len(classes)).to(self.centers.dtype)[:, None]
        sums = self.centers.new_zeros(len(classes), self.embedding_size)
        sums.index_add_(0, index, embeddings)
        centers = self.centers[classes]
        delta = (counts * centers - sums) / (1.0 + counts)
        self.centers[classes] = centers - self.alpha * delta

    def forward(self, embeddings: Tensor, labels: Tensor, head: nn.Module | None = None) -> Tensor:
        """(N, E) embeddings, (N,) labels -> scalar loss (Eq. 2, mean over the batch); in training
        mode the centers of the classes present are then updated (from the global batch under
        torch.distributed; the loss stays the local mean). ``head`` is not used."""
        x, labels = checked_batch(embeddings, labels, self.embedding_size, self.num_classes)
        with torch.autocast(x.device.type, enabled=False):
            centers = self.centers[labels].to(x.dtype)  # gathered copy: the update below leaves it as is
            loss = 0.5 * mean_or_zero((x - centers).square().sum(1))
        if self.training and len(labels):
            self.update_centers(x, labels)
        return loss

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, alpha={self.alpha}"
