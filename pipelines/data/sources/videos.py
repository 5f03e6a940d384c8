"""A folder of videos, each with a same-named ``.npy`` of actions.

::

    SRC/
      run_000.mp4        any container decord or PyAV opens (mp4, avi, webm, mkv, mov, gif)
      run_000.npy        actions: (T, A) float, (T-1, A), or (T,) / (T-1,) integer ids
      sub/run_001.webm   folders are searched recursively
      sub/run_001.npy

Row t of the actions is the action taken after frame t. The frame rate comes from the container
(``--src-fps`` overrides). ``.npy`` files are loaded with ``allow_pickle=False``. An optional
``actions.json`` beside the videos, ``{"actions": ["NOOP", "FIRE", ...]}``, names the action
dimensions (or the ids, for one-hot actions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.data.episode import Episode, EpisodeRef, SourceOptions
from pipelines.data.video import VIDEO_EXTENSIONS, decode_video
from pipelines.errors import V2WError
from pipelines.fileio import read_json

NAME = "videos"


def _videos(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() in VIDEO_EXTENSIONS else []
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def detect(path: Path) -> bool:
    return any(v.with_suffix(".npy").exists() for v in _videos(path))


def list_episodes(path: Path, options: SourceOptions) -> list[EpisodeRef]:
    refs = []
    root = path if path.is_dir() else path.parent
    for video in _videos(path):
        rel = video.relative_to(root).with_suffix("")
        refs.append(EpisodeRef(NAME, str(video), "/".join(rel.parts)))
    return refs


def load_npy(path: Path) -> np.ndarray:
    """Load an actions ``.npy`` safely (no pickles) with a clear error."""
    if not path.exists():
        raise V2WError("actions file not found; put a same-named .npy of actions next to each video", path=path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise V2WError(f"cannot load actions ({e}); save them with np.save as a numeric array", path=path) from None
    except OSError as e:
        raise V2WError(f"cannot read actions ({e})", path=path) from None


def load_episode(ref: EpisodeRef, options: SourceOptions) -> Episode:
    video = Path(ref.path)
    actions = load_npy(video.with_suffix(".npy"))
    frames, fps = decode_video(video)
    return Episode(
        frames=frames,
        actions=actions,
        fps=options.src_fps or fps,
        action_names=_action_names(video.parent),
        actions_path=str(video.with_suffix(".npy")),
    )


def _action_names(folder: Path) -> list[str] | None:
    path = folder / "actions.json"
    if not path.exists():
        return None
    names = read_json(path).get("actions")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise V2WError('"actions" must be a list of names, e.g. {"actions": ["NOOP", "FIRE"]}', path=path)
    return names
