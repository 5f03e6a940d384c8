"""CS:GO hdf5 and RECON readers: layouts, round trips, action maths and refusals, on tiny inputs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipelines.data.episode import SourceOptions
from pipelines.data.sources import csgo_hdf5, recon
from pipelines.data.synthetic import csgo_action, csgo_frame_bgr, write_csgo_episode, write_recon_traj
from pipelines.errors import V2WError

OPTS = SourceOptions()


# --- CS:GO hdf5 ----------------------------------------------------------------------------------


_bgr_frame = csgo_frame_bgr  # 4x6 BGR; pixel (0, 0) is B, G, R = 10 + i, 100 + i, 200 + i
_action = csgo_action  # key i % 11, left click on odd frames, mouse x = 0, mouse y = 0


def _write_csgo(path: Path, n: int = 3, skip: set[str] = frozenset()) -> Path:
    return write_csgo_episode(path, n, skip=skip)


def test_csgo_detect_and_list(tmp_path):
    a = _write_csgo(tmp_path / "src" / "1-200" / "hdf5_dm_july2021_2.hdf5")
    b = _write_csgo(tmp_path / "src" / "1-200" / "hdf5_dm_july2021_1.h5")
    (tmp_path / "other.hdf5").parent.mkdir(exist_ok=True)
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("images", data=np.zeros(3))

    assert csgo_hdf5.detect(tmp_path / "src")
    assert csgo_hdf5.detect(a)
    assert not csgo_hdf5.detect(tmp_path / "other.hdf5")  # hdf5 without frame_0_x
    refs = csgo_hdf5.list_episodes(tmp_path / "src", OPTS)
    assert [r.episode_id for r in refs] == ["hdf5_dm_july2021_1", "hdf5_dm_july2021_2"]
    assert [r.path for r in refs] == [str(b), str(a)]
    assert all(r.format == "hdf5" for r in refs)


def test_csgo_duplicate_stems_get_relative_ids(tmp_path):
    _write_csgo(tmp_path / "x" / "ep.hdf5")
    _write_csgo(tmp_path / "y" / "ep.hdf5")
    assert [r.episode_id for r in csgo_hdf5.list_episodes(tmp_path, OPTS)] == ["x/ep", "y/ep"]


def test_csgo_round_trip_bgr_to_rgb(tmp_path):
    path = _write_csgo(tmp_path / "ep.hdf5", n=3)
    ep = csgo_hdf5.load_episode(csgo_hdf5.list_episodes(path, OPTS)[0], OPTS)

    assert ep.frames.shape == (3, 4, 6, 3) and ep.frames.dtype == np.uint8
    for i in range(3):
        assert (ep.frames[i, 0, 0] == [200 + i, 100 + i, 10 + i]).all()  # R, G, B
    assert ep.actions.shape == (3, 51) and ep.actions.dtype == np.float32
    np.testing.assert_array_equal(ep.actions, np.stack([_action(i) for i in range(3)]))
    assert ep.action_kind == "discrete" and ep.fps == 16.0
    assert ep.action_names[:3] == ["key_w", "key_a", "key_s"]
    assert ep.action_names[11:14] == ["click_left", "click_right", "mouse_x_-1000"]
    assert ep.action_names[13 + 11] == "mouse_x_0" and ep.action_names[36 + 7] == "mouse_y_0"
    assert ep.action_names[-1] == "mouse_y_200" and len(ep.action_names) == 51

    ep = csgo_hdf5.load_episode(csgo_hdf5.list_episodes(path, OPTS)[0], SourceOptions(src_fps=8))
    assert ep.fps == 8


def test_csgo_other_action_width_has_no_names(tmp_path):
    with h5py.File(tmp_path / "ep.hdf5", "w") as f:
        for i in range(2):
            f.create_dataset(f"frame_{i}_x", data=_bgr_frame(i))
            f.create_dataset(f"frame_{i}_y", data=np.ones(5))
    ep = csgo_hdf5.load_episode(csgo_hdf5.list_episodes(tmp_path, OPTS)[0], OPTS)
    assert ep.actions.shape == (2, 5) and ep.action_names is None


def test_csgo_gap_in_frame_indices(tmp_path):
    path = _write_csgo(tmp_path / "ep.hdf5", n=4, skip={"frame_2_x", "frame_2_y"})
    with pytest.raises(V2WError, match=r"frame_2_x is missing but frame_3 exists") as err:
        csgo_hdf5.load_episode(csgo_hdf5.list_episodes(path, OPTS)[0], OPTS)
    assert str(path) in str(err.value)


def test_csgo_missing_action(tmp_path):
    path = _write_csgo(tmp_path / "ep.hdf5", n=3, skip={"frame_1_y"})
    with pytest.raises(V2WError, match=r"frame_1_y .*index 1"):
        csgo_hdf5.load_episode(csgo_hdf5.list_episodes(path, OPTS)[0], OPTS)


def test_csgo_truncated_file_names_it(tmp_path):
    path = _write_csgo(tmp_path / "ep.hdf5", n=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ref = csgo_hdf5.list_episodes(path, OPTS)[0]  # listing is cheap and does not open the file
    with pytest.raises(V2WError) as err:
        csgo_hdf5.load_episode(ref, OPTS)
    assert str(path) in str(err.value)


# --- RECON ---------------------------------------------------------------------------------------


def _write_traj(folder: Path, n: int, **kw) -> Path:
    """png frames (exact: the red channel encodes the frame number, 20 * i); straight drive along +x."""
    return write_recon_traj(folder, n, ext="png", **kw)


def test_recon_detect_and_list(tmp_path):
    _write_traj(tmp_path / "recon" / "traj_b", 2)
    _write_traj(tmp_path / "recon" / "traj_a", 2, fmt="npz")
    _write_traj(tmp_path / "recon" / "traj_c", 2, fmt="json")
    (tmp_path / "recon" / "notes").mkdir()

    assert recon.detect(tmp_path / "recon")
    assert recon.detect(tmp_path / "recon" / "traj_a")
    assert not recon.detect(tmp_path / "recon" / "notes")
    refs = recon.list_episodes(tmp_path / "recon", OPTS)
    assert [r.episode_id for r in refs] == ["traj_a", "traj_b", "traj_c"]
    assert recon.list_episodes(tmp_path / "recon" / "traj_b", OPTS)[0].episode_id == "traj_b"


def test_recon_images_without_traj_file_not_detected(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "0.jpg")
    assert not recon.detect(tmp_path)


@pytest.mark.parametrize("fmt", ["pkl", "npz", "json"])
def test_recon_round_trip(tmp_path, fmt):
    folder = _write_traj(tmp_path / "t", 3, fmt=fmt)
    ep = recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)
    assert ep.frames.shape == (3, 6, 8, 3) and ep.frames.dtype == np.uint8
    assert list(ep.frames[:, 0, 0, 0]) == [0, 20, 40]
    assert ep.actions.shape == (2, 3) and ep.actions.dtype == np.float32
    np.testing.assert_allclose(ep.actions, [[1, 0, 0], [1, 0, 0]], atol=1e-6)
    assert ep.action_kind == "delta" and ep.action_names == ["dx", "dy", "dyaw"]
    assert ep.fps == 4.0
    assert ep.extra_meta["position"].shape == (3, 2) and ep.extra_meta["yaw"].shape == (3,)


def test_recon_numeric_sort(tmp_path):
    folder = _write_traj(tmp_path / "t", 12)
    ep = recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)
    assert list(ep.frames[:, 0, 0, 0]) == [20 * i for i in range(12)]  # 10.png after 9.png


def test_recon_gap_in_image_numbers(tmp_path):
    folder = _write_traj(tmp_path / "t", 4)
    (folder / "2.png").unlink()
    with pytest.raises(V2WError, match=r"missing 2\.jpg before 3\.png"):
        recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)


def test_recon_count_mismatch(tmp_path):
    folder = _write_traj(tmp_path / "t", 3, n_pos=5)
    with pytest.raises(V2WError, match=r"3 images .* 5 positions") as err:
        recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)
    assert str(folder) in str(err.value)


def test_recon_image_size_mismatch(tmp_path):
    folder = _write_traj(tmp_path / "t", 3)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "1.png")
    with pytest.raises(V2WError, match="same size"):
        recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)


class _Evil:
    """Pickles as a call to os.system: plain pickle.load would run the shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_recon_malicious_pickle_refused(tmp_path):
    folder = _write_traj(tmp_path / "t", 2)
    marker = tmp_path / "pwned"
    (folder / "traj_data.pkl").write_bytes(pickle.dumps({"position": _Evil(marker), "yaw": [0.0, 0.0]}))
    with pytest.raises(V2WError, match=r"refusing to unpickle .*system") as err:
        recon.load_episode(recon.list_episodes(folder, OPTS)[0], OPTS)
    assert "traj_data.pkl" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_recon_safe_pickle_loads_numpy(tmp_path, protocol):
    obj = {"position": np.ones((2, 2)), "yaw": np.float32(0.5), "n": [1, (2, "x")], "f": np.arange(3, dtype=np.int16)}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    got = recon.safe_load_pickle(tmp_path / "p.pkl")
    np.testing.assert_array_equal(got["position"], obj["position"])
    assert got["yaw"] == np.float32(0.5) and got["n"] == [1, (2, "x")] and got["f"].dtype == np.int16


def test_recon_truncated_pickle(tmp_path):
    data = pickle.dumps({"position": np.ones((2, 2)), "yaw": np.zeros(2)})
    (tmp_path / "p.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(V2WError, match="cannot read pickle"):
        recon.safe_load_pickle(tmp_path / "p.pkl")


def test_ego_actions_straight_along_heading():
    yaw = np.full(3, 0.3)
    pos = np.stack([np.arange(3) * 0.5 * np.cos(0.3), np.arange(3) * 0.5 * np.sin(0.3)], axis=1)
    np.testing.assert_allclose(recon.ego_actions(pos, yaw), [[0.5, 0, 0], [0.5, 0, 0]], atol=1e-12)


def test_ego_actions_facing_plus_y():
    pos = np.array([[0.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    yaw = np.full(3, np.pi / 2)
    # facing +y: moving +y is straight ahead (dx>0); moving -x is to the robot's left (dy>0)
    np.testing.assert_allclose(recon.ego_actions(pos, yaw), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_ego_actions_turn_wraps_across_pi():
    pos = np.zeros((3, 2))
    yaw = np.array([np.pi - 0.1, -np.pi + 0.1, np.pi - 0.1])
    np.testing.assert_allclose(recon.ego_actions(pos, yaw)[:, 2], [0.2, -0.2], atol=1e-12)
    assert recon.ego_actions(pos[:1], yaw[:1]).shape == (0, 3)


def test_recon_safe_pickle_accepts_numpy1_module_names(tmp_path):
    """Pickles written under numpy 1.x name ``numpy.core.multiarray``; they load without the alias."""
    data = pickle.dumps({"yaw": np.arange(3.0)}, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "p.pkl").write_bytes(data)
    np.testing.assert_array_equal(recon.safe_load_pickle(tmp_path / "p.pkl")["yaw"], [0, 1, 2])
