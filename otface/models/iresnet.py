"""IResNet-18/34/50/100/200, the improved ResNets of ArcFace, in insightface's arcface_torch layout.

Parameter names and shapes follow arcface_torch's ``backbones/iresnet.py``, so its published
state_dicts load with ``load_state_dict`` (at the default ``width=1`` and ``input_size=112``).

Layout for a 112x112 input (``S`` in general: each stage halves the side, rounding up):

    conv1 3x3 / bn1 / prelu                    (N, 64, 112, 112)
    layer1  IBasicBlock x n1, first stride 2   (N, 64, 56, 56)
    layer2  IBasicBlock x n2, first stride 2   (N, 128, 28, 28)
    layer3  IBasicBlock x n3, first stride 2   (N, 256, 14, 14)
    layer4  IBasicBlock x n4, first stride 2   (N, 512, 7, 7)
    bn2 / flatten / dropout / fc / features    (N, E)

``features`` is a BatchNorm1d whose scale is frozen at 1, as in arcface_torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from otface.models.base import BACKBONES, Backbone, conv_out_size

__all__ = [
    "IBasicBlock",
    "IResNet",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
]

_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
_STAGE_CHANNELS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus the shortcut.

    ``(N, C_in, h, w) -> (N, C_out, ceil(h/s), ceil(w/s))``. The shortcut is a strided 1x1 conv
    and BN (``downsample``) when the stride or the width changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(Backbone):
    """IResNet backbone; stages ``layer1`` .. ``layer4`` (see the module docstring for shapes).

    Args:
        depths: number of blocks in each of the four stages.
        embedding_size: E.
        input_size: side S of the square input; the fc layer reads the ``ceil(S/16)`` square map
            of ``layer4`` (7x7 at 112, 4x4 at 56).
        dropout: dropout probability before ``fc``.
        width: channel multiplier of every stage (64, 128, 256, 512 at 1). Published weights
            need ``width=1``.
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        depths: Sequence[int],
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        width: float = 1.0,
    ) -> None:
        super().__init__(embedding_size, input_size)
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"depths must be four positive block counts, got {tuple(depths)}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        channels = [max(1, round(c * width)) for c in _STAGE_CHANNELS]

        self.conv1 = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.prelu = nn.PReLU(channels[0])
        in_channels = channels[0]
        for index, (depth, out_channels) in enumerate(zip(depths, channels), start=1):
            blocks = [IBasicBlock(in_channels, out_channels, stride=2)]
            blocks += [IBasicBlock(out_channels, out_channels) for _ in range(depth - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            self._stage_geometry[f"layer{index}"] = (out_channels, index)
            in_channels = out_channels
        final_side = conv_out_size(input_size, 4)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * final_side * final_side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """arcface_torch's init: convs N(0, 0.1), BN (1, 0), ``features`` scale fixed at 1."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def forward_stem(self, x: Tensor) -> Tensor:
        """``(N, 3, S, S) -> (N, 64, S, S)``."""
        return self.prelu(self.bn1(self.conv1(x)))

    def stage_blocks(self) -> list[tuple[str, Sequence[nn.Module]]]:
        return [(name, (getattr(self, name),)) for name in self.stage_names]

    def forward_head(self, x: Tensor) -> Tensor:
        """``(N, 512, S/16, S/16) -> (N, E)``."""
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _iresnet(name: str, embedding_size: int, **kwargs: Any) -> IResNet:
    return IResNet(_DEPTHS[name], embedding_size=embedding_size, **kwargs)


@BACKBONES.register("iresnet18", "r18")
def iresnet18(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-18, blocks (2, 2, 2, 2). Keyword arguments as for :class:`IResNet`."""
    return _iresnet("iresnet18", embedding_size, **kwargs)


@BACKBONES.register("iresnet34", "r34")
def iresnet34(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-34, blocks (3, 4, 6, 3). Keyword arguments as for :class:`IResNet`."""
    return _iresnet("iresnet34", embedding_size, **kwargs)


@BACKBONES.register("iresnet50", "r50")
def iresnet50(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-50, blocks (3, 4, 14, 3). Keyword arguments as for :class:`IResNet`."""
    return _iresnet("iresnet50", embedding_size, **kwargs)


@BACKBONES.register("iresnet100", "r100")
def iresnet100(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-100, blocks (3, 13, 30, 3), the OTFace paper's backbone.

    Keyword arguments as for :class:`IResNet`.
    """
    return _iresnet("iresnet100", embedding_size, **kwargs)


@BACKBONES.register("iresnet200", "r200")
def iresnet200(embedding_size: int = 512, **kwargs: Any) -> IResNet:
    """IResNet-200, blocks (6, 26, 60, 6). Keyword arguments as for :class:`IResNet`."""
    return _iresnet("iresnet200", embedding_size, **kwargs)
