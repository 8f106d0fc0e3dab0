"""ElasticFace (Boutros et al., CVPRW 2022): ArcFace / CosFace with a margin drawn per sample from N(m, sigma)."""

from __future__ import annotations

import math

import torch

from otface.heads.arcface import additive_angular_margin
from otface.heads.base import HEADS, MarginHead


class ElasticMargin(MarginHead):
    """Base of the ElasticFace heads: the margin of each sample is drawn from N(margin, sigma).

    In training mode every call draws a new margin per sample (ElasticFace Eq. 6-7) from torch's
    global RNG, so ``torch.manual_seed`` reproduces a run, or from ``generator`` when one is given
    (the draw is made on its device). In eval mode every sample gets the mean margin m, so the
    logits are deterministic and equal ArcFace's / CosFace's with margin m.

    The "+" variants (``plus = True``) sort the drawn margins and hand them out by rank: the sample
    with the lowest target cosine (the farthest from its class centre) gets the largest margin, the
    next lowest the next largest, and so on, so the margin is non-increasing in cos(theta_y). The
    authors' code instead indexes the sorted margins with the sort permutation of the cosines
    (``margin[argsort(cos, descending)]``), which is not a monotone assignment; we follow the rule
    the paper states. Ranks are taken within the batch -- with the head sharded over processes
    (:class:`~otface.heads.partial_fc.PartialFC`), the global batch; the authors' code ranks each
    process's own batch.

    The margins are constants for autograd; the ranking uses the detached cosines.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.
        margin: m, the mean of the margin distribution.
        sigma: the standard deviation of the margin distribution, >= 0.
        generator: optional torch.Generator for the draws instead of the global RNG.
    """

    plus: bool = False

    def __init__(self, embedding_size: int, num_classes: int, scale: float, margin: float, sigma: float,
                 generator: torch.Generator | None = None) -> None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
        super().__init__(embedding_size, num_classes, scale)
        self.margin = float(margin)
        self.sigma = float(sigma)
        self.generator = generator

    def draw_margins(self, cos_target: torch.Tensor) -> torch.Tensor:
        """(N,) target cosines -> (N,) margins: drawn (and for "+", assigned by rank) in training, m in eval."""
        if not self.training:
            return torch.full_like(cos_target, self.margin)
        device = cos_target.device if self.generator is None else self.generator.device
        margins = torch.normal(self.margin, self.sigma, cos_target.shape, generator=self.generator,
                               dtype=cos_target.dtype, device=device).to(cos_target.device)
        if self.plus:
            hardest_first = torch.argsort(cos_target.detach(), stable=True)
            largest_first = torch.sort(margins, descending=True).values
            margins = torch.empty_like(margins).index_copy_(0, hardest_first, largest_first)
        return margins

    def apply_margins(self, cos_target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        """(N,) target cosines, (N,) margins -> (N,) margin-adjusted target cosines."""
        raise NotImplementedError

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        return self.apply_margins(cos_target, self.draw_margins(cos_target))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}, sigma={self.sigma}"


@HEADS.register("elastic_arc")
class ElasticArcFace(ElasticMargin):
    """ElasticFace-Arc (Eq. 6): target s * cos(theta_y + m_i), m_i ~ N(m, sigma), ArcFace's fallback past pi.

    The authors' code has no fallback (its target grows again once theta_y + m_i > pi).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 sigma: float = 0.05, generator: torch.Generator | None = None) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, sigma, generator)

    def apply_margins(self, cos_target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return additive_angular_margin(cos_target, margins)


@HEADS.register("elastic_cos")
class ElasticCosFace(ElasticMargin):
    """ElasticFace-Cos (Eq. 7): target s * (cos(theta_y) - m_i), m_i ~ N(m, sigma)."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
                 sigma: float = 0.05, generator: torch.Generator | None = None) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, sigma, generator)

    def apply_margins(self, cos_target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return cos_target - margins


@HEADS.register("elastic_arc_plus")
class ElasticArcFacePlus(ElasticArcFace):
    """ElasticFace-Arc+: ElasticFace-Arc with the margins assigned by rank; sigma = 0.0175 (authors' config)."""

    plus = True

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 sigma: float = 0.0175, generator: torch.Generator | None = None) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, sigma, generator)


@HEADS.register("elastic_cos_plus")
class ElasticCosFacePlus(ElasticCosFace):
    """ElasticFace-Cos+: ElasticFace-Cos with the margins assigned by rank; sigma = 0.02 (authors' config)."""

    plus = True

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
                 sigma: float = 0.02, generator: torch.Generator | None = None) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, sigma, generator)
