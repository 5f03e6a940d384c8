"""A PatchGAN discriminator (pix2pix's ``NLayerDiscriminator``, as taming-transformers and latent
diffusion use it to sharpen their autoencoders).

Each output logit judges one receptive-field patch of the input (70x70 px for 3 layers), so the
discriminator penalises blur locally instead of judging the whole image: a 64x64 frame gives a
6x6 map. Layout: conv 4x4 stride 2 (no norm) -> LeakyReLU(0.2), then ``n_layers - 1`` blocks of
conv 4x4 stride 2 -> BatchNorm -> LeakyReLU with the channels doubling (capped at 8x), one conv
4x4 stride 1 -> BatchNorm -> LeakyReLU, and a final conv 4x4 stride 1 to one channel.
Weights start as pix2pix's: convs N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0.

Inputs (N, 3, H, W) in [-1, 1] -> logits (N, 1, h, w).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        """
        Args:
            in_channels: image channels (3).
            channels: channels of the first conv (64); each later stride-2 conv doubles them, at most 8x.
            n_layers: stride-2 convs (3; each halves the resolution).
        """
        super().__init__()
        self.config = {"in_channels": in_channels, "channels": channels, "n_layers": n_layers}
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
