"""RECON-style trajectory folders, as used by GNM / ViNT / NoMaD and Navigation World Models (NWM).

::

    SRC/                         (or SRC itself is one trajectory folder)
      jackal_2019-08-02-16-23-30_0_r00/
        0.jpg  1.jpg  ...  T-1.jpg     numbered frames (sorted numerically; .png also accepted)
        traj_data.pkl                  {"position": (T, 2) float, "yaw": (T,) float}  (world frame)
      jackal_2019-.../
        ...

``traj_data.pkl`` is what ``train/process_recon.py`` (robodhruv/visualnav-transformer) writes:
``position = jackal/position[:, :2]``, ``yaw = jackal/yaw`` from the RECON hdf5, one entry per image.
``traj_data.npz`` (same keys) and ``traj_data.json`` are accepted too. The pickle is read with a
restricted unpickler that only rebuilds numpy arrays/scalars; any other global is refused.

Actions: ego-frame motion from frame t to t+1, ``(dx, dy, dyaw)`` with
``(dx, dy) = R(-yaw_t) (p_{t+1} - p_t)`` and ``dyaw = wrap(yaw_{t+1} - yaw_t)``; T-1 rows, kind
"delta". This is NWM's ``to_local_coords`` / ``angle_difference`` (facebookresearch/nwm ``misc.py``)
applied per step. The raw ``position`` and ``yaw`` are kept in ``extra_meta`` so actions can be
recomputed after fps resampling.

Frame rate: 4 Hz. NWM runs every dataset, RECON included, at ``--input_fps 4``
(``isolated_nwm_infer.py``), and visualnav-transformer samples its other datasets at 4 Hz
(``process_bags.py --sample-rate``, default 4.0). ``--src-fps`` overrides.
"""

from __future__ import annotations

import _codecs
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.episode import Episode, EpisodeRef, SourceOptions
from pipelines.errors import V2WError

NAME = "recon"
DEFAULT_FPS = 4.0
TRAJ_FILES = ("traj_data.pkl", "traj_data.npz", "traj_data.json")  # first found wins
ACTION_NAMES = ["dx", "dy", "dyaw"]
_IMAGE = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)

try:  # numpy >= 2 moved the pickle helpers to numpy._core; numpy.core is a deprecated alias there
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Exactly the globals a pickled dict of ndarrays / numpy scalars refers to (protocols 2-5, pickles
# written by numpy 1.x or 2.x). Both module spellings map to the same object, so old pickles load
# without touching the deprecated numpy.core alias.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # protocol 2 stores array bytes as latin-1 text
}
for _mod in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _SAFE_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy data and plain containers, and nothing else.

    ``pickle.load`` would import and call any global named in the file (``os.system`` ...), so a
    downloaded trajectory file could run code. Plain dict/list/tuple/str/float need no globals.
    """

    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise V2WError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are "
                "allowed in traj_data.pkl (convert it to traj_data.npz or .json if it holds more)",
                path=self._path,
            ) from None


def safe_load_pickle(path: Path) -> Any:
    """Load a pickle that may only contain numpy arrays/scalars and plain containers."""
    data = path.read_bytes()
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), path).load()
    except V2WError:
        raise
    except Exception as e:  # truncated or malformed pickle: any of a dozen exception types
        raise V2WError(f"cannot read pickle ({type(e).__name__}: {e})", path=path) from None


def wrap_to_pi(angle: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi) (same formula as NWM's ``angle_difference``)."""
    return angle - 2 * np.pi * np.floor((angle + np.pi) / (2 * np.pi))


def ego_actions(position: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(T-1, 3) float64 rows ``(dx, dy, dyaw)``: motion from t to t+1 in the robot frame at t.

    ``position`` (T, 2) and ``yaw`` (T,) are in the world frame; x is forward, y is left.
    """
    position = np.asarray(position, dtype=np.float64)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    step = position[1:] - position[:-1]
    cos, sin = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dx = cos * step[:, 0] + sin * step[:, 1]  # R(-yaw) @ step
    dy = -sin * step[:, 0] + cos * step[:, 1]
    dyaw = wrap_to_pi(yaw[1:] - yaw[:-1])
    return np.stack([dx, dy, dyaw], axis=1)


# --- finding trajectories ------------------------------------------------------------------------


def _traj_file(folder: Path) -> Path | None:
    for name in TRAJ_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _numbered_images(folder: Path) -> list[tuple[int, Path]]:
    """(number, path) for ``<n>.jpg|jpeg|png`` in ``folder``, sorted numerically (10 after 9)."""
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            m = _IMAGE.match(entry.name)
            if m and entry.is_file():
                found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def _has_numbered_image(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(_IMAGE.match(e.name) and e.is_file() for e in it)


def _is_trajectory(folder: Path) -> bool:
    return _traj_file(folder) is not None and _has_numbered_image(folder)


def _trajectories(path: Path, stop_at_first: bool = False) -> list[Path]:
    """Trajectory folders at or below ``path``; their subfolders are not searched."""
    if not path.is_dir():
        return []
    found: list[Path] = []
    for root, dirs, _files in os.walk(path):
        dirs.sort()  # os.walk visits in list order: keeps the result sorted
        folder = Path(root)
        if _is_trajectory(folder):
            found.append(folder)
            dirs.clear()  # a trajectory does not nest others
            if stop_at_first:
                break
    return sorted(found)


def detect(path: str | Path) -> bool:
    return bool(_trajectories(Path(path), stop_at_first=True))


def list_episodes(path: str | Path, options: SourceOptions) -> list[EpisodeRef]:
    path = Path(path)
    refs = []
    for folder in _trajectories(path):
        rel = folder.relative_to(path).parts
        episode_id = "/".join(rel) if rel else folder.name  # direct child -> its folder name
        refs.append(EpisodeRef(NAME, str(folder), episode_id))
    return refs


# --- loading -------------------------------------------------------------------------------------


def _read_traj(file: Path) -> dict:
    if file.suffix == ".pkl":
        data = safe_load_pickle(file)
    elif file.suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise V2WError(f"cannot read npz ({e}); is the file complete?", path=file) from None
    else:
        try:
            data = json.loads(file.read_text())
        except (ValueError, OSError) as e:
            raise V2WError(f"cannot read json ({e})", path=file) from None
    if not isinstance(data, dict):
        raise V2WError(f"expected a dict with 'position' and 'yaw'; got {type(data).__name__}", path=file)
    return data


def _position_yaw(file: Path) -> tuple[np.ndarray, np.ndarray]:
    data = _read_traj(file)
    missing = [k for k in ("position", "yaw") if k not in data]
    if missing:
        raise V2WError(f"missing {missing} (has: {sorted(map(str, data))})", path=file)
    try:
        position = np.asarray(data["position"], dtype=np.float64)
        yaw = np.asarray(data["yaw"], dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise V2WError(f"position/yaw are not numeric arrays ({e})", path=file) from None
    if position.ndim != 2 or position.shape[1] < 2:
        raise V2WError(f"position must be (T, 2); got shape {position.shape}", path=file)
    if yaw.ndim == 2 and yaw.shape[1] == 1:
        yaw = yaw[:, 0]  # some exports store yaw as (T, 1); NWM squeezes it too
    if yaw.ndim != 1:
        raise V2WError(f"yaw must be (T,); got shape {yaw.shape}", path=file)
    return position[:, :2], yaw


def _load_frames(folder: Path) -> np.ndarray:
    numbered = _numbered_images(folder)
    if not numbered:
        raise V2WError("no numbered images (0.jpg, 1.jpg, ...)", path=folder)
    for expected, (number, file) in enumerate(numbered):
        if number != expected:  # images are matched to positions by index: a hole shifts them all
            what = "duplicate" if number < expected else f"missing {expected}.jpg before"
            raise V2WError(f"image numbers must run 0..N-1: {what} {file.name}", path=folder)
    from PIL import Image, UnidentifiedImageError

    frames = []
    for _, file in numbered:
        try:
            with Image.open(file) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise V2WError(f"cannot decode image ({e})", path=file) from None
        if frames and arr.shape != frames[0].shape:
            raise V2WError(
                f"image is {arr.shape[1]}x{arr.shape[0]} but {numbered[0][1].name} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames must have the same size",
                path=file,
            )
        frames.append(arr)
    return np.stack(frames)


def load_episode(ref: EpisodeRef, options: SourceOptions) -> Episode:
    folder = Path(ref.path)
    traj_file = _traj_file(folder)
    if traj_file is None:
        raise V2WError(f"no {' / '.join(TRAJ_FILES)} in the trajectory folder", path=folder)
    position, yaw = _position_yaw(traj_file)
    frames = _load_frames(folder)
    if not (len(frames) == len(position) == len(yaw)):
        raise V2WError(
            f"{len(frames)} images but {traj_file.name} has {len(position)} positions and {len(yaw)} "
            "yaws; they must match one per image",
            path=folder,
        )
    return Episode(
        frames=frames,
        actions=ego_actions(position, yaw).astype(np.float32),
        fps=options.src_fps or DEFAULT_FPS,
        action_kind="delta",
        action_names=list(ACTION_NAMES),
        extra_meta={"position": position, "yaw": yaw},
    )
