"""A whole DynamiCrafter checkpoint -> a bidirectional WorldModel (docs/design.md §2).

The one place that turns DynamiCrafter's Lightning checkpoint and inference YAML into v2w's
components: the U-Net, the VAE, the CLIP image tower with its Resampler, and the empty prompt's
text context (the text tower is run once here and discarded). Every part is loaded strictly: a
missing or unexpected key is an error naming the part, the file and the likely fix.
"""

from __future__ import annotations

import torch

from pipelines.errors import V2WError
from pipelines.models.checkpoint import (
    check_keys,
    load_state_dict,
    read_yaml,
    rename_legacy_keys,
    resolve_checkpoint,
    split_by_prefix,
)
from pipelines.models.clip import compute_empty_text_context, load_text_tower, load_vision_tower
from pipelines.models.resampler import Resampler
from pipelines.models.tiny import tiny_dynamicrafter_checkpoint, tiny_inference_config
from pipelines.models.unet import UNetConfig, VideoUNet
from pipelines.models.vae import load_vae
from pipelines.models.world_model import LATENT_SCALE, WorldModel
from pipelines.statedict import to_float32


def load_dynamicrafter_base(
    ckpt: str, base_config: str | None = None, unsafe_pickle: bool = False, log=lambda msg: None
) -> tuple[WorldModel, str]:
    """Every part of a DynamiCrafter checkpoint, strictly keyed -> (WorldModel (bidirectional), source).

    ckpt: a built-in hub name (dynamicrafter, dynamicrafter-256, ...), ``tiny`` (the shipped base),
    ``tiny-random``, a ``.ckpt``/``.safetensors`` file, or a BASE folder (model.ckpt + inference.yaml,
    as ``v2w pretrain`` writes). base_config: the inference YAML for non-default configs (default: the
    folder's, or an ``inference.yaml`` beside the file).
    """
    yaml_cfg, builtin = None, None
    if ckpt == "tiny-random":
        sd, source, yaml_cfg = tiny_dynamicrafter_checkpoint()["state_dict"], "tiny-random", tiny_inference_config()
    else:
        path, builtin = resolve_checkpoint(ckpt)
        if path.is_dir():  # a BASE folder (v2w pretrain, or --ckpt tiny): model.ckpt + inference.yaml
            if not (path / "model.ckpt").exists():
                raise V2WError("no model.ckpt in this folder (a base folder holds model.ckpt + inference.yaml, as v2w pretrain writes)", path=path)
            if base_config is None and (path / "inference.yaml").exists():
                base_config = str(path / "inference.yaml")
            path = path / "model.ckpt"
        elif base_config is None and builtin is None and (path.parent / "inference.yaml").exists():
            # the file inside a BASE folder: its config sits beside it (as v2w pretrain writes it)
            base_config = str(path.parent / "inference.yaml")
            log(f"config: {base_config} (beside the checkpoint; --base-config overrides)")
        log(f"reading {path}")
        sd, source = to_float32(load_state_dict(path, unsafe_pickle=unsafe_pickle)), str(path)
    if base_config:
        yaml_cfg = read_yaml(base_config, "--base-config file")
    parts, dropped, unknown = split_by_prefix(sd)
    if unknown:
        raise V2WError(f"{len(unknown)} unexpected top-level keys (e.g. {', '.join(unknown[:5])}); not a DynamiCrafter checkpoint?", path=source)
    if not parts["unet"]:
        raise V2WError("no model.diffusion_model.* keys: not a DynamiCrafter checkpoint", path=source)

    # 1. U-Net (model.diffusion_model.*)
    unet_config = UNetConfig.from_dynamicrafter(yaml_cfg, builtin=builtin)
    with torch.device("meta"):
        unet = VideoUNet(unet_config)
    check_keys(unet, rename_legacy_keys(parts["unet"]), "U-Net", source)
    model = with_conditioning(unet, sd, parts, yaml_cfg, source, log)
    model.meta["made_from"] = {"checkpoint": source, "dropped_keys": len(dropped)}
    return model, source


def with_conditioning(
    unet: VideoUNet, sd: dict, parts: dict, yaml_cfg: dict | None, source: str, log=lambda msg: None,
    resampler_video_length: int | None = None,
) -> WorldModel:
    """A WorldModel of ``unet`` and the rest of a DynamiCrafter-layout checkpoint, each part strictly
    keyed: the VAE, the CLIP image tower, the Resampler, and the empty prompt's text context.
    ``resampler_video_length``: the Resampler's frame count when no YAML says it (default: the U-Net's
    temporal_length, as DynamiCrafter; the official Vid2World models keep 16 whatever theirs)."""
    unet_config = unet.config
    meta = {"fps": unet_config.default_fs}
    model_params = (yaml_cfg or {}).get("model", {}).get("params", {})

    # 2. VAE (first_stage_model.*)
    vae = None
    if parts["vae"]:
        ddconfig = model_params.get("first_stage_config", {}).get("params", {}).get("ddconfig")
        vae, _ = load_vae(sd, "first_stage_model.", ddconfig, source=source)
        meta["latent_scale"] = float(model_params.get("scale_factor", LATENT_SCALE))
    else:
        log("no first_stage_model.* keys: the model will have no VAE (latents only)")
    # 3. image encoder (embedder.*) + Resampler (image_proj_model.*)
    image_encoder = image_proj = None
    if parts["image_encoder"]:
        image_encoder = load_vision_tower(sd, "embedder.model.", source=source).module
    if parts["image_proj"]:
        rp = model_params.get("image_proj_stage_config", {}).get("params") or resampler_params_from_shapes(
            parts["image_proj"], resampler_video_length or unet_config.temporal_length)
        image_proj = Resampler(**rp)
        check_keys(image_proj, parts["image_proj"], "Resampler (image_proj_model)", source)
    # 4. text tower (cond_stage_model.*): only the empty prompt's context is kept
    empty = None
    if parts["text"]:
        text = load_text_tower(sd, "cond_stage_model.model.", source=source).module
        with torch.no_grad():
            empty = compute_empty_text_context(text)
        del text
    return WorldModel(unet, vae, image_encoder, image_proj, empty, meta)


def resampler_params_from_shapes(sd: dict, video_length: int) -> dict:
    """Resampler hyper-parameters read off its weights (heads: DynamiCrafter's 12 at dim 1024)."""
    latents = sd["latents"].shape  # (1, num_queries * video_length, dim)
    dim = latents[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    inner = sd["layers.0.0.to_q.weight"].shape[0]
    dim_head = 64 if inner % 64 == 0 else inner
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

