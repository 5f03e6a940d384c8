"""Nearest 2x upsample + 3x3 conv at the low resolution (pipelines.models.upsample) against the
reference (interpolate, then conv); the diffusers VAE with its upsamplers fused; training keeps the
reference path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL

from pipelines.models.upsample import NearestUpsampleConv, fusable, fuse_upsamplers, nearest2x_conv, phase_kernels


def _reference(x, conv):
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("shape,out,bias", [((2, 5, 7, 4), 3, True), ((1, 8, 1, 1), 6, False), ((3, 4, 6, 9), 4, True)])
def test_matches_interpolate_then_conv(shape, out, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], out, 3, padding=1, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        ref, got = _reference(x, conv), nearest2x_conv(x, conv)
    assert got.shape == ref.shape == (shape[0], out, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_phase_kernels_sum_the_taps_each_phase_sees():
    w = torch.arange(9.0).view(1, 1, 3, 3)  # rows [0 1 2], [3 4 5], [6 7 8]
    k, _ = phase_kernels(w, None)
    # phase (0, 0): rows {0 | 1+2}, columns {0 | 1+2}
    assert k[0, 0].tolist() == [[0.0, 1 + 2], [3 + 6, (4 + 5) + (7 + 8)]]
    # phase (1, 1): rows {0+1 | 2}, columns {0+1 | 2}
    assert k[3, 0].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]]


def test_kernels_follow_the_weights():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        before = nearest2x_conv(x, conv)
        conv.weight.mul_(2.0)  # an in-place update (an optimizer step) bumps the version: new kernels
        torch.testing.assert_close(nearest2x_conv(x, conv), _reference(x, conv), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, nearest2x_conv(x, conv))


def test_fusable_only_plain_3x3():
    assert fusable(nn.Conv2d(2, 2, 3, padding=1))
    assert not fusable(nn.Conv2d(2, 2, 3, padding=0))
    assert not fusable(nn.Conv2d(2, 2, 3, padding=1, groups=2))
    assert not fusable(nn.Conv2d(2, 2, 1))
    assert not fusable(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


def test_vae_decoder_fused_same_keys_and_decode():
    torch.manual_seed(0)
    cfg = dict(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1)
    ref, vae = AutoencoderKL(**cfg).eval(), AutoencoderKL(**cfg).eval()
    vae.load_state_dict(ref.state_dict())
    assert fuse_upsamplers(vae.decoder) == 2
    assert isinstance(vae.decoder.up_blocks[0].upsamplers[0], NearestUpsampleConv)
    assert list(vae.state_dict()) == list(ref.state_dict())  # save/load unchanged
    z = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, ref.decode(z).sample, rtol=1e-4, atol=1e-5)
    # with autograd (training) the reference path runs: the same numbers bit for bit, and gradients
    out = vae.decode(z).sample
    assert torch.equal(out, ref.decode(z).sample)
    out.mean().backward()
    assert vae.decoder.up_blocks[0].upsamplers[0].conv.weight.grad is not None
