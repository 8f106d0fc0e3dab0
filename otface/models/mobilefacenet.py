"""MobileFaceNet in insightface's arcface_torch layout (``mbf``, ``mbf_large``).

Parameter names and shapes follow arcface_torch's ``backbones/mobilefacenet.py``, so its published
state_dicts load (at ``input_size=112``). Every block wraps its layers in a ``layers`` Sequential,
as there. With ``scale`` = s (2 for ``mbf``, 4 for ``mbf_large``) and a 112x112 input:

    layers.0  conv 3x3 stride 2                           (N, 64s, 56, 56)    stem
    layers.1  grouped conv 3x3, or blocks[0] residuals    (N, 64s, 56, 56)    stage1
    layers.2  depthwise block, stride 2                   (N, 64s, 28, 28)    stage2
    layers.3  blocks[1] residual depthwise blocks         (N, 64s, 28, 28)    stage2
    layers.4  depthwise block, stride 2                   (N, 128s, 14, 14)   stage3
    layers.5  blocks[2] residual depthwise blocks         (N, 128s, 14, 14)   stage3
    layers.6  depthwise block, stride 2                   (N, 128s, 7, 7)     stage4
    layers.7  blocks[3] residual depthwise blocks         (N, 128s, 7, 7)     stage4
    conv_sep  1x1 conv to 512                             (N, 512, 7, 7)      conv_sep
    features  global depthwise conv 7x7 / linear / BN1d   (N, E)

For another input size S, each 56/28/14/7 above reads ``ceil(S/2)``, ``ceil(S/4)``, ... and the
global depthwise kernel covers the whole last map. The expansion widths of the depthwise blocks
(128, 256, 512) do not follow ``scale``: arcface_torch fixes them.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from otface.models.base import BACKBONES, Backbone, conv_out_size

__all__ = ["MobileFaceNet", "mbf", "mbf_large"]


class ConvBlock(nn.Module):
    """Conv, BN, PReLU: ``(N, C_in, h, w) -> (N, C_out, h', w')``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(
                in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv and BN without activation: ``(N, C_in, h, w) -> (N, C_out, h', w')``.

    ``padding`` defaults to "same" for odd kernels; the global depthwise conv passes 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        groups: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, 1, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DepthWiseBlock(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden``, 3x3 depthwise (``stride``), 1x1 projection.

    ``(N, C_in, h, w) -> (N, C_out, ceil(h/stride), ceil(w/stride))``; with ``residual`` the input
    is added back (needs ``stride=1`` and ``C_in == C_out``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        stride: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual depthwise block keeps its shape: stride 1, C_in == C_out")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_channels, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            LinearBlock(hidden, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


class ResidualStack(nn.Module):
    """``depth`` residual depthwise blocks of width ``channels``; keeps the shape (N, C, h, w)."""

    def __init__(self, channels: int, depth: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWiseBlock(channels, channels, hidden, residual=True) for _ in range(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: ``(N, 512, k, k) -> (N, E)`` (linear without bias, then BN1d)."""

    def __init__(self, embedding_size: int, kernel: int, channels: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels, padding=0),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MobileFaceNet(Backbone):
    """MobileFaceNet; stages ``stage1`` .. ``stage4`` and ``conv_sep`` (shapes: module docstring).

    Args:
        embedding_size: E.
        input_size: side S of the square input; the global depthwise kernel is ``ceil(S/16)``.
        blocks: residual blocks at the 56, 28, 14 and 7 resolutions (for ``blocks[0] == 1`` the
            first is a single grouped conv, as in arcface_torch).
        scale: channel multiplier (integer): stage widths 64s, 64s, 128s, 128s.
    """

    stage_names = ("stage1", "stage2", "stage3", "stage4", "conv_sep")

    def __init__(
        self,
        embedding_size: int = 512,
        input_size: int = 112,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
    ) -> None:
        super().__init__(embedding_size, input_size)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive block counts, got {tuple(blocks)}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        narrow, wide = 64 * scale, 128 * scale
        first: nn.Module
        if blocks[0] == 1:
            first = ConvBlock(narrow, narrow, kernel=3, groups=64)
        else:
            first = ResidualStack(narrow, blocks[0], hidden=128)
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, narrow, kernel=3, stride=2),
                first,
                DepthWiseBlock(narrow, narrow, hidden=128, stride=2),
                ResidualStack(narrow, blocks[1], hidden=128),
                DepthWiseBlock(narrow, wide, hidden=256, stride=2),
                ResidualStack(wide, blocks[2], hidden=256),
                DepthWiseBlock(wide, wide, hidden=512, stride=2),
                ResidualStack(wide, blocks[3], hidden=256),
            ]
        )
        self.conv_sep = ConvBlock(wide, 512)
        self.features = GDC(embedding_size, kernel=conv_out_size(input_size, 4))
        self._stage_geometry = {
            "stage1": (narrow, 1),
            "stage2": (narrow, 2),
            "stage3": (wide, 3),
            "stage4": (wide, 4),
            "conv_sep": (512, 4),
        }
        self._init_weights()

    def _init_weights(self) -> None:
        """arcface_torch's initialisation: Kaiming (fan out) convs and linears, BN (1, 0)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_stem(self, x: Tensor) -> Tensor:
        """``(N, 3, S, S) -> (N, 64s, S/2, S/2)``."""
        return self.layers[0](x)

    def stage_blocks(self) -> list[tuple[str, Sequence[nn.Module]]]:
        layers = self.layers
        return [
            ("stage1", (layers[1],)),
            ("stage2", (layers[2], layers[3])),
            ("stage3", (layers[4], layers[5])),
            ("stage4", (layers[6], layers[7])),
            ("conv_sep", (self.conv_sep,)),
        ]

    def forward_head(self, x: Tensor) -> Tensor:
        """``(N, 512, S/16, S/16) -> (N, E)``."""
        return self.features(x)


@BACKBONES.register("mbf", "mobilefacenet")
def mbf(embedding_size: int = 512, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet, blocks (1, 4, 6, 2), scale 2 (arcface_torch ``mbf``, about 0.45 GFLOPs)."""
    kwargs.setdefault("blocks", (1, 4, 6, 2))
    kwargs.setdefault("scale", 2)
    return MobileFaceNet(embedding_size, **kwargs)


@BACKBONES.register("mbf_large")
def mbf_large(embedding_size: int = 512, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet, blocks (2, 8, 12, 4), scale 4 (arcface_torch ``mbf_large``)."""
    kwargs.setdefault("blocks", (2, 8, 12, 4))
    kwargs.setdefault("scale", 4)
    return MobileFaceNet(embedding_size, **kwargs)
