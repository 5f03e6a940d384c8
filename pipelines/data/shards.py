"""The DATA folder: WebDataset shards of clips, written and read here (one module, round-trip tested).

::

    DATA/
      manifest.json              what this is, how it was made, resolution/fps/clip length,
                                 action_dim and per-dimension stats, shard list with sha256
      train/shard-000000.tar     WebDataset tar shards, --shard-size clips each
      train/shard-000001.tar
      val/shard-000000.tar       episodes never appear in both splits

One sample (tar members sharing the key ``<clip-id>``, which never contains a dot):

    <clip-id>.frames.mp4   uint8 RGB video, T x H x W x 3, H.264 yuv444p (or .frames.npy)
    <clip-id>.actions.npy  float32 (T, A); row t = action taken after frame t (one-hot for ids)
    <clip-id>.meta.json    {"source", "format", "episode_id", "start_frame", "source_frames",
                            "fps", "num_frames", "real_action_rows", "split"}; a counterfactual
                            branch clip also has "branch_of" (its parent clip's key), "branch"
                            (label), "shared_frames" and "branch_start"
    <clip-id>.latents.npy  optional, float16 (T, 4, H/f, W/f), f the VAE factor scaled VAE latents (``v2w encode``)

Tar members are written with a fixed mtime and owner, so the same input gives byte-identical
shards (and the same sha256) on every run.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines.data.video import decode_video
from pipelines.errors import V2WError
from pipelines.fileio import fsync_dir, sha256_file

SPLITS = ("train", "val")
_KEY_OK = re.compile(r"[^A-Za-z0-9_\-]+")


def clip_key(episode_id: str, start: int) -> str:
    """WebDataset key for a clip: the episode id made dot/slash-free, then the start frame."""
    return f"{_KEY_OK.sub('_', episode_id).strip('_') or 'episode'}-{start:06d}"


def shard_name(split: str, index: int) -> str:
    return f"{split}/shard-{index:06d}.tar"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardWriter:
    """Write one shard under a temporary name; ``close()`` fsyncs, renames and returns its sha256."""

    def __init__(self, path: str | os.PathLike):
        import webdataset as wds

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._file = open(self.tmp, "wb")
        # encoder=False: members are bytes we encoded ourselves; fixed mtime -> reproducible bytes
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0, user="v2w", group="v2w")
        self.count = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        self._tar.write({"__key__": key, **files})
        self.count += 1

    def close(self) -> str:
        self._tar.close()  # closes the tar stream, not our file object
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return sha256_file(self.path)

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        except (OSError, ValueError):
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def iter_shard(path: str | os.PathLike) -> Iterator[dict]:
    """Raw samples of one local shard: ``{"__key__": key, "frames.mp4": bytes, ...}``.

    A truncated or corrupt tar raises ``V2WError`` naming the shard.
    """
    import tarfile

    path = Path(path)
    current: dict | None = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                key, _, ext = base.partition(".")
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError) as e:
        raise V2WError(f"cannot read shard ({e}); it is truncated or corrupt, re-run v2w prepare", path=path) from None
    if current is not None:
        yield current


def decode_sample(sample: dict, name: str = "<sample>") -> dict:
    """Decode a raw sample: frames (T,H,W,3) uint8, actions (T,A) float32, meta dict."""
    if "frames.mp4" in sample:
        frames, _ = decode_video(sample["frames.mp4"], name=f"{name}:{sample['__key__']}.frames.mp4")
    elif "frames.npy" in sample:
        frames = load_npy_bytes(sample["frames.npy"])
    else:
        raise V2WError(f"sample {sample.get('__key__')!r} has no frames.mp4 or frames.npy member", path=name)
    if "actions.npy" not in sample:
        raise V2WError(f"sample {sample.get('__key__')!r} has no actions.npy member", path=name)
    out = {
        "key": sample["__key__"],
        "frames": frames,
        "actions": load_npy_bytes(sample["actions.npy"]),
        "meta": json.loads(sample["meta.json"]) if "meta.json" in sample else {},
    }
    if "latents.npy" in sample:
        out["latents"] = load_npy_bytes(sample["latents.npy"])
    return out
