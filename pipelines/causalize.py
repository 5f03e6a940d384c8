"""``v2w causalize``: a pretrained bidirectional checkpoint -> a causal, action-conditioned MODEL.

Steps (DynamiCrafter family):
  1. resolve ``--ckpt`` (a built-in hub name, ``tiny``, or a path) and read it without unpickling;
  2. split the state dict by prefix and load every part with a strict key check: the U-Net, VAE,
     image encoder and Resampler; the text tower only to compute the empty-prompt context once;
     schedule buffers and the text leftovers inside ``embedder.model`` are dropped on purpose;
  3. causalize the U-Net (weight transfer, masks, norms, action encoder) with a report;
  4. probe causality (also with ``--check`` alone): frame k perturbed, frames < k must not move;
  5. write MODEL atomically.
The ``unet3d`` family takes a diffusers UNet3DConditionModel folder instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.devices import resolve_device
from pipelines.errors import V2WError
from pipelines.models.action import ACTION_INJECTIONS, ACTION_TYPES, ActionEncoder
from pipelines.models.causal import TRANSFERS, is_per_frame
from pipelines.models.checkpoint import load_state_dict
from pipelines.models.dynamicrafter import load_dynamicrafter_base
from pipelines.models.probe import causality_probe
from pipelines.models.resampler import Resampler
from pipelines.models.surgery import causalize, check_causality
from pipelines.models.unet import VideoUNet
from pipelines.models.world_model import WorldModel, load_model
from pipelines.official import load_official, looks_official, release_of

FAMILIES = ("dynamicrafter", "unet3d", "wan")


@dataclass
class CausalizeConfig:
    ckpt: str  # dynamicrafter | dynamicrafter-256 | dynamicrafter-1024 | tiny | tiny-random | PATH (file or BASE folder)
    out: str | None  # MODEL folder (None with check_only)
    base_config: str | None = None  # DynamiCrafter inference YAML for non-default configs
    family: str = "dynamicrafter"
    transfer: str = "extrapolative"
    order: int = 1  # polynomial order of the extrapolative transfer
    norm: str | None = None  # per-frame | pooled; None = per-frame, or pooled for an official Vid2World checkpoint
    action_dim: int = 0
    action_type: str = "continuous"
    action_injection: str = "time"  # time (paper) | scale-shift | tokens: pipelines/models/action.py
    action_tokens: int = 4  # tokens per frame for action_injection "tokens"
    action_init_std: float = 0.0  # 0: the action encoder's last layer starts at zero (the paper's)
    check_only: bool = False  # probe only, write nothing (the probe itself always runs)
    unsafe_pickle: bool = False
    fs: int | None = None  # fps / frame-stride conditioning the model will be trained with (the paper: 3)
    from_scratch: bool = False  # re-initialise the U-Net + Resampler (keep VAE, CLIP): the no-transfer control
    device: str = "auto"  # where the causality probe runs (weights are read and written on the CPU)
    extra_meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for flag, value, allowed in (("--family", self.family, FAMILIES), ("--transfer", self.transfer, TRANSFERS),
                                     ("--action-type", self.action_type, ACTION_TYPES),
                                     ("--action-injection", self.action_injection, ACTION_INJECTIONS)):
            if value not in allowed:
                raise V2WError(f"{flag} must be one of {{{', '.join(allowed)}}}. Got {value!r}")
        self.norm_given = self.norm is not None
        if self.norm is None:
            self.norm = "per-frame"
        is_per_frame(self.norm)  # validates --norm
        if self.out is None and not self.check_only:
            raise V2WError("--out is required (or pass --check alone to only probe)")
        resolve_device(self.device)  # a GPU that is not there: one line now


@dataclass
class CausalizeResult:
    out: Path | None
    report: dict
    check: dict
    base_check: dict | None
    seconds: float
    peak_memory_mb: float | None


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:
        return None


def run(cfg: CausalizeConfig, log=lambda msg: None) -> CausalizeResult:
    t0 = time.time()
    if cfg.family == "unet3d":
        return _run_unet3d(cfg, t0, log)
    if cfg.family == "wan":
        return _run_wan(cfg, t0, log)
    if is_official_checkpoint(cfg.ckpt, cfg.unsafe_pickle):
        return _run_official(cfg, t0, log)

    if cfg.check_only and (Path(cfg.ckpt) / "config.json").exists():
        # probe a MODEL folder written earlier (by causalize or train)
        unet = load_model(cfg.ckpt, resolve_device(cfg.device)).unet
        check = check_causality(unet)
        if unet.config.per_frame_norm and not check["causal"]:
            raise V2WError(f"not causal: outputs at frames < {check['k']} moved by {check['max_leak']:.3g}", path=cfg.ckpt)
        return CausalizeResult(None, {}, check, None, time.time() - t0, _peak_rss_mb())
    # 1-2. read and split
    base, source = load_dynamicrafter_base(cfg.ckpt, cfg.base_config, cfg.unsafe_pickle, log)
    if cfg.from_scratch:
        base = _reinitialized(base, log)
    # 3. causalize
    log("causalizing the U-Net")
    causal, report = causalize(
        base.unet, cfg.transfer, cfg.norm, cfg.action_dim, cfg.action_type, cfg.order, return_report=True,
        share_weights=True, action_injection=cfg.action_injection, action_tokens=cfg.action_tokens,
        action_init_std=cfg.action_init_std,
    )
    # 4. probe
    log("probing causality")
    check = _probe(causal, cfg.device)
    base_check = _probe(base.unet, cfg.device) if cfg.check_only else None
    if causal.config.per_frame_norm and not check["causal"]:
        raise V2WError(
            f"causality check failed: outputs at frames < {check['k']} moved by {check['max_leak']:.3g} "
            f"(> {check['tolerance']}) when frame {check['k']} changed; per layer: {check['per_layer']}"
        )
    if cfg.check_only:
        return CausalizeResult(None, report, check, base_check, time.time() - t0, _peak_rss_mb())
    # 5. write
    meta = dict(base.meta)
    meta["causalize"] = {
        "source": source,
        "transfer": cfg.transfer,
        "order": cfg.order,
        "norm": cfg.norm,
        "action_dim": cfg.action_dim,
        "action_type": cfg.action_type,
        "action_injection": cfg.action_injection,
        "action_init_std": cfg.action_init_std,
        "from_scratch": cfg.from_scratch,
        "report": {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()},
        "check": {k: check[k] for k in ("k", "frames", "max_leak", "future_change", "per_layer", "causal")},
    }
    if cfg.fs is not None:
        meta["fps"] = cfg.fs  # MODEL's config.json calls it "fps" (a file key: kept)
    meta.update(cfg.extra_meta)
    model = WorldModel(causal, base.vae, base.image_encoder, base.image_proj, base.empty_text, meta)
    log(f"writing {cfg.out}")
    model.save_pretrained(cfg.out)
    return CausalizeResult(Path(cfg.out), report, check, base_check, time.time() - t0, _peak_rss_mb())


def is_official_checkpoint(ckpt: str, unsafe_pickle: bool = False) -> bool:
    """A released ``thuml/Vid2World-*`` name, or a checkpoint file in the official layout (its keys are
    read through mmap / safetensors' header: cheap even for a 10 GB file)."""
    if release_of(ckpt):
        return True
    path = Path(ckpt)
    if not path.is_file():
        return False
    try:
        return looks_official(load_state_dict(path, unsafe_pickle=unsafe_pickle))
    except V2WError:
        return False


def _run_official(cfg: CausalizeConfig, t0: float, log) -> CausalizeResult:
    """An official Vid2World checkpoint: already causal and action-conditioned; keys mapped, nothing new."""
    if cfg.action_dim or cfg.from_scratch or cfg.action_injection != "time" or cfg.action_init_std or cfg.transfer != "extrapolative":
        raise V2WError("an official Vid2World checkpoint is causal and has its actions already: drop --action-dim, "
                       "--action-type, --action-injection, --action-init-std, --transfer and --from-scratch")
    model = load_official(cfg.ckpt, cfg.base_config, cfg.norm if cfg.norm_given else None, cfg.unsafe_pickle, log)
    if cfg.fs is not None:
        model.meta["fps"] = cfg.fs
    model.meta.update(cfg.extra_meta)
    log("probing causality")
    check = _probe(model.unet, cfg.device)
    c = model.unet.config
    report = {"matched": len(model.unet.state_dict()), "new": 0, "dropped": model.meta["vid2world"]["dropped_keys"],
              "transfer": model.meta["vid2world"].get("transfer"), "order": 1, "norm": c.temporal_norm,
              "action_injection": c.action_injection, "action_dim": c.action_dim, "action_type": c.action_type,
              "official": model.meta["vid2world"].get("repo") or "file"}
    if c.per_frame_norm and not check["causal"]:
        raise V2WError(f"causality check failed: outputs at frames < {check['k']} moved by {check['max_leak']:.3g}")
    model.meta["causalize"] = {"source": model.meta["vid2world"]["checkpoint"], "norm": c.temporal_norm,
                               "action_dim": c.action_dim, "action_type": c.action_type, "action_injection": "vid2world",
                               "report": report, "check": {k: check[k] for k in ("k", "frames", "max_leak", "future_change", "per_layer", "causal")}}
    if cfg.check_only:
        return CausalizeResult(None, report, check, None, time.time() - t0, _peak_rss_mb())
    log(f"writing {cfg.out}")
    model.save_pretrained(cfg.out)
    return CausalizeResult(Path(cfg.out), report, check, None, time.time() - t0, _peak_rss_mb())


def _probe(unet: VideoUNet, device: str) -> dict:
    """The causality probe on ``--device`` (much faster on a GPU at 512); the U-Net goes back to the CPU."""
    try:
        return check_causality(unet.to(resolve_device(device)))
    finally:
        unet.to("cpu")


def _reinitialized(base, log):
    """The same base with a freshly initialised (seed 1234) U-Net and Resampler: VAE and CLIP kept, so
    a fine-tune from it measures what the pretrained video prior adds (``--from-scratch``)."""
    log("--from-scratch: re-initialising the U-Net and the Resampler")
    torch.manual_seed(1234)  # not v2w pretrain's seed: a different draw from the same init distribution
    unet = VideoUNet(base.unet.config)
    proj = Resampler(**dict(base.image_proj.config)) if base.image_proj is not None else None
    meta = {**base.meta, "made_from": {**base.meta.get("made_from", {}), "from_scratch": True}}
    return WorldModel(unet, base.vae, base.image_encoder, proj, base.empty_text if base.empty_text.numel() else None, meta)


def _run_unet3d(cfg: CausalizeConfig, t0: float, log) -> CausalizeResult:
    if cfg.action_injection != "time" or cfg.action_init_std:
        raise V2WError("--family unet3d supports only --action-injection time (and a zero-initialised encoder)")
    from pipelines.models.unet3d import (  # diffusers' UNet3D: only this family pays its import
        UNet3DWorldModel,
        load_unet3d_base,
        save_unet3d_model,
    )

    unet = load_unet3d_base(cfg.ckpt)
    model = UNet3DWorldModel.from_unet(unet, cfg.transfer, cfg.norm, cfg.order)
    model.eval()
    c = unet.config
    g = torch.Generator().manual_seed(0)
    t, s = 6, 2 ** (len(c.block_out_channels) - 1) * 2
    dev = resolve_device(cfg.device)
    x = torch.randn(1, c.in_channels, t, s, s, generator=g).to(dev)
    ctx = torch.randn(1, 4, c.cross_attention_dim, generator=g).to(dev)
    ts = torch.randint(0, 1000, (1, t), generator=g).to(dev)
    probe = causality_probe(lambda v: model.to(dev)(v, ts, ctx), x, t // 2)
    model.to("cpu")
    check = {"k": t // 2, "frames": t, "causal": probe["max_leak"] <= 1e-5, "tolerance": 1e-5, "per_layer": {}, **probe}
    if is_per_frame(cfg.norm) and not check["causal"]:
        raise V2WError(f"causality check failed: leak {probe['max_leak']:.3g} at frames < {t // 2}")
    report = model.report
    if cfg.check_only:
        return CausalizeResult(None, report, check, None, time.time() - t0, _peak_rss_mb())
    action_encoder = ActionEncoder(cfg.action_dim, model.time_embed_dim, c.block_out_channels[0], cfg.action_type) if cfg.action_dim else None
    meta = {
        "causalize": {
            "source": cfg.ckpt, "transfer": cfg.transfer, "order": cfg.order, "norm": cfg.norm,
            "action_dim": cfg.action_dim, "action_type": cfg.action_type, "counts": report.get("counts"),
            "check": {k: check[k] for k in ("k", "frames", "max_leak", "future_change", "causal")},
        }
    }
    save_unet3d_model(model, cfg.out, meta, action_encoder)
    return CausalizeResult(Path(cfg.out), report, check, None, time.time() - t0, _peak_rss_mb())


def wan_causality_check(world, device: str = "cpu", frames: int = 4, k: int = 2) -> dict:
    """Perturb latent frames >= k of a random input; the world transformer's outputs at frames < k must
    not move (exactly 0: nothing in a Wan block mixes frames but the block-causal attention)."""
    from pipelines.models.wan import TEXT_TOKENS

    c = world.transformer.config
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c.in_channels, frames, 4 * c.patch_size[1], 4 * c.patch_size[2], generator=g).to(dev)
    ts = torch.randint(0, 1000, (1, frames), generator=g).to(dev)
    ctx = torch.randn(1, TEXT_TOKENS, c.text_dim, generator=g).to(dev)
    acts = torch.randn(1, frames, 4 * world.config.action_dim, generator=g).to(dev) if world.config.action_dim else None
    was = world.training
    world.to(dev).eval()
    try:
        probe = causality_probe(lambda v: world(v, ts, ctx, acts), x, k)
    finally:
        world.to("cpu").train(was)
    return {"k": k, "frames": frames, "causal": probe["max_leak"] <= 1e-5, "tolerance": 1e-5, "per_layer": {}, **probe}


def _run_wan(cfg: CausalizeConfig, t0: float, log) -> CausalizeResult:
    """Wan 2.1 (diffusers layout): block-causal self-attention, per-frame noise levels, actions on the
    time embedding (pipelines/models/wan.py); MODEL written by WanWorldModel."""
    if cfg.action_injection != "time" or cfg.from_scratch or cfg.base_config:
        raise V2WError("--family wan supports --action-injection time only (actions on the time embedding), "
                       "without --from-scratch or --base-config")
    from pipelines.models.wan import WanWorldConfig, WanWorldTransformer
    from pipelines.models.wan_model import WanWorldModel, load_wan_base

    if cfg.check_only and (Path(cfg.ckpt) / "config.json").exists():  # probe a Wan MODEL written earlier
        check = wan_causality_check(load_model(cfg.ckpt).transformer, cfg.device)
        if not check["causal"]:
            raise V2WError(f"not causal: outputs at latent frames < {check['k']} moved by {check['max_leak']:.3g}", path=cfg.ckpt)
        return CausalizeResult(None, {}, check, None, time.time() - t0, _peak_rss_mb())
    base = load_wan_base(cfg.ckpt, log)
    world = WanWorldTransformer(base.transformer, WanWorldConfig(cfg.action_dim, cfg.action_type, True, cfg.action_init_std))
    log("probing causality")
    check = wan_causality_check(world, cfg.device)
    base_check = None
    if cfg.check_only:  # the base itself (mask off) for comparison: it leaks
        world.config.causal = False
        base_check = wan_causality_check(world, cfg.device)
        world.config.causal = True
    if not check["causal"]:
        raise V2WError(f"causality check failed: outputs at latent frames < {check['k']} moved by {check['max_leak']:.3g}")
    blocks = len(base.transformer.blocks)
    report = {"block_causal_attention": blocks, "action_encoder": bool(cfg.action_dim)}
    if cfg.check_only:
        return CausalizeResult(None, report, check, base_check, time.time() - t0, _peak_rss_mb())
    meta = {
        "schedule": base.schedule,
        "causalize": {"source": base.source, "action_dim": cfg.action_dim, "action_type": cfg.action_type,
                      "action_injection": "time", "action_init_std": cfg.action_init_std, "report": report,
                      "check": {k: check[k] for k in ("k", "frames", "max_leak", "future_change", "causal")}},
    }
    if cfg.fs is not None:
        meta["fps"] = cfg.fs
    meta.update(cfg.extra_meta)
    log(f"writing {cfg.out}")
    WanWorldModel(world, base.vae, base.empty_text, meta).save_pretrained(cfg.out)
    return CausalizeResult(Path(cfg.out), report, check, None, time.time() - t0, _peak_rss_mb())
