"""Pre-encoded VAE latents beside the frames, so training never decodes or encodes video.

``encode_latents(DATA, MODEL)`` adds one member to every sample of every shard::

    <clip-id>.latents.npy   float16 (T, 4, H/f, W/f), f the VAE factor: the VAE posterior mode of each frame,
                            already multiplied by the latent scale (0.18215), i.e. what the
                            U-Net sees as x0

Each shard is rewritten under a temporary name and renamed, and the manifest (new sha256, and
``latents``: which model, scale, shape) is rewritten atomically after every shard, so an
interrupted run leaves a valid DATA folder and a re-run continues with the shards not yet done.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipelines.data.prepare import load_manifest
from pipelines.data.shards import SPLITS, ShardWriter, decode_sample, iter_shard, npy_bytes
from pipelines.errors import V2WError
from pipelines.fileio import sha256_file, write_json_atomic
from pipelines.models.vae import encode_video
from pipelines.models.world_model import load_model


def model_fingerprint(model_path: str | os.PathLike) -> str:
    """sha256 of the MODEL's VAE weights: latents are valid exactly as long as the VAE is the same."""
    vae = Path(model_path) / "vae.safetensors"
    if not vae.exists():
        raise V2WError("the model has no vae.safetensors; it cannot encode frames", path=model_path)
    return sha256_file(vae)


@torch.no_grad()
def encode_latents(
    data: str | os.PathLike,
    model_path: str | os.PathLike,
    batch_frames: int = 64,
    device: str = "cpu",
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Add ``latents.npy`` to every clip of DATA using MODEL's VAE. Returns the updated manifest."""
    data = Path(data)
    manifest = load_manifest(data)
    h, w = manifest["resolution"]
    if h % 8 or w % 8:
        raise V2WError(f"frames are {h}x{w}; the VAE needs sizes divisible by 8 (re-prepare with --size)", path=data)
    fp = model_fingerprint(model_path)
    model = load_model(model_path, device)
    if getattr(model, "family", "") == "wan":
        raise V2WError("Wan models encode clips on the fly with their causal VAE (1 + 4k frames -> 1 + k latents, "
                       "not frame by frame); v2w encode is for the U-Net families", path=model_path)
    vae = model.vae
    scale = float(model.meta.get("latent_scale", 0.18215))
    todo = [(s, i) for s in SPLITS for i, sh in enumerate(manifest["splits"][s]["shards"]) if sh.get("latents") != fp]
    total = sum(manifest["splits"][s]["shards"][i]["samples"] for s, i in todo)
    progress = {"clips_done": 0, "clips_total": total, "frames_done": 0}
    t0 = time.time()
    for split, i in todo:
        entry = manifest["splits"][split]["shards"][i]
        path = data / entry["name"]
        if sha256_file(path) != entry["sha256"]:
            raise V2WError("shard sha256 differs from the manifest; re-run v2w prepare", path=path)
        writer = ShardWriter(path.with_name(path.name + ".latents"))
        try:
            for raw in iter_shard(path):
                clip = decode_sample(raw, name=str(path))
                frames = torch.from_numpy(clip["frames"]).to(device).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
                z = torch.cat(
                    [_encode(vae, frames[:, :, s : s + batch_frames], scale) for s in range(0, frames.shape[2], batch_frames)],
                    dim=2,
                )
                files = {k: v for k, v in raw.items() if k != "__key__"}
                files["latents.npy"] = npy_bytes(z[0].permute(1, 0, 2, 3).cpu().numpy().astype(np.float16))
                writer.write(raw["__key__"], files)
                progress["clips_done"] += 1
                progress["frames_done"] += frames.shape[2]
                if on_progress:
                    on_progress(dict(progress, seconds=time.time() - t0))
            sha = writer.close()
        except BaseException:
            writer.abort()
            raise
        os.replace(writer.path, path)  # the shard with latents replaces the one without
        entry.update(sha256=sha, latents=fp)
        manifest["latents"] = {
            "model": str(model_path),
            "vae_sha256": fp,
            "scale": scale,
            "dtype": "float16",
            "shape": ["T", int(vae.config.latent_channels), h // model.vae_factor, w // model.vae_factor],
            "complete": False,
        }
        write_json_atomic(data / "manifest.json", manifest)
    if "latents" in manifest:
        manifest["latents"]["complete"] = all(
            sh.get("latents") == fp for s in SPLITS for sh in manifest["splits"][s]["shards"]
        )
        write_json_atomic(data / "manifest.json", manifest)
    return manifest


def _encode(vae, frames: torch.Tensor, scale: float) -> torch.Tensor:
    return encode_video(vae, frames, scale, chunk_size=16)
