"""Datasets: source readers, ``prepare`` (raw logs -> shards + manifest) and the clip loader.

::

    from pipelines.data import PrepareConfig, prepare, load_clips, load_manifest
    prepare(PrepareConfig(sources=["logs/"], out="data/breakout", size=(64, 64), num_actions=4))
    for clip in load_clips("data/breakout", "train", shuffle=1000):
        clip["frames"]   # float32 (T, 3, H, W) in [-1, 1]
        clip["actions"]  # float32 (T, A), normalised with the manifest's train stats

Names resolve lazily, so ``prepare``'s decoding workers never import torch.
"""

import importlib

_EXPORTS = {
    "ActionNormalizer": ("pipelines.data.loader", "ActionNormalizer"),
    "load_clips": ("pipelines.data.loader", "load_clips"),
    "shard_urls": ("pipelines.data.loader", "shard_urls"),
    "PrepareConfig": ("pipelines.data.prepare", "PrepareConfig"),
    "PrepareResult": ("pipelines.data.prepare", "PrepareResult"),
    "load_manifest": ("pipelines.data.prepare", "load_manifest"),
    "prepare": ("pipelines.data.prepare", "run"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines.data' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
