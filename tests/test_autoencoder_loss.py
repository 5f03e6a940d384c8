"""The autoencoder objective (pipelines/autoencoder_loss.py): its terms against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.autoencoder_loss import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    adaptive_weight,
    disc_factor_at,
    hinge_d_loss,
)
from pipelines.errors import V2WError
from pipelines.metrics.networks import LPIPS
from pipelines.models.discriminator import PatchDiscriminator


def test_adaptive_weight_against_a_hand_computed_example():
    # nll = 3 w0 + 4 w1 -> grad (3, 4), norm 5;  g = 2 w1 -> grad (0, 2), norm 2
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7]))
    nll, g = 3 * w[0] + 4 * w[1], 2 * w[1]
    d = adaptive_weight(nll, g, w, disc_weight=0.5)
    assert d.item() == pytest.approx(0.5 * 5 / (2 + 1e-4), rel=1e-6)
    assert not d.requires_grad
    # the graphs are kept for the backward pass that follows
    (nll + d * g).backward()
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0 + 2 * d.item()]))
    # a vanishing adversarial gradient is clamped at 1e4 (times the weight), never inf
    w2 = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    assert adaptive_weight(3 * w2[0], 0 * w2[1] + 1e-9 * w2[0], w2).item() == pytest.approx(1e4)


def test_adaptive_weight_balances_the_gradients_at_the_last_layer():
    """After weighting, the adversarial gradient at the last layer has disc_weight x the norm of the
    reconstruction gradient there (up to the 1e-4 in the denominator)."""
    torch.manual_seed(0)
    last = torch.nn.Conv2d(4, 3, 3, padding=1)
    h, x = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8)
    rec = last(h)
    nll = (rec - x).abs().mean()
    g = -PatchDiscriminator(3, 8, 1)(rec).mean()
    d = adaptive_weight(nll, g, last.weight, disc_weight=0.5)
    gn = torch.autograd.grad(nll, last.weight, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(d * g, last.weight)[0].norm()
    assert gg.item() == pytest.approx(0.5 * gn.item(), rel=1e-3)


def test_hinge_loss_and_the_start_step():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = (0, 0.5, 2), mean 5/6; relu(1 + fake) = (0, 1, 2), mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert disc_factor_at(9, 10, 1.0) == 0.0 and disc_factor_at(10, 10, 0.7) == 0.7


def test_patch_discriminator_shapes_and_init():
    d = PatchDiscriminator()
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert abs(convs[1].weight.std().item() - 0.02) < 0.002


def _posterior(mean, logvar):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))


def test_generator_loss_is_latent_diffusions_divided_by_the_pixel_count():
    torch.manual_seed(0)
    lp = LPIPS("alex")  # random weights: the formula, not the metric, is under test
    cfg = AutoencoderLossConfig(kind="lpips-gan", perceptual_weight=0.7, kl_weight=1e-3, disc_weight=0.5, disc_start=5)
    obj = AutoencoderLoss(cfg, lp)
    with torch.no_grad():
        obj.logvar.fill_(0.3)
    x, rec = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    post = _posterior(torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4) * 0.1)
    loss, logs = obj.generator_loss(x, rec, post, step=0, last_layer=None)  # before disc_start: no adversarial term
    # latent diffusion: per image, sum over pixels of (|x - x^| + w_p LPIPS) / e^s + s, mean over the batch; + w_kl KL
    p = lp(x, rec).view(2, 1, 1, 1)
    nll_ldm = (((x - rec).abs() + 0.7 * p) / math.exp(0.3) + 0.3).sum() / 2
    kl_ldm = post.kl().sum() / 2
    assert loss.item() == pytest.approx(((nll_ldm + 1e-3 * kl_ldm) / (3 * 32 * 32)).item(), rel=1e-5)
    assert "g" not in logs


def test_the_pixel_objective_is_the_old_one():
    obj = AutoencoderLoss(AutoencoderLossConfig(kind="pixel", kl_weight=1e-6))
    assert obj.logvar is None and obj.discriminator is None and obj.lpips is None
    x, rec = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    post = _posterior(torch.randn(2, 4, 2, 2), torch.zeros(2, 4, 2, 2))
    loss, _ = obj.generator_loss(x, rec, post, 0, None)
    want = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * post.kl().mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_settings_are_checked():
    with pytest.raises(V2WError, match="--vae-loss must be one of"):
        AutoencoderLossConfig(kind="gan")
    with pytest.raises(V2WError, match="needs an LPIPS network"):
        AutoencoderLoss(AutoencoderLossConfig())
    assert AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=0)).lpips is None  # no weights needed then
    assert AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=0, disc_weight=0)).discriminator is None
