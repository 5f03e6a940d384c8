"""Action maths: validation, one-hot ids, padding, fps resampling, running statistics."""

import numpy as np
import pytest

from pipelines.data.actions import (
    RunningStats,
    resample_actions,
    resample_frame_indices,
    to_action_matrix,
    valid_rows_after_resample,
)
from pipelines.errors import V2WError


def test_t_rows_pass_and_t_minus_1_is_padded_with_zero():
    a = np.arange(12, dtype=np.float64).reshape(6, 2)
    out, real = to_action_matrix(a, 6, None, "x.npy")
    assert out.dtype == np.float32 and real == 6 and np.array_equal(out, a)
    out, real = to_action_matrix(a[:5], 6, None, "x.npy")
    assert real == 5 and out.shape == (6, 2) and np.array_equal(out[:5], a[:5]) and not out[5].any()


@pytest.mark.parametrize("rows", [4, 7, 12])
def test_wrong_row_count_is_an_error_naming_file(rows):
    with pytest.raises(V2WError, match=r"x\.npy: actions have %d rows but the episode has 6 frames" % rows):
        to_action_matrix(np.zeros((rows, 2)), 6, None, "x.npy")


def test_nan_and_inf_are_errors_with_position():
    a = np.zeros((6, 2))
    a[3, 1] = np.nan
    with pytest.raises(V2WError, match="NaN/inf .*row 3, column 1"):
        to_action_matrix(a, 6, None, "x.npy")
    a[3, 1] = np.inf
    with pytest.raises(V2WError, match="NaN/inf"):
        to_action_matrix(a, 6, None, "x.npy")


def test_integer_ids_become_one_hot():
    ids = np.array([0, 2, 1, 2, 3])
    out, real = to_action_matrix(ids, 5, 4, "x.npy")
    assert np.array_equal(out, np.eye(4, dtype=np.float32)[ids]) and real == 5
    out, _ = to_action_matrix(ids[:, None], 6, 4, "x.npy")
    assert out.shape == (6, 4) and not out[5].any()


def test_integer_ids_need_num_actions_and_range():
    with pytest.raises(V2WError, match="--num-actions"):
        to_action_matrix(np.array([0, 1, 2]), 3, None, "x.npy")
    with pytest.raises(V2WError, match="action id 4 is outside"):
        to_action_matrix(np.array([0, 4, 2]), 3, 4, "x.npy")
    with pytest.raises(V2WError, match="integer action ids"):
        to_action_matrix(np.zeros((3, 2)), 3, 4, "x.npy")


def test_non_numeric_and_wrong_rank_are_errors():
    with pytest.raises(V2WError, match="numeric"):
        to_action_matrix(np.array(["a", "b"]), 2, None, "x.npy")
    with pytest.raises(V2WError, match=r"\(T, A\)"):
        to_action_matrix(np.zeros((3, 2, 2)), 3, None, "x.npy")


def test_downsample_sums_deltas_and_keeps_last_absolute():
    a = np.arange(10, dtype=np.float32)[:, None]
    idx = resample_frame_indices(10, 10, 5)
    assert idx.tolist() == [0, 2, 4, 6, 8]
    # frame 2k -> 2k+2 took actions 2k and 2k+1
    assert resample_actions(a, 10, 5, 5, "delta").ravel().tolist() == [1, 5, 9, 13, 17]
    assert resample_actions(a, 10, 5, 5, "last").ravel().tolist() == [1, 3, 5, 7, 9]


def test_delta_resampling_preserves_total_displacement_for_any_ratio():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 2)).astype(np.float32)
    for dst in (3.0, 7.0, 10.0, 25.0):
        n_out = len(resample_frame_indices(30, 10.0, dst))
        out = resample_actions(a, 10.0, dst, n_out, "delta")
        covered = min(n_out / dst * 10.0, 30)  # source rows covered by the output intervals
        full = int(np.floor(covered))
        expect = a[:full].sum(0) + (covered - full) * (a[full] if full < 30 else 0)
        np.testing.assert_allclose(out.sum(0), expect, rtol=1e-5, atol=1e-5)


def test_upsample_splits_deltas_evenly():
    out = resample_actions(np.ones((5, 1), np.float32), 10, 20, 9, "delta")
    np.testing.assert_allclose(out.ravel(), 0.5)
    assert resample_frame_indices(5, 10, 20).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_valid_rows_after_resample():
    # 10 frames, 9 real actions at 10 fps -> 5 fps: rows 0..3 cover [0, 0.8] s <= 0.9 s
    assert valid_rows_after_resample(5, 9, 10, 5).tolist() == [True, True, True, True, False]
    assert valid_rows_after_resample(5, 10, 10, 10).all()


def test_running_stats_match_numpy():
    x = np.random.default_rng(1).normal(3, 2, size=(257, 4))
    s = RunningStats()
    for chunk in np.array_split(x, 7):
        s.update(chunk)
    d = RunningStats.from_dict(s.to_dict()).to_dict()  # survives a JSON-style round trip
    np.testing.assert_allclose(d["mean"], x.mean(0))
    np.testing.assert_allclose(d["std"], x.std(0))
    np.testing.assert_array_equal(d["min"], x.min(0))
    np.testing.assert_array_equal(d["max"], x.max(0))
    assert d["count"] == 257
