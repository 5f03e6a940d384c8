"""Builders for small raw datasets in the source formats, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.data.video import encode_mp4


def episode_frames(episode: int, n: int, h: int = 16, w: int = 24) -> np.ndarray:
    """Smooth frames whose content identifies (episode, frame): a gradient plus a moving level."""
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 4 + y * 2).astype(np.float64)
    frames = np.stack([base + 10 * episode + 3 * t for t in range(n)])
    rgb = np.stack([frames, frames * 0.5 + 40, 200 - frames * 0.5], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def episode_actions(episode: int, n: int, dim: int = 3) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)[:, None]
    return (t * 0.1 + episode + np.arange(dim, dtype=np.float32)[None]).astype(np.float32)


def write_videos(root: Path, lengths=(20, 24, 18, 30), fps: float = 10.0, dim: int = 3, rows=None, h=16, w=24) -> Path:
    """Folder of mp4 + same-named .npy (T rows by default; ``rows='T-1'`` for one fewer)."""
    root.mkdir(parents=True, exist_ok=True)
    for e, n in enumerate(lengths):
        (root / f"ep{e:02d}.mp4").write_bytes(encode_mp4(episode_frames(e, n, h, w), fps, crf=0))
        a = episode_actions(e, n, dim)
        np.save(root / f"ep{e:02d}.npy", a[:-1] if rows == "T-1" else a)
    return root


def write_npz(root: Path, lengths=(20, 24, 18, 30), dim: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for e, n in enumerate(lengths):
        np.savez(root / f"episode_{e}.npz", image=episode_frames(e, n), action=episode_actions(e, n, dim))
    return root


@pytest.fixture
def videos_src(tmp_path) -> Path:
    return write_videos(tmp_path / "videos")


@pytest.fixture
def npz_src(tmp_path) -> Path:
    return write_npz(tmp_path / "npz")
