"""Small synthetic stand-ins for the paper's three datasets, written in their real on-disk formats.

The recipes (``examples/rt1.sh``, ``csgo.sh``, ``recon.sh``) run end to end on these with
``--smoke``, and the tests build their inputs with the same writers, so what the readers in
``pipelines/data/sources`` are tested on is exactly what the recipes feed them.

::

    python -m pipelines.data.synthetic rt1   OUT [--episodes N] [--frames T] [--size HxW] [--seed S]
    python -m pipelines.data.synthetic csgo  OUT ...
    python -m pipelines.data.synthetic recon OUT ...

Layouts (the pixels are synthetic; keys, shapes, dtypes and names follow the real data):

* ``rt1``: ``OUT/fractal20220817_data/train_eps_00000000.npz`` ... as Vid2World's
  ``oxe_data_converter.py`` writes RT-1 (Open X-Embodiment ``fractal20220817_data``): ``image``
  (T, H, W, 3) uint8 and ``action`` (T, 13) float32, the RLDS action fields concatenated in the
  order ``base_displacement_vector`` (2), ``base_displacement_vertical_rotation`` (1),
  ``gripper_closedness_action`` (1), ``rotation_delta`` (3), ``terminate_episode`` (3),
  ``world_vector`` (3) (see ``RT1_ACTION_FIELDS``). A square (the gripper) moves with
  ``world_vector``. Real frames are 256x320.
* ``csgo``: ``OUT/1-200/hdf5_dm_july2021_1.hdf5`` ... as DIAMOND's ``process_csgo_tar_files.py``
  leaves the ``full_res`` folder: per frame ``frame_i_x`` (H, W, 3) uint8 **BGR**, ``frame_i_y``
  (51,) float64 multi-hot action (keys, clicks, mouse-x bin, mouse-y bin; see
  ``sources/csgo_hdf5.py``), ``frame_i_xaux`` (54,) and ``frame_i_helperarr`` (2,). The view pans
  with the mouse-x bin. Real frames are 150x280.
* ``recon``: ``OUT/jackal_2019-01-01-00-00-00_<e>_r00/0.jpg ... T-1.jpg + traj_data.pkl``
  (``{"position": (T, 2) float64, "yaw": (T,) float64}``), as visualnav-transformer's
  ``process_recon.py`` writes RECON. The robot drives along an arc and the scene shifts with it.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

from pipelines.data.video import encode_mp4

# --- generic content (also used by the tests) ----------------------------------------------------


def episode_frames(episode: int, n: int, h: int = 16, w: int = 24) -> np.ndarray:
    """Smooth frames whose content identifies (episode, frame): a gradient plus a moving level."""
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 4 + y * 2).astype(np.float64)
    frames = np.stack([base + 10 * episode + 3 * t for t in range(n)])
    rgb = np.stack([frames, frames * 0.5 + 40, 200 - frames * 0.5], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def episode_actions(episode: int, n: int, dim: int = 3) -> np.ndarray:
    """(n, dim) float32 actions that identify (episode, row): ``0.1 t + episode + column``."""
    t = np.arange(n, dtype=np.float32)[:, None]
    return (t * 0.1 + episode + np.arange(dim, dtype=np.float32)[None]).astype(np.float32)


def write_videos(root: Path, lengths=(20, 24, 18, 30), fps: float = 10.0, dim: int = 3, rows=None, h=16, w=24) -> Path:
    """``videos`` layout: mp4 + same-named .npy (T rows by default; ``rows='T-1'`` for one fewer)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for e, n in enumerate(lengths):
        (root / f"ep{e:02d}.mp4").write_bytes(encode_mp4(episode_frames(e, n, h, w), fps, crf=0))
        a = episode_actions(e, n, dim)
        np.save(root / f"ep{e:02d}.npy", a[:-1] if rows == "T-1" else a)
    return root


def _scene(h: int, w: int, episode: int, period: int = 16) -> np.ndarray:
    """(h, w, 3) float background: smooth colour gradients plus a soft grid, different per episode."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = 20 * (np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))
    r = 60 + 120 * x / max(w - 1, 1) + grid + 15 * episode
    g = 90 + 80 * y / max(h - 1, 1) - grid
    b = 140 - 60 * x / max(w - 1, 1) + 40 * np.cos(episode)
    return np.stack([r, g, b], axis=-1)


# --- RT-1: npz episodes --------------------------------------------------------------------------

RT1_ACTION_FIELDS = (  # (RLDS action field, width) in the order Vid2World's converter concatenates them
    ("base_displacement_vector", 2),
    ("base_displacement_vertical_rotation", 1),
    ("gripper_closedness_action", 1),
    ("rotation_delta", 3),
    ("terminate_episode", 3),
    ("world_vector", 3),
)
RT1_ACTION_DIM = sum(n for _, n in RT1_ACTION_FIELDS)  # 13


def write_npz(root: Path, lengths=(20, 24, 18, 30), dim: int = 3, h: int = 16, w: int = 24) -> Path:
    """``npz`` layout with ``image`` + ``action``: ``root/episode_<e>.npz`` from ``episode_frames/actions``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for e, n in enumerate(lengths):
        np.savez(root / f"episode_{e}.npz", image=episode_frames(e, n, h, w), action=episode_actions(e, n, dim))
    return root


def rt1_episode(episode: int, n: int, h: int = 256, w: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, h, w, 3) uint8, actions (n, 13) float32) of one synthetic RT-1 episode.

    ``world_vector`` is a smooth random walk; a gripper square moves with its x/y parts and gets
    darker when ``gripper_closedness_action`` closes it. ``terminate_episode`` is one-hot
    ``[0, 1, 0]`` (continue) except ``[1, 0, 0]`` on the last step.
    """
    rng = np.random.default_rng([seed, episode, 1])
    world = np.cumsum(rng.normal(0, 0.02, (n, 3)), axis=0).clip(-0.1, 0.1)
    rotation = np.cumsum(rng.normal(0, 0.03, (n, 3)), axis=0).clip(-0.3, 0.3)
    gripper = np.where(np.arange(n) >= n // 2, 1.0, -1.0)[:, None]  # open, then close halfway
    terminate = np.tile([0.0, 1.0, 0.0], (n, 1))
    terminate[-1] = [1.0, 0.0, 0.0]
    parts = {
        "base_displacement_vector": np.zeros((n, 2)),  # constant in RT-1 (the base does not move)
        "base_displacement_vertical_rotation": np.zeros((n, 1)),
        "gripper_closedness_action": gripper,
        "rotation_delta": rotation,
        "terminate_episode": terminate,
        "world_vector": world,
    }
    actions = np.concatenate([parts[k] for k, _ in RT1_ACTION_FIELDS], axis=1).astype(np.float32)

    scene = _scene(h, w, episode)
    side = max(2, min(h, w) // 5)
    pos = np.array([h / 2, w / 2]) + np.cumsum(world[:, :2], axis=0) * np.array([h, w]) * 2
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = scene.copy()
        cy, cx = (int(np.clip(p, 0, s - side)) for p, s in zip(pos[t], (h, w)))
        img[cy : cy + side, cx : cx + side] = [230, 230, 230] if gripper[t, 0] < 0 else [40, 40, 40]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, actions


def rt1(out: Path, episodes: int = 4, frames: int = 12, h: int = 32, w: int = 40, seed: int = 0) -> Path:
    """Write ``episodes`` RT-1 episodes as ``out/fractal20220817_data/train_eps_<i:08d>.npz``; returns that folder."""
    root = Path(out) / "fractal20220817_data"
    root.mkdir(parents=True, exist_ok=True)
    for e in range(episodes):
        image, action = rt1_episode(e, frames, h, w, seed)
        np.savez_compressed(root / f"train_eps_{e:08d}.npz", image=image, action=action)
    return root


# --- CS:GO: DIAMOND hdf5 -------------------------------------------------------------------------

CSGO_ACTION_DIM = 51  # 11 keys + 2 clicks + 23 mouse-x bins + 15 mouse-y bins
_MOUSE_X0, _MOUSE_Y0 = 13, 36  # first mouse-x / mouse-y one-hot index
_MOUSE_X_ZERO, _MOUSE_Y_ZERO = 11, 7  # the bins of a zero mouse move


def csgo_action(i: int, episode: int = 0) -> np.ndarray:
    """(51,) float64 multi-hot action for frame ``i``: key ``i % 11``, left click on odd frames, and
    one mouse-x / mouse-y bin (the zero-move bins for episode 0; shifted by ``episode`` otherwise)."""
    y = np.zeros(CSGO_ACTION_DIM)
    y[i % 11] = 1  # a key
    y[11] = i % 2  # left click on odd frames
    y[_MOUSE_X0 + (_MOUSE_X_ZERO + episode) % 23] = 1
    y[_MOUSE_Y0 + (_MOUSE_Y_ZERO + episode) % 15] = 1
    return y


def csgo_frame_bgr(i: int, h: int = 4, w: int = 6, episode: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 BGR frame; pixel (0, 0) of episode 0 is B, G, R = 10 + i, 100 + i, 200 + i
    (distinct per channel, so a channel swap is visible), plus a spatial ramp elsewhere."""
    y, x = np.mgrid[0:h, 0:w]
    ramp = 4 * x + 2 * y + 10 * episode
    base = np.array([10, 100, 200])  # B, G, R
    return ((base[None, None] + i + ramp[..., None]) % 256).astype(np.uint8)


def write_csgo_episode(
    path: Path,
    n: int = 3,
    h: int = 4,
    w: int = 6,
    episode: int = 0,
    skip=frozenset(),
    frames_bgr: np.ndarray | None = None,
    actions: np.ndarray | None = None,
) -> Path:
    """One DIAMOND CS:GO ``.hdf5`` episode of ``n`` frames; ``skip`` leaves out datasets by name.

    ``frames_bgr`` (n, H, W, 3) uint8 and ``actions`` (n, 51) default to ``csgo_frame_bgr`` /
    ``csgo_action``."""
    import h5py  # imported lazily: only this writer needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i in range(n):
            x = csgo_frame_bgr(i, h, w, episode) if frames_bgr is None else frames_bgr[i]
            y = csgo_action(i, episode) if actions is None else actions[i]
            if f"frame_{i}_x" not in skip:
                f.create_dataset(f"frame_{i}_x", data=x)
            if f"frame_{i}_y" not in skip:
                f.create_dataset(f"frame_{i}_y", data=np.asarray(y, np.float64))
            f.create_dataset(f"frame_{i}_xaux", data=np.zeros(54))
            f.create_dataset(f"frame_{i}_helperarr", data=np.zeros(2))
    return path


def csgo_episode(episode: int, n: int, h: int = 150, w: int = 280, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, h, w, 3) uint8 BGR, actions (n, 51)) of one synthetic CS:GO episode: random
    keys and clicks; the mouse-x bin pans a wide panorama left/right, mouse-y tilts it."""
    rng = np.random.default_rng([seed, episode, 2])
    actions = np.zeros((n, CSGO_ACTION_DIM))
    pan = np.zeros(n)
    tilt = np.zeros(n)
    for t in range(n):
        actions[t, rng.choice(11, size=rng.integers(0, 3), replace=False)] = 1  # 0-2 keys held
        actions[t, 11] = rng.random() < 0.2  # left click
        bx = int(np.clip(_MOUSE_X_ZERO + rng.integers(-3, 4), 0, 22))
        by = int(np.clip(_MOUSE_Y_ZERO + rng.integers(-1, 2), 0, 14))
        actions[t, _MOUSE_X0 + bx] = 1
        actions[t, _MOUSE_Y0 + by] = 1
        pan[t] = (pan[t - 1] if t else 0) + (bx - _MOUSE_X_ZERO) * max(1, w // 40)
        tilt[t] = np.clip((tilt[t - 1] if t else 0) + (by - _MOUSE_Y_ZERO) * max(1, h // 40), -h // 4, h // 4)
    world = _scene(h + h // 2, 3 * w, episode, period=max(8, w // 6))
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        x0 = int(pan[t]) % (2 * w)
        y0 = int(tilt[t]) + h // 4
        rgb = world[y0 : y0 + h, x0 : x0 + w]
        frames[t] = np.clip(rgb[..., ::-1], 0, 255).astype(np.uint8)  # stored BGR, like the screen grabs
    return frames, actions


def csgo(out: Path, episodes: int = 4, frames: int = 12, h: int = 30, w: int = 56, seed: int = 0) -> Path:
    """Write ``episodes`` CS:GO episodes as ``out/1-200/hdf5_dm_july2021_<k>.hdf5`` (k from 1); returns ``out``."""
    out = Path(out)
    for e in range(episodes):
        bgr, actions = csgo_episode(e, frames, h, w, seed)
        write_csgo_episode(out / "1-200" / f"hdf5_dm_july2021_{e + 1}.hdf5", frames, frames_bgr=bgr, actions=actions)
    return out


# --- RECON: trajectory folders -------------------------------------------------------------------


def recon_frame(i: int, h: int = 6, w: int = 8, episode: int = 0) -> np.ndarray:
    """(h, w, 3) uint8; the red channel is ``20 i`` everywhere (so the frame number survives png)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (20 * i) % 256
    img[..., 1] = (4 * x + 10 * episode) % 256
    img[..., 2] = (2 * y) % 256
    return img


def write_recon_traj(
    folder: Path,
    n: int,
    *,
    size: tuple[int, int] = (8, 6),
    fmt: str = "pkl",
    ext: str = "jpg",
    n_pos: int | None = None,
    frames: np.ndarray | None = None,
    position: np.ndarray | None = None,
    yaw: np.ndarray | None = None,
    episode: int = 0,
) -> Path:
    """One RECON trajectory folder: ``0.<ext> .. n-1.<ext>`` + ``traj_data.<fmt>`` (pkl | npz | json).

    ``size`` is (width, height); ``frames`` default to ``recon_frame``; ``position`` (m, 2) and
    ``yaw`` (m,) default to a straight drive along +x (1 m per frame, yaw 0) with ``m = n_pos or n``.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = recon_frame(i, size[1], size[0], episode) if frames is None else frames[i]
        Image.fromarray(img).save(folder / f"{i}.{ext}")
    m = n if n_pos is None else n_pos
    if position is None:
        position = np.stack([np.arange(m, dtype=float), np.zeros(m)], axis=1)
    if yaw is None:
        yaw = np.zeros(m)
    if fmt == "pkl":
        (folder / "traj_data.pkl").write_bytes(pickle.dumps({"position": position, "yaw": yaw}))
    elif fmt == "npz":
        np.savez(folder / "traj_data.npz", position=position, yaw=yaw)
    elif fmt == "json":
        (folder / "traj_data.json").write_text(json.dumps({"position": np.asarray(position).tolist(), "yaw": np.asarray(yaw).tolist()}))
    else:
        raise ValueError(f"fmt must be pkl, npz or json; got {fmt!r}")
    return folder


def recon_episode(episode: int, n: int, h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (n, h, w, 3) uint8 RGB, position (n, 2), yaw (n,)) of one synthetic RECON drive: an
    arc at ~0.5 m per frame (4 Hz); turning pans the view, driving forward scrolls the ground."""
    rng = np.random.default_rng([seed, episode, 3])
    turn = rng.uniform(-0.15, 0.15)
    speed = rng.uniform(0.3, 0.6)
    yaw = np.cumsum(np.full(n, turn)) - turn + rng.uniform(-np.pi, np.pi)
    step = speed * np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
    position = np.cumsum(step, axis=0) - step[0]
    sky = _scene(h, 3 * w, episode, period=max(8, w // 4))
    frames = np.empty((n, h, w, 3), np.uint8)
    yy = np.mgrid[0:h, 0:w][0]
    horizon = h // 2
    for t in range(n):
        x0 = int((yaw[t] - yaw[0]) * w / 1.5) % (2 * w)  # the view pans with the heading
        img = sky[:, x0 : x0 + w].copy()
        depth = np.maximum(yy - horizon + 1, 1)  # ground below the horizon: stripes that move closer
        stripes = 30 * np.sin(2 * np.pi * (40.0 / depth + t * speed))
        ground = yy >= horizon
        img[ground] = (np.array([90, 110, 70]) + stripes[ground][:, None])
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, position, yaw


def recon(out: Path, episodes: int = 4, frames: int = 12, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """Write ``episodes`` RECON trajectories as ``out/jackal_2019-01-01-00-00-00_<e>_r00/``; returns ``out``."""
    out = Path(out)
    for e in range(episodes):
        imgs, position, yaw = recon_episode(e, frames, h, w, seed)
        write_recon_traj(out / f"jackal_2019-01-01-00-00-00_{e}_r00", frames, frames=imgs, position=position, yaw=yaw, ext="jpg")
    return out


# --- command line --------------------------------------------------------------------------------

WRITERS = {"rt1": rt1, "csgo": csgo, "recon": recon}
DEFAULT_SIZES = {"rt1": (32, 40), "csgo": (30, 56), "recon": (24, 32)}  # small, with each dataset's aspect


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.data.synthetic",
        description="Write a small synthetic stand-in of RT-1 (npz), CS:GO (DIAMOND hdf5) or RECON "
        "(jpg + traj_data.pkl) in the real on-disk format.",
    )
    p.add_argument("format", choices=sorted(WRITERS))
    p.add_argument("out", type=Path, help="folder to write into (created)")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=12, help="frames per episode")
    p.add_argument("--size", default=None, help="HxW frames (default: small, with the dataset's aspect)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            p.error(f"--size must look like 32x40; got {args.size!r}")
    else:
        h, w = DEFAULT_SIZES[args.format]
    if args.episodes < 1 or args.frames < 2 or h < 1 or w < 1:
        p.error("need --episodes >= 1, --frames >= 2 and a positive --size")
    path = WRITERS[args.format](args.out, episodes=args.episodes, frames=args.frames, h=h, w=w, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
