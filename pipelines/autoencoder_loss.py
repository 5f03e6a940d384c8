"""The autoencoder objective: what makes a KL autoencoder's round trip sharp instead of soft.

A pixel loss alone (L1/L2) is minimised by the *mean* of the plausible images, hence soft edges.
Latent diffusion's ``LPIPSWithDiscriminator`` (the objective of Stable Diffusion's KL-f8 and so of
DynamiCrafter's VAE) adds a perceptual term and a patch discriminator. Written out (x the frame,
x^ its reconstruction, D the :class:`~pipelines.models.discriminator.PatchDiscriminator`):

    rec   = |x - x^| + w_p * LPIPS(x, x^)                  per pixel (LPIPS broadcast over the image)
    nll   = rec / exp(s) + s                               s: one learned log-variance, init 0
    kl    = w_kl * KL(q(z|x) || N(0, I))
    g     = -mean(D(x^))                                   the generator's adversarial term
    d_w   = ||grad_L nll|| / (||grad_L g|| + 1e-4), clamped to [0, 1e4], times w_d
            (L = the decoder's last conv weight: the adversarial gradient is scaled to the size of
            the reconstruction gradient where both meet, so neither drowns the other)
    loss_G = nll + kl + f(step) * d_w * g
    loss_D = f(step) * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x^))))     hinge
    f(step) = 0 before ``disc_start``, ``disc_factor`` from then on

Normalisation: latent diffusion sums nll and kl over each image and averages over the batch; here
each is that sum divided by the image's element count C*H*W (a per-pixel mean). That divides the
whole loss (and d_w, so d_w * g too) by one constant, so the optimum and every ratio are the same,
while learning rates and gradient clipping keep the scale the pixel objective had.

``kind="pixel"`` is the objective v2w used before (L1 + L2 + w_kl * KL, KL summed per image), kept
so the two can be compared on the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import V2WError
from pipelines.models.discriminator import PatchDiscriminator

KINDS = ("lpips-gan", "pixel")


@dataclass
class AutoencoderLossConfig:
    kind: str = "lpips-gan"  # lpips-gan (latent diffusion's objective) | pixel (L1 + L2 + KL, the old one)
    perceptual_weight: float = 1.0  # w_p; 0 turns LPIPS off (then no LPIPS weights are needed)
    perceptual_net: str = "vgg"  # vgg (as latent diffusion) | alex: the LPIPS network inside the loss
    kl_weight: float = 1e-6  # w_kl
    disc_start: int = 1000  # optimizer step from which the discriminator trains and the generator sees it
    disc_weight: float = 0.5  # w_d; 0 turns the discriminator off
    disc_factor: float = 1.0  # f(step) from disc_start on
    disc_lr: float | None = None  # the discriminator's Adam lr (None: the autoencoder's)
    disc_channels: int = 64
    disc_layers: int = 3
    logvar_init: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise V2WError(f"--vae-loss must be one of {{{', '.join(KINDS)}}}. Got {self.kind!r}")
        if self.perceptual_net not in ("vgg", "alex"):
            raise V2WError(f"--perceptual-net must be one of {{vgg, alex}}. Got {self.perceptual_net!r}")
        if min(self.perceptual_weight, self.kl_weight, self.disc_weight, self.disc_factor) < 0 or self.disc_start < 0:
            raise V2WError("--perceptual-weight, --disc-weight, --disc-start and the KL weight must be >= 0")

    @property
    def uses_lpips(self) -> bool:
        return self.kind == "lpips-gan" and self.perceptual_weight > 0

    @property
    def uses_disc(self) -> bool:
        return self.kind == "lpips-gan" and self.disc_weight > 0 and self.disc_factor > 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- pure functions


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x^)))): real patches pushed above +1, fakes below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor, disc_weight: float = 1.0,
                    eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """disc_weight * ||d nll / d L|| / (||d g / d L|| + eps), clamped to [0, max_weight] and detached.

    Both losses must still have their graphs (they are kept: the caller backpropagates after)."""
    grad_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
    w = torch.linalg.vector_norm(grad_nll) / (torch.linalg.vector_norm(grad_g) + eps)
    return torch.clamp(w, 0.0, max_weight).detach() * disc_weight


def disc_factor_at(step: int, start: int, factor: float) -> float:
    """f(step): 0 before the discriminator's start step, ``factor`` from it on (latent diffusion's adopt_weight)."""
    return factor if step >= start else 0.0


# ---------------------------------------------------------------- the objective


class AutoencoderLoss(nn.Module):
    """The objective above, holding what it learns (the log-variance, the discriminator) and the
    frozen LPIPS network. ``lpips`` is any module mapping two (N, 3, H, W) batches in [-1, 1] to
    (N,) distances (``pipelines.metrics.networks.LPIPS`` with its real weights, or a test's own)."""

    def __init__(self, cfg: AutoencoderLossConfig, lpips: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.uses_lpips and lpips is None:
            raise V2WError("the perceptual term needs an LPIPS network (or --perceptual-weight 0)")
        self.lpips = lpips.eval().requires_grad_(False) if (lpips is not None and cfg.uses_lpips) else None
        self.logvar = nn.Parameter(torch.full((), float(cfg.logvar_init))) if cfg.kind == "lpips-gan" else None
        self.discriminator = PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers) if cfg.uses_disc else None

    def train(self, mode: bool = True) -> AutoencoderLoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # a fixed metric network: its dropout never runs
        return self

    def generator_loss(self, x: torch.Tensor, rec: torch.Tensor, posterior, step: int,
                       last_layer: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss at optimizer step ``step`` and what it is made of.
        x, rec: (N, 3, H, W) in [-1, 1]; posterior: diffusers' DiagonalGaussianDistribution
        (``None`` when the encoder is frozen: no KL); last_layer: the decoder's last conv weight."""
        n_el = x[0].numel()
        kl = posterior.kl().mean() if posterior is not None else x.new_zeros(())  # diffusers' kl sums per image
        cfg = self.cfg
        if cfg.kind == "pixel":
            l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
            loss = l1 + l2 + cfg.kl_weight * kl
            return loss, {"loss": loss.item(), "l1": l1.item(), "l2": l2.item(), "kl": kl.item()}
        l1 = (x - rec).abs()
        p = x.new_zeros(())
        if self.lpips is not None:
            p = self.lpips(x, rec).mean()  # mean over images == per-pixel broadcast, then mean
        nll = (l1 + cfg.perceptual_weight * p).mean() / torch.exp(self.logvar) + self.logvar
        loss = nll + cfg.kl_weight * kl / n_el
        logs = {"l1": l1.mean().item(), "lpips": p.item(), "logvar": self.logvar.item(), "kl": kl.item()}
        f = disc_factor_at(step, cfg.disc_start, cfg.disc_factor) if self.discriminator is not None else 0.0
        if f > 0:
            g = -self.discriminator(rec).mean()
            if self.training and last_layer is not None:
                d_w = adaptive_weight(nll, g, last_layer, cfg.disc_weight)
            else:  # no graph to differentiate (evaluation)
                d_w = torch.zeros(())
            loss = loss + f * d_w * g
            logs.update(g=g.item(), d_weight=d_w.item())
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor, step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The discriminator's hinge loss on real frames and detached reconstructions; ``None`` before
        its start step (it is not run, so it stays exactly as initialised)."""
        if self.discriminator is None or disc_factor_at(step, self.cfg.disc_start, self.cfg.disc_factor) == 0:
            return None, {}
        real, fake = self.discriminator(x.detach()), self.discriminator(rec.detach())
        loss = self.cfg.disc_factor * hinge_d_loss(real, fake)
        return loss, {"d_loss": loss.item(), "logits_real": real.mean().item(), "logits_fake": fake.mean().item()}
