"""A deterministic, resumable stream of training clips.

WebDataset's shuffle buffers cannot be checkpointed, so training reads shards itself in an order
that is a pure function of (seed, epoch, rank): shards are permuted per epoch, rank r takes every
world-th shard, raw samples pass a seeded shuffle buffer, and only then are they decoded. The
position is (epoch, samples consumed in that epoch); resuming re-creates the epoch's order and
skips the consumed raw samples without decoding them, so the continued stream is identical.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipelines.data.loader import ActionNormalizer, decode_clip
from pipelines.data.prepare import load_manifest
from pipelines.data.shards import iter_shard
from pipelines.errors import V2WError


class ClipStream:
    def __init__(
        self,
        data: str | os.PathLike,
        split: str = "train",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_buffer: int = 64,
        normalize_actions: bool = True,  # False: continuous actions as stored (a model trained on raw actions)
    ):
        self.data = Path(data)
        self.manifest = load_manifest(data)
        shards = self.manifest["splits"].get(split, {}).get("shards", [])
        if not shards or not self.manifest["splits"][split]["samples"]:
            raise V2WError(f"the {split} split is empty; prepare more episodes or a lower --val-fraction", path=data)
        if len(shards) < world:
            raise V2WError(
                f"{len(shards)} {split} shard(s) for {world} processes: every process needs its own shards; "
                "re-run v2w prepare with a smaller --shard-size",
                path=data,
            )
        self.shards = [str(self.data / s["name"]) for s in shards]
        self.seed, self.rank, self.world, self.buffer = seed, rank, world, shuffle_buffer
        self.normalize = ActionNormalizer(self.manifest) if normalize_actions else (lambda a: a)

    def _raw(self, epoch: int) -> Iterator[dict]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[self.rank :: self.world]]
        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}")  # str seeds are hashed deterministically
        buf: list[dict] = []
        for shard in mine:
            for sample in iter_shard(shard):
                sample["__url__"] = shard
                buf.append(sample)
                if len(buf) >= self.buffer:
                    yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))

    def decode(self, raw: dict) -> dict:
        return decode_clip(raw, self.normalize)

    def samples(self, epoch: int = 0, offset: int = 0) -> Iterator[tuple[int, int, dict]]:
        """Yield (epoch, position after this sample, decoded sample) forever from (epoch, offset)."""
        while True:
            pos = 0
            for raw in self._raw(epoch):
                pos += 1
                if pos <= offset:
                    continue  # already consumed before the resume: skipped undecoded
                yield epoch, pos, self.decode(raw)
            epoch, offset = epoch + 1, 0


def collate(samples: list[dict]) -> dict:
    """Stack samples into (B, 3, T, H, W) frames, (B, T, A) actions, (B, 4, T, h, w) latents."""
    out = {
        "frames": torch.stack([s["frames"] for s in samples]).permute(0, 2, 1, 3, 4),
        "actions": torch.stack([s["actions"] for s in samples]),
        "keys": [s["key"] for s in samples],
    }
    if all("latents" in s for s in samples):
        out["latents"] = torch.stack([s["latents"] for s in samples]).permute(0, 2, 1, 3, 4)
    return out
