"""The paper-scale path on a GPU, as one time-limited command that writes a JSON and a markdown table.

1. train: the 512 U-Net (random weights in the real shapes, causalized, 7 continuous actions) with
   its CLIP ViT-H/14 image encoder and Resampler, bf16 autocast around fp32 weights, gradient
   checkpointing, batch 1, 16 frames at 320x512 (pre-encoded 40x64 latents, as `v2w encode`
   writes them): `v2w train`'s own step (`pipelines.train.train_step`: Diffusion-Forcing loss,
   backward, grad clip, AdamW, EMA) -> s/step and peak memory, with and without EMA, for
   `--train all` and `--train temporal`;
2. rollout: the same model, window 16 (15 context frames, then 2 predicted: the first fills the
   window, the second slides it), causal action guidance 2.5, bf16, 50 and 10 DDIM steps, with the
   activation cache and without -> s/frame of each and the max abs difference of the latents;
3. the tiny world model recipe's training (`examples/tiny_world_model.sh` GPU defaults: the shipped
   small base, batch 64, bf16, lr 2e-4, cosine, EMA 0.999) on fresh Boxing clips for one minute
   -> samples/s.

Each item is written to OUT/gpu.json as soon as it finishes (a killed run keeps what it measured);
an item that would start after its part's share of ``--time-limit`` is skipped and says so; an
out-of-memory error is recorded, not raised.

    python benchmarks/gpu.py --out bench-gpu [--time-limit 8] [--device cuda]
    python benchmarks/gpu.py --out /tmp/smoke --cpu-smoke     # the same code paths, tiny, CPU, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from pipelines.devices import resolve_device
from pipelines.fileio import write_bytes_atomic, write_json_atomic
from pipelines.models.clip import CLIPVisionConfig
from pipelines.models.tiny import TINY_RESAMPLER, TINY_UNET, TINY_VISION
from pipelines.models.unet import UNetConfig

PAPER_RESAMPLER = dict(dim=1024, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280, output_dim=1024,
                       ff_mult=4, video_length=16)


@dataclass(frozen=True)
class Scale:
    """What the benchmark runs at: the paper's 512 model on a GPU, or a tiny stand-in on the CPU."""

    name: str
    unet: UNetConfig
    vision: CLIPVisionConfig
    resampler: dict
    height: int
    width: int
    frames: int  # training clip length = rollout window
    train_steps: int  # timed steps per train item (after warm-up)
    ddim_steps: tuple[int, ...]
    recipe: dict = field(default_factory=dict)  # part 3: data and train settings


def paper_scale() -> Scale:
    return Scale("dynamicrafter-512", UNetConfig.from_dynamicrafter("dynamicrafter-512"), CLIPVisionConfig(),
                 PAPER_RESAMPLER, 320, 512, 16, 5, (50, 10),
                 dict(episodes=16, frames=200, batch=64, minutes=1.0, log_every=10))


def smoke_scale() -> Scale:
    unet = UNetConfig.from_dict({**UNetConfig().to_dict(), **TINY_UNET})
    return Scale("tiny (cpu smoke)", unet, TINY_VISION, TINY_RESAMPLER, 32, 32, 4, 2, (3, 2),
                 dict(episodes=2, frames=40, batch=4, minutes=0.05, log_every=1))


# ---------------------------------------------------------------- building blocks


def build_world_model(scale: Scale, device: torch.device, action_dim: int = 7):
    """The causal world model at ``scale`` with random weights (none left at zero), built directly on ``device``:
    causalized U-Net (per-frame norms, actions on the time embedding), image encoder, Resampler,
    a random stand-in for the empty-text context; no VAE (latents are given)."""
    from pipelines.models.clip import OpenCLIPVisionTower
    from pipelines.models.resampler import Resampler
    from pipelines.models.surgery import causalize
    from pipelines.models.unet import VideoUNet
    from pipelines.models.world_model import WorldModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = causalize(VideoUNet(scale.unet), action_dim=action_dim, action_type="continuous", share_weights=True)
        for p in unet.parameters():  # zero-initialised layers (output conv, action encoder's last layer): random
            if p.ndim >= 2 and not p.any():  # too, or v == 0 and the rollout would measure nothing
                p.data.normal_(0, 0.02)
        return WorldModel(unet, None, OpenCLIPVisionTower(scale.vision), Resampler(**scale.resampler),
                          torch.randn(1, 77, scale.unet.context_dim), {"fps": 3})


def synthetic_clip(scale: Scale, action_dim: int, seed: int) -> dict:
    """One training sample as ClipStream yields it: frames (T, 3, H, W), latents (T, 4, h, w), actions (T, A)."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = scale.frames, scale.height, scale.width
    return {"frames": torch.rand(t, 3, h, w, generator=g) * 2 - 1, "latents": torch.randn(t, 4, h // 8, w // 8, generator=g),
            "actions": torch.randn(t, action_dim, generator=g), "key": f"synthetic-{seed}"}


class Meter:
    """Wall time (synchronised on a GPU) and peak memory of the device since ``reset``."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (CPU: monotone)


# ---------------------------------------------------------------- the three parts


def train_item(scale: Scale, device: torch.device, which: str, ema: bool, tmp: Path) -> dict:
    from accelerate import Accelerator

    from pipelines.train import TrainConfig, train_step, training_session

    meter = Meter(device)
    meter.reset()
    action_dim = 7
    model = build_world_model(scale, device, action_dim)
    cfg = TrainConfig(model="(in memory)", data="(synthetic)", out=str(tmp / "run"), steps=1000, batch_size=1, lr=1e-5,
                      precision="bf16", ema_decay=0.9999 if ema else 0.0, gradient_checkpointing=True, train=which,
                      device=str(device))
    acc = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
    s = training_session(cfg, acc, model)
    model.unet.train()
    model.image_proj.train()
    clip = synthetic_clip(scale, action_dim, 0)
    samples = iter(lambda: (0, 0, clip), None)
    trainable = sum(p.numel() for p in s.params)
    times, losses = [], []
    for k in range(2 + scale.train_steps):  # 2 warm-up steps (allocator, cuDNN autotuning)
        meter.sync()
        t0 = time.perf_counter()
        loss, *_ = train_step(s, samples, k)
        meter.sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    out = {"train": which, "ema": ema, "s_per_step": sum(times[2:]) / len(times[2:]), "peak_memory_gb": meter.peak_gb(),
           "trainable_params_m": trainable / 1e6, "total_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "loss_finite": all(math.isfinite(x) for x in losses)}
    del s, model, acc
    meter.reset()
    return out


def rollout_item(model, scale: Scale, device: torch.device, steps: int, precision: str, cache: bool) -> tuple[dict, torch.Tensor]:
    from pipelines.sampler import Roller, RolloutConfig

    meter = Meter(device)
    meter.reset()
    g = torch.Generator().manual_seed(1)
    n_ctx, horizon = scale.frames - 1, 2
    lat = torch.randn(1, 4, n_ctx, scale.height // 8, scale.width // 8, generator=g).to(device)
    pixels = (torch.rand(1, 3, n_ctx, scale.height, scale.width, generator=g) * 2 - 1).to(device)
    acts = torch.randn(1, n_ctx + horizon, 7, generator=g).to(device)
    roller = Roller(model, RolloutConfig(steps=steps, cache=cache, window=scale.frames, guidance=2.5, precision=precision))
    meter.sync()
    out = roller.rollout(lat, pixels, acts, horizon)
    meter.sync()
    return {"ddim_steps": steps, "precision": precision, "cache": cache, "s_per_frame_fill": roller.timing[0], "s_per_frame_slide": roller.timing[1],
            "unet_frame_passes": roller.frame_passes, "peak_memory_gb": meter.peak_gb()}, out.float().cpu()


def recipe_item(scale: Scale, device: torch.device, tmp: Path) -> dict:
    """examples/tiny_world_model.sh's world-model training at its GPU defaults, on fresh Boxing clips."""
    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.prepare import run as prepare
    from pipelines.data.sample import make_atari_episodes
    from pipelines.train import TrainConfig, run

    r = scale.recipe
    make_atari_episodes(tmp / "raw", game="boxing", episodes=r["episodes"], frames=r["frames"], seed=5000,
                        full_action_space=True)
    prepare(PrepareConfig(sources=[str(tmp / "raw")], out=str(tmp / "data"), size=(64, 64), resize="stretch", clip_len=8,
                          stride=4, val_fraction=0.0, num_actions=18, store="npy"))
    causalize(CausalizeConfig(ckpt="tiny", out=str(tmp / "model"), action_dim=18, action_type="discrete", device=str(device)))
    cfg = TrainConfig(model=str(tmp / "model"), data=str(tmp / "data"), out=str(tmp / "run"), steps=100_000,
                      batch_size=r["batch"], lr=2e-4, warmup=100, lr_schedule="cosine", ema_decay=0.999,
                      precision="bf16", save_every=100_000, log_every=r["log_every"], device=str(device), time_limit=r["minutes"])
    t0 = time.perf_counter()
    res = run(cfg)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [x["samples_per_s"] for x in recs[1:]] or [x["samples_per_s"] for x in recs]  # the first window has the warm-up
    return {"steps": res.steps, "batch": r["batch"], "samples_per_s": sum(rates) / max(len(rates), 1),
            "wall_s_incl_setup": wall, "loss_first": res.losses[0], "loss_last": res.losses[-1]}


# ---------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = [f"# benchmarks/gpu.py: {report['scale']} on {report['device_name']}", "",
             f"{report['frames']} frames at {report['height']}x{report['width']}", "",
             f"torch {report['versions']['torch']}, python {report['versions']['python']}, "
             f"{report['seconds']:.0f} s in all (limit {report['time_limit_min']} min)", ""]
    lines += ["## 1. Train step (batch 1, bf16 autocast, gradient checkpointing; `v2w train`'s step)", "",
              "| --train | EMA | s/step | peak memory (GB) | trainable params (M) |", "|---|---|---|---|---|"]
    for r in report["train"]:
        if "error" in r:
            lines.append(f"| {r['train']} | {'on' if r['ema'] else 'off'} | {r['error']} | | |")
        else:
            lines.append(f"| {r['train']} | {'on' if r['ema'] else 'off'} | {r['s_per_step']:.3f} | {r['peak_memory_gb']:.1f} "
                         f"| {r['trainable_params_m']:.0f} |")
    lines += ["", f"## 2. Rollout (window {report['window']}, guidance 2.5)", "",
              "| DDIM steps | precision | cache | s/frame (filling the window) | s/frame (sliding) | U-Net frame passes "
              "| peak memory (GB) |", "|---|---|---|---|---|---|---|"]
    for r in report["rollout"]:
        if "error" in r:
            lines.append(f"| {r['ddim_steps']} | {r['precision']} | {r['cache']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['ddim_steps']} | {r['precision']} | {'on' if r['cache'] else 'off'} | {r['s_per_frame_fill']:.2f} "
                         f"| {r['s_per_frame_slide']:.2f} | {r['unet_frame_passes']} | {r['peak_memory_gb']:.1f} |")
    for what, d in report.get("cache_vs_no_cache", {}).items():
        lines.append(f"\n{what}: cache vs no cache max abs diff {d['max_abs_diff']:.3g} (latent std {d['latent_std']:.3g}); "
                     f"speed-up {d['speedup_slide']:.1f}x sliding, {d['speedup_fill']:.1f}x filling")
    lines += ["", "## 3. Tiny world model recipe (GPU defaults)", ""]
    rec = report.get("recipe") or {}
    if "samples_per_s" in rec:
        lines.append(f"{rec['samples_per_s']:.0f} samples/s (batch {rec['batch']}, {rec['steps']} steps; loss "
                     f"{rec['loss_first']:.3f} -> {rec['loss_last']:.3f})")
    else:
        lines.append(str(rec.get("error", "not run")))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--time-limit", type=float, default=8.0, help="minutes for everything (default 8)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU: checks the code paths in < 1 min")
    ap.add_argument("--parts", default="train,rollout,recipe", help="which parts, comma-separated")
    args = ap.parse_args(argv)

    device = torch.device("cpu") if args.cpu_smoke else resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    scale = smoke_scale() if args.cpu_smoke else paper_scale()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    limit = args.time_limit * 60
    share = {"train": 0.45, "rollout": 0.35, "recipe": 0.20}  # of the time limit; unused time carries over
    report = {"kind": "v2w-gpu-benchmark", "scale": scale.name, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda},
              "time_limit_min": args.time_limit, "window": scale.frames, "frames": scale.frames, "height": scale.height, "width": scale.width, "train": [], "rollout": [], "cache_vs_no_cache": {}, "recipe": None,
              "skipped": [], "seconds": 0.0}

    def save() -> None:
        report["seconds"] = time.time() - t_start
        write_json_atomic(out / "gpu.json", report)
        write_bytes_atomic(out / "gpu.md", markdown(report).encode())

    def deadline(part: str) -> float:
        done = sum(share[p] for p in share if p in parts and list(share).index(p) <= list(share).index(part))
        return t_start + limit * done / sum(share[p] for p in parts)

    def attempt(part: str, what: dict, fn, *args):
        if time.time() > deadline(part):
            report["skipped"].append({**what, "part": part, "why": "its share of --time-limit was used up"})
            print(f"skip {part} {what}: out of time", flush=True)
            return None
        try:
            res = fn(*args)
        except torch.cuda.OutOfMemoryError as e:
            res = {**what, "error": f"out of memory ({str(e).splitlines()[0][:120]})"}
        except Exception as e:  # one failed item must not lose the others
            traceback.print_exc()
            res = {**what, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        shown = res if isinstance(res, dict) else res[0] if isinstance(res, tuple) else type(res).__name__
        print(f"{part} {json.dumps(shown, default=str)}", flush=True)
        return res

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "train" in parts:
            for which in ("all", "temporal"):
                for ema in (True, False):
                    res = attempt("train", {"train": which, "ema": ema}, train_item, scale, device, which, ema, tmp / f"{which}{ema}")
                    if res is not None:
                        report["train"].append(res)
                        save()
        if "rollout" in parts:
            model = attempt("rollout", {"build": True}, build_world_model, scale, device)
            if isinstance(model, torch.nn.Module):
                # bf16 at both step counts (the speed), fp32 at the fewer (the cache's exactness without bf16 rounding)
                for steps, precision in ((scale.ddim_steps[0], "bf16"), (scale.ddim_steps[1], "bf16"), (scale.ddim_steps[1], "fp32")):
                    latents = {}
                    for cache in (True, False):
                        res = attempt("rollout", {"ddim_steps": steps, "precision": precision, "cache": cache},
                                      rollout_item, model, scale, device, steps, precision, cache)
                        if res is None:
                            continue
                        item = res if isinstance(res, dict) else res[0]
                        if isinstance(res, tuple):
                            latents[cache] = res[1]
                        report["rollout"].append(item)
                        save()
                    if len(latents) == 2:
                        on, off = report["rollout"][-2:]
                        report["cache_vs_no_cache"][f"{steps} steps {precision}"] = {
                            "max_abs_diff": float((latents[True] - latents[False]).abs().max()),
                            "latent_std": float(latents[False].std()),
                            "speedup_slide": off["s_per_frame_slide"] / on["s_per_frame_slide"],
                            "speedup_fill": off["s_per_frame_fill"] / on["s_per_frame_fill"],
                        }
                        save()
                del model
                Meter(device).reset()
        if "recipe" in parts:
            res = attempt("recipe", {}, recipe_item, scale, device, tmp / "recipe")
            report["recipe"] = res if res is not None else {"error": "skipped: out of time"}
            save()
    save()
    print(markdown(report))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
