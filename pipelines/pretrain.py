"""``v2w pretrain``: a small *bidirectional* video diffusion base trained from scratch, written in
DynamiCrafter's own checkpoint layout: the stand-in for an internet-pretrained model.

Two stages, both on DATA's train split (actions ignored):
  1. the VAE (diffusers ``AutoencoderKL`` from an LDM ddconfig): L1 + L2 reconstruction of single
     frames from a posterior sample, + a small KL term (LDM's recipe minus LPIPS/GAN, which need
     weights we cannot download); then the latent scale is 1/std of the posterior means (LDM's
     ``scale_by_std``). ``vae_shift`` translates each training frame by up to that many pixels
     (wrapping around), so the VAE cannot memorise where things sit on a few games' screens:
     scrolled and moved views must round-trip too (``shift_round_trip`` measures it per shift);
  2. the U-Net (+ Resampler) as DynamiCrafter trains it: one noise level per clip for all its
     frames (``noise_levels="shared"``), v-prediction on the zero-terminal-SNR schedule, frame-0
     latent concatenated, frame-0 CLIP tokens as context. This is ``v2w train``'s loop, so it gets
     its checkpoints, resume, EMA, precision and multi-GPU for free. The CLIP towers stay seeded
     random and frozen (a tiny stand-in for OpenCLIP: its image tokens still carry frame 0).

::

    BASE/
      model.ckpt       {"state_dict": model.diffusion_model.*, first_stage_model.* (LDM keys),
                        cond_stage_model.model.*, embedder.model.*, image_proj_model.*, schedule
                        buffers; "global_step", "epoch"}: tensors only, loads with weights_only=True
      inference.yaml   DynamiCrafter's inference YAML for it (unet_config, ddconfig, scale_factor, ...)
      pretrain.json    the recipe and what was measured (VAE round-trip PSNR, losses, seconds)
      work/            vae.safetensors, init/ (the untrained MODEL), run/ (the U-Net's train RUN)

``v2w causalize --ckpt BASE`` then takes exactly the code path of the real checkpoint.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from pipelines import __version__
from pipelines.data.prepare import load_manifest
from pipelines.data.stream import ClipStream
from pipelines.devices import resolve_device
from pipelines.errors import V2WError
from pipelines.fileio import read_json, write_bytes_atomic, write_json_atomic
from pipelines.models.clip import compute_empty_text_context
from pipelines.models.dynamicrafter import load_dynamicrafter_base
from pipelines.models.resampler import Resampler
from pipelines.models.tiny import ARCHS, dynamicrafter_state_dict, inference_config, random_parts
from pipelines.models.unet import UNetConfig, VideoUNet
from pipelines.models.vae import vae_config_from_ldm, vae_to_ldm_state_dict
from pipelines.models.world_model import WorldModel, load_model
from pipelines.statedict import load_strict, read_safetensors
from pipelines.train import TrainConfig, list_checkpoints, loss_curve
from pipelines.train import run as train


@dataclass
class PretrainConfig:
    data: str  # DATA folder (v2w prepare)
    out: str  # BASE folder
    arch: str = "small"  # tiny | small (pipelines.models.tiny.ARCHS)
    vae_steps: int = 2000
    vae_batch_size: int = 32  # frames
    vae_lr: float = 5e-4
    kl_weight: float = 1e-6
    steps: int = 2000  # U-Net optimizer steps
    batch_size: int = 8  # clips
    lr: float = 2e-4
    warmup: int = 100
    ema_decay: float = 0.999
    cond_dropout: float = 0.05
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 500
    log_every: int = 50
    resume: bool = False
    device: str | None = None
    vae_time_limit: float | None = None  # minutes for the VAE stage (then it stops where it is)
    time_limit: float | None = None  # minutes for the U-Net stage (then it stops and exports what it has)
    half: bool = False  # store model.ckpt in float16 (half the size; loaders upcast to float32)
    vae_shift: int = 0  # random translation (px, wrap-around) of every VAE training frame; 0 = none
    init: str | None = None  # a BASE folder (or --ckpt name) to start the VAE and U-Net from instead of random

    def __post_init__(self) -> None:  # every setting checked once, on construction
        if self.arch not in ARCHS:
            raise V2WError(f"--arch must be one of {{{', '.join(ARCHS)}}}. Got {self.arch!r}")
        if min(self.vae_steps, self.steps, self.batch_size, self.vae_batch_size) < 0 or self.batch_size < 1:
            raise V2WError("--steps, --vae-steps and the batch sizes must be >= 0 (batch sizes >= 1)")
        if self.vae_shift < 0:
            raise V2WError(f"--vae-shift must be >= 0 pixels. Got {self.vae_shift}")


@dataclass
class PretrainResult:
    out: Path
    report: dict


def _frames(samples, n: int, generator: torch.Generator) -> torch.Tensor:
    """n single frames (n, 3, H, W) in [-1, 1], drawn from the clip stream (random frame per clip)."""
    out = []
    while len(out) < n:
        frames = next(samples)[2]["frames"]  # (T, 3, H, W)
        pick = torch.randperm(frames.shape[0], generator=generator)[: max(1, frames.shape[0] // 2)]
        out.extend(frames[pick])
    return torch.stack(out[:n])


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each frame of (N, 3, H, W) rolled by its own (dy, dx) in [-max_shift, max_shift] (wrap-around)."""
    if max_shift <= 0:
        return x
    d = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator)
    return torch.stack([torch.roll(f, (int(dy), int(dx)), dims=(1, 2)) for f, (dy, dx) in zip(x, d)])


@torch.no_grad()
def shift_round_trip(vae, x: torch.Tensor, shifts=(0, 1, 2, 4, 8, 16)) -> dict[str, float]:
    """Round-trip PSNR (dB, posterior mean) of frames (N, 3, H, W) in [-1, 1] translated by s px
    along both axes (wrap-around): a VAE that memorised positions loses dB as s grows."""
    out = {}
    for sh in shifts:
        xs = torch.roll(x, (sh, sh), dims=(2, 3))
        rec = torch.cat([vae.decode(vae.encode(xs[i : i + 32]).latent_dist.mode()).sample for i in range(0, len(xs), 32)])
        out[str(sh)] = round(psnr_pm1(rec, xs), 2)
    return out


def psnr_pm1(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1] (data range 2), over the whole batch."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train_vae(vae, data: str, cfg: PretrainConfig, device, on_progress=None) -> dict:
    """Stage 1 in place on ``vae``; returns losses and the val round-trip PSNR (posterior mean)."""
    from diffusers.optimization import get_scheduler

    g = torch.Generator().manual_seed(cfg.seed)
    samples = ClipStream(data, "train", cfg.seed).samples()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(100, cfg.vae_steps // 10), num_training_steps=max(cfg.vae_steps, 1))
    vae.train().requires_grad_(True)
    losses, t0 = [], time.time()
    for step in range(cfg.vae_steps):
        if cfg.vae_time_limit is not None and time.time() - t0 > cfg.vae_time_limit * 60:
            break
        x = random_shift(_frames(samples, cfg.vae_batch_size, g), cfg.vae_shift, g).to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_progress:
            on_progress({"stage": "vae", "step": step + 1, "steps": cfg.vae_steps, "loss": losses[-1]})
    vae.eval().requires_grad_(False)
    val = ClipStream(data, "val", 0).samples() if _has_split(data, "val") else ClipStream(data, "train", 1).samples()
    with torch.no_grad():
        x = _frames(val, 64, torch.Generator().manual_seed(1)).to(device)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return {"steps": len(losses), "planned_steps": cfg.vae_steps, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "val_round_trip_psnr_db": round(psnr_pm1(rec, x), 2), "val_frames": 64,
            "val_round_trip_by_shift_db": shift_round_trip(vae, x), "shift": cfg.vae_shift}


def _has_split(data: str, split: str) -> bool:
    return bool(read_json(Path(data) / "manifest.json")["splits"].get(split, {}).get("samples"))


def latent_scale(vae, data: str, device, frames: int = 256) -> float:
    """LDM's ``scale_by_std``: 1 / std of the posterior means, so scaled latents have unit variance."""
    x = _frames(ClipStream(data, "train", 2).samples(), frames, torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mode() for i in range(0, len(x), 32)])
    return float(1.0 / z.float().std().clamp_min(1e-6))


def _init_base(cfg: PretrainConfig, log):
    """The BASE to continue from (``--init``), read like any DynamiCrafter checkpoint."""
    log(f"starting from {cfg.init}")
    base, _ = load_dynamicrafter_base(cfg.init)
    return base


def run(cfg: PretrainConfig, on_progress: Callable[[dict], None] | None = None, log: Callable[[str], None] = lambda m: None) -> PretrainResult:
    from diffusers import AutoencoderKL
    from safetensors.torch import save

    t0 = time.time()
    out, work = Path(cfg.out), Path(cfg.out) / "work"
    if (out / "model.ckpt").exists() and not cfg.resume:
        raise V2WError("already holds a pretrained base (model.ckpt); choose another --out", path=out)
    if work.exists() and not cfg.resume:
        raise V2WError("has a work/ folder from an earlier run; pass --resume to continue it or choose another --out", path=out)
    manifest = load_manifest(cfg.data)
    arch = ARCHS[cfg.arch]
    unet_params, ddconfig = {**arch.unet, "temporal_length": int(manifest["clip_len"])}, arch.ddconfig
    h, w = manifest["resolution"]
    factor = 2 ** (len(ddconfig["ch_mult"]) - 1) * 2 ** (len(unet_params["channel_mult"]) - 1)
    if h % factor or w % factor:
        raise V2WError(f"frames are {h}x{w}; --arch {cfg.arch} needs sizes divisible by {factor}; re-prepare with --size", path=cfg.data)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    # 1. VAE
    vae = AutoencoderKL(**vae_config_from_ldm(ddconfig)).to(device)
    start = _init_base(cfg, log) if cfg.init else None
    if start is not None:
        load_strict(vae, start.vae.state_dict(), "VAE", cfg.init, against=f"--arch {cfg.arch}", hint="pass the --arch the BASE was made with")
    vae_file, vae_json = work / "vae.safetensors", work / "vae.json"
    if cfg.resume and vae_file.exists() and vae_json.exists():
        vae.load_state_dict(read_safetensors(vae_file, device))
        vae.eval().requires_grad_(False)
        vae_report = read_json(vae_json)
        log(f"VAE from {vae_file} (round trip {vae_report['val_round_trip_psnr_db']} dB)")
    else:
        log(f"training the VAE ({cfg.vae_steps} steps of {cfg.vae_batch_size} frames)")
        vae_report = train_vae(vae, cfg.data, cfg, device, on_progress)
        vae_report["scale_factor"] = latent_scale(vae, cfg.data, device)
        write_bytes_atomic(vae_file, save({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}))
        write_json_atomic(vae_json, vae_report)
        log(f"VAE: val round trip {vae_report['val_round_trip_psnr_db']} dB; latent scale {vae_report['scale_factor']:.4f}")
    scale = float(vae_report["scale_factor"])

    # 2. the untrained base as a MODEL folder (bidirectional U-Net, trained VAE, frozen CLIP towers)
    parts = random_parts(cfg.seed, arch, unet_params)  # text + vision towers (seeded random, frozen)
    init = work / "init"
    if not (init / "config.json").exists():
        torch.manual_seed(cfg.seed)
        unet = VideoUNet(UNetConfig.from_dict({**UNetConfig().to_dict(), **unet_params}))  # default init (zero out-conv)
        resampler = Resampler(**{**arch.resampler, "video_length": unet_params["temporal_length"]})
        if start is not None:  # continue from the BASE: its U-Net and Resampler
            load_strict(unet, start.unet.state_dict(), "U-Net", cfg.init, against=f"--arch {cfg.arch}", hint="pass the --arch the BASE was made with")
            load_strict(resampler, start.image_proj.state_dict(), "Resampler", cfg.init, against=f"--arch {cfg.arch}", hint="same --arch")
        with torch.no_grad():
            empty = compute_empty_text_context(parts["text"])
        meta = {"fps": unet_params["default_fs"], "latent_scale": scale, "made_from": {"checkpoint": "v2w pretrain (random init)"}}
        WorldModel(unet, vae.cpu(), parts["vision"], resampler, empty, meta).save_pretrained(init)
        vae.to(device)

    # 3. the U-Net, as DynamiCrafter trains it (shared noise level per clip), through v2w train's loop
    run_dir = work / "run"
    resume = "latest" if cfg.resume and list_checkpoints(run_dir) else None
    tcfg = TrainConfig(
        model=str(init), data=cfg.data, out=str(run_dir), steps=max(cfg.steps, 1), batch_size=cfg.batch_size,
        lr=cfg.lr, warmup=cfg.warmup, lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every, keep=2,
        resume=resume, action_dropout=0.0, cond_dropout=cfg.cond_dropout, precision=cfg.precision,
        ema_decay=cfg.ema_decay, log_every=cfg.log_every, device=cfg.device, noise_levels="shared", time_limit=cfg.time_limit,
    )
    if not (run_dir / "final" / "config.json").exists():
        log(f"training the bidirectional U-Net ({cfg.steps} steps of {cfg.batch_size} clips, one noise level per clip)")
        stage = (lambda p: on_progress({"stage": "unet", **p})) if on_progress else None
        trained = train(tcfg, on_progress=stage, log=log)
        losses = trained.losses
    else:
        losses = []
    curve = loss_curve(run_dir)

    # 4. export in DynamiCrafter's layout
    final = load_model(run_dir / "final")
    sd = dynamicrafter_state_dict(final.unet, vae_to_ldm_state_dict(final.vae, ddconfig), parts["text"], final.image_encoder, final.image_proj)
    if cfg.half:  # the schedule buffers stay float32 (causalize drops them anyway)
        sd = {k: v.half() if v.is_floating_point() and "." in k else v for k, v in sd.items()}
    buf = io.BytesIO()
    done = int(final.meta.get("trained", {}).get("steps", cfg.steps))
    torch.save({"state_dict": sd, "global_step": done, "epoch": 0}, buf)
    write_bytes_atomic(out / "model.ckpt", buf.getvalue())
    import yaml

    yaml_cfg = inference_config(unet_params, ddconfig, scale, dict(final.image_proj.config))
    write_bytes_atomic(out / "inference.yaml", yaml.safe_dump(yaml_cfg, sort_keys=False).encode())
    report = {
        "kind": "v2w-pretrain",
        "v2w_version": __version__,
        "config": asdict(cfg),
        "data": {"path": cfg.data, "train_clips": manifest["splits"]["train"]["samples"], "resolution": [h, w],
                 "clip_len": manifest["clip_len"]},
        "vae": vae_report,
        "unet": {
            "steps": done, "planned_steps": cfg.steps, "params": sum(p.numel() for p in final.unet.parameters()),
            "first_loss": curve[0][1] if curve else None, "last_loss": curve[-1][1] if curve else None,
            "loss_curve": curve,
        },
        "checkpoint_mb": round((out / "model.ckpt").stat().st_size / 2**20, 2),
        "seconds": round(time.time() - t0, 1),
        "losses_this_call": len(losses),
    }
    write_json_atomic(out / "pretrain.json", report)
    return PretrainResult(out, report)
