"""Benchmark ``v2w rollout``: frames/s with the exact activation cache vs without, same process.

Tiny causal model (per-frame norms, 4 discrete actions), 256x256 frames, window 16, DDIM steps,
causal action guidance on; 1 context frame, then enough frames to fill the window and slide it.
Prints both rates, the speed-up (goal >= 5x), the U-Net frame passes of each (the compute, which
the cache cuts by ~window x once the window is full) and the max abs difference of the latents.
At small frame sizes the tiny U-Net's fixed per-call cost dominates and the measured speed-up
falls towards 1 + (per-frame compute share); at real sizes compute dominates.

    python benchmarks/rollout.py [--horizon 18] [--steps 20] [--window 16] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--horizon", type=int, default=18)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()

    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize
    from pipelines.models.world_model import load_model
    from pipelines.sampler import Roller, RolloutConfig

    with tempfile.TemporaryDirectory() as tmp:
        causalize(CausalizeConfig(ckpt="tiny-random", out=f"{tmp}/m", action_dim=4, action_type="discrete"))
        model = load_model(f"{tmp}/m")
    torch.manual_seed(0)
    model.unet.action_encoder.embedding.data.normal_(0, 1.0)
    pixels = torch.rand(1, 3, 1, args.size, args.size) * 2 - 1
    with torch.no_grad():
        lat = model.encode_frames(pixels)
    acts = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 1 + args.horizon)), 4).float()
    out, rate, passes = {}, {}, {}
    for cache in (True, False):
        r = Roller(model, RolloutConfig(steps=args.steps, cache=cache, window=args.window))
        t0 = time.perf_counter()
        out[cache] = r.rollout(lat, pixels, acts, args.horizon)
        dt = time.perf_counter() - t0
        rate[cache] = args.horizon / dt
        passes[cache] = r.frame_passes
        print(f"cache={cache}: {args.horizon} frames in {dt:.1f} s = {rate[cache]:.3f} frames/s "
              f"({dt / args.horizon:.2f} s/frame), {r.frame_passes} U-Net frame passes")
    print(f"speed-up with cache: {rate[True] / rate[False]:.1f}x measured, {passes[False] / passes[True]:.1f}x fewer "
          f"frame passes; max abs diff {(out[True] - out[False]).abs().max():.2e}")


if __name__ == "__main__":
    main()
