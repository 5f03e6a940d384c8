"""The official Vid2World checkpoints -> v2w MODEL folders (``v2w causalize --ckpt thuml/Vid2World-CSGO``).

The paper's authors released eight trained world models on the Hugging Face hub (MIT). They are
already causal and action-conditioned, so "causalize" here means: read the Lightning file without
unpickling, map the U-Net's keys (``pipelines/models/vid2world.py``), load every other part as a
DynamiCrafter checkpoint's, and record what the model expects (action space, context frames,
sampling profile) so that rollout, play, eval and train need no extra flags. Every key is loaded
or on the explicit drop list (the DDPM schedule buffers); anything else is an error.

Why ``causalize`` and not a separate ``import`` command: it is already the stage that turns a
checkpoint into a MODEL (DynamiCrafter, diffusers UNet3D, Wan); an official checkpoint is one more
kind of input, told apart by its keys, with the same ``--out``, ``--norm``, ``--check`` and
``--json``. ``v2w rollout|play|eval|train --model thuml/Vid2World-X`` import on first use into
``$V2W_HOME/models`` (default ``~/.cache/v2w/models``) through the same function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipelines.data.sources.csgo_hdf5 import ACTION_NAMES as CSGO_ACTION_NAMES
from pipelines.data.sources.recon import ACTION_NAMES as RECON_ACTION_NAMES
from pipelines.errors import V2WError
from pipelines.models.checkpoint import (
    hub_reachable,
    load_state_dict,
    read_yaml,
    split_by_prefix,
    unet_params_from_yaml,
)
from pipelines.models.dynamicrafter import with_conditioning
from pipelines.models.tiny import ARCHS, dynamicrafter_state_dict, inference_config, random_parts
from pipelines.models.unet import VideoUNet
from pipelines.models.vae import ldm_vae_shapes, tiny_ldm_ddconfig
from pipelines.models.vid2world import (
    OFFICIAL_CONFIGS,
    RELEASES,
    guess_official_config,
    is_official_unet,
    official_to_v2w_key,
    release_of,
    unet_config_from_official,
    v2w_to_official_key,
)
from pipelines.models.world_model import WorldModel, load_model
from pipelines.statedict import load_strict, to_float32

# RT-1 (fractal20220817_data) as the official oxe_data_converter concatenates its action dict: 13-d
RT1_ACTION_NAMES = [
    "base_displacement_x", "base_displacement_y", "base_displacement_vertical_rotation", "gripper_closedness",
    "rotation_delta_roll", "rotation_delta_pitch", "rotation_delta_yaw",
    "terminate_episode_0", "terminate_episode_1", "terminate_episode_2",
    "world_vector_x", "world_vector_y", "world_vector_z",
]
# the npz source's --action-keys that gives that layout from RT-1's own keys (v2w prepare)
RT1_ACTION_KEYS = "base_displacement_vector,base_displacement_vertical_rotation,gripper_closedness_action,rotation_delta,terminate_episode,world_vector"


@dataclass(frozen=True)
class Domain:
    """What a released model was trained on: action layout, context frames, frame size."""

    config: str  # key of pipelines.models.vid2world.OFFICIAL_CONFIGS
    action_names: tuple[str, ...]
    context_frames: int  # the paper's evaluation protocol
    resolution: tuple[int, int] = (320, 512)


DOMAINS = {
    "rt1": Domain("rt1", tuple(RT1_ACTION_NAMES), 1),
    "csgo": Domain("csgo", tuple(CSGO_ACTION_NAMES), 4),
    "recon": Domain("recon", tuple(RECON_ACTION_NAMES), 4),
}


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
RESAMPLER_VIDEO_LENGTH = 16  # image_proj_stage_config.video_length in every released config


def models_home() -> Path:
    return Path(os.environ.get("V2W_HOME", Path.home() / ".cache" / "v2w")) / "models"


def download_release(repo: str) -> tuple[Path, Path | None]:
    """The release's weight file (and config YAML if the repo has one) from the hub cache, downloading
    when online; offline and not cached: one line naming the repo and the ``--ckpt PATH`` way out."""
    patterns = [f"*{s}" for s in WEIGHT_SUFFIXES] + ["*.yaml"]
    try:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") or not hub_reachable():
                raise
            folder = Path(snapshot_download(repo, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:
        raise V2WError(
            f"cannot get the Hugging Face repo {repo} ({type(e).__name__}). Download it where you have internet "
            f"(huggingface-cli download {repo}) and copy it into the HF cache here, or pass the checkpoint file: "
            f"--ckpt /path/to/its.ckpt"
        ) from None
    weights = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if len(weights) != 1:
        raise V2WError(f"expected one checkpoint file in {repo}, found {[p.name for p in weights] or 'none'}; "
                       f"pass the one to use: --ckpt PATH", path=folder)
    yamls = sorted(folder.rglob("*.yaml"))
    return weights[0], (yamls[0] if len(yamls) == 1 else None)


def looks_official(sd: dict) -> bool:
    """A checkpoint state dict in the official Vid2World layout (its U-Net's key names)."""
    prefix = "model.diffusion_model."
    return is_official_unet(k[len(prefix):] for k in sd if k.startswith(prefix))


def load_official(
    ckpt: str, base_config: str | None = None, norm: str | None = None, unsafe_pickle: bool = False, log=lambda m: None,
    state_dict: dict | None = None,
) -> WorldModel:
    """A released repo id or an official-layout checkpoint file -> a WorldModel with its metadata.

    norm: the temporal GroupNorms, ``pooled`` (default: the function the weights were trained with,
    as the official sampler runs it) or ``per-frame`` (exactly causal: v2w's activation cache works,
    a small change of the outputs; docs/design.md §14)."""
    repo = release_of(ckpt)
    yaml_path = Path(base_config) if base_config else None
    if state_dict is not None:
        sd, source = state_dict, ckpt
    else:
        if repo:
            path, repo_yaml = download_release(repo)
            yaml_path = yaml_path or repo_yaml
        else:
            path = Path(ckpt)
            if not path.exists():
                raise V2WError(f"checkpoint not found (give a file or one of: {', '.join(RELEASES)})", path=path)
        log(f"reading {path}")
        sd, source = load_state_dict(path, unsafe_pickle=unsafe_pickle), str(path)
    sd = to_float32(sd)
    yaml_cfg = read_yaml(yaml_path, "--base-config file") if yaml_path else None
    parts, dropped, unknown = split_by_prefix(sd)
    if unknown:
        raise V2WError(f"{len(unknown)} unexpected top-level keys (e.g. {', '.join(unknown[:5])}); not a Vid2World checkpoint?", path=source)
    unet_sd = parts["unet"]
    if not is_official_unet(unet_sd):
        raise V2WError("the U-Net keys are not in the official Vid2World layout (no action_emb_proj / conv3d / out.2.conv2d keys)", path=source)
    release = RELEASES.get(repo) if repo else None
    if yaml_cfg is not None:
        params = unet_params_from_yaml(yaml_cfg)
    elif release is not None:
        params = dict(OFFICIAL_CONFIGS[DOMAINS[release.domain].config])
    else:
        params = guess_official_config(unet_sd, {k: list(v.shape) for k, v in unet_sd.items()})
    config = unet_config_from_official(params, norm or "pooled")
    mapped = {official_to_v2w_key(k): v for k, v in unet_sd.items()}
    if len(mapped) != len(unet_sd):
        raise V2WError("two official U-Net keys map to one v2w key: not the official layout", path=source)
    with torch.device("meta"):
        unet = VideoUNet(config)
    origin = {k: v2w_to_official_key(k, config) for k in unet.state_dict()}  # errors name the official keys
    origin.update({official_to_v2w_key(k): k for k in unet_sd})
    load_strict(unet, mapped, "U-Net", source, against="the official config", hint="Wrong --base-config?",
                prefix="model.diffusion_model.", origin=origin)
    model = with_conditioning(unet, sd, parts, yaml_cfg, source, log, resampler_video_length=RESAMPLER_VIDEO_LENGTH)
    domain = DOMAINS[release.domain] if release else _domain_of(config.action_dim)
    model.meta.update(_official_meta(repo, release, domain, config, source, len(dropped)))
    return model


def _domain_of(action_dim: int) -> Domain | None:
    return next((d for d in DOMAINS.values() if OFFICIAL_CONFIGS[d.config]["action_dim"] == action_dim), None)


def _official_meta(repo, release, domain, config, source, dropped) -> dict:
    """What rollout, play, eval and train read from MODEL's config.json for an imported model."""
    guidance = 2.5 if release is None or release.action_guidance else 1.0
    meta = {
        "fps": 3,  # the released configs' fs conditioning
        "context_layout": "vid2world",
        "action_normalization": "none",  # the official data loaders feed actions as they are
        # the official sampler (configs/*: DDIM 50 uniform_trailing, eta 1, guidance 2.5, rescale 0.7)
        "sampling": {"profile": "vid2world", "steps": 50, "eta": 1.0, "guidance": guidance, "guidance_rescale": 0.7},
        "vid2world": {
            "repo": repo, "checkpoint": source, "dropped_keys": dropped,
            "transfer": release.transfer if release else None,
            "action_guidance": release.action_guidance if release else None,
            "training_steps": release.training_steps if release else None,
            "temporal_norm": config.temporal_norm,
        },
        "made_from": {"checkpoint": source, "dropped_keys": dropped, "official_vid2world": repo or True},
    }
    if domain is not None:
        meta["context_frames"] = domain.context_frames
        meta["action_names"] = list(domain.action_names)
        meta["vid2world"]["domain"] = domain.config
        meta["trained"] = {"resize": "crop", "action_type": config.action_type, "action_names": list(domain.action_names)}
        if release is not None:  # the released models' frame size (a local file's is not known)
            meta["trained"]["resolution"] = list(domain.resolution)
    return meta


def imported_model_path(name: str, norm: str = "pooled") -> Path:
    """``--model thuml/Vid2World-X`` anywhere: the MODEL folder imported on first use (then reused)."""
    repo = release_of(name)
    if repo is None:
        raise V2WError(f"not a released Vid2World model: {name!r} (known: {', '.join(RELEASES)})")
    out = models_home() / (repo.replace("/", "--") + ("" if norm == "pooled" else f"--{norm}"))
    if not (out / "config.json").exists():
        load_official(repo, norm=norm).save_pretrained(out)
    return out


# A tiny stand-in in the official layout (random weights), for tests and benchmarks: the U-Net the
# fixture tests/fixtures/vid2world_reference.safetensors ran through the official code, and the tiny
# base's VAE and CLIP parts; its inference YAML says what the checkpoint alone cannot (the VAE's size).
TINY_OFFICIAL_UNET = dict(
    in_channels=8, out_channels=4, model_channels=32, attention_resolutions=[2, 1], num_res_blocks=1,
    channel_mult=[1, 2], dropout=0.0, num_head_channels=16, transformer_depth=1, context_dim=64, use_linear=True,
    use_checkpoint=False, temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
    use_relative_position=False, use_causal_attention=True, temporal_length=8, addition_attention=True,
    image_cross_attention=True, default_fs=3, fs_condition=True, action_emb=True,
)


def tiny_official_checkpoint(domain: str = "csgo", seed: int = 0) -> tuple[dict, dict]:
    """-> ({"state_dict": ...} in the official Vid2World Lightning layout, its inference YAML as a dict)."""
    params = {**TINY_OFFICIAL_UNET, "action_dim": OFFICIAL_CONFIGS[domain]["action_dim"]}
    config = unet_config_from_official(params)
    arch = replace(ARCHS["tiny"], resampler={**ARCHS["tiny"].resampler, "video_length": RESAMPLER_VIDEO_LENGTH})
    parts = random_parts(seed, arch, unet_params=config.to_dict())
    g = torch.Generator().manual_seed(seed + 1)
    vae = {k: torch.randn(s, generator=g) / max(int(np.prod(s[1:])), 1) ** 0.5 if len(s) > 1 else
           (1 + 0.05 * torch.randn(s, generator=g)) if "norm" in k and k.endswith("weight") else 0.02 * torch.randn(s, generator=g)
           for k, s in ldm_vae_shapes(tiny_ldm_ddconfig()).items()}
    sd = dynamicrafter_state_dict(parts["unet"], vae, parts["text"], parts["vision"], parts["resampler"])
    unet_prefix = "model.diffusion_model."
    sd = {(unet_prefix + v2w_to_official_key(k[len(unet_prefix):], config) if k.startswith(unet_prefix) else k): v
          for k, v in sd.items()}
    yaml_cfg = inference_config(params, tiny_ldm_ddconfig(), resampler=arch.resampler)
    yaml_cfg["model"]["params"]["unet_config"]["target"] = "lvdm.modules.networks.openaimodel3d.UNetModel"
    return {"state_dict": sd, "global_step": 0}, yaml_cfg


def open_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``--model`` of rollout, play, eval and train: a MODEL folder, or a released model's hub name
    (``thuml/Vid2World-CSGO``), imported into ``$V2W_HOME/models`` on first use and reused after."""
    if not Path(path).exists() and release_of(str(path)):
        path = imported_model_path(str(path))
    return load_model(path, device)
