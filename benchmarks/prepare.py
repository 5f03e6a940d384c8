"""Benchmark ``v2w prepare``: frames/s with 1 vs 2 decoding workers on a generated dataset.

Generates real Atari episodes (ale-py, random policy) as mp4 + npy, at least 5k frames, then
prepares them twice in this process (``--workers 1`` is the baseline) and prints the ratio.

    python benchmarks/prepare.py [--episodes 40] [--frames 128] [--size 128x128] [--store mp4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipelines.data.prepare import PrepareConfig, run
from pipelines.data.sample import make_atari_episodes
from pipelines.data.video import parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--size", default="128x128")
    ap.add_argument("--store", default="mp4", choices=["mp4", "npy"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        make_atari_episodes(raw, episodes=args.episodes, frames=args.frames, seed=0)
        total = sum(1 for _ in raw.glob("*.mp4")) * args.frames
        print(f"dataset: {args.episodes} Breakout episodes, ~{total} frames of 210x160 -> {args.size}, store={args.store}")
        rates, steady = {}, {}
        for w in args.workers:
            cfg = PrepareConfig(
                sources=[str(raw)], out=str(Path(tmp) / f"data{w}"), size=parse_size(args.size),
                num_actions=4, workers=w, store=args.store, shard_size=64,
            )
            marks = []  # (seconds, frames) after each episode
            t0 = time.perf_counter()
            res = run(cfg, on_progress=lambda p: marks.append((time.perf_counter() - t0, p["frames_done"])))
            dt = time.perf_counter() - t0
            rates[w] = res.frames_decoded / dt
            # steady state: from the first finished episode on (leaves out worker start-up)
            (t1, f1), (t2, f2) = next(m for m in marks if m[1] > 0), marks[-1]
            steady[w] = (f2 - f1) / (t2 - t1)
            print(f"workers={w}: {res.frames_decoded} frames in {dt:.2f} s = {rates[w]:.0f} frames/s "
                  f"(steady state {steady[w]:.0f} frames/s)")
        base = args.workers[0]
        for w in args.workers[1:]:
            print(f"speed-up workers={w} vs workers={base}: {rates[w] / rates[base]:.2f}x overall, "
                  f"{steady[w] / steady[base]:.2f}x steady state")


if __name__ == "__main__":
    main()
