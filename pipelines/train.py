"""``v2w train``: Diffusion-Forcing fine-tuning with frame-level actions (docs/design.md §5), on accelerate.

One step, in order:
  1. a batch of clips: latents (pre-encoded, or encoded now by the frozen VAE), frame 0 pixels,
     actions normalised by the manifest stats;
  2. an independent noise level per (sample, frame), t ~ U{0..999};
  3. x0 scaled by DynamiCrafter's scale_arr[t], noised per frame; target v;
  4. conditioning: frame-0 latent concatenated on channels, empty text + Resampler tokens of
     frame 0's CLIP image (both dropped to zero with --cond-dropout per sample), fs;
  5. actions shifted (frame t gets a_{t-1}, frame 0 zeros) and dropped per frame (--action-dropout);
  6. MSE(v_pred, v) over all frames; AdamW, warmup + constant/cosine LR, grad clip, EMA.

Checkpoints (``RUN/checkpoints/step-N/``, written atomically, last ``keep`` kept) hold the
weights, EMA, optimizer, LR schedule, grad scaler, every RNG state and the data position of every
process, so ``resume`` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file

from pipelines import __version__
from pipelines.data.stream import ClipStream, collate
from pipelines.devices import check_precision, resolve_device
from pipelines.diffusion import (
    add_noise_per_frame,
    flow_sigma,
    make_scheduler,
    rescale_per_frame,
    rescale_table,
    velocity_per_frame,
)
from pipelines.errors import V2WError
from pipelines.fileio import atomic_dir, read_json, write_bytes_atomic, write_json_atomic
from pipelines.models.action import is_action_parameter, shift_actions
from pipelines.models.attention import TemporalTransformer
from pipelines.models.latent_frames import group_actions
from pipelines.models.unet import TemporalConvBlock
from pipelines.official import open_model
from pipelines.sampler import Roller, RolloutConfig
from pipelines.statedict import read_safetensors, read_torch

TRAIN_SETS = ("all", "temporal", "new")
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --precision -> accelerate's name
LOSS_BUCKETS = (0, 250, 500, 750, 1000)  # noise-level buckets reported in metrics.jsonl


@dataclass
class TrainConfig:
    model: str  # MODEL folder (from causalize or an earlier train's final/)
    data: str  # DATA folder (from prepare)
    out: str  # RUN folder
    steps: int = 1000
    batch_size: int = 2  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-5
    new_layers_lr: float | None = None  # lr of the action layers (encoder + injection); None = lr
    weight_decay: float = 0.0
    warmup: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    seed: int = 0
    save_every: int = 500
    keep: int = 3
    resume: str | None = None  # None | "latest" | "step-N"
    resume_if_exists: bool = False  # resume from the newest checkpoint when there is one, else start fresh
    action_dropout: float = 0.2
    cond_dropout: float = 0.05
    precision: str = "fp32"  # fp32 | bf16 | fp16
    ema_decay: float = 0.9999  # 0 = no EMA; warm-up ramps the decay from 0 (diffusers EMAModel)
    grad_clip: float = 0.5
    gradient_checkpointing: bool = False
    train: str = "all"  # all | temporal | new
    log_every: int = 10
    preview_every: int = 0  # 0 = no previews
    shuffle_buffer: int = 64
    fs: int = 3  # frame-stride / fps conditioning (docs/design.md §5)
    device: str | None = None  # None / "auto": the GPU when there is one (accelerate decides); "cpu"; "cuda"
    noise_levels: str = "per-frame"  # per-frame (Diffusion Forcing) | shared (video diffusion: `v2w pretrain`)
    time_limit: float | None = None  # minutes: stop after the step that crosses it, save, write final/

    def __post_init__(self) -> None:  # every setting checked once, on construction
        if self.train not in TRAIN_SETS:
            raise V2WError(f"--train must be one of {{{', '.join(TRAIN_SETS)}}}. Got {self.train!r}")
        check_precision(self.precision)
        if self.noise_levels not in ("per-frame", "shared"):
            raise V2WError(f"noise levels must be per-frame or shared. Got {self.noise_levels!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise V2WError(f"--lr-schedule must be one of {{constant, cosine}}. Got {self.lr_schedule!r}")
        for name in ("action_dropout", "cond_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise V2WError(f"--{name.replace('_', '-')} must be in [0, 1). Got {getattr(self, name)}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_every < 1 or self.keep < 1:
            raise V2WError("--steps, --batch-size, --grad-accum, --save-every and --keep must be >= 1")
        if self.new_layers_lr is not None and not self.new_layers_lr > 0:
            raise V2WError(f"--new-layers-lr must be > 0. Got {self.new_layers_lr}")
        if not 0 <= self.ema_decay < 1:
            raise V2WError(f"--ema-decay must be in [0, 1). Got {self.ema_decay}")
        if self.device not in (None, "auto"):
            resolve_device(self.device)  # a GPU that is not there: one line now, not a CUDA traceback later
        if self.resume and self.resume_if_exists:
            raise V2WError(f"pass --resume ({self.resume}) or --resume-if-exists, not both")


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float]  # one per optimizer step run in this call
    resumed_from: int
    seconds: float


# ---------------------------------------------------------------- the loss (pure given its randomness)


def diffusion_forcing_loss(
    model,
    latents: torch.Tensor,
    frame0: torch.Tensor,
    actions: torch.Tensor | None,
    scheduler,
    rescale_table: torch.Tensor,
    generator: torch.Generator,
    action_dropout: float = 0.2,
    cond_dropout: float = 0.05,
    fs: int = 3,
    shared_noise: bool = False,
    mask_actions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (mean loss, per-(sample, frame) loss (B, T), noise levels t (B, T)).

    model: a WorldModel (or its data-parallel wrapper): model(x, t, frame0, fs, actions) -> v.
    latents (B, 4, T, h, w) scaled; frame0 (B, 3, H, W) in [-1, 1]; actions (B, T, A) or None.
    All randomness comes from ``generator`` (its state is checkpointed). ``shared_noise``: one
    level per sample for all its frames, the bidirectional video-diffusion objective (pretraining).
    ``mask_actions``: a dropped action is a zero *embedding* (``action_mask``, the official Vid2World
    training of ``vid2world``-injection models) instead of a zero input.
    """
    b, _, t, _, _ = latents.shape
    dev = latents.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

    # 1. independent noise level per (sample, frame)
    steps = scheduler.config.num_train_timesteps
    ts = torch.randint(0, steps, (b, 1 if shared_noise else t), generator=generator, device=generator.device)
    ts = ts.expand(b, t).to(dev)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(dev, latents.dtype)
    # 2. dynamic rescale, noise, target
    x0 = rescale_per_frame(rescale_table, latents, ts)
    x_t = add_noise_per_frame(scheduler, x0, noise, ts)
    target = velocity_per_frame(scheduler, x0, noise, ts)
    # 3. conditioning, dropped together per sample with cond_dropout
    keep = (rand(b) >= cond_dropout).to(latents.dtype)
    concat = (latents[:, :, :1] * keep[:, None, None, None, None]).expand(-1, -1, t, -1, -1)
    frame0 = frame0 * keep[:, None, None, None].to(frame0.dtype)
    # 4. actions: shifted, then dropped per frame
    mask = None
    if actions is not None:
        actions = shift_actions(actions)
        keep = (rand(b, t) >= action_dropout).to(actions.dtype)
        if mask_actions:
            mask = keep
        else:
            actions = actions * keep[..., None]
    fs_t = torch.full((b,), fs, dtype=torch.long, device=dev)
    extra = {"action_mask": mask} if mask is not None else {}
    v = model(torch.cat([x_t, concat], dim=1), ts, frame0, fs=fs_t, actions=actions, **extra)
    per_frame = F.mse_loss(v.float(), target.float(), reduction="none").mean(dim=(1, 3, 4))  # (B, T)
    return per_frame.mean(), per_frame.detach(), ts


def flow_forcing_loss(
    model,
    latents: torch.Tensor,
    actions: torch.Tensor | None,
    generator: torch.Generator,
    shift: float = 3.0,
    action_dropout: float = 0.2,
    shared_noise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diffusion Forcing for flow-matching models (the Wan family) -> (mean loss, per-(sample, latent
    frame) loss (B, F), noise levels 1000 sigma rounded (B, F)).

    model(x, timesteps, actions) -> velocity; latents (B, C, F, h, w) normalised, F = 1 + k latent
    frames; actions (B, 1 + 4k, A) taken after each *video* frame, or None. Per (sample, latent frame):
    u ~ U(0, 1), sigma = flow_sigma(u, shift), x = (1 - sigma) x0 + sigma eps, target eps - x0. Actions
    are shifted (video frame t gets a_{t-1}), grouped 4 per latent frame, and dropped per latent frame.
    """
    b, _, f, _, _ = latents.shape
    dev = latents.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device).to(dev)

    sigma = flow_sigma(rand(b, 1 if shared_noise else f), shift).expand(b, f)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(dev, latents.dtype)
    s = sigma[:, None, :, None, None].to(latents.dtype)
    x_t = (1 - s) * latents + s * noise
    target = noise - latents
    if actions is not None:
        actions = group_actions(shift_actions(actions))
        actions = actions * (rand(b, f) >= action_dropout).to(actions.dtype)[..., None]
    v = model(x_t, sigma * 1000, actions=actions)
    per_frame = F.mse_loss(v.float(), target.float(), reduction="none").mean(dim=(1, 3, 4))  # (B, F)
    return per_frame.mean(), per_frame.detach(), (sigma * 1000).round().long().clamp(max=999)


def trainable_parameters(model, which: str) -> list[nn.Parameter]:
    """all: U-Net + Resampler; temporal: temporal layers + time embedding + action layers; new: the
    action layers only (encoder + injection projections, :func:`is_action_parameter`)."""

    unet = model.unet
    action = [p for n, p in unet.named_parameters() if is_action_parameter(n)]
    if which == "all":
        params = list(unet.parameters()) + (list(model.image_proj.parameters()) if model.image_proj is not None else [])
    elif which == "temporal" and hasattr(unet, "frame_mixing_parameters"):  # a DiT (Wan): its attention
        params = unet.frame_mixing_parameters()
    elif which == "temporal":
        mods = [m for m in unet.modules() if isinstance(m, (TemporalConvBlock, TemporalTransformer))]
        params = [p for m in mods + [unet.time_embed] for p in m.parameters()] + action
    else:
        if not action:
            raise V2WError("--train new needs an action encoder; causalize with --action-dim A")
        params = action
    seen, unique = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _param_groups(unet, params: list[nn.Parameter], cfg: TrainConfig) -> list[dict]:
    """One AdamW group, or two with --new-layers-lr: the action layers start at zero and Adam
    moves a weight by about lr per step, so at the base's fine-tuning lr (1e-5) they would need
    tens of thousands of steps to matter; their own lr lets them catch up without shaking the
    pretrained weights."""
    if cfg.new_layers_lr is None:
        return [{"params": params}]
    new = {id(p) for n, p in unet.named_parameters() if is_action_parameter(n)}
    groups = [
        {"params": [p for p in params if id(p) not in new], "lr": cfg.lr},
        {"params": [p for p in params if id(p) in new], "lr": cfg.new_layers_lr},
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------- checkpoints


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (state.json present), oldest first; temp folders are ignored."""
    root = run / "checkpoints"
    out = []
    for p in root.glob("step-*") if root.exists() else []:
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and (p / "state.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def _set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- the run


@dataclass
class _Session:
    """What one training process holds: built once by :func:`_setup`, used by every step."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: Any
    model: Any  # the WorldModel (unwrapped)
    wrapped: Any  # the same, as accelerate prepared it (DDP on several GPUs)
    params: list[nn.Parameter]  # what trains
    optimizer: Any
    lr_sched: Any
    ema: Any  # diffusers EMAModel, or None
    scheduler: Any  # the noise schedule (diffusers DDPM)
    table: torch.Tensor  # dynamic-rescale table
    generator: torch.Generator  # noise levels, noise and dropout draws
    stream: Any  # ClipStream over the train split
    objective: Any = None  # None: Diffusion Forcing; else .loss(s, latents, frame0, actions) and .final_meta() (v2w distill)

    @property
    def unet(self):
        return self.model.unet


def run(
    cfg: TrainConfig,
    on_progress: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    stop_after: int | None = None,
    objective: Callable[[Any], Any] | None = None,
) -> TrainResult:
    """Train; ``stop_after`` ends this call after that many optimizer steps (tests, preemption).
    ``objective``: built from the session (``objective(session)``), it replaces the Diffusion Forcing
    loss and adds to the final MODEL's metadata; everything else (data, resume, checkpoints, EMA,
    logs) is this stage's (``pipelines/distill.py`` uses it)."""
    t_start = time.time()
    s = _setup(cfg)  # 1. model, data, optimizer
    if objective is not None:
        s.objective = objective(s)
    step, epoch, offset = _resume_or_start(s, log)  # 2. resume
    acc = s.accelerator
    writer = _tensorboard(s.run_dir, acc.is_main_process)

    # 3. loop
    samples = s.stream.samples(epoch, offset)
    losses, window = [], []
    t_log, n_log = time.time(), 0
    start_step = step
    s.model.unet.train()
    if s.model.image_proj is not None:
        s.model.image_proj.train()
    timed_out = False
    while step < cfg.steps:
        if stop_after is not None and step - start_step >= stop_after:
            break
        if _out_of_time(s, t_start):
            timed_out = True
            log(f"--time-limit {cfg.time_limit} min reached at step {step}")
            break
        step_loss, step_frames, grad_norm, epoch, offset = train_step(s, samples, step)
        step += 1
        losses.append(step_loss)
        window.append(step_loss)
        n_log += cfg.batch_size * cfg.grad_accum * acc.num_processes
        if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps):
            rec = _metrics_record(step, window, step_frames, s.lr_sched, grad_norm, n_log / max(time.time() - t_log, 1e-9), acc.device)
            _log_metrics(s.run_dir, rec, writer)
            window, t_log, n_log = [], time.time(), 0
        if on_progress and acc.is_main_process:
            on_progress({"step": step, "steps": cfg.steps, "loss": step_loss, "lr": s.lr_sched.get_last_lr()[0]})
        if step % cfg.save_every == 0 or step == cfg.steps:
            _checkpoint_all(s, step, epoch, offset)
        if cfg.preview_every and step % cfg.preview_every == 0 and acc.is_main_process:
            _preview(s.model, cfg, s.run_dir, step)

    # 4. final model (EMA weights when EMA is on)
    if timed_out and step > start_step and not any(k == step for k, _ in list_checkpoints(s.run_dir)):
        _checkpoint_all(s, step, epoch, offset)
    if (step >= cfg.steps or timed_out) and acc.is_main_process:
        _save_final(s, step)
    if writer is not None:
        writer.close()
    acc.wait_for_everyone()
    return TrainResult(s.run_dir, step, losses, start_step, time.time() - t_start)


def _setup(cfg: TrainConfig) -> _Session:
    """Accelerator, MODEL and data, then :func:`training_session`."""
    accelerator = Accelerator(
        mixed_precision=ACCELERATE_PRECISION[cfg.precision],
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    model = open_model(cfg.model, accelerator.device)
    if not hasattr(model, "unet") or not hasattr(model.unet, "config"):
        raise V2WError("v2w train supports the dynamicrafter and wan family MODEL folders", path=cfg.model)
    raw_actions = model.meta.get("action_normalization") == "none"  # an official import: trained on raw actions
    stream = ClipStream(cfg.data, "train", cfg.seed, rank, world, cfg.shuffle_buffer, normalize_actions=not raw_actions)
    _check_compatible(model, stream.manifest, cfg)
    return training_session(cfg, accelerator, model, stream)


def training_session(cfg: TrainConfig, accelerator, model, stream=None) -> _Session:
    """A WorldModel on ``accelerator.device`` made ready to train: frozen but for ``--train``'s parameters,
    optimizer, LR schedule, EMA, RNGs. ``benchmarks/gpu.py`` drives :func:`train_step` with it directly."""
    rank = accelerator.process_index
    if accelerator.device.type == "cuda":  # TF32 matmuls/convs: ~2x on Ampere+ at no visible cost for diffusion training
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    for module in (model.vae, model.image_encoder):
        if module is not None:
            module.requires_grad_(False).eval()
    model.unet.requires_grad_(False)
    if model.image_proj is not None:
        model.image_proj.requires_grad_(False)
    params = trainable_parameters(model, cfg.train)
    for p in params:
        p.requires_grad_(True)

    optimizer = torch.optim.AdamW(_param_groups(model.unet, params, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3) if cfg.ema_decay > 0 else None
    wrapped, optimizer, lr_sched = accelerator.prepare(model, optimizer, lr_sched)
    model = accelerator.unwrap_model(wrapped)
    scheduler = table = None  # flow matching (Wan) needs neither: flow_forcing_loss
    if _family(model) != "wan":
        scheduler = make_scheduler(model.meta.get("schedule"))
        table = rescale_table(model.meta.get("schedule"), scheduler.config.num_train_timesteps)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1000 + rank)
    torch.manual_seed(cfg.seed * 1000 + rank)
    random.seed(cfg.seed * 1000 + rank)
    return _Session(cfg, Path(cfg.out), accelerator, model, wrapped, params, optimizer, lr_sched, ema, scheduler,
                    table, generator, stream)


def _resume_or_start(s: _Session, log) -> tuple[int, int, int]:
    """-> (step, epoch, offset): from a checkpoint (``--resume``, ``--resume-if-exists``) or from 0.
    Writes RUN/config.json and cuts metrics.jsonl back to the checkpoint."""
    cfg, run_dir = s.cfg, s.run_dir
    step, epoch, offset = 0, 0, 0
    if cfg.resume or (cfg.resume_if_exists and list_checkpoints(run_dir)):
        step, epoch, offset = _resume(s)
        log(f"resumed from step {step}")
    elif list_checkpoints(run_dir):
        raise V2WError("has checkpoints already; pass --resume (or --resume-if-exists) to continue or choose another --out", path=run_dir)
    elif cfg.resume_if_exists:
        log(f"no checkpoint in {run_dir / 'checkpoints'} yet: starting fresh")
    if s.accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        run_config = _run_config(cfg, s.model, s.stream.manifest)
        if s.objective is not None:
            run_config["objective"] = s.objective.final_meta()
        write_json_atomic(run_dir / "config.json", run_config)
    return step, epoch, offset


def _out_of_time(s: _Session, t_start: float) -> bool:
    """``--time-limit`` crossed; with several processes, by the slowest clock (all stop at one step)."""
    if s.cfg.time_limit is None:
        return False
    over = time.time() - t_start > s.cfg.time_limit * 60
    if s.accelerator.num_processes > 1:
        over = bool(s.accelerator.reduce(torch.tensor([float(over)], device=s.accelerator.device), "max").item())
    return over


def train_step(s: _Session, samples, step: int):
    """One optimizer step over ``grad_accum`` micro-batches, then the EMA update -> (loss, per-frame
    losses with their noise levels, grad norm, data epoch, data offset). ``samples`` yields
    (epoch, offset, sample) as :meth:`ClipStream.samples` does."""
    cfg, acc, model = s.cfg, s.accelerator, s.model
    device = acc.device
    step_loss, step_frames, grad_norm = 0.0, [], None
    epoch = offset = 0
    for _ in range(cfg.grad_accum):
        batch = [next(samples) for _ in range(cfg.batch_size)]
        epoch, offset = batch[-1][0], batch[-1][1]
        b = collate([x for _, _, x in batch])
        frames = b["frames"].to(device)
        wan = _family(model) == "wan"
        with torch.no_grad():  # Wan: always its own causal VAE (DATA's pre-encoded latents are per frame)
            latents = b["latents"].to(device) if "latents" in b and not wan else model.encode_frames(frames)
        actions = b["actions"].to(device) if model.unet.config.action_dim else None
        with acc.accumulate(s.wrapped), acc.autocast():
            if s.objective is not None:
                loss, per_frame, ts = s.objective.loss(s, latents, frames[:, :, 0], actions)
            elif wan:
                loss, per_frame, ts = flow_forcing_loss(
                    s.wrapped, latents, actions, s.generator, float(model.meta["schedule"].get("flow_shift", 3.0)),
                    cfg.action_dropout, shared_noise=cfg.noise_levels == "shared",
                )
            else:
                loss, per_frame, ts = diffusion_forcing_loss(
                    s.wrapped, latents, frames[:, :, 0], actions, s.scheduler, s.table, s.generator,
                    cfg.action_dropout, cfg.cond_dropout, cfg.fs, shared_noise=cfg.noise_levels == "shared",
                    mask_actions=model.unet.config.action_injection == "vid2world",
                )
            if not torch.isfinite(loss):
                last = list_checkpoints(s.run_dir)
                raise V2WError(
                    f"loss is {loss.item()} at step {step + 1}; stopped without saving. Last good checkpoint: "
                    f"{last[-1][1] if last else 'none'}. Lower --lr, or use --precision bf16/fp32",
                    path=s.run_dir,
                )
            acc.backward(loss)
            grad_norm = None
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(s.params, cfg.grad_clip)
            s.optimizer.step()
            s.lr_sched.step()
            s.optimizer.zero_grad(set_to_none=True)
        step_loss += loss.item() / cfg.grad_accum
        step_frames.append((per_frame.cpu(), ts.cpu()))
    if s.ema is not None:
        s.ema.step(s.params)
    return step_loss, step_frames, grad_norm, epoch, offset


def _log_metrics(run_dir: Path, rec: dict, writer) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if writer is not None:
        for k in ("loss", "lr", "grad_norm", "samples_per_s"):
            if rec.get(k) is not None:
                writer.add_scalar(f"train/{k}", rec[k], rec["step"])


def _checkpoint_all(s: _Session, step: int, epoch: int, offset: int) -> None:
    """Every process contributes its data position and RNG states; the main one writes the checkpoint."""
    py = random.getstate()
    me = {
        "rank": s.accelerator.process_index, "epoch": epoch, "offset": offset,
        "python_random": [py[0], list(py[1]), py[2]],
        "rng": {k: v.tolist() for k, v in _rng_state(s.generator).items()},
    }
    states = gather_object([me])
    if s.accelerator.is_main_process:
        _save_checkpoint(s, step, states)
    s.accelerator.wait_for_everyone()


def _family(model) -> str:
    return getattr(model, "family", "dynamicrafter")


def _check_compatible(model, manifest: dict, cfg: TrainConfig) -> None:
    c = model.unet.config
    a = manifest.get("action_dim")
    if c.action_dim and a != c.action_dim:
        raise V2WError(
            f"the data has {a}-d actions but the model expects {c.action_dim}-d; causalize with --action-dim {a}",
            path=cfg.data,
        )
    if c.action_dim and c.action_type == "discrete" and manifest.get("action_type") != "discrete":
        raise V2WError("the model takes discrete actions but the data's are continuous", path=cfg.data)
    h, w = manifest["resolution"]
    if _family(model) == "wan":
        t = int(manifest.get("clip_len") or 0)
        if t < 5 or (t - 1) % 4:
            raise V2WError(f"Wan models train on clips of 1 + 4k frames (5, 9, 17, ...); the data's are {t}: "
                           "re-prepare with --clip-len 9 (or 17)", path=cfg.data)
        if h % model.size_factor or w % model.size_factor:
            raise V2WError(f"frames are {h}x{w}; this Wan model needs sizes divisible by {model.size_factor} "
                           "(VAE x patch); re-prepare with --size", path=cfg.data)
        return
    vae_factor = model.vae_factor
    factor = vae_factor * 2 ** (len(c.channel_mult) - 1)
    if h % factor or w % factor:
        raise V2WError(
            f"frames are {h}x{w}; this model needs sizes divisible by {factor} (VAE x{vae_factor}, U-Net x"
            f"{factor // vae_factor}); re-prepare with --size",
            path=cfg.data,
        )
    if model.vae is None and "latents" not in manifest:
        raise V2WError("the model has no VAE and the data no pre-encoded latents", path=cfg.model)
    if model.image_encoder is None or model.image_proj is None:
        raise V2WError("the model has no image conditioning (image encoder + Resampler)", path=cfg.model)


def _run_config(cfg: TrainConfig, model, manifest: dict) -> dict:
    return {
        "kind": "v2w-run",
        "format_version": 1,
        "v2w_version": __version__,
        "train": asdict(cfg),
        "model": model.config_dict().get("unet") or model.config_dict().get("transformer"),
        "data": {"path": cfg.data, "samples": manifest["splits"]["train"]["samples"], "fps": manifest.get("fps")},
    }


def _metrics_record(step, window, step_frames, lr_sched, grad_norm, samples_per_s, device) -> dict:
    per = torch.cat([p.reshape(-1) for p, _ in step_frames])
    ts = torch.cat([t.reshape(-1) for _, t in step_frames])
    buckets = {}
    for lo, hi in zip(LOSS_BUCKETS[:-1], LOSS_BUCKETS[1:]):
        m = (ts >= lo) & (ts < hi)
        buckets[f"{lo}-{hi - 1}"] = round(per[m].mean().item(), 6) if m.any() else None
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "step": step,
        "loss": float(np.mean(window)),
        "loss_by_noise_level": buckets,
        "lr": lr_sched.get_last_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "samples_per_s": round(samples_per_s, 3),
        "memory_mb": round(memory, 1),
        "time": time.time(),
    }


def loss_curve(run_dir: str | Path) -> list[list]:
    """[[step, loss], ...] from RUN/metrics.jsonl (one record per --log-every steps)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [[r["step"], round(r["loss"], 5)] for r in (json.loads(x) for x in lines if x.strip())]


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    write_bytes_atomic(path, "".join(ln + "\n" for ln in keep).encode())


def _tensorboard(run_dir: Path, main: bool):
    if not main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard may be absent
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _trainable_state(unet_raw, model) -> dict[str, torch.Tensor]:
    sd = {f"unet.{k}": v for k, v in unet_raw.state_dict().items()}
    if model.image_proj is not None:
        sd.update({f"image_proj.{k}": v for k, v in model.image_proj.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _save_checkpoint(s: _Session, step: int, states: list[dict]) -> None:
    cfg, run_dir, ema = s.cfg, s.run_dir, s.ema
    final = run_dir / "checkpoints" / f"step-{step}"
    with atomic_dir(final) as tmp:
        save_file(_trainable_state(s.unet, s.model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({str(i): p.detach().contiguous().cpu() for i, p in enumerate(ema.shadow_params)}, str(tmp / "ema.safetensors"))
        torch.save(s.optimizer.state_dict(), tmp / "optimizer.pt")
        scaler = s.accelerator.scaler.state_dict() if s.accelerator.scaler is not None else None
        state = {
            "step": step,
            "lr_scheduler": s.lr_sched.state_dict(),
            "grad_scaler": scaler,
            "ema": {"optimization_step": ema.optimization_step, "decay": ema.decay} if ema is not None else None,
            "processes": states,
            "train": asdict(cfg),
        }
        write_json_atomic(tmp / "state.json", state)
    for _, old in list_checkpoints(run_dir)[: -cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp_left in (run_dir / "checkpoints").glob(".step-*"):  # half-written by a killed run
        shutil.rmtree(tmp_left, ignore_errors=True)


def _resume(s: _Session) -> tuple[int, int, int]:
    """Load a checkpoint into the session (weights, EMA, optimizer, schedule, scaler, RNGs) -> (step, epoch, offset)."""
    cfg, run_dir, unet_raw, model, ema = s.cfg, s.run_dir, s.unet, s.model, s.ema
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise V2WError("no complete checkpoint to resume from", path=run_dir / "checkpoints")
    if cfg.resume in (None, "latest", "true", "True"):
        step, path = ckpts[-1]
    else:
        match = [c for c in ckpts if c[1].name == cfg.resume or str(c[0]) == cfg.resume]
        if not match:
            raise V2WError(f"no checkpoint {cfg.resume!r}; have {[p.name for _, p in ckpts]}", path=run_dir)
        step, path = match[0]
    state = read_json(path / "state.json")
    sd = read_safetensors(path / "model.safetensors", device=next(unet_raw.parameters()).device)
    unet_raw.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("unet.")}, strict=True)
    if model.image_proj is not None:
        model.image_proj.load_state_dict({k[11:]: v for k, v in sd.items() if k.startswith("image_proj.")}, strict=True)
    s.optimizer.load_state_dict(read_torch(path / "optimizer.pt"))
    s.lr_sched.load_state_dict(state["lr_scheduler"])
    if state.get("grad_scaler") and s.accelerator.scaler is not None:
        s.accelerator.scaler.load_state_dict(state["grad_scaler"])
    if ema is not None:
        if not (path / "ema.safetensors").exists():
            raise V2WError("the checkpoint has no EMA but --ema-decay is set; resume with --ema-decay 0", path=path)
        shadow = read_safetensors(path / "ema.safetensors")
        ema.shadow_params = [shadow[str(i)].to(p.device) for i, p in enumerate(ema.shadow_params)]
        ema.optimization_step = state["ema"]["optimization_step"]
    procs = {p["rank"]: p for p in state["processes"]}
    rank = s.accelerator.process_index
    if rank not in procs:
        raise V2WError(f"the checkpoint was written by {len(procs)} process(es); resume with the same number", path=path)
    me = procs[rank]
    _set_rng_state({k: torch.tensor(v, dtype=torch.uint8) for k, v in me["rng"].items()}, s.generator)
    version, internal, gauss = me["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return step, me["epoch"], me["offset"]


def _save_final(s: _Session, step: int) -> None:
    """RUN/final: a MODEL with the EMA weights (or the raw ones) and what it was trained on."""
    cfg, model, unet_raw, ema, params, manifest = s.cfg, s.model, s.unet, s.ema, s.params, s.stream.manifest
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        meta = dict(model.meta)
        meta["trained"] = {
            "steps": step,
            "planned_steps": cfg.steps,  # more than steps when --time-limit ended the run
            "data": cfg.data,
            "from_model": cfg.model,
            "weights": "ema" if ema is not None else "raw",
            "action_stats": None if model.meta.get("action_normalization") == "none" else manifest.get("action_stats"),
            "action_type": manifest.get("action_type"),
            "action_names": manifest.get("action_names"),
            "fps": manifest.get("fps"),
            "clip_len": manifest.get("clip_len"),
            "resolution": manifest.get("resolution"),
            "resize": ((manifest.get("made_from") or {}).get("options") or {}).get("resize", "crop"),
        }
        meta["fps"] = cfg.fs
        if s.objective is not None:
            meta.update(s.objective.final_meta())
        was, saved_meta = unet_raw.gradient_checkpointing, model.meta
        unet_raw.gradient_checkpointing, model.meta = False, meta
        try:
            model.save_pretrained(s.run_dir / "final")  # the session's own model: any family
        finally:
            unet_raw.gradient_checkpointing, model.meta = was, saved_meta
    finally:
        if ema is not None:
            ema.restore(params)


def _preview(model, cfg, run_dir, step) -> None:
    """A short rollout from a val clip's first frame with its true actions, written as a gif
    (reference | prediction), so training progress can be watched as the world model behaves."""
    from PIL import Image  # only for previews

    if _family(model) == "wan":
        return  # rollout previews need the Wan sampler (not built yet)

    try:
        clip = next(ClipStream(cfg.data, "val", 0, 0, 1, 1).samples())[2]
    except V2WError:
        return
    modes = {m: m.training for m in (model.unet, model.image_proj) if m is not None}
    device = next(model.unet.parameters()).device
    try:
        with torch.no_grad():
            frames = clip["frames"].permute(1, 0, 2, 3)[None].to(device)  # (1, 3, T, H, W)
            t = frames.shape[2]
            z0 = model.encode_frames(frames[:, :, :1])
            actions = shift_actions(clip["actions"][None].to(device)) if model.unet.config.action_dim else None
            roller = Roller(model, RolloutConfig(steps=10, fs=cfg.fs))
            pred = model.decode_latents(roller.rollout(z0, frames[:, :, :1], actions, t - 1))
    finally:
        for m, was in modes.items():
            m.train(was)
    to_img = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()  # noqa: E731
    shown = torch.cat([frames[:, :, :1], pred], dim=2)
    pics = [Image.fromarray(np.concatenate([to_img(frames[0, :, i]), to_img(shown[0, :, i])], axis=1)) for i in range(t)]
    out = run_dir / "previews" / f"step-{step:07d}.gif"
    out.parent.mkdir(parents=True, exist_ok=True)
    pics[0].save(out, save_all=True, append_images=pics[1:], duration=150, loop=0)
