"""LeRobot datasets, codebase version 3.0 (``lerobot >= 0.4``), read without LeRobot installed.

::

    SRC/
    ├── meta/
    │   ├── info.json                   codebase_version, fps, features, data_path, video_path
    │   ├── stats.json                  (not read)
    │   ├── tasks.parquet               (not read)
    │   └── episodes/
    │       └── chunk-000/
    │           └── file-000.parquet    one row per episode: episode_index, length, tasks,
    │                                   data/chunk_index, data/file_index,
    │                                   dataset_from_index, dataset_to_index,
    │                                   videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    ├── data/
    │   └── chunk-000/
    │       └── file-000.parquet        one row per frame of *many* episodes: action, timestamp,
    │                                   frame_index, episode_index, index, task_index, ...
    └── videos/
        └── observation.images.top/     one folder per camera (a feature with dtype "video")
            └── chunk-000/
                └── file-000.mp4        the frames of many episodes, back to back

An episode is one row of ``meta/episodes``: its rows of ``data/`` are those with its
``episode_index``; its frames are the part of its camera's mp4 between ``from_timestamp`` and
``to_timestamp``. Cameras stored as images (dtype ``"image"``) are PNG/JPEG bytes inside the data
parquet. ``--camera`` picks the feature (default: the first video feature in info.json). Actions
are the ``action`` column; the frame rate is info.json's ``fps`` (``--src-fps`` overrides).
v2.x datasets (one file per episode) must first be converted with LeRobot's own script.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np

from pipelines.data.episode import Episode, EpisodeRef, SourceOptions
from pipelines.data.video import decode_video
from pipelines.errors import V2WError

NAME = "lerobot"
INFO_PATH = "meta/info.json"
EPISODES_DIR = "meta/episodes"
# Defaults of LeRobot v3.0 (lerobot/datasets/utils.py), used when info.json omits a template.
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CAMERA_DTYPES = ("video", "image")
MAX_EXTRA_FRAMES = 2  # surplus video frames we attribute to timestamp rounding and drop


# ---------------------------------------------------------------- dataset-level metadata


def _root(path: str | Path) -> Path:
    """The dataset folder; ``meta/info.json`` itself is accepted too."""
    path = Path(path)
    if path.is_file() and path.name == "info.json" and path.parent.name == "meta":
        return path.parent.parent
    return path


def detect(path: str | Path) -> bool:
    return (_root(path) / INFO_PATH).is_file()


def _convert_hint(root: Path) -> str:
    return (
        "convert it with LeRobot's own script: python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 "
        f"--repo-id=<user/name> --root={root} --push-to-hub=false "
        "(lerobot >= 0.5.1 moved it to lerobot.scripts.convert_dataset_v21_to_v30)"
    )


def _check_version(info: dict, root: Path) -> None:
    version = str(info.get("codebase_version", ""))
    if version.startswith("v3"):
        return
    where = root / INFO_PATH
    if version.startswith("v2"):
        raise V2WError(
            f"LeRobot dataset is codebase_version {version}, but v2w reads v3.0 (many episodes per "
            f"file); {_convert_hint(root)}",
            path=where,
        )
    found = version or "(missing)"
    raise V2WError(f"unsupported LeRobot codebase_version {found}; v2w reads v3.0", path=where)


def _read_info(root: Path) -> dict:
    path = root / INFO_PATH
    if not path.is_file():
        raise V2WError("missing; a LeRobot dataset folder has meta/info.json", path=path)
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise V2WError(f"cannot read info.json ({e})", path=path) from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise V2WError("info.json has no 'features' mapping; is this a LeRobot dataset?", path=path)
    _check_version(info, root)
    if not isinstance(info.get("fps"), (int, float)) or info["fps"] <= 0:
        raise V2WError(f"info.json has no positive 'fps' (got {info.get('fps')!r})", path=path)
    return info


def _read_parquet(path: Path, columns: list[str] | None = None, filters=None):
    """Read a parquet file (or some of its columns/rows) with pyarrow; V2WError on failure."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise V2WError("missing file; is the dataset download complete?", path=path)
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise V2WError(f"cannot read parquet ({reason})", path=path) from None


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise V2WError("missing file; is the dataset download complete?", path=path)
    try:
        return list(pq.read_schema(path).names)
    except Exception as e:
        raise V2WError(f"cannot read parquet schema ({e})", path=path) from None


def _episode_files(root: Path) -> list[Path]:
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise V2WError(
            "no episode metadata; expected meta/episodes/chunk-000/file-000.parquet",
            path=root / EPISODES_DIR / "chunk-000" / "file-000.parquet",
        )
    return files


def _episodes(root: Path) -> dict[int, dict]:
    """All rows of meta/episodes keyed by episode_index (cached per process and file version)."""
    files = _episode_files(root)
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _episodes_cached(stamp)


@functools.lru_cache(maxsize=8)
def _episodes_cached(stamp: tuple) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for name, _, _ in stamp:
        path = Path(name)
        # Skip the per-episode stats columns: they can be most of the file and we never use them.
        columns = [c for c in _parquet_columns(path) if not c.startswith("stats/")]
        if "episode_index" not in columns:
            raise V2WError("episode metadata has no 'episode_index' column", path=path)
        for row in _read_parquet(path, columns).to_pylist():
            rows[int(row["episode_index"])] = row | {"_meta_file": name}
    return rows


# ---------------------------------------------------------------- listing


def list_episodes(path: str | Path, options: SourceOptions) -> list[EpisodeRef]:
    root = _root(path)
    _read_info(root)  # version check before anything else
    return [
        EpisodeRef(NAME, str(root), f"episode_{idx:06d}", key=idx) for idx in sorted(_episodes(root))
    ]


# ---------------------------------------------------------------- cameras and actions


def _cameras(info: dict) -> list[str]:
    features = info["features"]
    return [k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") in CAMERA_DTYPES]


def _is_depth(feature: dict) -> bool:
    meta = feature.get("info") or {}
    return bool(meta.get("is_depth_map") or meta.get("video.is_depth_map"))


def _pick_camera(info: dict, options: SourceOptions, root: Path) -> str:
    cameras = _cameras(info)
    if not cameras:
        raise V2WError("no camera feature (dtype 'video' or 'image') in info.json", path=root / INFO_PATH)
    wanted = options.camera
    if wanted is None:
        # First RGB video in info.json order; depth maps are not RGB frames, images are the fallback.
        features = info["features"]
        rgb_videos = [k for k in cameras if features[k]["dtype"] == "video" and not _is_depth(features[k])]
        return (rgb_videos or cameras)[0]
    if wanted in cameras:
        return wanted
    # Accept the short name too: --camera top for observation.images.top.
    short = [k for k in cameras if k.rsplit(".", 1)[-1] == wanted]
    if len(short) == 1:
        return short[0]
    raise V2WError(
        f"no camera {wanted!r}; this dataset has: {', '.join(cameras)}. Choose one with --camera",
        path=root / INFO_PATH,
    )


def _action_names(feature: dict | None, width: int) -> list[str] | None:
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict):  # older style, e.g. {"motors": ["shoulder", ...]}
        lists = [v for v in names.values() if isinstance(v, list)]
        names = lists[0] if len(lists) == 1 else None
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _to_matrix(column, path: Path) -> np.ndarray:
    """An Arrow column of fixed-length lists (or scalars) as a float32 (T, A) array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks()
    if arr.null_count:
        raise V2WError(f"'action' column has {arr.null_count} empty rows", path=path)
    kind = arr.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return arr.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise V2WError(f"'action' column has unsupported type {kind}; expected a list of numbers", path=path)
    lengths = set(pc.list_value_length(arr).to_numpy(zero_copy_only=False).tolist())
    if len(lengths) > 1:
        raise V2WError(f"'action' rows have different lengths {sorted(lengths)}", path=path)
    flat = pc.list_flatten(arr)
    if flat.null_count or not (pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type)):
        raise V2WError(f"'action' values are unsupported ({flat.type}, {flat.null_count} nulls)", path=path)
    width = lengths.pop() if lengths else 0
    return flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), width)


# ---------------------------------------------------------------- one episode's rows and frames


def _episode_table(root: Path, info: dict, ep: dict, camera: str | None):
    """The data-parquet rows of one episode (action, plus the camera column for image features)."""
    import pyarrow.compute as pc

    missing = [k for k in ("data/chunk_index", "data/file_index") if ep.get(k) is None]
    if missing:
        raise V2WError(f"episode {ep['episode_index']} has no {', '.join(missing)}", path=ep["_meta_file"])
    template = info.get("data_path") or DEFAULT_DATA_PATH
    chunk, file = int(ep["data/chunk_index"]), int(ep["data/file_index"])
    path = root / template.format(chunk_index=chunk, file_index=file)
    present = _parquet_columns(path)
    if "action" not in present:
        raise V2WError(f"no 'action' column (has: {', '.join(present)})", path=path)
    wanted = ["action"] + [c for c in ("frame_index", "index", "episode_index") if c in present]
    if camera is not None:
        wanted.append(camera)
    # Pushdown filter: a data file can hold hundreds of episodes; read only this one's row groups.
    if "episode_index" in present:
        filters = [("episode_index", "=", int(ep["episode_index"]))]
    elif "index" in present and None not in (ep.get("dataset_from_index"), ep.get("dataset_to_index")):
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])  # global row ids
        filters = [("index", ">=", lo), ("index", "<", hi)]
    else:
        raise V2WError("data parquet has no 'episode_index' or 'index'; cannot find episodes", path=path)
    table = _read_parquet(path, wanted, filters)
    if table.num_rows == 0:
        raise V2WError(f"no rows for episode {ep['episode_index']}", path=path)
    order = next((c for c in ("frame_index", "index") if c in table.column_names), None)
    if order is not None:
        table = table.take(pc.sort_indices(table, [(order, "ascending")]))
    return table, path


def _video_frames(root: Path, info: dict, ep: dict, camera: str) -> tuple[np.ndarray, Path]:
    prefix = f"videos/{camera}/"
    needed = [prefix + k for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    missing = [k for k in needed if ep.get(k) is None]
    if missing:
        raise V2WError(f"episode {ep['episode_index']} has no {', '.join(missing)}", path=ep["_meta_file"])
    template = info.get("video_path") or DEFAULT_VIDEO_PATH
    chunk, file = int(ep[prefix + "chunk_index"]), int(ep[prefix + "file_index"])
    path = root / template.format(video_key=camera, chunk_index=chunk, file_index=file)
    if not path.is_file():
        raise V2WError("missing video file; is the dataset download complete?", path=path)
    fps = float((info["features"][camera].get("info") or {}).get("video.fps") or info["fps"])
    # Shift the window by half a frame so each frame is matched to the nearest expected time:
    # segment boundaries are sums of float durations and rarely land exactly on a frame.
    half = 0.5 / fps
    start, end = float(ep[prefix + "from_timestamp"]) - half, float(ep[prefix + "to_timestamp"]) - half
    frames, _ = decode_video(path, start, end)
    return frames, path


def _image_frames(table, camera: str, root: Path, path: Path) -> np.ndarray:
    """Decode an image feature: per-row structs {bytes, path} as written by HF ``datasets.Image``."""
    from PIL import Image

    frames = []
    for i, cell in enumerate(table.column(camera).to_pylist()):
        cell = cell if isinstance(cell, dict) else {"bytes": cell}
        source = cell.get("bytes")
        if source is None and cell.get("path"):
            source = Path(cell["path"]) if Path(cell["path"]).is_absolute() else root / cell["path"]
            if not source.is_file():
                raise V2WError(f"image of row {i} of {camera!r} is missing", path=source)
        if source is None:
            raise V2WError(f"row {i} of {camera!r} holds no image", path=path)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except Exception as e:  # PIL raises several types for bad data
            raise V2WError(f"cannot decode image of row {i} of {camera!r} ({e})", path=path) from None
    if len({f.shape for f in frames}) > 1:
        raise V2WError(f"images of {camera!r} have different sizes", path=path)
    return np.stack(frames)


def _match_counts(frames: np.ndarray, actions: np.ndarray, video: Path, ep: dict):
    """LeRobot stores one data row per frame. Drop up to 2 surplus frames (timestamp rounding at
    the segment end) or a last action row without a frame; anything else is a broken dataset."""
    n_frames, n_rows = len(frames), len(actions)
    if 0 < n_frames - n_rows <= MAX_EXTRA_FRAMES:
        return frames[:n_rows], actions
    if n_rows - n_frames == 1:
        return frames, actions[:n_frames]
    if n_frames != n_rows:
        raise V2WError(
            f"episode {ep['episode_index']}: the video segment has {n_frames} frames but the data "
            f"parquet has {n_rows} rows",
            path=video,
        )
    return frames, actions


def load_episode(ref: EpisodeRef, options: SourceOptions) -> Episode:
    root = Path(ref.path)
    info = _read_info(root)
    episodes = _episodes(root)
    if ref.key not in episodes:
        raise V2WError(f"no episode {ref.key} in meta/episodes", path=root / EPISODES_DIR)
    ep = episodes[ref.key]
    camera = _pick_camera(info, options, root)
    is_image = info["features"][camera]["dtype"] == "image"
    table, data_path = _episode_table(root, info, ep, camera if is_image else None)
    actions = _to_matrix(table.column("action"), data_path)
    if is_image:
        frames, source = _image_frames(table, camera, root, data_path), data_path
    else:
        frames, source = _video_frames(root, info, ep, camera)
    frames, actions = _match_counts(frames, actions, source, ep)
    extra = {"camera": camera, "episode_index": int(ep["episode_index"])}
    if ep.get("tasks"):
        extra["tasks"] = [str(t) for t in ep["tasks"]]
    return Episode(
        frames=frames,
        actions=actions,
        fps=options.src_fps or float(info["fps"]),
        action_kind=None,  # LeRobot does not say whether actions are deltas or targets
        action_names=_action_names(info["features"].get("action"), actions.shape[1]),
        extra_meta=extra,
    )
