"""Benchmark an imported official Vid2World model: v2w's exact activation cache vs the official
sampler's window recomputation, same weights, same process.

The official sampler pushes the whole window through the U-Net at every DDIM step (its GroupNorms
pool over the window's frames, so nothing can be reused): that is the ``pooled`` import with
``--no-cache``. Imported with ``--norm per-frame`` the model is exactly causal and v2w's cache
computes only the new frame per step. Both run the vid2world sampling profile with guidance 2.5.

``--arch 512``: the released U-Net's architecture (320 channels, [1, 2, 4, 4], 1.4B parameters,
random weights: no checkpoint can be downloaded here), at a small latent (``--latent``, default
8x8) so a CPU run takes minutes; the VAE and CLIP parts are the tiny stand-ins (the U-Net is the
cost). ``--arch tiny``: the tiny official-layout model of the tests. Prints frames/s of each, the
ratio, the U-Net frame passes (the compute, machine-independent), and how far the per-frame
model's rollout is from the pooled one (random weights: an upper bound of what trained ones show).

    python benchmarks/official.py [--arch 512] [--latent 8] [--context 4] [--horizon 4] [--steps 2] [--window 8]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch


def build(arch: str, norm: str):
    from pipelines.models.resampler import Resampler
    from pipelines.models.tiny import ARCHS, random_parts, tiny_dynamicrafter_checkpoint
    from pipelines.models.unet import VideoUNet
    from pipelines.models.vae import load_vae, tiny_ldm_ddconfig
    from pipelines.models.vid2world import OFFICIAL_CONFIGS, unet_config_from_official
    from pipelines.models.world_model import WorldModel
    from pipelines.official import TINY_OFFICIAL_UNET

    params = OFFICIAL_CONFIGS["csgo"] if arch == "512" else {**TINY_OFFICIAL_UNET, "action_dim": 51}
    config = unet_config_from_official(params, norm)
    torch.manual_seed(0)
    unet = VideoUNet(config).eval()
    with torch.no_grad():  # the zero-initialised layers too: a trained model's output is not zero
        for name, p in unet.named_parameters():
            if p.ndim >= 2 and p.abs().max() == 0:
                p.normal_(0, 0.02)
    tiny = ARCHS["tiny"]
    parts = random_parts(0, replace(tiny, resampler={**tiny.resampler, "output_dim": config.context_dim, "video_length": 16}))
    vae, _ = load_vae(tiny_dynamicrafter_checkpoint()["state_dict"], "first_stage_model.", tiny_ldm_ddconfig())
    proj = Resampler(**{**tiny.resampler, "output_dim": config.context_dim, "video_length": 16})
    proj.load_state_dict(parts["resampler"].state_dict())
    empty = torch.randn(1, 77, config.context_dim) * 0.1
    meta = {"fps": 3, "context_layout": "vid2world", "action_normalization": "none",
            "sampling": {"profile": "vid2world", "guidance": 2.5}}
    return WorldModel(unet, vae, parts["vision"], proj, empty, meta).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["512", "tiny"], default="512")
    ap.add_argument("--latent", type=int, default=8, help="latent frames are L x L (pixels 8L x 8L)")
    ap.add_argument("--context", type=int, default=4)
    ap.add_argument("--horizon", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--window", type=int, default=8)
    args = ap.parse_args()

    from pipelines.data.sources.csgo_hdf5 import encode_action
    from pipelines.sampler import Roller, RolloutConfig

    size = 8 * args.latent
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, args.context, size, size) * 2 - 1
    acts = torch.from_numpy(encode_action(["w"], [], 30, 0))[None, None].repeat(1, args.context + args.horizon, 1)
    out, rate, passes = {}, {}, {}
    for norm, cache in (("pooled", False), ("per-frame", True)):
        model = build(args.arch, norm)
        n_params = sum(p.numel() for p in model.unet.parameters())
        with torch.no_grad():
            lat = model.encode_frames(pixels)
        r = Roller(model, RolloutConfig(steps=args.steps, cache=cache, window=args.window, seed=0))
        t0 = time.perf_counter()
        out[norm] = r.rollout(lat, pixels, acts, args.horizon)
        dt = time.perf_counter() - t0
        rate[norm], passes[norm] = args.horizon / dt, r.frame_passes
        print(f"{norm:9s} cache={str(cache):5s}: {args.horizon} frames in {dt:.1f} s = {rate[norm]:.4f} frames/s, "
              f"{r.frame_passes} U-Net frame passes (U-Net {n_params / 1e6:.0f}M parameters, latent {args.latent}x{args.latent})")
        del model, r
    diff = (out["per-frame"] - out["pooled"]).abs()
    print(f"cache (per-frame norm) vs the official window recomputation (pooled): {rate['per-frame'] / rate['pooled']:.1f}x "
          f"frames/s, {passes['pooled'] / passes['per-frame']:.1f}x fewer frame passes; per-frame vs pooled latents: "
          f"max abs diff {diff.max():.3g}, mean {diff.mean():.3g} (latent std {out['pooled'].std():.3g})")


if __name__ == "__main__":
    main()
