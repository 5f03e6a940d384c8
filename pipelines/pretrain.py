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
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipelines import __version__
from pipelines.autoencoder_loss import AutoencoderLossConfig
from pipelines.data.prepare import load_manifest
from pipelines.data.stream import ClipStream
from pipelines.devices import resolve_device
from pipelines.errors import V2WError
from pipelines.fileio import read_json, write_bytes_atomic, write_json_atomic
from pipelines.metrics.networks import load_lpips
from pipelines.models.checkpoint import shipped_world_model
from pipelines.models.clip import compute_empty_text_context
from pipelines.models.dynamicrafter import load_dynamicrafter_base
from pipelines.models.model_folder import read_part
from pipelines.models.resampler import Resampler
from pipelines.models.tiny import ARCHS, dynamicrafter_state_dict, inference_config, random_parts
from pipelines.models.unet import UNetConfig, VideoUNet
from pipelines.models.vae import ldm_ddconfig_from_state_dict, vae_config_from_ldm, vae_to_ldm_state_dict
from pipelines.models.world_model import WorldModel, load_model
from pipelines.statedict import load_strict, read_safetensors, read_torch
from pipelines.train import TrainConfig, list_checkpoints, loss_curve
from pipelines.train import run as train
from pipelines.vae_training import (
    VAETrainConfig,
    frame_batch,
    held_out_by_source,
    held_out_frames,
    load_lpips_nets,
    round_trip_scores,
    train_vae,
)


@dataclass
class PretrainConfig:
    data: str  # DATA folder (v2w prepare)
    out: str  # BASE folder
    arch: str = "small"  # tiny | small (pipelines.models.tiny.ARCHS)
    vae_steps: int = 2000
    vae_batch_size: int = 32  # frames
    vae_lr: float | None = None  # None: 5e-4 from scratch, 1e-4 for --decoder-only (a fine-tune of trained weights)
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
    vae_loss: str = "lpips-gan"  # the VAE's objective: lpips-gan (latent diffusion's) | pixel (L1 + L2 + KL)
    perceptual_weight: float = 1.0  # LPIPS (VGG) weight in the reconstruction term; 0 = off
    disc_start: int = 1000  # VAE step from which the patch discriminator trains and weighs in
    disc_weight: float = 0.5  # the adversarial term's weight (times the adaptive weight); 0 = no discriminator
    vae_save_every: int = 250  # VAE checkpoint every N steps (--resume continues mid-stage)
    decoder_only: bool = False  # fine-tune only the VAE's decoder of --init (a MODEL or BASE) and write the same kind
    vae_eval_data: str | None = None  # a DATA folder of fresh frames: round trip at shifts 0..16 px reported on it
    weights: str | None = None  # folder with the LPIPS weights (as v2w eval --weights)

    def __post_init__(self) -> None:  # every setting checked once, on construction
        if self.vae_lr is None:
            self.vae_lr = 1e-4 if self.decoder_only else 5e-4
        if self.arch not in ARCHS:
            raise V2WError(f"--arch must be one of {{{', '.join(ARCHS)}}}. Got {self.arch!r}")
        if min(self.vae_steps, self.steps, self.batch_size, self.vae_batch_size) < 0 or self.batch_size < 1:
            raise V2WError("--steps, --vae-steps and the batch sizes must be >= 0 (batch sizes >= 1)")
        if self.vae_shift < 0:
            raise V2WError(f"--vae-shift must be >= 0 pixels. Got {self.vae_shift}")
        if self.decoder_only and not self.init:
            raise V2WError("--decoder-only fine-tunes the VAE decoder of an existing model: pass --init MODEL|BASE")
        AutoencoderLossConfig(kind=self.vae_loss, perceptual_weight=self.perceptual_weight, disc_start=self.disc_start,
                              disc_weight=self.disc_weight)  # checks those settings now, not after the first stage


@dataclass
class PretrainResult:
    out: Path
    report: dict


def _vae_config(cfg: PretrainConfig, decoder_only: bool = False) -> VAETrainConfig:
    loss = AutoencoderLossConfig(kind=cfg.vae_loss, perceptual_weight=cfg.perceptual_weight, kl_weight=cfg.kl_weight,
                                 disc_start=cfg.disc_start, disc_weight=cfg.disc_weight)
    return VAETrainConfig(steps=cfg.vae_steps, batch_size=cfg.vae_batch_size, lr=cfg.vae_lr, seed=cfg.seed, shift=cfg.vae_shift,
                          decoder_only=decoder_only, time_limit=cfg.vae_time_limit, save_every=cfg.vae_save_every,
                          resume=cfg.resume, loss=loss)


def _loss_lpips(vcfg: VAETrainConfig, probe: dict):
    """The LPIPS network inside the loss (the probe's, when it loaded that one); missing weights are an
    error (a VAE trained without the term it was asked for would be silently soft), naming the file
    and the two ways out."""
    if not vcfg.loss.uses_lpips:
        return None
    net = vcfg.loss.perceptual_net
    if net in probe["nets"]:
        return probe["nets"][net]
    try:
        return load_lpips(net, probe["weights"])[0].to(probe["device"])
    except V2WError as e:
        raise V2WError(f"{e}; or train without the perceptual term: --perceptual-weight 0 (or --vae-loss pixel)") from None


def _round_trip_probe(cfg: PretrainConfig, device) -> dict:
    """What every round-trip report of this call measures on, read once: the installed LPIPS
    networks, DATA's held-out frames per source group (its games), --vae-eval-data's frames."""
    nets, skipped = load_lpips_nets(weights_dir=cfg.weights, device=device)
    return {"nets": nets, "skipped": skipped, "weights": cfg.weights, "device": device,
            "held_out": held_out_by_source(cfg.data), "val": held_out_frames(cfg.data, 64),
            "eval": held_out_frames(cfg.vae_eval_data, 64) if cfg.vae_eval_data else None}


def _round_trip_report(vae, cfg: PretrainConfig, probe: dict) -> dict:
    """Round-trip PSNR and LPIPS (every installed LPIPS network) on held-out frames of each source
    group of DATA (its games), and at every shift on --vae-eval-data's frames (fresh episodes)."""
    nets = probe["nets"]
    rep = {"held_out": {name: round_trip_scores(vae, x, nets, shifts=(0,))["shifts"]["0"] | {"frames": len(x)}
                        for name, x in probe["held_out"].items()}}
    if probe["eval"] is not None:
        rep["eval_data"] = {"path": cfg.vae_eval_data, **round_trip_scores(vae, probe["eval"], nets)}
    if probe["skipped"]:
        rep["lpips_skipped"] = probe["skipped"]
    return rep


def latent_scale(vae, data: str, device, frames: int = 256) -> float:
    """LDM's ``scale_by_std``: 1 / std of the posterior means, so scaled latents have unit variance."""
    x = frame_batch(ClipStream(data, "train", 2).samples(), frames, torch.Generator().manual_seed(2))[0].to(device)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mode() for i in range(0, len(x), 32)])
    return float(1.0 / z.float().std().clamp_min(1e-6))


def _train_vae_stage(vae, cfg: PretrainConfig, work: Path, device, on_progress, log, decoder_only: bool = False,
                     probe: dict | None = None) -> dict:
    """Stage 1: train (or finish training) the VAE, then measure its round trip."""
    vcfg = _vae_config(cfg, decoder_only)
    probe = probe or _round_trip_probe(cfg, device)
    what = "decoder" if decoder_only else "VAE"
    log(f"training the {what} ({cfg.vae_steps} steps of {cfg.vae_batch_size} frames, objective {cfg.vae_loss})")
    rep = train_vae(vae, cfg.data, vcfg, device, work, lpips=_loss_lpips(vcfg, probe), on_progress=on_progress, log=log)
    by_shift = round_trip_scores(vae, probe["val"])["shifts"]
    rep |= {"val_round_trip_psnr_db": by_shift["0"]["psnr"], "val_frames": len(probe["val"]),
            "val_round_trip_by_shift_db": {k: v["psnr"] for k, v in by_shift.items()},
            "round_trip": _round_trip_report(vae, cfg, probe)}
    return rep


def _init_base(cfg: PretrainConfig, log):
    """The BASE to continue from (``--init``), read like any DynamiCrafter checkpoint."""
    log(f"starting from {cfg.init}")
    base, _ = load_dynamicrafter_base(cfg.init)
    return base


def _decoder_source(init: str) -> tuple[str, Path | None]:
    """--init for --decoder-only -> ("model", MODEL folder) or ("base", None: read by the BASE loader)."""
    path = shipped_world_model() if init == "tiny-world-model" else Path(init)
    return ("model", path) if (path / "config.json").exists() else ("base", None)


def finetune_decoder(cfg: PretrainConfig, on_progress: Callable[[dict], None] | None = None,
                     log: Callable[[str], None] = lambda m: None) -> PretrainResult:
    """``--decoder-only``: the VAE decoder of --init (a MODEL, ``tiny-world-model``, a BASE or ``tiny``)
    fine-tuned on DATA's frames with the encoder frozen; OUT is the same kind as --init with only the
    decoder's weights changed, so its U-Net (trained on the unchanged latents) stays valid as it is.

    MODEL -> OUT/config.json (+ ``vae_decoder_finetune`` in it), the weights in --init's precision;
    BASE -> OUT/model.ckpt (``first_stage_model.decoder.*`` and ``post_quant_conv`` replaced) +
    inference.yaml + pretrain.json. Both: OUT/work/ (vae.json, the VAE stage's checkpoints)."""
    t0 = time.time()
    out, work = Path(cfg.out), Path(cfg.out) / "work"
    if ((out / "config.json").exists() or (out / "model.ckpt").exists()) and not cfg.resume:
        raise V2WError("already holds a model; choose another --out", path=out)
    if work.exists() and not cfg.resume:
        raise V2WError("has a work/ folder from an earlier run; pass --resume to continue it or choose another --out", path=out)
    kind, model_dir = _decoder_source(cfg.init)
    device = resolve_device(cfg.device)
    if kind == "model":
        model, source = load_model(model_dir), str(model_dir)
        if model.vae is None or not hasattr(model.vae, "decoder"):
            raise V2WError("has no KL autoencoder to fine-tune (--decoder-only takes DynamiCrafter-family models)", path=model_dir)
        half = next(iter(read_part(model_dir, "vae").values())).dtype == torch.float16
    else:
        model, source = load_dynamicrafter_base(cfg.init)
        if model.vae is None:
            raise V2WError("the base has no first_stage_model.* (VAE) keys to fine-tune", path=source)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vae = model.vae.float().to(device)
    probe = _round_trip_probe(cfg, device)
    before = _round_trip_report(vae.eval(), cfg, probe)
    vae_report = _train_vae_stage(vae, cfg, work, device, on_progress, log, decoder_only=True, probe=probe)
    vae_report["before"] = before
    write_json_atomic(work / "vae.json", vae_report)
    summary = {"source": source, "data": cfg.data, "steps": vae_report["steps"], "objective": vae_report["objective"],
               "held_out_before": before["held_out"], "held_out_after": vae_report["round_trip"]["held_out"]}
    model.vae = vae.cpu().eval()
    if kind == "model":
        model.meta["vae_decoder_finetune"] = summary
        model.save_pretrained(out, half=half)
    else:
        ckpt = read_torch(source)
        if "state_dict" not in ckpt:  # a bare state dict: written back in Lightning's layout
            ckpt = {"state_dict": ckpt}
        sd = ckpt["state_dict"]
        new = vae_to_ldm_state_dict(model.vae, ldm_ddconfig_from_state_dict(sd))
        for k, v in new.items():  # only the decoder's side changed; keep the checkpoint's dtypes
            sd[f"first_stage_model.{k}"] = v.to(sd[f"first_stage_model.{k}"].dtype)
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        write_bytes_atomic(out / "model.ckpt", buf.getvalue())
        src_dir = Path(source).parent
        if (src_dir / "inference.yaml").exists():
            shutil.copyfile(src_dir / "inference.yaml", out / "inference.yaml")
        prior = read_json(src_dir / "pretrain.json") if (src_dir / "pretrain.json").exists() else {"kind": "v2w-pretrain"}
        write_json_atomic(out / "pretrain.json", {**prior, "vae_decoder_finetune": summary, "v2w_version": __version__})
    report = {"kind": "v2w-vae-decoder-finetune", "v2w_version": __version__, "config": asdict(cfg), "made": kind,
              "vae": vae_report, "seconds": round(time.time() - t0, 1)}
    write_json_atomic(work / "report.json", report)
    return PretrainResult(out, report)


def run(cfg: PretrainConfig, on_progress: Callable[[dict], None] | None = None, log: Callable[[str], None] = lambda m: None) -> PretrainResult:
    from diffusers import AutoencoderKL
    from safetensors.torch import save

    if cfg.decoder_only:
        return finetune_decoder(cfg, on_progress, log)
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
        vae_report = _train_vae_stage(vae, cfg, work, device, on_progress, log)
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
