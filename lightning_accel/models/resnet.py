"""A small residual network for small images (8x8 to 32x32), written with plain torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from lightning_accel.errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to a shortcut (a strided 1x1 projection
    when the width or the resolution changes).

    Args:
        in_channels, out_channels: widths before and after the block.
        stride: 2 halves the resolution, in the first convolution and the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # each block starts as the identity, so a deep stack trains from the first step
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet for small images: a 3x3 stem that keeps the resolution, one stage of
    :class:`BasicBlock` per width (each later stage halves the resolution), global average
    pooling and a linear head.

    The blocks of all stages sit in one ``nn.Sequential`` (``blocks``), so activation
    checkpointing and per-block compilation find each of them.

    Args:
        in_channels: image channels (1 grayscale, 3 RGB).
        num_classes: outputs of the head.
        widths: channels of each stage, e.g. [16, 32, 64].
        blocks_per_stage: BasicBlocks in each stage.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        widths = list(widths)
        positive = all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
        if not widths or not positive:
            raise ConfigError("model.widths", widths, "must be a list of positive channel counts")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        width = widths[0]
        for stage, out_width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(images))
        return self.head(self.pool(features).flatten(1))
