"""A tiny base checkpoint in DynamiCrafter's own Lightning layout (``--ckpt tiny``).

Same prefixes, key names and structure as ``Doubiiu/DynamiCrafter_512/model.ckpt``, at a size
that runs on a CPU in milliseconds, so every code path the real checkpoint takes is exercised
by tests and by the quickstart. The weights here are a seeded random initialisation (an
architecture stand-in, not a trained video model). That includes the VAE: its decode(encode(x))
round trip is ~6 dB PSNR, so pixels predicted through it are not meaningful. A trained tiny base
in the same layout is what ``v2w pretrain`` writes (:func:`dynamicrafter_state_dict` here).

Architectures (``ARCHS``): ``tiny`` (this random stand-in; VAE x8) and ``small`` (what ``v2w
pretrain`` trains by default for 64x64 frames: VAE x4 so 16x16 latents keep sprites sharp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.diffusion import make_scheduler, rescale_table
from pipelines.models.checkpoint import SCHEDULE_BUFFERS
from pipelines.models.clip import CLIPTextConfig, CLIPVisionConfig, OpenCLIPTextTower, OpenCLIPVisionTower
from pipelines.models.resampler import Resampler
from pipelines.models.unet import UNetConfig, VideoUNet
from pipelines.models.vae import ldm_vae_shapes, tiny_ldm_ddconfig

TINY_CONTEXT_DIM = 64
TINY_UNET = dict(
    in_channels=8, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=[2, 1],
    dropout=0.0, channel_mult=[1, 2], num_head_channels=16, context_dim=TINY_CONTEXT_DIM, use_linear=True,
    temporal_length=8, default_fs=3,
)
TINY_VISION = CLIPVisionConfig(width=64, layers=2, heads=1, patch_size=14, image_size=56, output_dim=64)
TINY_TEXT = CLIPTextConfig(width=TINY_CONTEXT_DIM, layers=2, heads=1, vocab_size=49408, embed_dim=64)
TINY_RESAMPLER = dict(
    dim=64, depth=1, dim_head=16, heads=2, num_queries=16, embedding_dim=64, output_dim=TINY_CONTEXT_DIM,
    ff_mult=2, video_length=8,
)


SMALL_CONTEXT_DIM = 32
SMALL_UNET = dict(
    in_channels=8, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=[4, 2, 1],
    dropout=0.0, channel_mult=[1, 2, 2], num_head_channels=16, context_dim=SMALL_CONTEXT_DIM, use_linear=True,
    temporal_length=8, default_fs=3,
)
SMALL_TEXT = CLIPTextConfig(width=SMALL_CONTEXT_DIM, layers=2, heads=1, vocab_size=49408, embed_dim=32)
SMALL_RESAMPLER = {**TINY_RESAMPLER, "output_dim": SMALL_CONTEXT_DIM}


def small_ldm_ddconfig() -> dict:
    """VAE x4 (3 levels, 32/64/64 channels): 64x64 frames -> 16x16x4 latents."""
    return {**tiny_ldm_ddconfig(), "ch_mult": [1, 2, 2], "num_res_blocks": 1, "resolution": 64}


@dataclass(frozen=True)
class Arch:
    """One base size: the U-Net params, the VAE's LDM ddconfig and the (stand-in) CLIP parts."""

    unet: dict
    ddconfig: dict
    text: CLIPTextConfig
    vision: CLIPVisionConfig
    resampler: dict


# tiny: the random stand-in (VAE x8, U-Net 2.2M); small: what `v2w pretrain` trains by default for
# 64x64 frames (VAE x4 so sprites survive in 16x16 latents, U-Net 3.3M, 32-d context)
ARCHS = {
    "tiny": Arch(TINY_UNET, tiny_ldm_ddconfig(), TINY_TEXT, TINY_VISION, TINY_RESAMPLER),
    "small": Arch(SMALL_UNET, small_ldm_ddconfig(), SMALL_TEXT, TINY_VISION, SMALL_RESAMPLER),
}


def inference_config(unet_params: dict, ddconfig: dict, scale_factor: float = 0.18215, resampler: dict | None = None) -> dict:
    """DynamiCrafter's inference YAML (as a dict) for a base with these parts."""
    return {
        "model": {
            "target": "lvdm.models.ddpm3d.LatentVisualDiffusion",
            "params": {
                "parameterization": "v", "rescale_betas_zero_snr": True, "linear_start": 0.00085,
                "linear_end": 0.012, "timesteps": 1000, "scale_factor": float(scale_factor), "perframe_ae": True,
                "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": dict(unet_params)},
                "first_stage_config": {"params": {"embed_dim": int(ddconfig["z_channels"]), "ddconfig": dict(ddconfig)}},
                "image_proj_stage_config": {"target": "lvdm.modules.encoders.resampler.Resampler", "params": dict(resampler or TINY_RESAMPLER)},
            },
        }
    }


def tiny_inference_config() -> dict:
    """The DynamiCrafter inference YAML (as a dict) matching the tiny checkpoint."""
    return inference_config(TINY_UNET, tiny_ldm_ddconfig())


def _schedule_buffers() -> dict[str, torch.Tensor]:
    """The DDPM buffers a DynamiCrafter checkpoint carries (its schedule has no zero-SNR rescale);
    v2w drops them on load, so only their names and shapes matter here."""
    sched = make_scheduler({"rescale_betas_zero_snr": False})
    buf = {name: torch.zeros(1000) for name in SCHEDULE_BUFFERS if name not in ("scale_factor", "logvar", "lvlb_weights")}
    buf["betas"], buf["alphas_cumprod"] = sched.betas.float(), sched.alphas_cumprod.float()
    buf["scale_arr"] = rescale_table(None, 1000)
    return buf


def random_parts(seed: int = 0, arch: Arch = ARCHS["tiny"], unet_params: dict | None = None) -> dict[str, torch.nn.Module]:
    """Seeded random U-Net (bidirectional), OpenCLIP text and vision towers and Resampler."""
    g = torch.Generator().manual_seed(seed)

    def randomize(module: torch.nn.Module) -> torch.nn.Module:
        out = {}
        for k, v in module.state_dict().items():
            if v.ndim >= 2:
                fan_in = int(np.prod(v.shape[1:]))
                out[k] = torch.randn(v.shape, generator=g) / max(fan_in, 1) ** 0.5
            elif k.endswith("weight") and ("norm" in k or "ln" in k):
                out[k] = 1 + 0.05 * torch.randn(v.shape, generator=g)
            else:
                out[k] = 0.02 * torch.randn(v.shape, generator=g)
        module.load_state_dict(out)
        return module

    unet = VideoUNet(UNetConfig.from_dict({**UNetConfig().to_dict(), **(unet_params or arch.unet)}))
    return {
        "unet": randomize(unet),
        "text": randomize(OpenCLIPTextTower(arch.text)),
        "vision": randomize(OpenCLIPVisionTower(arch.vision)),
        "resampler": randomize(Resampler(**arch.resampler)),
    }


def dynamicrafter_state_dict(
    unet: torch.nn.Module, vae_ldm: dict[str, torch.Tensor], text: torch.nn.Module, vision: torch.nn.Module, resampler: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """The parts under DynamiCrafter's Lightning prefixes; ``vae_ldm`` already in LDM keys (no prefix)."""
    sd: dict[str, torch.Tensor] = {}
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    sd.update({f"first_stage_model.{k}": v for k, v in vae_ldm.items()})
    sd.update({f"cond_stage_model.model.{k}": v for k, v in text.state_dict().items()})
    sd.update({f"embedder.model.{k}": v for k, v in vision.state_dict().items()})
    # DynamiCrafter deleted only the text *transformer* from the image embedder's OpenCLIP model
    sd.update({f"embedder.model.{k}": v.clone() for k, v in text.state_dict().items() if not k.startswith("transformer.")})
    sd.update({f"image_proj_model.{k}": v for k, v in resampler.state_dict().items()})
    sd.update(_schedule_buffers())
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def tiny_dynamicrafter_checkpoint(seed: int = 0) -> dict:
    """``{"state_dict": ...}`` exactly as a DynamiCrafter Lightning checkpoint lays it out."""
    parts = random_parts(seed)
    g = torch.Generator().manual_seed(seed + 1)
    vae = {}
    for k, shape in ldm_vae_shapes(tiny_ldm_ddconfig()).items():
        vae[k] = (
            torch.randn(shape, generator=g) / max(int(np.prod(shape[1:])), 1) ** 0.5 if len(shape) > 1
            else (1 + 0.05 * torch.randn(shape, generator=g)) if "norm" in k and k.endswith("weight")
            else 0.02 * torch.randn(shape, generator=g)
        )
    sd = dynamicrafter_state_dict(parts["unet"], vae, parts["text"], parts["vision"], parts["resampler"])
    return {"state_dict": sd, "global_step": 0, "epoch": 0}
