"""A model directory: the (causal) video U-Net with everything it needs to see frames.

::

    MODEL/
      config.json                 kind "v2w-model", format_version, family, the U-Net config,
                                  component configs, schedule, how it was made (causalize report)
      model.safetensors           the video U-Net (+ action encoder)
      image_proj.safetensors      Resampler: CLIP tokens of frame 0 -> 16 tokens per frame
      image_encoder.safetensors   OpenCLIP ViT-H/14 vision tower (``visual.*``)
      vae.safetensors             AutoencoderKL (diffusers keys; config in config.json)
      empty_text.safetensors      the empty prompt's text context (1, 77, D), computed once at
                                  causalize time, so the 350M-parameter text tower is not needed

Written atomically (temp folder + rename). ``load_model(MODEL)`` restores it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from pipelines.diffusion import DEFAULT_SCHEDULE
from pipelines.errors import V2WError
from pipelines.models.clip import CLIPVisionConfig, OpenCLIPVisionTower
from pipelines.models.model_folder import model_header, read_model_config, read_part, write_model_folder
from pipelines.models.resampler import Resampler
from pipelines.models.unet import UNetConfig, VideoUNet
from pipelines.models.upsample import fuse_upsamplers
from pipelines.models.vae import decode_video, encode_video
from pipelines.statedict import load_strict

LATENT_SCALE = 0.18215


class WorldModel(nn.Module):
    """U-Net + VAE + image conditioning, saved and loaded as one MODEL directory."""

    family = "dynamicrafter"

    def __init__(
        self,
        unet: VideoUNet,
        vae: nn.Module | None = None,
        image_encoder: nn.Module | None = None,
        image_proj: nn.Module | None = None,
        empty_text: torch.Tensor | None = None,
        meta: dict | None = None,
    ):
        super().__init__()
        self.unet, self.vae, self.image_encoder, self.image_proj = unet, vae, image_encoder, image_proj
        self.register_buffer("empty_text", empty_text if empty_text is not None else torch.zeros(0), persistent=False)
        self.meta = dict(meta or {})
        self.meta.setdefault("schedule", DEFAULT_SCHEDULE)
        self.meta.setdefault("latent_scale", LATENT_SCALE)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: 8 for DynamiCrafter's VAE (2 per VAE level after the first)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    # ------------------------------------------------------------------ conditioning

    def encode_frames(self, frames: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> scaled latents (B, 4, T, H/f, W/f), frame by frame (f = vae_factor)."""
        if self.vae is None:
            raise V2WError("this model has no VAE")
        return encode_video(self.vae, frames, self.meta["latent_scale"], sample=sample)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise V2WError("this model has no VAE")
        return decode_video(self.vae, latents, self.meta["latent_scale"])

    @property
    def context_layout(self) -> str:
        """How the image tokens reach the U-Net: ``per-frame`` (v2w) or ``vid2world`` (imported official
        checkpoints: all of them, split per frame by the U-Net only when T is the Resampler's length)."""
        return self.meta.get("context_layout", "per-frame")

    def image_context(self, frame0: torch.Tensor, num_frames: int, layout: str | None = None) -> torch.Tensor:
        """Context for the U-Net: empty-text tokens then 16 Resampler tokens per frame, from the
        CLIP image tokens of ``frame0`` (B, 3, H, W) in [-1, 1] -> (B, 77 + T * 16, D).

        The Resampler makes tokens for ``video_length`` frames; frames past that reuse the last
        frame's tokens (they all come from frame 0, so nothing about the future leaks in).
        ``layout`` "vid2world" (default: :attr:`context_layout`): all ``video_length`` x 16 tokens
        whatever T, as the official model was fed; its U-Net splits them per frame only when
        T = video_length, otherwise every frame attends to all of them."""
        if self.image_encoder is None or self.image_proj is None or self.empty_text.numel() == 0:
            raise V2WError("this model has no image conditioning (image encoder, Resampler, empty text)")
        tokens = self.image_proj(self.image_encoder(frame0))  # (B, L*n, D)
        if (layout or self.context_layout) == "vid2world":
            return torch.cat([self.empty_text.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        n = self.unet.config.image_tokens_per_frame
        per_frame = tokens.reshape(tokens.shape[0], -1, n, tokens.shape[-1])
        idx = torch.clamp(torch.arange(num_frames, device=tokens.device), max=per_frame.shape[1] - 1)
        image = per_frame[:, idx].reshape(tokens.shape[0], num_frames * n, -1)
        text = self.empty_text.to(image.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([text, image], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        frame0: torch.Tensor,
        fs: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser with its conditioning: x (B, 8, T, h, w) = noisy latents + frame-0 latent,
        frame0 (B, 3, H, W) pixels for the image context -> v prediction (B, 4, T, h, w).
        (One module, so data-parallel training syncs the U-Net and the Resampler together.)"""
        return self.unet(x, timesteps, context=self.image_context(frame0, x.shape[2]), fs=fs, actions=actions, action_mask=action_mask)

    # ------------------------------------------------------------------ files

    def config_dict(self) -> dict:
        return {
            **model_header("dynamicrafter"),
            "unet": self.unet.config.to_dict(),
            "vae": dict(self.vae.config) if self.vae is not None else None,
            "image_encoder": self.image_encoder.config.to_dict() if self.image_encoder is not None else None,
            "image_proj": dict(self.image_proj.config) if self.image_proj is not None else None,
            "has_empty_text": self.empty_text.numel() > 0,
            **{k: v for k, v in self.meta.items() if k not in ("kind", "format_version", "family")},
        }

    def save_pretrained(self, path: str | os.PathLike, half: bool = False) -> Path:
        """Write MODEL atomically. ``half``: weights stored in float16 (half the size; :meth:`from_pretrained` upcasts)."""
        parts = {"model": self.unet, "image_proj": self.image_proj, "image_encoder": self.image_encoder, "vae": self.vae}
        tensors = {"empty_text": self.empty_text} if self.empty_text.numel() else {}
        return write_model_folder(path, self.config_dict(), parts, tensors, half)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "WorldModel":
        path = Path(path)
        cfg = read_model_config(path)
        device = torch.device(device)

        def weights(name: str) -> dict:
            return read_part(path, name, device)

        def strict(module: nn.Module, sd: dict, what: str) -> nn.Module:
            load_strict(module, sd, what, str(path), against="config.json", hint="the model folder is inconsistent")
            return module.to(device)

        with torch.device("meta"):
            unet = VideoUNet(UNetConfig.from_dict(cfg["unet"]))
        unet.load_state_dict(weights("model"), strict=True, assign=True)
        vae = image_encoder = image_proj = empty = None
        if cfg.get("vae"):
            from diffusers import AutoencoderKL

            vae = strict(AutoencoderKL(**{k: v for k, v in cfg["vae"].items() if not k.startswith("_")}), weights("vae"), "VAE")
            vae.requires_grad_(False).eval()
            fuse_upsamplers(vae.decoder)  # nearest 2x + conv at the low resolution when decoding (same keys)
        if cfg.get("image_encoder"):
            image_encoder = strict(OpenCLIPVisionTower(CLIPVisionConfig(**cfg["image_encoder"])), weights("image_encoder"), "image encoder")
            image_encoder.requires_grad_(False).eval()
        if cfg.get("image_proj"):
            image_proj = strict(Resampler(**cfg["image_proj"]), weights("image_proj"), "Resampler")
        if cfg.get("has_empty_text"):
            empty = weights("empty_text")["empty_text"]
        meta = {k: v for k, v in cfg.items() if k not in ("unet", "vae", "image_encoder", "image_proj", "has_empty_text", "v2w_version")}
        return cls(unet, vae, image_encoder, image_proj, empty, meta).eval()  # like from_pretrained elsewhere


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Anything ``causalize`` or ``train`` wrote (docs/design.md §8); the stages' ``--model`` also takes
    a released Vid2World model's hub name through :func:`pipelines.official.open_model`."""
    family = read_model_config(path).get("family", "dynamicrafter")
    if family == "dynamicrafter":
        return WorldModel.from_pretrained(path, device)
    if family == "unet3d":
        from pipelines.models.unet3d import load_unet3d_model  # diffusers' UNet3D: only this family pays its import

        return load_unet3d_model(path, device)
    if family == "wan":
        from pipelines.models.wan_model import WanWorldModel  # diffusers' Wan classes: only this family pays their import

        return WanWorldModel.from_pretrained(path, device)
    raise V2WError(f"unknown model family {family!r}", path=path)
