"""Benchmark ``causalize``: wall time and peak memory for the tiny base and the full 512 config.

The 512 run builds DynamiCrafter-512's U-Net with random weights (no 10 GB download needed),
causalizes it sharing unchanged weights, and runs the causality probe once; reading the real
checkpoint adds the disk time of mmap-loading it.

    python benchmarks/causalize.py [--skip-512]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-512", action="store_true")
    args = ap.parse_args()
    import tempfile

    from pipelines.causalize import CausalizeConfig, run
    from pipelines.models.surgery import causalize, check_causality
    from pipelines.models.unet import VideoUNet

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run(CausalizeConfig(ckpt="tiny-random", out=f"{tmp}/m"))
        print(f"tiny: causalize + probe + save {time.perf_counter() - t0:.2f} s, peak RSS {rss_mb():.0f} MB, leak {res.check['max_leak']:.2g}")
    if args.skip_512:
        return
    torch.manual_seed(0)
    t0 = time.perf_counter()
    base = VideoUNet.from_config("dynamicrafter-512").eval()
    t1 = time.perf_counter()
    n = sum(p.numel() for p in base.parameters())
    causal, report = causalize(base, "extrapolative", "per-frame", action_dim=7, return_report=True, share_weights=True)
    t2 = time.perf_counter()
    with torch.no_grad():
        chk = check_causality(causal, frames=4)
    t3 = time.perf_counter()
    print(
        f"512: {n / 1e9:.3f}B params; build {t1 - t0:.1f} s, causalize {t2 - t1:.1f} s "
        f"({report['temporal_convs']} temporal convs transferred), probe {t3 - t2:.1f} s "
        f"(leak {chk['max_leak']:.2g}); peak RSS {rss_mb() / 1024:.1f} GB"
    )


if __name__ == "__main__":
    main()
