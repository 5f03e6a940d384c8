"""Training a video model's autoencoder on single frames: ``v2w pretrain``'s first stage, and its
``--decoder-only`` mode that sharpens the VAE of an existing MODEL or BASE in place.

The objective is :mod:`pipelines.autoencoder_loss` (latent diffusion's LPIPS + PatchGAN + learned
log-variance by default). The run is resumable bit for bit: every ``save_every`` steps it writes

::

    WORK/vae-run/checkpoints/step-N/
      vae.safetensors        the autoencoder
      loss.safetensors       the objective's learned state: log-variance, discriminator (+ BatchNorm buffers)
      optimizer.pt           {"vae": ..., "disc": ...} optimizer states (tensors only: weights_only)
      state.json             step, LR schedule, RNG states, the clip stream's position, loss curve

and ``--resume`` continues from the newest one: the same frames, shifts, posterior noise, and so
the same losses, as a run that was never stopped.

``decoder_only``: the encoder (and ``quant_conv``) are frozen, so every latent the MODEL's U-Net
was trained on or predicts stays valid; only the decoder learns, from the posterior *mode*, which is
what the U-Net's targets are (``WorldModel.encode_frames``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipelines.autoencoder_loss import AutoencoderLoss, AutoencoderLossConfig
from pipelines.data.shards import iter_shard
from pipelines.data.stream import ClipStream
from pipelines.errors import V2WError
from pipelines.fileio import atomic_dir, read_json, write_json_atomic
from pipelines.metrics.networks import load_lpips
from pipelines.statedict import read_safetensors, read_torch
from pipelines.train import _rng_state, _set_rng_state, list_checkpoints

SHIFTS = (0, 1, 2, 4, 8, 16)


@dataclass
class VAETrainConfig:
    steps: int = 2000
    batch_size: int = 32  # frames per step
    lr: float = 5e-4  # peak; linear warm-up then cosine
    seed: int = 0
    shift: int = 0  # random wrap-around translation (px) of every training frame; 0 = none
    decoder_only: bool = False
    time_limit: float | None = None  # minutes; then the stage ends where it is (and says so)
    save_every: int = 250  # checkpoint every N steps (resumable)
    keep: int = 2  # checkpoints kept
    resume: bool = False
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- frames


def frame_batch(samples, n: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    """n single frames (n, 3, H, W) in [-1, 1], half of each clip's frames drawn at random, and the
    stream's position (epoch, offset) after the last clip used (leftover frames are dropped, so
    resuming at that position continues exactly)."""
    out, pos = [], (0, 0)
    while len(out) < n:
        epoch, offset, sample = next(samples)
        frames = sample["frames"]  # (T, 3, H, W)
        pick = torch.randperm(frames.shape[0], generator=generator)[: max(1, frames.shape[0] // 2)]
        out.extend(frames[pick])
        pos = (epoch, offset)
    return torch.stack(out[:n]), pos


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each frame of (N, 3, H, W) rolled by its own (dy, dx) in [-max_shift, max_shift] (wrap-around)."""
    if max_shift <= 0:
        return x
    d = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator)
    return torch.stack([torch.roll(f, (int(dy), int(dx)), dims=(1, 2)) for f, (dy, dx) in zip(x, d)])


def held_out_frames(data: str | Path, n: int = 64, seed: int = 1) -> torch.Tensor:
    """n frames of DATA's val split (its train split when it has none), the same ones every call."""
    split = "val" if read_json(Path(data) / "manifest.json")["splits"].get("val", {}).get("samples") else "train"
    return frame_batch(ClipStream(data, split, 0 if split == "val" else seed).samples(), n, torch.Generator().manual_seed(seed))[0]


def held_out_by_source(data: str | Path, per_group: int = 64) -> dict[str, torch.Tensor]:
    """Up to ``per_group`` held-out frames (val split) of each source group of DATA: the first folder
    below the common parent of the sources it was prepared from (one per game for
    ``raw/<game>/part*`` trees; "all" for a single source), half of each clip's frames, in stream
    order. A group none of whose episodes went to the val split (or every group, without a val
    split) gets its train frames instead, named ``"<group> (train)"``: seen in training, so say so."""
    manifest = read_json(Path(data) / "manifest.json")
    roots = [Path(s["path"]) for s in manifest.get("made_from", {}).get("sources", [])]
    common = Path(os.path.commonpath([str(r) for r in roots])) if len(roots) > 1 else None

    def group(source: Path) -> str:
        for r in roots:
            if common is not None and source.is_relative_to(r):
                return r.relative_to(common).parts[0] if r != common else "all"
        return "all"

    wanted = {group(r / "x") for r in roots} or {"all"}
    groups: dict[str, list[torch.Tensor]] = {}
    for split, suffix in (("val", ""), ("train", " (train)")):
        if not manifest["splits"].get(split, {}).get("samples"):
            continue
        missing = wanted - {k.removesuffix(" (train)") for k in groups}
        if not missing:
            break
        stream = ClipStream(data, split, 0)
        for shard in stream.shards:
            for raw in iter_shard(shard):
                name = group(Path(json.loads(raw["meta.json"])["source"]))
                if name in missing and len(groups.setdefault(name + suffix, [])) < per_group:
                    groups[name + suffix].extend(stream.decode(raw)["frames"][::2])
    return {k: torch.stack(v[:per_group]) for k, v in sorted(groups.items())}


# ---------------------------------------------------------------- measuring a round trip


def psnr_pm1(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1] (data range 2), over the whole batch."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def round_trip(vae, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Encode (posterior mode) and decode frames (N, 3, H, W): what a MODEL does to its context frames."""
    dev = next(vae.parameters()).device
    return torch.cat([vae.decode(vae.encode(x[i : i + chunk].to(dev)).latent_dist.mode()).sample.cpu() for i in range(0, len(x), chunk)])


@torch.no_grad()
def round_trip_scores(vae, x: torch.Tensor, lpips: dict | None = None, shifts=SHIFTS) -> dict:
    """PSNR (dB) and, per LPIPS network given ({"vgg": net, "alex": net}), LPIPS of the round trip of
    frames (N, 3, H, W) in [-1, 1] translated by s px along both axes (wrap-around) for each shift:
    a VAE that memorised where things sit on a screen loses quality as s grows."""
    out: dict = {"frames": len(x), "shifts": {}}
    for sh in shifts:
        xs = torch.roll(x, (sh, sh), dims=(2, 3))
        rec = round_trip(vae, xs).clamp(-1, 1)
        row = {"psnr": round(psnr_pm1(rec, xs), 2)}
        for name, net in (lpips or {}).items():
            dev = next(net.parameters()).device
            d = torch.cat([net(xs[i : i + 32].to(dev), rec[i : i + 32].to(dev)).cpu() for i in range(0, len(xs), 32)])
            row[f"lpips_{name}"] = round(float(d.mean()), 4)
        out["shifts"][str(sh)] = row
    return out


def load_lpips_nets(nets=("vgg", "alex"), weights_dir: str | None = None, device="cpu") -> tuple[dict, dict]:
    """The LPIPS networks that are installed -> ({net: module}, {net: why skipped})."""
    found, skipped = {}, {}
    for net in nets:
        try:
            found[net] = load_lpips(net, weights_dir)[0].to(device)
        except V2WError as e:
            skipped[net] = str(e)
    return found, skipped


# ---------------------------------------------------------------- the run


def _trainable(vae, decoder_only: bool) -> list[torch.nn.Parameter]:
    if decoder_only:
        vae.requires_grad_(False)
        for m in (vae.decoder, vae.post_quant_conv):
            m.requires_grad_(True)
    else:
        vae.requires_grad_(True)
    return [p for p in vae.parameters() if p.requires_grad]


def _save(ckpts: Path, step: int, vae, objective, opt, d_opt, sched, generator, position, curve, cfg: VAETrainConfig) -> None:
    with atomic_dir(ckpts / f"step-{step}") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}, str(tmp / "vae.safetensors"))
        loss_state = {k: v.detach().contiguous().cpu() for k, v in objective.state_dict().items() if not k.startswith("lpips.")}
        save_file(loss_state or {"_empty": torch.zeros(0)}, str(tmp / "loss.safetensors"))
        torch.save({"vae": opt.state_dict(), "disc": d_opt.state_dict() if d_opt else None}, tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", {
            "step": step, "lr_scheduler": sched.state_dict(), "position": list(position), "curve": curve,
            "rng": {k: v.tolist() for k, v in _rng_state(generator).items()}, "config": cfg.to_dict(),
        })
    for _, old in list_checkpoints(ckpts.parent)[: -cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(path: Path, vae, objective, opt, d_opt, sched, generator) -> dict:
    state = read_json(path / "state.json")
    dev = next(vae.parameters()).device
    vae.load_state_dict(read_safetensors(path / "vae.safetensors", dev))
    loss_state = {k: v for k, v in read_safetensors(path / "loss.safetensors", dev).items() if k != "_empty"}
    missing, unexpected = objective.load_state_dict(loss_state, strict=False)
    missing = [k for k in missing if not k.startswith("lpips.")]
    if missing or unexpected:
        raise V2WError(f"the checkpoint's objective does not match this run's (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                       "resume with the same --vae-loss settings", path=path)
    opts = read_torch(path / "optimizer.pt")
    opt.load_state_dict(opts["vae"])
    if d_opt is not None and opts.get("disc") is not None:
        d_opt.load_state_dict(opts["disc"])
    sched.load_state_dict(state["lr_scheduler"])
    _set_rng_state({k: torch.tensor(v, dtype=torch.uint8) for k, v in state["rng"].items()}, generator)
    return state


def train_vae(vae, data: str, cfg: VAETrainConfig, device, work: str | Path, lpips=None,
              on_progress: Callable[[dict], None] | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Train ``vae`` in place on DATA's train frames; checkpoints under WORK/vae-run. -> a report:
    steps reached, loss curve (mean of each 25 steps), the objective's settings and its last terms.

    lpips: the LPIPS module of the perceptual term (required when the objective uses it)."""
    from diffusers.optimization import get_scheduler

    ckpts = Path(work) / "vae-run" / "checkpoints"
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # the discriminator's init: a function of the seed alone, not of
        torch.manual_seed(cfg.seed)          # what else (which LPIPS networks, say) was built before it
        objective = AutoencoderLoss(cfg.loss, lpips).to(device)
    params = _trainable(vae, cfg.decoder_only)
    own = [objective.logvar] if objective.logvar is not None else []
    if cfg.loss.kind == "pixel":
        opt = torch.optim.AdamW(params + own, lr=cfg.lr, weight_decay=0.0)
    else:  # latent diffusion's autoencoder optimisers: Adam, betas (0.5, 0.9)
        opt = torch.optim.Adam(params + own, lr=cfg.lr, betas=(0.5, 0.9))
    d_opt = None
    if objective.discriminator is not None:
        d_opt = torch.optim.Adam(objective.discriminator.parameters(), lr=cfg.loss.disc_lr or cfg.lr, betas=(0.5, 0.9))
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(100, cfg.steps // 10), num_training_steps=max(cfg.steps, 1))
    start, position, curve = 0, (0, 0), []
    done = list_checkpoints(ckpts.parent)
    if cfg.resume and done:
        state = _restore(done[-1][1], vae, objective, opt, d_opt, sched, g)
        start, position, curve = state["step"], tuple(state["position"]), state["curve"]
        log(f"VAE: resumed at step {start} from {done[-1][1]}")
    elif done:
        raise V2WError("has VAE checkpoints from an earlier run; pass --resume to continue it or choose another --out", path=ckpts)
    samples = ClipStream(data, "train", cfg.seed).samples(*position)
    vae.train()
    objective.train()
    last_layer = vae.decoder.conv_out.weight
    window, logs, t0, step = [], {}, time.time(), start
    for step in range(start, cfg.steps):
        if cfg.time_limit is not None and time.time() - t0 > cfg.time_limit * 60:
            log(f"VAE: time limit reached at step {step}")
            break
        x, position = frame_batch(samples, cfg.batch_size, g)
        x = random_shift(x, cfg.shift, g).to(device)
        # 1. encode: the posterior's sample (the whole VAE learns) or its mode (the encoder is frozen)
        if cfg.decoder_only:
            with torch.no_grad():
                z, post = vae.encode(x).latent_dist.mode(), None
        else:
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        # 2. the autoencoder's step
        loss, logs = objective.generator_loss(x, rec, post, step, last_layer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params + own, 1.0)
        opt.step()
        sched.step()
        # 3. the discriminator's step (not run at all before its start step)
        d_loss, d_logs = objective.discriminator_loss(x, rec, step)
        if d_loss is not None:
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            logs.update(d_logs)
        window.append(logs["loss"])
        if (step + 1) % 25 == 0:
            curve.append([step + 1, round(sum(window) / len(window), 6)])
            window = []
        if on_progress:
            on_progress({"stage": "vae", "step": step + 1, "steps": cfg.steps, "loss": logs["loss"]})
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save(ckpts, step + 1, vae, objective, opt, d_opt, sched, g, position, curve, cfg)
    else:
        step = cfg.steps
    vae.eval().requires_grad_(False)
    return {"steps": step, "planned_steps": cfg.steps, "loss_curve": curve,
            "last_terms": {k: round(v, 6) for k, v in logs.items()}, "objective": cfg.loss.to_dict(),
            "decoder_only": cfg.decoder_only, "shift": cfg.shift, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seconds_this_call": round(time.time() - t0, 1)}
