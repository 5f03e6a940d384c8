"""``.npz`` episodes, RT-1 style: one file per episode with an image array and an action array.

::

    SRC/
      episode_000.npz    image: (T, H, W, 3) uint8   action: (T, A) or (T-1, A)
      episode_001.npz    (folders are searched recursively)

Key names: ``--image-key`` (default: the first of ``image``, ``images``, ``observation.image``,
``observations``, ``frames``, ``rgb``, ``obs``) and ``--action-key`` (default: ``action`` or
``actions``; a comma-separated list such as ``world_vector,rotation_delta,gripper_closedness_action``
is concatenated in that order, so RT-1's three action parts become one 7-d vector). Optional
``fps`` scalar and ``action_names`` string array in the file are used when present.
Files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.data.episode import Episode, EpisodeRef, SourceOptions
from pipelines.errors import V2WError

NAME = "npz"
IMAGE_KEYS = ("image", "images", "observation.image", "observations", "frames", "rgb", "obs")
ACTION_KEYS = ("action", "actions")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".npz" else []
    return sorted(p for p in path.rglob("*.npz") if p.is_file())


def detect(path: Path) -> bool:
    return bool(_files(path))


def list_episodes(path: Path, options: SourceOptions) -> list[EpisodeRef]:
    root = path if path.is_dir() else path.parent
    return [EpisodeRef(NAME, str(f), "/".join(f.relative_to(root).with_suffix("").parts)) for f in _files(path)]


def _pick(data, wanted: str | None, defaults: tuple[str, ...], what: str, flag: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in data.files:
            raise V2WError(f"no array named {wanted!r} (has: {', '.join(data.files)}); fix {flag}", path=path)
        return wanted
    for key in defaults:
        if key in data.files:
            return key
    raise V2WError(
        f"no {what} array found (has: {', '.join(data.files)}); name it with {flag}", path=path
    )


def load_episode(ref: EpisodeRef, options: SourceOptions) -> Episode:
    path = Path(ref.path)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise V2WError(f"cannot read npz ({e}); is the file complete?", path=path) from None
    with data:
        try:
            image_key = _pick(data, options.image_key, IMAGE_KEYS, "image", "--image-key", path)
            frames = data[image_key]
            if options.action_keys:
                keys = [_pick(data, k, (), "action", "--action-key", path) for k in options.action_keys]
            else:
                keys = [_pick(data, None, ACTION_KEYS, "action", "--action-key", path)]
            parts = [np.asarray(data[k]) for k in keys]
            fps = float(data["fps"]) if "fps" in data.files else None
            names = [str(n) for n in data["action_names"]] if "action_names" in data.files else None
        except (ValueError, OSError, EOFError, KeyError) as e:  # zip member truncated or pickled
            raise V2WError(f"cannot read npz member ({e}); is the file complete?", path=path) from None
    if len(parts) > 1:
        rows = {p.shape[0] for p in parts}
        if len(rows) != 1:
            raise V2WError(f"action arrays {keys} have different lengths {sorted(rows)}", path=path)
        parts = [p.reshape(p.shape[0], -1).astype(np.float32) for p in parts]
    actions = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise V2WError(f"image array {image_key!r} must be (T, H, W, 3); got shape {frames.shape}", path=path)
    if frames.dtype != np.uint8:
        if np.issubdtype(frames.dtype, np.floating) and frames.size and 0 <= frames.min() and frames.max() <= 1:
            frames = (frames * 255).round().astype(np.uint8)  # float images in [0, 1]
        else:
            raise V2WError(f"image array {image_key!r} must be uint8 (or float in [0,1]); got {frames.dtype}", path=path)
    return Episode(frames=frames, actions=actions, fps=options.src_fps or fps, action_names=names)
