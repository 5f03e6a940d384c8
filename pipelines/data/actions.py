"""Action arrays: validation, one-hot ids, frame-rate resampling and running statistics.

Convention (docs/design.md §7): row t is the action taken *after* frame t, so an episode of T frames has
T rows; sources that log T-1 rows (nothing after the last frame) are padded with one zero row,
which is marked invalid and left out of the statistics.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.errors import V2WError


def to_action_matrix(actions: np.ndarray, num_frames: int, num_actions: int | None, path: str) -> tuple[np.ndarray, int]:
    """Validate raw actions and return ((T, A) float32, number of real rows).

    Integer ids (shape (T,) or (T, 1), integer dtype) become one-hot rows when ``num_actions``
    is given. T or T-1 rows are accepted; T-1 is padded with a zero row at the end.
    """
    a = np.asarray(actions)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise V2WError(f"actions must be a numeric array; got dtype {a.dtype}", path=path)
    if num_actions is not None:
        if not (np.issubdtype(a.dtype, np.integer) and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1))):
            raise V2WError(
                f"--num-actions expects integer action ids of shape (T,) or (T, 1); got {a.dtype} {a.shape}",
                path=path,
            )
        ids = a.reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= num_actions):
            bad = int(ids[(ids < 0) | (ids >= num_actions)][0])
            raise V2WError(f"action id {bad} is outside [0, {num_actions}); raise --num-actions", path=path)
        a = np.eye(num_actions, dtype=np.float32)[ids]
    elif np.issubdtype(a.dtype, np.integer) and a.ndim == 1:
        raise V2WError("actions are integer ids; pass --num-actions K to store them one-hot", path=path)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise V2WError(f"actions must be (T, A) with one row per frame; got shape {a.shape}", path=path)
    a = a.astype(np.float32)
    rows = a.shape[0]
    if rows not in (num_frames, num_frames - 1):
        raise V2WError(
            f"actions have {rows} rows but the episode has {num_frames} frames; give {num_frames} rows "
            f"(row t = action after frame t) or {num_frames - 1}",
            path=path,
        )
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise V2WError(f"actions contain NaN/inf (first at row {r}, column {c}); clean or drop them", path=path)
    if rows == num_frames - 1:
        a = np.concatenate([a, np.zeros((1, a.shape[1]), np.float32)])
    return a, rows


def resample_frame_indices(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame index for each output frame: the latest source frame at time k / dst_fps."""
    r = src_fps / dst_fps
    n_out = int(math.floor((num_frames - 1) / r + 1e-6)) + 1
    return np.minimum(np.floor(np.arange(n_out) * r + 1e-6).astype(np.int64), num_frames - 1)


def resample_actions(actions: np.ndarray, src_fps: float, dst_fps: float, n_out: int, kind: str) -> np.ndarray:
    """Aggregate per-source-frame actions into per-output-frame actions.

    Source row j covers the time [j, j+1) / src_fps, output row k covers [k, k+1) / dst_fps.
    ``delta``: the integral of the piecewise-constant action over the output interval, in units
    of source rows, so displacements add up when downsampling and split evenly when upsampling.
    ``absolute`` / ``discrete``: the source row active at the end of the output interval (last).
    """
    r = src_fps / dst_fps
    t = actions.shape[0]
    if kind == "delta":
        cum = np.concatenate([np.zeros((1, actions.shape[1])), np.cumsum(actions, axis=0, dtype=np.float64)])

        def integral(x: np.ndarray) -> np.ndarray:  # integral of the actions from 0 to x rows
            x = np.clip(x, 0, t)
            i = np.minimum(np.floor(x + 1e-9).astype(np.int64), t)
            frac = (x - i)[:, None]
            return cum[i] + frac * actions[np.minimum(i, t - 1)]

        k = np.arange(n_out, dtype=np.float64)
        return (integral((k + 1) * r) - integral(k * r)).astype(np.float32)
    idx = np.ceil((np.arange(n_out) + 1) * r - 1e-6).astype(np.int64) - 1
    return actions[np.clip(idx, 0, t - 1)]


def valid_rows_after_resample(n_out: int, real_rows: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Which output rows lie entirely inside the time covered by real (unpadded) source rows."""
    k = np.arange(n_out)
    return (k + 1) / dst_fps <= real_rows / src_fps + 1e-9


class RunningStats:
    """Per-dimension count, mean, M2 (Chan et al. merge), min and max in float64."""

    def __init__(self, dim: int | None = None):
        self.count = 0
        self.mean = self.m2 = self.min = self.max = None
        if dim is not None:
            self._init(dim)

    def _init(self, dim: int) -> None:
        self.mean, self.m2 = np.zeros(dim), np.zeros(dim)
        self.min, self.max = np.full(dim, np.inf), np.full(dim, -np.inf)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        if len(x) == 0:
            return
        if self.mean is None:
            self._init(x.shape[1])
        n, mean, m2 = len(x), x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        tot = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / tot
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / tot
        self.count = tot
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))

    def to_dict(self) -> dict:
        if self.count == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "m2": None}
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.count).tolist(),  # population std, like np.std
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "m2": self.m2.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        s = cls()
        if d.get("count"):
            s.count = d["count"]
            s.mean, s.m2 = np.array(d["mean"]), np.array(d["m2"])
            s.min, s.max = np.array(d["min"]), np.array(d["max"])
        return s
