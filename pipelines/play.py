"""A world model driven live: key bindings from its action names, one frame per step, recordings
that ``v2w rollout --actions`` replays frame for frame (docs/design.md §6).

:class:`PlaySession` holds one episode: the context frames, a :class:`~pipelines.sampler.RolloutStream`
and what was played. ``step(keys)`` turns the keys held now into the model's action, predicts the
next frame and decodes it; ``reset()`` returns to the context with the same noise seed, so an
episode is a deterministic function of its context, its actions and the settings. ``record(dir)``
writes it as a rollout artifact::

    DIR/
      context.npy     (C, H, W, 3) uint8, the context frames
      acts.npy        (N,) int64 action ids (discrete) or (N, A) float32 raw actions (continuous)
      frames.npy      (C + N, H, W, 3) uint8, context then the predicted frames
      video.mp4       the same, at the training fps
      rollout.json    kind "v2w-rollout", model, settings, keys per frame, ms per frame, and the
                      ``v2w rollout`` command that replays it

Key bindings (:class:`KeyBindings`) come from the action names the MODEL records
(``trained.action_names``): Atari names (NOOP, FIRE, UP, ..., DOWNLEFTFIRE) map to the arrow keys
(or WASD) and space, and held combinations to the combined action (UP + RIGHT -> UPRIGHT);
single-character names to that key; anything else to numbered keys. Continuous actions get one
key pair per dimension, -/+ one standard deviation of the training data.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.data.prepare import load_manifest
from pipelines.data.sources.csgo_hdf5 import ACTION_NAMES as CSGO_ACTION_NAMES
from pipelines.data.sources.csgo_hdf5 import encode_action as encode_csgo_action
from pipelines.data.shards import decode_sample, iter_shard
from pipelines.data.video import encode_mp4, resize_frames
from pipelines.errors import V2WError
from pipelines.fileio import atomic_dir, write_json_atomic
from pipelines.rollout import (
    action_names,
    check_size,
    make_roller,
    model_size,
    normalize_actions,
    read_frames,
    to_pixels,
    to_uint8,
)
from pipelines.sampler import RolloutConfig

ATARI_TOKENS = ("UP", "DOWN", "LEFT", "RIGHT", "FIRE")
ATARI_KEYS = {  # browser KeyboardEvent.key (letters lower-cased) -> Atari token
    "ArrowUp": "UP", "w": "UP", "ArrowDown": "DOWN", "s": "DOWN", "ArrowLeft": "LEFT", "a": "LEFT",
    "ArrowRight": "RIGHT", "d": "RIGHT", " ": "FIRE", "Enter": "FIRE",
}
NUMBERED_KEYS = list("1234567890qwertyuiopasdfghjklzxcvbnm")
CONTINUOUS_KEY_PAIRS = [("a", "d"), ("s", "w"), ("j", "l"), ("k", "i"), ("z", "x"), ("c", "v"), ("b", "n"),
                        ("f", "g"), ("h", "y"), ("r", "t"), ("u", "o"), ("q", "e")]  # (-, +) per dimension


# CS:GO's 51-d layout (pipelines/data/sources/csgo_hdf5.py; Vid2World-CSGO): keys set their bits, the
# mouse buttons theirs, the mouse movement (sent by the page with pointer lock) its bins; the arrows
# look around for a keyboard-only player, by these mouse steps (the dataset's units)
CSGO_KEYS = {"w": "w", "a": "a", "s": "s", "d": "d", " ": "space", "Control": "ctrl", "Shift": "shift",
             "1": "1", "2": "2", "3": "3", "r": "r", "MouseLeft": "click_left", "MouseRight": "click_right",
             "ArrowLeft": ("x", -30), "ArrowRight": ("x", 30), "ArrowUp": ("y", -10), "ArrowDown": ("y", 10)}


def normalize_key(key: str) -> str:
    """A browser key name as bindings use it: letters lower-case, everything else as sent."""
    return key.lower() if len(key) == 1 else key


def _atari_tokens(name: str) -> frozenset[str] | None:
    """"UPRIGHTFIRE" -> {UP, RIGHT, FIRE}; "NOOP" -> {}; None when the name is not an Atari action."""
    if name.upper() == "NOOP":
        return frozenset()
    parts = re.findall("|".join(ATARI_TOKENS), name.upper())
    return frozenset(parts) if parts and "".join(parts) == name.upper() else None


@dataclass
class KeyBindings:
    """How held keys become one action of the model."""

    kind: str  # "atari" | "keys" | "numbered" | "continuous"
    names: list[str]  # action names (discrete) or dimension names (continuous)
    source: str  # where the names came from: "trained" | "model" | "unnamed"
    keys: dict[str, object]  # key -> token (atari), action id (keys, numbered) or (dim, sign) (continuous)
    noop: int = 0  # the action when nothing is held (discrete)
    mean: list[float] = field(default_factory=list)  # continuous: the training data's mean and std
    std: list[float] = field(default_factory=list)

    @classmethod
    def for_model(cls, model) -> "KeyBindings":
        c = model.unet.config
        if not c.action_dim:
            raise V2WError("this MODEL takes no actions (causalized without --action-dim): nothing to play")
        names, source = action_names(model)
        if c.action_type == "continuous":
            stats = (model.meta.get("trained") or {}).get("action_stats") or {}
            mean = [float(v) for v in stats.get("mean", [0.0] * c.action_dim)]
            std = [float(v) for v in stats.get("std", [1.0] * c.action_dim)]
            keys = {}
            for d, (minus, plus) in enumerate(CONTINUOUS_KEY_PAIRS[: c.action_dim]):
                keys[minus], keys[plus] = (d, -1), (d, +1)
            return cls("continuous", names, source, keys, mean=mean, std=std)
        if list(names) == list(CSGO_ACTION_NAMES):
            return cls("csgo", names, source, dict(CSGO_KEYS))
        tokens = [_atari_tokens(n) for n in names] if source != "unnamed" else [None]
        if all(t is not None for t in tokens):
            noop = next((i for i, t in enumerate(tokens) if not t), 0)
            return cls("atari", names, source, dict(ATARI_KEYS), noop=noop)
        singles = [normalize_key(n) for n in names]
        if source != "unnamed" and all(len(k) == 1 for k in singles) and len(set(singles)) == len(singles):
            return cls("keys", names, source, {k: i for i, k in enumerate(singles)})
        return cls("numbered", names, source, {k: i for i, k in enumerate(NUMBERED_KEYS[: len(names)])})

    def action(self, held: list[str], mouse: tuple[float, float] = (0.0, 0.0)) -> tuple[object, str]:
        """Keys held now (oldest first) -> (raw action: id or float32 vector, label). Unknown keys are ignored.
        ``mouse``: movement since the last frame (CS:GO's layout only)."""
        held = [normalize_key(k) for k in held if normalize_key(k) in self.keys]
        if self.kind == "csgo":
            bound = [self.keys[k] for k in held]
            keys = [b for b in bound if isinstance(b, str) and not b.startswith("click_")]
            clicks = [b[len("click_"):] for b in bound if isinstance(b, str) and b.startswith("click_")]
            mx = float(mouse[0]) + sum(b[1] for b in bound if isinstance(b, tuple) and b[0] == "x")
            my = float(mouse[1]) + sum(b[1] for b in bound if isinstance(b, tuple) and b[0] == "y")
            a = encode_csgo_action(keys, clicks, mx, my)
            on = [self.names[i] for i in np.flatnonzero(a) if self.names[i] not in ("mouse_x_0", "mouse_y_0")]
            return a, " ".join(on) or "(none)"
        if self.kind == "continuous":
            a = np.array(self.mean, dtype=np.float32)
            for k in held:
                d, sign = self.keys[k]
                a[d] = self.mean[d] + sign * self.std[d]
            moved = sorted({f"{self.names[self.keys[k][0]]}{'+' if self.keys[k][1] > 0 else '-'}" for k in held})
            return a, " ".join(moved) or "(none)"
        if self.kind == "atari":
            tokens = [self.keys[k] for k in held]
            table = {_atari_tokens(n): i for i, n in enumerate(self.names)}
            while tokens:  # the combination if the game has it, else drop the oldest key
                i = table.get(frozenset(tokens))
                if i is not None:
                    return i, self.names[i]
                tokens = tokens[1:]
            return self.noop, self.names[self.noop]
        if not held:
            return self.noop, self.names[self.noop]
        i = self.keys[held[-1]]  # the newest key wins
        return i, self.names[i]

    def describe(self) -> list[tuple[str, str]]:
        """(keys, action) rows for the page."""
        if self.kind == "atari":
            return [("arrows / WASD", "UP DOWN LEFT RIGHT"), ("space", "FIRE"),
                    ("combinations", "UP+RIGHT -> UPRIGHT, UP+space -> UPFIRE, ..."), ("nothing held", self.names[self.noop])]
        if self.kind == "continuous":
            return [(f"{m} / {p}", f"{self.names[d]} -/+ 1 std") for d, (m, p) in enumerate(CONTINUOUS_KEY_PAIRS[: len(self.names)])]
        if self.kind == "csgo":
            return [("W A S D", "move"), ("space / Ctrl / Shift", "jump / crouch / walk"), ("1 2 3 / R", "weapons / reload"),
                    ("mouse (click the frame to lock it)", "look; buttons: fire, scope"), ("arrows", "look (keyboard)")]
        return [("space" if k == " " else k, self.names[i]) for k, i in self.keys.items()]


@dataclass
class PlaySettings:
    """``v2w play``'s sampling settings (fewer steps than ``v2w rollout`` by default: it must keep up)."""

    # None: a distilled student's own step count, else 1 (benchmarks/play.py: PSNR and action gap no worse than 10 steps)
    steps: int | None = None
    guidance: float = 1.0  # off: one U-Net pass per step (2.5 doubles the cost for a larger action gap)
    guidance_rescale: float = 0.7
    history_noise: int | None = None  # None: the sampling profile's (v2w 20; vid2world the 2nd-smallest DDIM step)
    window: int | None = None
    # the window moves this many frames at a time (one cache rebuild per move); None: min(4, window // 2).
    # benchmarks/play.py: at 1 step, 1 thread, 200 frames, a move of 1 spends 64 % of the time rebuilding
    # the cache (5.0 frames/s), of 4 17 % (8.8 frames/s)
    slide: int | None = None
    seed: int = 0
    precision: str = "fp32"  # bf16 on a GPU: faster passes (autocast)

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(steps=self.steps, guidance=self.guidance, guidance_rescale=self.guidance_rescale,
                             history_noise=self.history_noise, window=self.window, slide=self.slide or 1, seed=self.seed,
                             precision=self.precision)


def load_context(model, context: str | None = None, data: str | None = None, clip: str | None = None,
                 context_frames: int | None = None) -> tuple[np.ndarray, str]:
    """Context frames (C, H, W, 3) uint8 from an image / video / .npy, or from a DATA clip (``clip``:
    its key; default the first clip of the val split, else of train) -> (frames, description)."""
    n_ctx = context_frames or int(model.meta.get("context_frames", 1))
    resize = (model.meta.get("trained") or {}).get("resize", "crop")
    if (context is None) == (data is None):
        raise V2WError("pass one of --context IMG|VIDEO|NPY or --data DATA")
    if context is not None:
        frames, what = read_frames(context, model_size(model), resize), context
    else:
        manifest = load_manifest(data)
        frames = None
        for split in ("val", "train"):
            for sh in (manifest["splits"].get(split) or {}).get("shards", []):
                for raw in iter_shard(Path(data) / sh["name"]):
                    if clip is None or raw.get("__key__") == clip:
                        sample = decode_sample(raw, name=sh["name"])
                        frames, what = sample["frames"], f"{data} clip {sample['key']}"
                        break
                if frames is not None:
                    break
            if frames is not None:
                break
        if frames is None:
            raise V2WError(f"no clip {clip!r} in the val or train split" if clip else "no clips", path=data)
        size = model_size(model)
        if size is not None and tuple(frames.shape[1:3]) != tuple(size):
            frames = resize_frames(frames, size, resize)
    if frames.shape[0] < n_ctx:
        raise V2WError(f"{frames.shape[0]} context frame(s) but {n_ctx} needed (--context-frames)", path=context or data)
    check_size(model, frames.shape[1:3], context or data)
    return np.ascontiguousarray(frames[:n_ctx]), what


class PlaySession:
    """One player's episode on a shared model: step, reset, record."""

    def __init__(self, model, context: np.ndarray, settings: PlaySettings, model_name: str = "MODEL", device: str = "cpu"):
        self.model, self.context, self.settings, self.model_name, self.device = model, context, settings, model_name, device
        self.bindings = KeyBindings.for_model(model)
        if settings.steps is None:
            sampling = model.meta.get("sampling") or {}
            settings.steps = int(sampling["steps"]) if sampling.get("distilled") else 1
        self.roller = make_roller(model, settings.rollout_config())
        if settings.slide is None:  # the default move, once the window is known
            self.roller.cfg.slide = max(1, min(4, self.roller.window // 2))
        pixels = to_pixels(context, device)
        with torch.inference_mode():  # play never trains: no version counters, a few % faster than no_grad
            self.context_latents = model.encode_frames(pixels)
        self.context_pixels = pixels
        self.reset()

    def reset(self) -> np.ndarray:
        """Back to the context (same noise seed): returns the last context frame."""
        c = self.context.shape[0]
        zeros = torch.zeros(1, c, self.model.unet.config.action_dim, device=self.context_pixels.device)
        # context frames' action inputs are "no action" (0 after normalisation), as `v2w rollout --actions` uses
        self.stream = self.roller.stream(self.context_latents, self.context_pixels, zeros)
        self.frames: list[np.ndarray] = list(self.context)
        self.actions: list[object] = []
        self.labels: list[str] = []
        self.keys: list[list[str]] = []
        self.ms: list[float] = []
        return self.frames[-1]

    @property
    def step_index(self) -> int:
        """Predicted frames since the last reset."""
        return len(self.actions)

    def step(self, held_keys: list[str], mouse: tuple[float, float] = (0.0, 0.0)) -> dict:
        """One new frame for the keys held now (and the mouse movement since the last) -> {frame (H, W, 3)
        uint8, action, label, ms, index}."""
        t0 = time.perf_counter()
        raw, label = self.bindings.action(held_keys, mouse)
        c = self.model.unet.config
        if self.bindings.kind in ("continuous", "csgo"):
            row = torch.from_numpy(np.asarray(raw, dtype=np.float32))[None, None]
        else:
            row = torch.nn.functional.one_hot(torch.tensor([[int(raw)]]), c.action_dim).float()
        action_input = normalize_actions(self.model, row)[:, 0].to(self.context_pixels.device)
        if self.stream.buffered:  # Wan: this frame was predicted with the action held when its latent frame was
            raw, label = self.held
        self.held = (raw, label)
        with torch.inference_mode():  # the stream's cache is only ever touched here, so it may be inference tensors
            pixels = self.stream.next_frame(action_input)
        frame = to_uint8(pixels)[0, 0]
        ms = (time.perf_counter() - t0) * 1000
        self.frames.append(frame)
        self.actions.append(raw)
        self.labels.append(label)
        self.keys.append([normalize_key(k) for k in held_keys if normalize_key(k) in self.bindings.keys])
        self.ms.append(ms)
        return {"frame": frame, "action": raw if isinstance(raw, int) else [float(v) for v in raw], "label": label,
                "ms": ms, "index": self.step_index}

    def record(self, folder: str | Path) -> Path:
        """Write the episode since the last reset as a rollout artifact (module docstring); -> its folder."""
        folder = Path(folder)
        fps = float((self.model.meta.get("trained") or {}).get("fps") or 8)
        discrete = self.bindings.kind not in ("continuous", "csgo")  # ids; else one float row per frame
        # Wan predicts 4 frames at once: the frames made ahead used the last action too, so a replay (whole
        # latent frames) predicts them as well; acts.npy gets their rows
        used = self.actions + self.actions[-1:] * ((-len(self.actions)) % self.stream.frames_per_step)
        acts = (np.array(used, dtype=np.int64) if discrete else np.array(used, dtype=np.float32).reshape(len(used), -1))
        s = self.settings
        replay = (f"v2w rollout --model {self.model_name} --context {folder / 'context.npy'} --actions {folder / 'acts.npy'} "
                  f"--context-frames {self.context.shape[0]} --steps {s.steps} --guidance {s.guidance} --eta {self.roller.cfg.eta} "
                  f"--guidance-rescale {s.guidance_rescale} --history-noise {self.roller.history_noise} --seed {s.seed}"
                  + (f" --window {s.window}" if s.window else "") + f" --slide {self.roller.cfg.slide}"
                  + f" --out {folder / 'replay'}")
        with atomic_dir(folder) as tmp:
            np.save(tmp / "context.npy", self.context, allow_pickle=False)
            np.save(tmp / "acts.npy", acts, allow_pickle=False)
            np.save(tmp / "frames.npy", np.stack(self.frames), allow_pickle=False)
            (tmp / "video.mp4").write_bytes(encode_mp4(np.stack(self.frames), fps))
            write_json_atomic(tmp / "rollout.json", {
                "kind": "v2w-rollout",
                "format_version": 1,
                "made_by": "v2w play",
                "model": self.model_name,
                "context_frames": int(self.context.shape[0]),
                "horizon": self.step_index,
                "settings": asdict(self.roller.cfg),
                "window": self.roller.window,
                "actions": [a if isinstance(a, int) else [float(v) for v in a] for a in self.actions],
                "action_labels": self.labels,
                "keys": self.keys,
                "ms_per_frame": [round(m, 2) for m in self.ms],
                "replay": replay,
            })
        return folder
