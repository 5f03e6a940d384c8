"""Quality per horizon window of long rollouts (docs/design.md §9): does a rollout hold?

A window is a 1-based, inclusive range of predicted frames, e.g. (1, 10), (41, 50), (91, 100).
For each, the per-frame scores averaged over its frames, and two collapse probes that need no
network: ``change`` = mean |x_t - x_{t-1}| of consecutive predicted frames (in [0, 1] pixel units;
a rollout frozen into a static frame drives it to 0 while the reference's stays up) and
``std`` = the mean per-frame pixel std (a blank frame drives it to 0).
"""

from __future__ import annotations

import numpy as np

from pipelines.errors import V2WError


def parse_windows(spec: str | None) -> tuple[tuple[int, int], ...] | None:
    """'1-10,41-50,91-100' -> ((1, 10), (41, 50), (91, 100)); None -> None."""
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        try:
            a, b = (int(v) for v in part.strip().split("-"))
        except ValueError:
            raise V2WError(f"--windows takes FIRST-LAST ranges of predicted frames, e.g. 1-10,41-50. Got {part!r}") from None
        if not 1 <= a <= b:
            raise V2WError(f"--windows: a range needs 1 <= FIRST <= LAST. Got {part!r}")
        out.append((a, b))
    return tuple(out)


def default_windows(horizon: int, size: int = 10) -> tuple[tuple[int, int], ...] | None:
    """First, middle and last ``size`` frames of a horizon of at least 3 windows' worth; else None."""
    if horizon < 3 * size:
        return None
    mid = (horizon - size) // 2 + 1
    return ((1, size), (mid, mid + size - 1), (horizon - size + 1, horizon))


def window_name(w: tuple[int, int]) -> str:
    return f"{w[0]}-{w[1]}"


def collapse_probes(frames: np.ndarray) -> dict[str, float]:
    """frames (N, T, H, W, 3) uint8 -> {"change": mean |x_t - x_{t-1}|, "std": mean per-frame std}, in [0, 1]."""
    x = frames.astype(np.float32) / 255.0
    change = float(np.abs(np.diff(x, axis=1)).mean()) if x.shape[1] > 1 else float("nan")
    return {"change": change, "std": float(x.reshape(*x.shape[:2], -1).std(axis=-1).mean())}


def window_columns(w: tuple[int, int], horizon: int) -> slice:
    """The predicted-frame columns of window ``w`` (clipped to the horizon)."""
    if w[0] > horizon:
        raise V2WError(f"window {window_name(w)} starts past the horizon of {horizon} predicted frames")
    return slice(w[0] - 1, min(w[1], horizon))
