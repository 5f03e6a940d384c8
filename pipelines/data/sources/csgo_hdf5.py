"""CS:GO deathmatch ``.hdf5`` files (Pearce & Zhu 2022), the layout DIAMOND's CS:GO world model reads.

::

    SRC/                                   (folders are searched recursively)
      1-200/
        hdf5_dm_july2021_1.hdf5            one file = one episode (1000 frames in the release)
          frame_0_x          (150, 280, 3) uint8, **BGR** channel order (OpenCV screen grab)
          frame_0_y          (51,) float64 action taken at frame 0, multi-hot/one-hot:
          frame_0_xaux       (54,)  aux input (unused here)
          frame_0_helperarr  (2,)   [kill, death] flags (unused here)
          frame_1_x ...
        hdf5_dm_july2021_2.hdf5

``frame_i_y`` (51 = 11 + 2 + 23 + 15), written by ``dm_pretrain_process.py`` /
``config.actions_to_onehot`` in TeaPearce/Counter-Strike_Behavioural_Cloning and decoded the same
way by DIAMOND (eloialonso/diamond, branch csgo, ``src/csgo/action_processing.py``):

* 0-10   keys, multi-hot: w, a, s, d, space, ctrl, shift, 1, 2, 3, r
* 11-12  mouse buttons: left click, right click
* 13-35  mouse x one-hot over [-1000, -500, -300, -200, -100, -60, -30, -20, -10, -4, -2, 0,
         2, 4, 10, 20, 30, 60, 100, 200, 300, 500, 1000]
* 36-50  mouse y one-hot over [-200, -100, -50, -20, -10, -4, -2, 0, 2, 4, 10, 20, 50, 100, 200]

Frame rate: 16 Hz (``loop_fps=16`` in the dataset repo's ``config.py``); ``--src-fps`` overrides.
DIAMOND flips the channel axis when loading (``.flip(2)``), so the stored images are BGR.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipelines.data.episode import Episode, EpisodeRef, SourceOptions
from pipelines.errors import V2WError

NAME = "hdf5"
SUFFIXES = (".hdf5", ".h5")
DEFAULT_FPS = 16.0

KEY_NAMES = ["w", "a", "s", "d", "space", "ctrl", "shift", "1", "2", "3", "r"]
MOUSE_X_VALUES = [-1000, -500, -300, -200, -100, -60, -30, -20, -10, -4, -2, 0,
                  2, 4, 10, 20, 30, 60, 100, 200, 300, 500, 1000]
MOUSE_Y_VALUES = [-200, -100, -50, -20, -10, -4, -2, 0, 2, 4, 10, 20, 50, 100, 200]
ACTION_NAMES = (
    [f"key_{k}" for k in KEY_NAMES]
    + ["click_left", "click_right"]
    + [f"mouse_x_{v}" for v in MOUSE_X_VALUES]
    + [f"mouse_y_{v}" for v in MOUSE_Y_VALUES]
)
assert len(ACTION_NAMES) == 51

MOUSE_X0, MOUSE_Y0 = 13, 36  # where the mouse-x and mouse-y one-hot blocks start


def encode_action(keys=(), clicks=(), mouse_x: float = 0.0, mouse_y: float = 0.0) -> np.ndarray:
    """One frame's 51-d action in this layout (what Vid2World-CSGO and DIAMOND's CS:GO model read):
    ``keys`` from KEY_NAMES and ``clicks`` from ("left", "right") set their bits; the mouse movement
    (the dataset's units) sets the one-hot bin of the nearest listed value, the 0 bin when still."""
    a = np.zeros(len(ACTION_NAMES), dtype=np.float32)
    for k in keys:
        if k not in KEY_NAMES:
            raise V2WError(f"CS:GO key {k!r} is not one of {KEY_NAMES}")
        a[KEY_NAMES.index(k)] = 1
    for c in clicks:
        a[{"left": 11, "right": 12}[c]] = 1
    a[MOUSE_X0 + int(np.argmin(np.abs(np.array(MOUSE_X_VALUES) - mouse_x)))] = 1
    a[MOUSE_Y0 + int(np.argmin(np.abs(np.array(MOUSE_Y_VALUES) - mouse_y)))] = 1
    return a


_FRAME_KEY = re.compile(r"^frame_(\d+)_(x|y)$")
_DETECT_PROBES = 8  # how many files detect() opens at most: enough to skip a few broken ones


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() in SUFFIXES else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def _has_frames(file: Path) -> bool:
    import h5py  # imported lazily: only this reader needs it

    try:
        with h5py.File(file, "r") as f:
            return "frame_0_x" in f
    except (OSError, ValueError):
        return False


def detect(path: str | Path) -> bool:
    return any(_has_frames(f) for f in _files(Path(path))[:_DETECT_PROBES])


def _episode_ids(files: list[Path], root: Path) -> list[str]:
    """File stems, unless two files share a stem: then paths relative to ``root`` keep ids unique."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return ["/".join(f.relative_to(root).with_suffix("").parts) for f in files]


def list_episodes(path: str | Path, options: SourceOptions) -> list[EpisodeRef]:
    path = Path(path)
    files = _files(path)
    root = path if path.is_dir() else path.parent
    return [EpisodeRef(NAME, str(f), eid) for f, eid in zip(files, _episode_ids(files, root))]


def _frame_count(keys: list[str], path: Path) -> int:
    """Number of frames: indices 0..T-1 must each have both ``frame_i_x`` and ``frame_i_y``."""
    xs: set[int] = set()
    ys: set[int] = set()
    for key in keys:
        m = _FRAME_KEY.match(key)
        if m:
            (xs if m.group(2) == "x" else ys).add(int(m.group(1)))
    if 0 not in xs:
        raise V2WError("no frame_0_x dataset; not a CS:GO hdf5 episode", path=path)
    count = 0
    while count in xs:
        count += 1
    beyond = sorted(i for i in xs | ys if i >= count)
    if beyond:  # frames after a hole would silently be dropped; say where the hole is
        raise V2WError(f"frame_{count}_x is missing but frame_{beyond[0]} exists (gap in frame indices)", path=path)
    missing_y = sorted(set(range(count)) - ys)
    if missing_y:
        raise V2WError(f"frame_{missing_y[0]}_y (action) is missing for frame index {missing_y[0]}", path=path)
    return count


def _read(f, count: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, actions = [], []
    for i in range(count):
        img = np.asarray(f[f"frame_{i}_x"][()])
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise V2WError(f"frame_{i}_x must be (H, W, 3) uint8; got {img.shape} {img.dtype}", path=path)
        if images and img.shape != images[0].shape:
            raise V2WError(f"frame_{i}_x has shape {img.shape} but frame_0_x has {images[0].shape}", path=path)
        act = np.asarray(f[f"frame_{i}_y"][()]).reshape(-1)
        if actions and act.shape != actions[0].shape:
            raise V2WError(f"frame_{i}_y has {act.size} values but frame_0_y has {actions[0].size}", path=path)
        images.append(img)
        actions.append(act)
    return np.stack(images), np.stack(actions).astype(np.float32)


def load_episode(ref: EpisodeRef, options: SourceOptions) -> Episode:
    import h5py

    path = Path(ref.path)
    try:
        with h5py.File(path, "r") as f:
            count = _frame_count(list(f.keys()), path)
            bgr, actions = _read(f, count, path)
    except V2WError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # truncated/corrupt file or dataset
        raise V2WError(f"cannot read hdf5 ({e}); is the file complete?", path=path) from None
    frames = np.ascontiguousarray(bgr[..., ::-1])  # stored BGR (OpenCV grab) -> RGB
    names = list(ACTION_NAMES) if actions.shape[1] == len(ACTION_NAMES) else None
    return Episode(
        frames=frames,
        actions=actions,
        fps=options.src_fps or DEFAULT_FPS,
        action_kind="discrete",
        action_names=names,
    )
