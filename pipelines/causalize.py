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

from pipelines.errors import V2WError

FAMILIES = ("dynamicrafter", "unet3d")


@dataclass
class CausalizeConfig:
    ckpt: str  # dynamicrafter | dynamicrafter-256 | dynamicrafter-1024 | tiny | tiny-random | PATH (file or BASE folder)
    out: str | None  # MODEL folder (None with check_only)
    base_config: str | None = None  # DynamiCrafter inference YAML for non-default configs
    family: str = "dynamicrafter"
    transfer: str = "extrapolative"
    order: int = 1  # polynomial order of the extrapolative transfer
    norm: str = "per-frame"
    action_dim: int = 0
    action_type: str = "continuous"
    action_injection: str = "time"  # time (paper) | scale-shift | tokens: pipelines/models/action.py
    action_tokens: int = 4  # tokens per frame for action_injection "tokens"
    action_init_std: float = 0.0  # 0: the action encoder's last layer starts at zero (the paper's)
    check: bool = True  # run the causality probe (always on; kept for the CLI's --check)
    check_only: bool = False  # probe only, write nothing
    unsafe_pickle: bool = False
    fps: int | None = None  # fps/frame-stride the model will be trained with (DESIGN 6: 3)
    from_scratch: bool = False  # re-initialise the U-Net + Resampler (keep VAE, CLIP): the no-transfer control
    extra_meta: dict = field(default_factory=dict)


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
    if cfg.family not in FAMILIES:
        raise V2WError(f"--family must be one of {{{', '.join(FAMILIES)}}}. Got {cfg.family!r}")
    if cfg.out is None and not cfg.check_only:
        raise V2WError("--out is required (or pass --check alone to only probe)")
    t0 = time.time()
    if cfg.family == "unet3d":
        return _run_unet3d(cfg, t0, log)
    from pipelines.models.surgery import causalize, check_causality
    from pipelines.models.world_model import WorldModel

    if cfg.check_only and (Path(cfg.ckpt) / "config.json").exists():
        # probe a MODEL folder written earlier (by causalize or train)
        from pipelines.models.world_model import load_model

        unet = load_model(cfg.ckpt).unet
        check = check_causality(unet)
        if unet.config.temporal_norm == "per-frame" and not check["causal"]:
            raise V2WError(f"not causal: outputs at frames < {check['k']} moved by {check['max_leak']:.3g}", path=cfg.ckpt)
        return CausalizeResult(None, {}, check, None, time.time() - t0, _peak_rss_mb())
    # 1-2. read and split
    base, source = load_dynamicrafter_base(cfg, log)
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
    check = check_causality(causal)
    base_check = check_causality(base.unet) if cfg.check_only else None
    if cfg.norm == "per-frame" and not check["causal"]:
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
    if cfg.fps is not None:
        meta["fps"] = cfg.fps
    meta.update(cfg.extra_meta)
    model = WorldModel(causal, base.vae, base.image_encoder, base.image_proj, base.empty_text, meta)
    log(f"writing {cfg.out}")
    model.save_pretrained(cfg.out)
    return CausalizeResult(Path(cfg.out), report, check, base_check, time.time() - t0, _peak_rss_mb())


def load_dynamicrafter_base(cfg: CausalizeConfig, log=lambda msg: None):
    """Every part of a DynamiCrafter checkpoint, strictly keyed -> (WorldModel (bidirectional), source)."""
    from pipelines.models.checkpoint import (
        load_state_dict,
        rename_legacy_keys,
        resolve_checkpoint,
        split_by_prefix,
        unet_params_from_yaml,
        check_keys,
    )
    from pipelines.models.clip import compute_empty_text_context, load_text_tower, load_vision_tower
    from pipelines.models.resampler import Resampler
    from pipelines.models.unet import BUILTIN_CONFIGS, UNetConfig, VideoUNet
    from pipelines.models.vae import load_vae
    from pipelines.models.world_model import WorldModel
    from pipelines.statedict import to_float32

    yaml_cfg = None
    base_config = cfg.base_config
    if cfg.ckpt == "tiny-random":
        from pipelines.models.tiny import tiny_dynamicrafter_checkpoint, tiny_inference_config

        sd, source, yaml_cfg = tiny_dynamicrafter_checkpoint()["state_dict"], "tiny-random", tiny_inference_config()
        builtin = None
    else:
        path, builtin = resolve_checkpoint(cfg.ckpt)
        if path.is_dir():  # a BASE folder (v2w pretrain, or --ckpt tiny): model.ckpt + inference.yaml
            if not (path / "model.ckpt").exists():
                raise V2WError("no model.ckpt in this folder (a base folder holds model.ckpt + inference.yaml, as v2w pretrain writes)", path=path)
            if base_config is None and (path / "inference.yaml").exists():
                base_config = str(path / "inference.yaml")
            path = path / "model.ckpt"
        log(f"reading {path}")
        sd, source = to_float32(load_state_dict(path, unsafe_pickle=cfg.unsafe_pickle)), str(path)
    if base_config:
        yaml_cfg = _read_yaml(base_config)
    parts, dropped, unknown = split_by_prefix(sd)
    if unknown:
        raise V2WError(f"{len(unknown)} unexpected top-level keys (e.g. {', '.join(unknown[:5])}); not a DynamiCrafter checkpoint?", path=source)
    if not parts["unet"]:
        raise V2WError("no model.diffusion_model.* keys: not a DynamiCrafter checkpoint", path=source)

    # U-Net
    params = {**UNetConfig().to_dict(), **BUILTIN_CONFIGS[builtin or "dynamicrafter-512"]}
    if yaml_cfg is not None:
        params.update(unet_params_from_yaml(yaml_cfg))
    with torch.device("meta"):
        unet = VideoUNet(UNetConfig.from_dict(params))
    check_keys(unet, rename_legacy_keys(parts["unet"]), "U-Net", source)
    meta = {"fps": params["default_fs"]}
    model_params = (yaml_cfg or {}).get("model", {}).get("params", {})

    # VAE (first_stage_model.*)
    vae = None
    if parts["vae"]:
        ddconfig = model_params.get("first_stage_config", {}).get("params", {}).get("ddconfig")
        vae, _ = load_vae(sd, "first_stage_model.", ddconfig)
        meta["latent_scale"] = float(model_params.get("scale_factor", 0.18215))
    else:
        log("no first_stage_model.* keys: the model will have no VAE (latents only)")
    # image encoder + Resampler
    image_encoder = image_proj = None
    if parts["image_encoder"]:
        image_encoder = load_vision_tower(sd, "embedder.model.").module
    if parts["image_proj"]:
        rp = model_params.get("image_proj_stage_config", {}).get("params") or _resampler_params_from_shapes(parts["image_proj"], params)
        image_proj = Resampler(**rp)
        check_keys(image_proj, parts["image_proj"], "Resampler (image_proj_model)", source)
    # text tower: only the empty prompt's context is kept
    empty = None
    if parts["text"]:
        text = load_text_tower(sd, "cond_stage_model.model.").module
        with torch.no_grad():
            empty = compute_empty_text_context(text)
        del text
    meta["made_from"] = {"checkpoint": source, "dropped_keys": len(dropped)}
    return WorldModel(unet, vae, image_encoder, image_proj, empty, meta), source


def _reinitialized(base, log):
    """The same base with a freshly initialised (seed 1234) U-Net and Resampler: VAE and CLIP kept, so
    a fine-tune from it measures what the pretrained video prior adds (``--from-scratch``)."""
    from pipelines.models.resampler import Resampler
    from pipelines.models.unet import VideoUNet
    from pipelines.models.world_model import WorldModel

    log("--from-scratch: re-initialising the U-Net and the Resampler")
    torch.manual_seed(1234)  # not v2w pretrain's seed: a different draw from the same init distribution
    unet = VideoUNet(base.unet.config)
    proj = Resampler(**dict(base.image_proj.config)) if base.image_proj is not None else None
    meta = {**base.meta, "made_from": {**base.meta.get("made_from", {}), "from_scratch": True}}
    return WorldModel(unet, base.vae, base.image_encoder, proj, base.empty_text if base.empty_text.numel() else None, meta)


def _read_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.exists():
        raise V2WError("--base-config file not found", path=p)
    with open(p) as f:
        return yaml.safe_load(f) or {}


def _resampler_params_from_shapes(sd: dict, unet_params: dict) -> dict:
    """Resampler hyper-parameters read off its weights (heads: DynamiCrafter's 12 at dim 1024)."""
    latents = sd["latents"].shape  # (1, num_queries * video_length, dim)
    dim = latents[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    inner = sd["layers.0.0.to_q.weight"].shape[0]
    dim_head = 64 if inner % 64 == 0 else inner
    video_length = unet_params.get("temporal_length", 16)
    return {
        "dim": dim,
        "depth": depth,
        "dim_head": dim_head,
        "heads": inner // dim_head,
        "num_queries": latents[1] // video_length,
        "embedding_dim": sd["proj_in.weight"].shape[1],
        "output_dim": sd["proj_out.weight"].shape[0],
        "ff_mult": sd["layers.0.1.1.weight"].shape[0] // dim,
        "video_length": video_length,
    }


def _run_unet3d(cfg: CausalizeConfig, t0: float, log) -> CausalizeResult:
    if cfg.action_injection != "time" or cfg.action_init_std:
        raise V2WError("--family unet3d supports only --action-injection time (and a zero-initialised encoder)")
    from pipelines.models.action import ActionEncoder
    from pipelines.models.probe import causality_probe
    from pipelines.models.unet3d import UNet3DWorldModel, load_unet3d_base, save_unet3d_model

    unet = load_unet3d_base(cfg.ckpt)
    model = UNet3DWorldModel.from_unet(unet, cfg.transfer, cfg.norm, cfg.order)
    model.eval()
    c = unet.config
    g = torch.Generator().manual_seed(0)
    t, s = 6, 2 ** (len(c.block_out_channels) - 1) * 2
    x = torch.randn(1, c.in_channels, t, s, s, generator=g)
    ctx = torch.randn(1, 4, c.cross_attention_dim, generator=g)
    ts = torch.randint(0, 1000, (1, t), generator=g)
    probe = causality_probe(lambda v: model(v, ts, ctx), x, t // 2)
    check = {"k": t // 2, "frames": t, "causal": probe["max_leak"] <= 1e-5, "tolerance": 1e-5, "per_layer": {}, **probe}
    if cfg.norm == "per-frame" and not check["causal"]:
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
