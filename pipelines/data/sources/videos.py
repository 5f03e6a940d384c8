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

An optional ``branches.json`` beside the videos (``python -m pipelines.data.sample --branches K``)
marks some videos as counterfactual branches of others: ``{"fps": ..., "branches": {stem:
{"parent": stem, "start": s, "shared_frames": C, "clip_len": T, "label": "hold UP"}}}``. Their
refs carry that in ``EpisodeRef.branch`` (the parent as an episode id), so prepare can keep each
branch with its parent.
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


def check_actions_files(path: Path) -> None:
    """A video under ``path`` without its same-named ``.npy`` is an error naming the first such video
    and the actions file it needs (auto-detection's diagnosis when no layout matched)."""
    video = next((v for v in _videos(path) if not v.with_suffix(".npy").exists()), None)
    if video is not None:
        raise V2WError(
            f"this video has no actions file: expected {video.with_suffix('.npy')} (np.save of a (T, A) float "
            "or (T,) integer array, one row per frame). Add it, or move the video out of the source (or pass --format "
            "if the source is another layout)",
            path=video,
        )


def list_episodes(path: Path, options: SourceOptions) -> list[EpisodeRef]:
    refs = []
    root = path if path.is_dir() else path.parent
    tables: dict[Path, dict] = {}
    for video in _videos(path):
        rel = video.relative_to(root).with_suffix("")
        if video.parent not in tables:
            tables[video.parent] = read_branches(video.parent)
        branch = tables[video.parent].get(video.stem)
        if branch is not None:  # the parent lives in the same folder: same id prefix
            branch = {**branch, "parent": "/".join((*rel.parts[:-1], branch["parent"]))}
        refs.append(EpisodeRef(NAME, str(video), "/".join(rel.parts), branch=branch))
    return refs


BRANCH_FIELDS = {"parent": str, "start": int, "shared_frames": int, "clip_len": int, "label": str}


def read_branches(folder: Path) -> dict[str, dict]:
    """``folder/branches.json`` -> {video stem: branch info + the recording's fps and the file},
    {} when there is none. Malformed entries are one-line errors naming the file."""
    path = folder / "branches.json"
    if not path.exists():
        return {}
    d = read_json(path)
    table = d.get("branches") if isinstance(d, dict) else None
    if not isinstance(table, dict):
        raise V2WError('needs {"branches": {stem: {"parent", "start", "shared_frames", "clip_len", "label"}}}',
                       path=path)
    out = {}
    for stem, b in table.items():
        bad = [k for k, t in BRANCH_FIELDS.items() if not isinstance(b, dict) or not isinstance(b.get(k), t)]
        if bad:
            raise V2WError(f"branch {stem!r} lacks or mistypes {', '.join(bad)}", path=path)
        if not 1 <= b["shared_frames"] < b["clip_len"] or b["start"] < 0:
            raise V2WError(f"branch {stem!r} needs 0 <= start and 1 <= shared_frames < clip_len", path=path)
        out[stem] = {k: b[k] for k in BRANCH_FIELDS} | {"fps": d.get("fps"), "file": str(path)}
    return out


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
