"""Benchmark ``v2w train``: a full training step vs a bare U-Net forward+backward, same process.

(a) baseline: the U-Net alone, forward + backward + AdamW step on random inputs of the training
    shapes (per-frame timesteps, context, actions);
(b) ``v2w train`` steps on real Breakout clips (data stream, Diffusion-Forcing loss, conditioning,
    CLIP image tokens, Resampler, EMA, grad clipping, logging), once with pre-encoded latents and
    once encoding with the VAE on the fly.
Prints samples/s, peak RSS and the ratio time(b) / time(a) (goal <= 1.2 with latents).

    python benchmarks/train.py [--steps 20] [--batch-size 2] [--size 64]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()

    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize
    from pipelines.data.encode import encode_latents
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.prepare import run as prepare
    from pipelines.data.sample import make_atari_episodes
    from pipelines.models.world_model import load_model
    from pipelines.train import TrainConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_atari_episodes(tmp / "raw", episodes=8, frames=64)
        prepare(PrepareConfig(sources=[str(tmp / "raw")], out=str(tmp / "data"), size=(args.size, args.size),
                              resize="stretch", clip_len=args.frames, stride=4, num_actions=4, shard_size=16, store="npy"))
        causalize(CausalizeConfig(ckpt="tiny-random", out=str(tmp / "model"), action_dim=4, action_type="discrete"))
        torch.manual_seed(0)

        # (a) the bare U-Net
        model = load_model(tmp / "model")
        unet = model.unet.train()
        c = unet.config
        b, t, h = args.batch_size, args.frames, args.size // 8
        x = torch.randn(b, c.in_channels, t, h, h)
        ctx = torch.randn(b, 77 + t * 16, c.context_dim)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)

        def bare_step():
            ts = torch.randint(0, 1000, (b, t))
            acts = torch.nn.functional.one_hot(torch.randint(0, 4, (b, t)), 4).float()
            loss = unet(x, ts, context=ctx, fs=torch.full((b,), 3), actions=acts).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(3):
            bare_step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            bare_step()
        bare = (time.perf_counter() - t0) / args.steps
        print(f"(a) bare U-Net fwd+bwd+AdamW: {bare * 1000:.1f} ms/step, {b / bare:.1f} samples/s, peak RSS {peak_mb():.0f} MB")

        # (b) v2w train, with and without pre-encoded latents
        results = {}
        for label in ("VAE on the fly", "pre-encoded latents"):
            if label == "pre-encoded latents":
                encode_latents(tmp / "data", tmp / "model")
            warm = TrainConfig(model=str(tmp / "model"), data=str(tmp / "data"), out=str(tmp / f"w{len(results)}"),
                               steps=args.steps + 3, batch_size=b, save_every=10**9, log_every=10**9, device="cpu")
            marks = []
            run(warm, on_progress=lambda p: marks.append(time.perf_counter()))
            per = (marks[-1] - marks[2]) / (len(marks) - 3)  # leave out start-up and the first steps
            results[label] = per
            print(f"(b) v2w train ({label}): {per * 1000:.1f} ms/step, {b / per:.1f} samples/s, peak RSS {peak_mb():.0f} MB")
        for label, per in results.items():
            print(f"ratio train step / bare U-Net step ({label}): {per / bare:.2f}x")


if __name__ == "__main__":
    main()
