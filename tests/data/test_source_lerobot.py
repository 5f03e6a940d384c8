"""The LeRobot v3.0 reader against a tiny dataset written the way LeRobot writes one.

Three episodes (5, 7 and 6 frames at 10 fps, 16x16) share one data parquet and, per camera, one
mp4. Every frame is a flat gray level that encodes (camera, episode, frame), so the lossy codec
still round-trips within a few levels and a frame from the wrong episode or offset is obvious.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.data.episode import SourceOptions
from pipelines.data.sources import lerobot
from pipelines.data.video import encode_mp4
from pipelines.errors import V2WError

FPS = 10
LENGTHS = (5, 7, 6)
SIZE = 16
CAMERAS = ("observation.images.top", "observation.images.wrist")
ACTION_NAMES = ["x", "y", "gripper"]
VIDEO = "videos/{video_key}/chunk-000/file-000.mp4"


def gray_level(camera: int, episode: int, frame: int) -> int:
    level = 20 + 60 * episode + 7 * frame  # 20..175, distinct for every (episode, frame)
    return level if camera == 0 else 255 - level


def expected_frames(camera: int, episode: int) -> np.ndarray:
    levels = [gray_level(camera, episode, f) for f in range(LENGTHS[episode])]
    return np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in levels])


def expected_actions(episode: int) -> np.ndarray:
    f = np.arange(LENGTHS[episode], dtype=np.float32)
    return np.stack([np.full_like(f, episode), f, episode * 100 + f + 0.25], axis=1)


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _info(image_camera: bool) -> dict:
    camera_ft = {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    video_info = {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv444p", "has_audio": False}
    features = {
        CAMERAS[0]: {**camera_ft, "info": video_info},
        CAMERAS[1]: {**camera_ft, "info": video_info},
        "observation.state": {"dtype": "float32", "shape": [3], "names": ACTION_NAMES},
        "action": {"dtype": "float32", "shape": [3], "names": ACTION_NAMES},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if image_camera:
        features[CAMERAS[1]] = {**camera_ft, "dtype": "image"}
    return {
        "codebase_version": "v3.0",
        "robot_type": "dummy",
        "total_episodes": len(LENGTHS),
        "total_frames": sum(LENGTHS),
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }


def _data_table(image_camera: bool) -> pa.Table:
    actions = np.concatenate([expected_actions(e) for e in range(len(LENGTHS))])
    episode = np.concatenate([np.full(n, e, np.int64) for e, n in enumerate(LENGTHS)])
    frame = np.concatenate([np.arange(n, dtype=np.int64) for n in LENGTHS])
    vec3 = pa.list_(pa.float32(), 3)  # datasets.Sequence(length=3) -> fixed-size list
    columns = {
        "observation.state": pa.array(list(actions * 2), type=vec3),
        "action": pa.array(list(actions), type=vec3),
        "timestamp": pa.array(frame / FPS, type=pa.float32()),
        "frame_index": pa.array(frame),
        "episode_index": pa.array(episode),
        "index": pa.array(np.arange(sum(LENGTHS), dtype=np.int64)),
        "task_index": pa.array(np.zeros(sum(LENGTHS), np.int64)),
    }
    if image_camera:  # datasets.Image() is stored as struct<bytes: binary, path: string>
        cells = [
            {"bytes": _png(expected_frames(1, e)[f]), "path": f"frame-{f:06d}.png"}
            for e, n in enumerate(LENGTHS)
            for f in range(n)
        ]
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns[CAMERAS[1]] = pa.array(cells, type=image_type)
    return pa.table(columns)


def _episodes_table(video_keys: list[str]) -> pa.Table:
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]]).tolist()
    n = len(LENGTHS)
    columns = {
        "episode_index": list(range(n)),
        "tasks": [["pick the cube"]] * n,
        "length": list(LENGTHS),
        "data/chunk_index": [0] * n,
        "data/file_index": [0] * n,
        "dataset_from_index": starts,
        "dataset_to_index": [s + length for s, length in zip(starts, LENGTHS)],
    }
    for key in video_keys:
        columns[f"videos/{key}/chunk_index"] = [0] * n
        columns[f"videos/{key}/file_index"] = [0] * n
        columns[f"videos/{key}/from_timestamp"] = [s / FPS for s in starts]
        columns[f"videos/{key}/to_timestamp"] = [(s + length) / FPS for s, length in zip(starts, LENGTHS)]
    columns["meta/episodes/chunk_index"] = [0] * n
    columns["meta/episodes/file_index"] = [0] * n
    columns["stats/action/mean"] = [[0.5, 0.5, 0.5]] * n  # stats columns are present and ignored
    return pa.table(columns)


def write_dataset(root: Path, image_camera: bool = False) -> Path:
    """Write a LeRobot v3.0 folder; with ``image_camera`` the wrist camera is a parquet image feature."""
    info = _info(image_camera)
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    action_stats = {"mean": [0.5] * 3, "std": [0.25] * 3, "min": [0.0] * 3, "max": [1.0] * 3}
    stats = {"action": {**action_stats, "count": [sum(LENGTHS)]}}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    pq.write_table(pa.table({"task_index": [0], "task": ["pick the cube"]}), root / "meta/tasks.parquet")
    pq.write_table(_episodes_table(video_keys), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(_data_table(image_camera), root / "data/chunk-000/file-000.parquet")
    for key in video_keys:
        camera = CAMERAS.index(key)
        frames = np.concatenate([expected_frames(camera, e) for e in range(len(LENGTHS))])
        path = root / VIDEO.format(video_key=key)
        path.parent.mkdir(parents=True)
        path.write_bytes(encode_mp4(frames, float(FPS)))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "ds")


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def _rewrite_episodes(root: Path, column: str, values: list) -> None:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    i = table.column_names.index(column)
    pq.write_table(table.set_column(i, column, pa.array(values, type=table.schema.field(column).type)), path)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_detect(dataset, tmp_path):
    assert lerobot.detect(dataset)
    assert lerobot.detect(dataset / "meta/info.json")
    assert not lerobot.detect(tmp_path)


def test_list_episodes(dataset):
    refs = lerobot.list_episodes(dataset, SourceOptions())
    assert [r.episode_id for r in refs] == ["episode_000000", "episode_000001", "episode_000002"]
    assert [r.key for r in refs] == [0, 1, 2]
    assert {r.format for r in refs} == {"lerobot"} and {r.path for r in refs} == {str(dataset)}


def test_load_episodes(dataset):
    for ref in lerobot.list_episodes(dataset, SourceOptions()):
        ep = lerobot.load_episode(ref, SourceOptions())
        e = ref.key
        assert ep.frames.shape == (LENGTHS[e], SIZE, SIZE, 3) and ep.frames.dtype == np.uint8
        assert _mae(ep.frames, expected_frames(0, e)) < 3
        assert ep.actions.dtype == np.float32
        np.testing.assert_array_equal(ep.actions, expected_actions(e))
        assert ep.fps == FPS and ep.action_kind is None and ep.action_names == ACTION_NAMES
        assert ep.extra_meta["camera"] == CAMERAS[0]


def test_src_fps_overrides(dataset):
    ref = lerobot.list_episodes(dataset, SourceOptions())[0]
    assert lerobot.load_episode(ref, SourceOptions(src_fps=5.0)).fps == 5.0


@pytest.mark.parametrize("camera", [CAMERAS[1], "wrist"])
def test_camera_choice(dataset, camera):
    ref = lerobot.list_episodes(dataset, SourceOptions())[1]
    ep = lerobot.load_episode(ref, SourceOptions(camera=camera))
    assert ep.extra_meta["camera"] == CAMERAS[1]
    assert _mae(ep.frames, expected_frames(1, 1)) < 3


def test_unknown_camera_lists_cameras(dataset):
    ref = lerobot.list_episodes(dataset, SourceOptions())[0]
    with pytest.raises(V2WError) as err:
        lerobot.load_episode(ref, SourceOptions(camera="observation.images.side"))
    msg = str(err.value)
    assert "observation.images.side" in msg and "--camera" in msg
    assert all(c in msg for c in CAMERAS)


def test_v21_asks_for_conversion(tmp_path):
    (tmp_path / "meta").mkdir()
    info = {**_info(False), "codebase_version": "v2.1"}
    info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"  # v2.x layout
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    assert lerobot.detect(tmp_path)  # recognised, so the user gets the conversion hint
    with pytest.raises(V2WError) as err:
        lerobot.list_episodes(tmp_path, SourceOptions())
    msg = str(err.value)
    assert "v2.1" in msg and "convert_dataset_v21_to_v30" in msg and "info.json" in msg


def test_missing_video_names_file(copy):
    video = copy / VIDEO.format(video_key=CAMERAS[0])
    video.unlink()
    ref = lerobot.list_episodes(copy, SourceOptions())[0]
    with pytest.raises(V2WError) as err:
        lerobot.load_episode(ref, SourceOptions())
    assert str(video) in str(err.value)


def test_missing_episode_metadata_names_file(copy):
    shutil.rmtree(copy / "meta/episodes")
    with pytest.raises(V2WError, match=r"meta/episodes/chunk-000/file-000\.parquet"):
        lerobot.list_episodes(copy, SourceOptions())


def test_missing_data_parquet_names_file(copy):
    (copy / "data/chunk-000/file-000.parquet").unlink()
    ref = lerobot.list_episodes(copy, SourceOptions())[0]
    with pytest.raises(V2WError, match=r"data/chunk-000/file-000\.parquet"):
        lerobot.load_episode(ref, SourceOptions())


def test_surplus_frame_is_trimmed(copy):
    # Episode 0's segment ends one frame late (rounding): the reader keeps one frame per row.
    key = f"videos/{CAMERAS[0]}/to_timestamp"
    _rewrite_episodes(copy, key, [0.6, 1.2, 1.8])
    ep = lerobot.load_episode(lerobot.list_episodes(copy, SourceOptions())[0], SourceOptions())
    assert len(ep.frames) == len(ep.actions) == LENGTHS[0]
    assert _mae(ep.frames, expected_frames(0, 0)) < 3


def test_frame_count_mismatch_is_an_error(copy):
    key = f"videos/{CAMERAS[0]}/to_timestamp"
    _rewrite_episodes(copy, key, [1.0, 1.2, 1.8])  # episode 0 would take 10 frames for 5 rows
    ref = lerobot.list_episodes(copy, SourceOptions())[0]
    with pytest.raises(V2WError) as err:
        lerobot.load_episode(ref, SourceOptions())
    msg = str(err.value)
    assert "file-000.mp4" in msg and "10 frames" in msg and "5 rows" in msg


def test_image_feature(tmp_path):
    root = write_dataset(tmp_path / "ds", image_camera=True)
    ref = lerobot.list_episodes(root, SourceOptions())[2]
    ep = lerobot.load_episode(ref, SourceOptions(camera=CAMERAS[1]))
    np.testing.assert_array_equal(ep.frames, expected_frames(1, 2))  # PNG is lossless
    np.testing.assert_array_equal(ep.actions, expected_actions(2))


@pytest.mark.parametrize(
    "names, expected",
    [
        (ACTION_NAMES, ACTION_NAMES),
        ({"motors": ACTION_NAMES}, ACTION_NAMES),
        (None, None),
        (["x", "y"], None),  # wrong length
        ([["x", "y", "z"]], None),  # nested
    ],
)
def test_action_names(names, expected):
    assert lerobot._action_names({"names": names}, 3) == expected
