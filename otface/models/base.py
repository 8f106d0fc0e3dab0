"""The backbone protocol shared by every model family, and the backbone registry.

A backbone maps an aligned face crop ``(N, 3, S, S)`` (``S`` = ``input_size``, 112 by default)
to an embedding ``(N, E)``. It is a stem, an ordered list of named *stages* and a head:

    x -> stem -> stage_1 -> ... -> stage_k -> head -> embedding

:meth:`Backbone.forward_features` returns the embedding together with any of the stage outputs,
from one forward pass; the OT loss reads its feature maps from there. :meth:`Backbone.forward_stages`
runs the stem and stages alone, at any input side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from torch import Tensor, nn

from otface.registry import Registry

__all__ = ["BACKBONES", "Backbone", "conv_out_size"]


class Backbone(nn.Module, ABC):
    """Base class of all backbones.

    Subclasses set :attr:`stage_names` and, in ``__init__``, ``self._stage_geometry`` (for each
    stage, in order: its channel count and how many stride-2 convolutions precede its output),
    and implement :meth:`forward_stem`, :meth:`stage_blocks` and :meth:`forward_head`.

    Attributes:
        embedding_size: E, the width of the embedding.
        input_size: S, the side of the square input the head was built for.
        stage_names: the stage names, from the input side to the head.
    """

    stage_names: tuple[str, ...] = ()

    def __init__(self, embedding_size: int, input_size: int) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self._stage_geometry: dict[str, tuple[int, int]] = {}

    @abstractmethod
    def forward_stem(self, x: Tensor) -> Tensor:
        """The layers before the first stage: ``(N, 3, S', S') -> (N, C0, h0, w0)``, any side S'."""

    @abstractmethod
    def stage_blocks(self) -> list[tuple[str, Sequence[nn.Module]]]:
        """Each stage name with the modules it applies in order, from the input side."""

    @abstractmethod
    def forward_head(self, x: Tensor) -> Tensor:
        """The layers after the last stage: last stage output ``-> (N, E)``."""

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of faces: ``(N, 3, S, S) -> (N, E)``."""
        embedding, _ = self.forward_features(x, ())
        return embedding

    def forward_features(
        self, x: Tensor, stages: Sequence[str] | str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Embed ``x`` and return the named stage outputs of the same pass.

        Args:
            x: ``(N, 3, S, S)`` float images.
            stages: stage names (or one name), each one of :attr:`stage_names`.

        Returns:
            ``(embedding (N, E), {name: feature map (N, C, h, w)})``, the dict in the order asked.

        Raises:
            ValueError: for an unknown stage name, or an input of the wrong shape.
        """
        self._check_input(x)
        x, maps = self.forward_stages(x, stages)
        return self.forward_head(x), maps

    def forward_stages(
        self, x: Tensor, stages: Sequence[str] | str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The stem and the stages, without the head: any square side, not only :attr:`input_size`.

        Args:
            x: ``(N, 3, S', S')`` float images, S' any side the stages accept
                (:meth:`stage_shapes` gives their outputs' shapes).
            stages: stage names (or one name), each one of :attr:`stage_names`.

        Returns:
            ``(last stage output (N, C, h, w), {name: feature map (N, C, h, w)})``, the dict in
            the order asked.

        Raises:
            ValueError: for an unknown stage name.
        """
        wanted = self._check_stages(stages)
        maps: dict[str, Tensor] = {}
        x = self.forward_stem(x)
        for name, blocks in self.stage_blocks():
            for block in blocks:
                x = block(x)
            if name in wanted:
                maps[name] = x
        return x, {name: maps[name] for name in wanted}

    def stage_shapes(self, input_size: int | None = None) -> dict[str, tuple[int, int, int]]:
        """``{stage name: (C, h, w)}`` for a square input of side ``input_size``.

        ``input_size`` defaults to the model's own. Other sizes describe the convolutional stages
        only: the head accepts the size it was built for.
        """
        size = self.input_size if input_size is None else input_size
        shapes = {}
        for name, (channels, downsamples) in self._stage_geometry.items():
            side = conv_out_size(size, downsamples)
            shapes[name] = (channels, side, side)
        return shapes

    def _check_stages(self, stages: Sequence[str] | str) -> tuple[str, ...]:
        names = (stages,) if isinstance(stages, str) else tuple(stages)
        unknown = [name for name in names if name not in self.stage_names]
        if unknown:
            raise ValueError(
                f"unknown stage(s) {', '.join(map(repr, unknown))} for {type(self).__name__}; "
                f"valid stages: {', '.join(self.stage_names)}"
            )
        return tuple(dict.fromkeys(names))

    def _check_input(self, x: Tensor) -> None:
        expected = (3, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} was built for input (N, 3, {self.input_size}, "
                f"{self.input_size}), got {tuple(x.shape)}; pass input_size=... when building it "
                "for another square size"
            )


BACKBONES: Registry[Backbone] = Registry("backbone")


def conv_out_size(size: int, downsamples: int) -> int:
    """Side after ``downsamples`` stride-2 convolutions (3x3 padded by 1, or 1x1).

    Each one maps a side n to ``ceil(n/2)``.
    """
    for _ in range(downsamples):
        size = (size + 1) // 2
    return size
