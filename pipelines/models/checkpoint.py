"""Reading DynamiCrafter checkpoints: files, hub names, configs, and key bookkeeping.

A DynamiCrafter Lightning checkpoint holds ``state_dict`` with these prefixes (docs/design.md §2)::

    model.diffusion_model.*   the video U-Net            -> VideoUNet
    first_stage_model.*       SD KL-f8 VAE               -> diffusers AutoencoderKL
    cond_stage_model.model.*  OpenCLIP ViT-H/14 text     -> used once for the empty prompt
    embedder.model.*          OpenCLIP ViT-H/14 vision   -> image tokens of frame 0
    image_proj_model.*        Resampler                  -> 16 tokens per frame
    betas, alphas_cumprod, ..., scale_arr                 schedule buffers (recomputed, dropped)

Files are read with ``torch.load(weights_only=True, mmap=True)`` or safetensors: nothing is
unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import V2WError
from pipelines.statedict import load_strict, read_safetensors, read_torch

UNET_PREFIX = "model.diffusion_model."
PREFIXES = {
    "unet": UNET_PREFIX,
    "vae": "first_stage_model.",
    "text": "cond_stage_model.",
    "image_encoder": "embedder.",
    "image_proj": "image_proj_model.",
}
# DDPM schedule buffers: v2w recomputes the schedule with diffusers, so these are dropped on purpose
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_factor", "scale_arr", "logvar", "lvlb_weights",
}
HUB_CHECKPOINTS = {
    "dynamicrafter": ("Doubiiu/DynamiCrafter_512", "model.ckpt", "dynamicrafter-512"),
    "dynamicrafter-512": ("Doubiiu/DynamiCrafter_512", "model.ckpt", "dynamicrafter-512"),
    "dynamicrafter-256": ("Doubiiu/DynamiCrafter", "model.ckpt", "dynamicrafter-256"),
    "dynamicrafter-1024": ("Doubiiu/DynamiCrafter_1024", "model.ckpt", "dynamicrafter-1024"),
}


def resolve_checkpoint(name_or_path: str) -> tuple[Path, str | None]:
    """A local path, or a built-in name resolved through the Hugging Face hub cache.

    Returns (path, built-in config name or None). Offline without the file: one clear error
    naming the repo, the file and the ``--ckpt PATH`` alternative (never a hang: HF_HUB_OFFLINE
    is honoured and network errors are caught).
    """
    if name_or_path in HUB_CHECKPOINTS:
        repo, filename, config = HUB_CHECKPOINTS[name_or_path]
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            try:  # cache first: no network at all when the file is there
                return Path(hf_hub_download(repo, filename, local_files_only=True)), config
            except LocalEntryNotFoundError:
                if os.environ.get("HF_HUB_OFFLINE") or not hub_reachable():
                    raise
                return Path(hf_hub_download(repo, filename, etag_timeout=10)), config
        except Exception as e:  # offline, no access, ...: one line with the way out
            raise V2WError(
                f"cannot get {filename} of the Hugging Face repo {repo} ({type(e).__name__}). Download it "
                f"where you have internet (huggingface-cli download {repo} {filename}) and copy it into the "
                f"HF cache here, or pass the file directly: --ckpt /path/to/{filename}"
            ) from None
    if name_or_path == "tiny":
        return shipped_tiny_base(), None
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(HUB_CHECKPOINTS))
        raise V2WError(f"checkpoint not found (give a file, a v2w pretrain BASE folder, or one of: {names}, tiny, tiny-random)", path=path)
    return path, None


ASSETS = Path(__file__).resolve().parent.parent / "assets"


def shipped_tiny_base() -> Path:
    """The base shipped inside the package (``--ckpt tiny``): a small bidirectional video model that
    ``v2w pretrain`` trained on Atari frames (recipe: examples/tiny_world_model.sh)."""
    path = ASSETS / "tiny-base"
    if not (path / "model.ckpt").exists():
        raise V2WError("the shipped tiny base is missing from this install (pipelines/assets/tiny-base/model.ckpt); "
                       "reinstall v2w, or use --ckpt tiny-random (random weights, same layout)", path=path)
    return path


def shipped_world_model() -> Path:
    """The world model shipped inside the package: the tiny base causalized and trained on Boxing
    with its 18 actions (same recipe); ``v2w quickstart`` rolls it out."""
    path = ASSETS / "tiny-world-model"
    if not (path / "config.json").exists():
        raise V2WError("the shipped world model is missing from this install (pipelines/assets/tiny-world-model); reinstall v2w", path=path)
    return path


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails at once instead of after
    the hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_state_dict(source: str | os.PathLike | dict, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from a Lightning ``.ckpt`` (its ``state_dict``), a bare state dict
    (``.pt``/``.pth``/``.bin``) or ``.safetensors``; or the dict itself."""
    if isinstance(source, dict):
        sd = source
    else:
        path = Path(source)
        if not path.exists():
            raise V2WError("checkpoint not found", path=path)
        if path.suffix == ".safetensors":
            return read_safetensors(path)
        sd = read_torch(path, unsafe_pickle=unsafe_pickle, mmap=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise V2WError("checkpoint is not a state dict of tensors", path=None if isinstance(source, dict) else source)
    return sd


def split_by_prefix(sd: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str], list[str]]:
    """-> ({part: {key without prefix: tensor}}, dropped schedule keys, unknown keys)."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    dropped, unknown = [], []
    for key, value in sd.items():
        for name, prefix in PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix) :]] = value
                break
        else:
            (dropped if key in SCHEDULE_BUFFERS or key.startswith("model_ema.") else unknown).append(key)
    return parts, dropped, unknown


def read_yaml(path: str | os.PathLike, what: str = "config") -> dict:
    """A DynamiCrafter inference YAML, parsed safely (no Python objects)."""
    import yaml  # only checkpoint import needs YAML

    path = Path(path)
    if not path.exists():
        raise V2WError(f"{what} not found", path=path)
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise V2WError(f"{what} is not valid YAML ({str(e).splitlines()[0]})", path=path) from None


def unet_params_from_yaml(config: Any) -> dict:
    """DynamiCrafter inference YAML (path or parsed dict), or its unet_config.params dict -> params."""
    if isinstance(config, (str, os.PathLike)) and Path(config).suffix in (".yaml", ".yml"):
        config = read_yaml(config)
    if not isinstance(config, dict):
        raise V2WError(f"config must be a YAML path, a dict or a built-in name. Got {config!r}")
    for keys in (("model", "params", "unet_config", "params"), ("unet_config", "params"), ("params",)):
        node = config
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return dict(node)
    return dict(config)


def check_keys(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Strict load of a DynamiCrafter part; a mismatch most often means another config."""
    load_strict(module, sd, what, source, against="the config", hint="Wrong --base-config?")


def rename_legacy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 256 checkpoint names the fps MLP ``framestride_embed``; map it to ``fps_embedding``."""
    return {("fps_embedding" + k[len("framestride_embed") :] if k.startswith("framestride_embed") else k): v for k, v in sd.items()}
