"""Datasets: source readers, ``prepare`` (raw logs -> shards + manifest) and the clip loader.

::

    from pipelines.data import PrepareConfig, prepare, load_clips, load_manifest
    prepare(PrepareConfig(sources=["logs/"], out="data/breakout", size=(64, 64), num_actions=4))
    for clip in load_clips("data/breakout", "train", shuffle=1000):
        clip["frames"]   # float32 (T, 3, H, W) in [-1, 1]
        clip["actions"]  # float32 (T, A), normalised with the manifest's train stats
"""

from pipelines.data.loader import ActionNormalizer, load_clips, shard_urls
from pipelines.data.prepare import PrepareConfig, PrepareResult, load_manifest
from pipelines.data.prepare import run as prepare

__all__ = ["ActionNormalizer", "PrepareConfig", "PrepareResult", "load_clips", "load_manifest", "prepare", "shard_urls"]
