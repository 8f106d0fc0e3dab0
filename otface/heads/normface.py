"""NormFace (Wang et al., ACM MM 2017): softmax on s * cos(theta), normalised features and weights."""

from __future__ import annotations

import torch
from torch import nn

from otface.heads.base import HEADS, MarginHead


@HEADS.register("normface")
class NormFace(MarginHead):
    """s * cos(theta_j) for every class, no margin.

    The paper trains s by back-propagation (its released prototxt: a learnable ``Scale`` layer
    initialised at 10) and shows that a small s bounds the loss from below, so a fixed s must grow
    with the number of classes. The default here is a fixed s = 30, the value of the same authors'
    AM-Softmax; ``learn_scale=True`` gives the paper's variant, s then starting at ``scale``.
    A learned s should be kept out of weight decay (put it in a parameter group without it).

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, fixed, or the initial value when learned.
        learn_scale: make s an ``nn.Parameter`` (then in ``state_dict`` as ``scale``).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0,
                 learn_scale: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.learn_scale = learn_scale
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))

    def extra_repr(self) -> str:
        scale = self.scale.item() if self.learn_scale else self.scale
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"scale={scale:g}, learn_scale={self.learn_scale}")
