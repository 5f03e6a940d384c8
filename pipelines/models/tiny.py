"""A tiny base checkpoint in DynamiCrafter's own Lightning layout (``--ckpt tiny``).

Same prefixes, key names and structure as ``Doubiiu/DynamiCrafter_512/model.ckpt``, at a size
that runs on a CPU in milliseconds, so every code path the real checkpoint takes is exercised
by tests and by the quickstart. The weights here are a seeded random initialisation (an
architecture stand-in, not a trained video model). That includes the VAE: its decode(encode(x))
round trip is ~6 dB PSNR, so pixels predicted through it are not meaningful. A trained tiny base
in the same layout is future work (issue 8: ``v2w pretrain``).
"""

from __future__ import annotations

import numpy as np
import torch

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


def tiny_inference_config() -> dict:
    """The DynamiCrafter inference YAML (as a dict) matching the tiny checkpoint."""
    return {
        "model": {
            "target": "lvdm.models.ddpm3d.LatentVisualDiffusion",
            "params": {
                "parameterization": "v", "rescale_betas_zero_snr": True, "linear_start": 0.00085,
                "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215, "perframe_ae": True,
                "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": dict(TINY_UNET)},
                "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": tiny_ldm_ddconfig()}},
                "image_proj_stage_config": {"target": "lvdm.modules.encoders.resampler.Resampler", "params": dict(TINY_RESAMPLER)},
            },
        }
    }


def _schedule_buffers() -> dict[str, torch.Tensor]:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    buf = {name: torch.zeros(1000) for name in SCHEDULE_BUFFERS if name not in ("scale_factor", "logvar", "lvlb_weights")}
    buf["betas"], buf["alphas_cumprod"] = torch.tensor(betas, dtype=torch.float32), torch.tensor(ac, dtype=torch.float32)
    buf["scale_arr"] = torch.tensor(np.concatenate([np.linspace(1, 0.7, 400), np.full(600, 0.7)]), dtype=torch.float32)
    return buf


def tiny_dynamicrafter_checkpoint(seed: int = 0) -> dict:
    """``{"state_dict": ...}`` exactly as a DynamiCrafter Lightning checkpoint lays it out."""
    g = torch.Generator().manual_seed(seed)

    def randomize(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in module.state_dict().items():
            if v.ndim >= 2:
                fan_in = int(np.prod(v.shape[1:]))
                out[k] = torch.randn(v.shape, generator=g) / max(fan_in, 1) ** 0.5
            elif k.endswith("weight") and ("norm" in k or "ln" in k):
                out[k] = 1 + 0.05 * torch.randn(v.shape, generator=g)
            else:
                out[k] = 0.02 * torch.randn(v.shape, generator=g)
        return out

    sd: dict[str, torch.Tensor] = {}
    unet = VideoUNet(UNetConfig.from_dict({**UNetConfig().to_dict(), **TINY_UNET}))
    sd.update({f"model.diffusion_model.{k}": v for k, v in randomize(unet).items()})
    dd = tiny_ldm_ddconfig()
    for k, shape in ldm_vae_shapes(dd).items():
        sd[f"first_stage_model.{k}"] = (
            torch.randn(shape, generator=g) / max(int(np.prod(shape[1:])), 1) ** 0.5 if len(shape) > 1
            else (1 + 0.05 * torch.randn(shape, generator=g)) if "norm" in k and k.endswith("weight")
            else 0.02 * torch.randn(shape, generator=g)
        )
    text = OpenCLIPTextTower(TINY_TEXT)
    sd.update({f"cond_stage_model.model.{k}": v for k, v in randomize(text).items()})
    vision = OpenCLIPVisionTower(TINY_VISION)
    sd.update({f"embedder.model.{k}": v for k, v in randomize(vision).items()})
    # DynamiCrafter deleted only the text *transformer* from the image embedder's OpenCLIP model
    leftovers = {k: v for k, v in randomize(text).items() if not k.startswith("transformer.")}
    sd.update({f"embedder.model.{k}": v for k, v in leftovers.items()})
    sd.update({f"image_proj_model.{k}": v for k, v in randomize(Resampler(**TINY_RESAMPLER)).items()})
    sd.update(_schedule_buffers())
    return {"state_dict": sd, "global_step": 0, "epoch": 0}
