"""Loading prepared clips for training and evaluation (WebDataset pipeline).

``load_clips(DATA, split="train")`` yields dicts::

    {"key": str, "frames": float32 (T, C, H, W) in [-1, 1], "actions": float32 (T, A), "meta": dict,
     "latents": float32 (T, 4, H/f, W/f), f the VAE factor, only when ``v2w encode`` added them}

Continuous actions are normalised with the manifest's train statistics, (a - mean) / std (std
floored at 1e-6 so constant dimensions stay 0); discrete (one-/multi-hot) actions pass unchanged.

Shards are split first across distributed ranks (``torch.distributed`` when initialised, else
the RANK / WORLD_SIZE environment variables) and then across DataLoader workers, so every
process sees a disjoint set of shards; a rank or worker without shards yields nothing, so use
at least ``world_size * num_workers`` shards (``v2w prepare --shard-size``).
``urls`` may also be a list of shard URLs (local paths, ``pipe:`` commands, http) together with
a ``manifest`` dict or path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from pipelines.data.prepare import load_manifest
from pipelines.data.shards import decode_sample
from pipelines.errors import V2WError
from pipelines.fileio import read_json


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def split_by_rank(urls: Iterable[str]) -> Iterable[str]:
    rank, world = _rank_world()
    yield from (u for i, u in enumerate(urls) if i % world == rank)


def split_by_worker(urls: Iterable[str]) -> Iterable[str]:
    info = torch.utils.data.get_worker_info()
    if info is None:
        yield from urls
    else:
        yield from (u for i, u in enumerate(urls) if i % info.num_workers == info.id)


def shard_urls(data: str | os.PathLike, split: str) -> list[str]:
    manifest = load_manifest(data)
    if split not in manifest["splits"]:
        raise V2WError(f"split must be one of {{{', '.join(manifest['splits'])}}}. Got {split!r}", path=data)
    shards = manifest["splits"][split]["shards"]
    if not shards:
        raise V2WError(f"the {split} split is empty", path=data)
    return [str(Path(data) / s["name"]) for s in shards]


class ActionNormalizer:
    """(a - mean) / std for continuous actions; identity for discrete ones."""

    def __init__(self, manifest: dict):
        stats = manifest.get("action_stats") or {}
        self.enabled = manifest.get("action_type") == "continuous" and stats.get("mean") is not None
        if self.enabled:
            self.mean = np.asarray(stats["mean"], np.float32)
            self.std = np.maximum(np.asarray(stats["std"], np.float32), 1e-6)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        return (actions - self.mean) / self.std if self.enabled else actions

    def inverse(self, actions: np.ndarray) -> np.ndarray:
        return actions * self.std + self.mean if self.enabled else actions


def to_model_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def decode_clip(sample: dict, normalize) -> dict:
    """Raw shard sample -> the model-ready dict described in the module docstring."""
    s = decode_sample(sample, name=sample.get("__url__", "<shard>"))
    out = {
        "key": s["key"],
        "frames": to_model_frames(s["frames"]),
        "actions": torch.from_numpy(np.asarray(normalize(s["actions"]), np.float32)),
        "meta": s["meta"],
    }
    if "latents" in s:
        out["latents"] = torch.from_numpy(s["latents"].astype(np.float32))  # (T, 4, h, w), scaled
    return out


def load_clips(
    data: str | os.PathLike | None = None,
    split: str = "train",
    *,
    urls: list[str] | None = None,
    manifest: dict | str | os.PathLike | None = None,
    shuffle: int = 0,
    seed: int = 0,
    repeat: bool = False,
    normalize_actions: bool = True,
):
    """A WebDataset pipeline of decoded clips (an ``IterableDataset``; wrap in a DataLoader).

    shuffle: size of the sample shuffle buffer (0 = keep shard order; shards are also
        shuffled when > 0). repeat: cycle forever (for step-based training).
    """
    import webdataset as wds

    if urls is None:
        if data is None:
            raise V2WError("give a DATA folder or a list of shard urls")
        urls = shard_urls(data, split)
        manifest = load_manifest(data)
    elif isinstance(manifest, (str, os.PathLike)):
        manifest = read_json(manifest)
    if manifest is None:
        raise V2WError("shard urls need the dataset's manifest (manifest=dict or path)")
    norm = ActionNormalizer(manifest) if normalize_actions else (lambda a: a)

    def decode(sample: dict) -> dict:
        return decode_clip(sample, norm)

    def fail(exn: Exception) -> bool:
        if isinstance(exn, V2WError):
            raise exn
        raise V2WError(f"cannot read shard data ({exn}); it is truncated or corrupt, re-run v2w prepare") from exn

    # shard order (shuffled per epoch when asked) -> this rank's -> this worker's -> samples
    stages = [wds.SimpleShardList(urls)]
    if shuffle:
        stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed))
    stages += [split_by_rank, split_by_worker, wds.tarfile_to_samples(handler=fail)]
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=shuffle, seed=seed + _rank_world()[0]))
    stages.append(wds.map(decode, handler=fail))
    pipeline = wds.DataPipeline(*stages)
    return pipeline.repeat() if repeat else pipeline
