"""A plain nnU-Net-like 3D U-Net.

Tensors are ``(batch, channel, z, y, x)``: the last three axes follow the
volume's array index order (slice, row, column). The network is fully
convolutional; each spatial size must be divisible by ``2 ** (levels - 1)``.

Blocks are conv3x3x3 -> InstanceNorm -> LeakyReLU(0.01), twice per level;
downsampling is a stride-2 convolution, upsampling a stride-2 transposed
convolution, skip connections concatenate. The output is one logit channel per
class, class 0 being background. The hyperparameters are the model card's
:class:`model_store.card.Architecture` (the one architecture type);
:func:`model_store.network_layout.unet_tensor_shapes` lists the state dict this
network has, which the package import checks without building it.
"""

from __future__ import annotations

import torch
from torch import nn

from model_store.card import Architecture


class ConvBlock(nn.Sequential):
    """Two conv-norm-LeakyReLU layers; the first may be strided."""

    def __init__(self, in_ch: int, out_ch: int, first_stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 3, stride=first_stride, padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """3D U-Net returning class logits of shape ``(B, num_classes, Z, Y, X)``."""

    def __init__(self, config: Architecture) -> None:
        super().__init__()
        self.config = config
        chans = [config.channels_at(i) for i in range(config.levels)]
        self.encoders = nn.ModuleList()
        for level, ch in enumerate(chans):
            in_ch = config.in_channels if level == 0 else chans[level - 1]
            self.encoders.append(ConvBlock(in_ch, ch, first_stride=1 if level == 0 else 2))
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(config.levels - 2, -1, -1):
            self.upsamplers.append(
                nn.ConvTranspose3d(chans[level + 1], chans[level], 2, stride=2, bias=False)
            )
            self.decoders.append(ConvBlock(2 * chans[level], chans[level]))
        self.head = nn.Conv3d(chans[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.upsamplers, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
