"""``v2w rollout``: read contexts and actions, roll a world model forward, write the predictions.

Three jobs: one context with an actions file (:func:`run_interactive`), a prepared dataset's clips
in batches with optional shuffled actions and counterfactual branches (:func:`run_batch`), and one
context under every action (:func:`run_sweep`). The sampling itself (DDIM, causal action guidance,
history re-noising, the activation cache) is :mod:`pipelines.sampler` (docs/design.md §6).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.data.loader import ActionNormalizer
from pipelines.data.prepare import load_manifest
from pipelines.data.shards import decode_sample, iter_shard
from pipelines.data.sources.videos import load_npy
from pipelines.data.video import decode_video, encode_mp4, resize_frames
from pipelines.errors import V2WError
from pipelines.fileio import atomic_open, write_json_atomic
from pipelines.metrics.image import PSNR_CAP_DB, psnr_from_mse
from pipelines.models.action import shift_actions
from pipelines.official import open_model
from pipelines.sampler import Roller, RolloutConfig
from pipelines.wan_sampler import WanRoller


def settings(cfg: RolloutConfig) -> dict:
    return asdict(cfg)


# ==================================================================== files in, files out

CONTEXT_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class RolloutJob:
    model: str
    out: str
    context: str | None = None  # interactive: image / video / .npy of frames
    actions: str | None = None  # interactive: acts.npy, (H, A) or (H,) integer ids
    reference: str | None = None  # interactive: optional video/.npy of the true future, shown side by side
    context_frames: int | None = None  # default: the model's (1 when it does not say)
    size: tuple[int, int] | None = None  # resize the context to (H, W); default: the training resolution
    data: str | None = None  # batch: DATA folder
    split: str = "val"
    limit: int | None = None
    horizon: int | None = None
    shuffle_actions: bool = False
    batch_size: int = 4
    device: str = "cpu"
    action_sweep: bool = False  # one rollout of the context per action (run_sweep)
    sweep_actions: list[int] | None = None  # action sweep: only these ids (discrete) / dimensions (continuous)


def normalize_actions(model, actions: torch.Tensor, manifest: dict | None = None) -> torch.Tensor:
    """Raw continuous actions -> (a - mean) / std with the stats the model was trained with (the
    training data's manifest, recorded in MODEL at train time; else ``manifest``); one-hot unchanged.
    A model whose ``action_normalization`` is "none" (an official Vid2World import, and what is trained
    from it) takes actions as they are, as it was trained."""
    if model.meta.get("action_normalization") == "none":
        return actions.float()
    trained = model.meta.get("trained") or {}
    src = trained if trained.get("action_stats") else (manifest or {})
    if src.get("action_stats") and src.get("action_type", "continuous") == "continuous":
        norm = ActionNormalizer({"action_type": "continuous", "action_stats": src["action_stats"]})
        return torch.from_numpy(norm(actions.numpy().astype(np.float32)))
    return actions.float()


def _action_inputs(model, actions: torch.Tensor, manifest: dict | None = None) -> torch.Tensor:
    """Raw actions (B, N, A), row = action taken after a frame -> per-frame model inputs:
    normalised, then shifted (frame j gets row j-1, frame 0 zeros), as in training."""
    return shift_actions(normalize_actions(model, actions, manifest))


def read_actions_file(path: str, model, horizon: int | None = None) -> torch.Tensor:
    """acts.npy -> (H, A) float: continuous rows, or integer ids made one-hot for discrete models."""
    c = model.unet.config
    if not c.action_dim:
        raise V2WError("the model takes no actions (causalized without --action-dim)", path=path)
    a = load_npy(Path(path))
    if c.action_type == "discrete" and np.issubdtype(a.dtype, np.integer) and a.ndim in (1, 2) and (a.ndim == 1 or a.shape[1] == 1):
        ids = a.reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= c.action_dim):
            raise V2WError(f"action ids must be in [0, {c.action_dim}); got {ids.min()}..{ids.max()}", path=path)
        a = np.eye(c.action_dim, dtype=np.float32)[ids]
    if a.ndim != 2 or a.shape[1] != c.action_dim:
        want = f"(H, {c.action_dim})" + (" or (H,) integer ids" if c.action_type == "discrete" else "")
        raise V2WError(f"actions must be {want}, one row per predicted frame; got shape {a.shape}", path=path)
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise V2WError("actions must be finite numbers", path=path)
    if horizon is not None and a.shape[0] < horizon:
        raise V2WError(f"{a.shape[0]} action rows for a horizon of {horizon}", path=path)
    return torch.from_numpy(a.astype(np.float32))


def read_frames(path: str, size: tuple[int, int] | None, resize: str = "crop") -> np.ndarray:
    """An image, a video or an .npy of frames -> (T, H, W, 3) uint8 (resized when ``size``)."""
    from PIL import Image

    p = Path(path)
    if not p.exists():
        raise V2WError("context not found", path=p)
    if p.suffix.lower() in CONTEXT_IMAGE_EXT:
        try:
            frames = np.asarray(Image.open(p).convert("RGB"))[None]
        except OSError as e:
            raise V2WError(f"cannot read image ({e})", path=p) from None
    elif p.suffix.lower() == ".npy":
        frames = np.load(p, allow_pickle=False)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise V2WError(f"frames .npy must be uint8 (T, H, W, 3); got {frames.dtype} {frames.shape}", path=p)
    else:
        frames, _ = decode_video(p)
    if size is not None and tuple(frames.shape[1:3]) != tuple(size):
        frames = resize_frames(frames, size, resize)
    return frames


def to_pixels(frames_uint8, device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_uint8)).to(device).float().div(127.5).sub(1)
    return x.permute(3, 0, 1, 2)[None]


def to_uint8(x: torch.Tensor):
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8 numpy."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def model_size(model) -> tuple[int, int] | None:
    res = (model.meta.get("trained") or {}).get("resolution")
    return tuple(res) if res else None


def run_interactive(job: RolloutJob, cfg: RolloutConfig, on_frame=None) -> dict:
    """Context + acts.npy -> OUT/{video.mp4, frames.npy, grid.png, rollout.json}."""
    model = open_model(job.model, job.device)
    n_ctx = job.context_frames or int(model.meta.get("context_frames", 1))
    actions = read_actions_file(job.actions, model) if job.actions else None
    if actions is None:
        raise V2WError("--actions acts.npy is required: one action per frame to predict")
    horizon = job.horizon or actions.shape[0]
    resize = (model.meta.get("trained") or {}).get("resize", "crop")  # as the training data was prepared
    frames = read_frames(job.context, job.size or model_size(model), resize)
    if frames.shape[0] < n_ctx:
        raise V2WError(f"{frames.shape[0]} context frame(s) but --context-frames {n_ctx}", path=job.context)
    frames = frames[:n_ctx]
    check_size(model, frames.shape[1:3], job.context)
    pixels = to_pixels(frames, job.device)
    with torch.no_grad():
        latents = model.encode_frames(pixels)
        inputs = _per_frame_inputs(model, actions[:horizon][None], n_ctx)
        roller = make_roller(model, cfg)
        pred = roller.rollout(latents, pixels, inputs.to(job.device), horizon, on_frame=on_frame)
        video = roller.decode(pred)
    pred_u8 = to_uint8(video)[0]
    all_frames = np.concatenate([frames, pred_u8])
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = all_frames
    if job.reference:
        ref = read_frames(job.reference, tuple(frames.shape[1:3]), resize)[: len(all_frames)]
        if len(ref) < len(all_frames):
            ref = np.concatenate([ref, np.zeros((len(all_frames) - len(ref), *ref.shape[1:]), np.uint8)])
        shown = np.concatenate([ref, all_frames], axis=2)  # reference | prediction
    fps = float((model.meta.get("trained") or {}).get("fps") or 8)
    with atomic_open(out / "video.mp4") as f:
        f.write(encode_mp4(shown, fps))
    with atomic_open(out / "frames.npy") as f:
        np.save(f, all_frames, allow_pickle=False)
    _save_grid(all_frames, out / "grid.png", n_ctx)
    info = {
        "kind": "v2w-rollout",
        "format_version": 1,
        "model": job.model,
        "context": job.context,
        "actions": job.actions,
        "context_frames": n_ctx,
        "horizon": horizon,
        "settings": settings(roller.cfg),
        "window": roller.window,
        "seconds_per_frame": roller.timing,
        "mean_seconds_per_frame": float(np.mean(roller.timing)) if roller.timing else None,
    }
    write_json_atomic(out / "rollout.json", info)
    return info


def _per_frame_inputs(model, future_actions: torch.Tensor, n_ctx: int, context_actions: torch.Tensor | None = None):
    """Per-frame action inputs for C context + H predicted frames from the actions taken after
    each frame: context rows (unknown in interactive use: zeros) then the H future actions, where
    future action k is the one taken after frame C+k-1, i.e. the input of predicted frame k."""
    b, h, a = future_actions.shape
    future = normalize_actions(model, future_actions)
    # unknown context actions are "no action": 0 in the normalised space, as action dropout trains
    ctx = normalize_actions(model, context_actions) if context_actions is not None else torch.zeros(b, max(n_ctx - 1, 0), a)
    rows = torch.cat([ctx[:, : max(n_ctx - 1, 0)], future, torch.zeros(b, 1, a)], dim=1)  # after frames 0..C+H-1
    return shift_actions(rows)


def make_roller(model, cfg: RolloutConfig) -> Roller:
    """The sampler of the model's family: the U-Net's DDIM, or Wan's flow-matching Euler (pipelines/wan_sampler.py)."""
    return WanRoller(model, cfg) if getattr(model, "family", "") == "wan" else Roller(model, cfg)


def check_size(model, hw, path) -> None:
    factor = getattr(model, "size_factor", None) or model.vae_factor * 2 ** (len(model.unet.config.channel_mult) - 1)
    if hw[0] % factor or hw[1] % factor:
        raise V2WError(f"frames are {hw[0]}x{hw[1]}; the model needs multiples of {factor} (pass --size HxW)", path=path)


def _save_grid(frames, path, n_ctx: int, cols: int = 8) -> None:
    from PIL import Image

    t, h, w, _ = frames.shape
    rows = -(-t // cols)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        tile = f.copy()
        if i < n_ctx:  # context frames get a blue border
            tile[[0, -1]] = (40, 90, 220)
            tile[:, [0, -1]] = (40, 90, 220)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = tile
    Image.fromarray(grid).save(path)


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): visit the items in a random order and
    give each the next one's, a random n-cycle. Always one draw, unlike redrawing permutations
    until one happens to have no fixed point."""
    if n < 2:
        raise V2WError(f"a derangement needs at least 2 items. Got {n}")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def clip_seed(seed: int, key: str) -> int:
    """The noise seed of one clip in batch mode: the same for its factual, shuffled-actions and
    counterfactual rollouts (branches use their parent's key), whatever batch it lands in, so those
    rollouts differ only by their actions and --batch-size does not change the result."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63


def run_batch(job: RolloutJob, cfg: RolloutConfig, on_clip=None) -> dict:
    """Every factual clip of a DATA split from its true context and actions -> PRED/clips/<id>.npz
    (context, pred, ref uint8, actions), PRED/rollout.json; + PRED/shuffled/ with --shuffle-actions.

    Counterfactual branch clips (meta ``branch_of``, from ``prepare`` on recorded branches) are not
    rolled out as clips of their own: each branch of a rolled-out parent clip is rolled out from the
    PARENT's context under the branch's actions -> PRED/counterfactual/<branch>.npz (context, pred,
    ref = the emulator's branch frames, actions, parent, label), so the only difference from the
    parent's rollout is the actions."""
    import json

    model = open_model(job.model, job.device)
    manifest = load_manifest(job.data)
    split = manifest["splits"].get(job.split)
    if not split or not split["samples"]:
        raise V2WError(f"the {job.split} split is empty", path=job.data)
    c = model.unet.config
    if c.action_dim and manifest.get("action_dim") != c.action_dim:
        raise V2WError(f"data actions are {manifest.get('action_dim')}-d, the model's {c.action_dim}-d", path=job.data)
    n_ctx = job.context_frames or int(model.meta.get("context_frames", 1))
    horizon = job.horizon or manifest["clip_len"] - n_ctx
    if n_ctx + horizon > manifest["clip_len"]:
        raise V2WError(f"context {n_ctx} + horizon {horizon} > clip length {manifest['clip_len']}", path=job.data)
    check_size(model, manifest["resolution"], job.data)
    has_branches = bool(manifest.get("branches"))
    clips, branch_raw = [], []  # --limit counts factual clips; branches are decoded only when their parent is in
    for sh in split["shards"]:
        for raw in iter_shard(Path(job.data) / sh["name"]):
            meta = json.loads(raw["meta.json"]) if has_branches and "meta.json" in raw else {}
            if "branch_of" in meta:
                branch_raw.append((raw, sh["name"], meta))
            elif not job.limit or len(clips) < job.limit:
                clips.append(decode_sample(raw, name=sh["name"]))
            elif not has_branches:
                break
        if job.limit and len(clips) >= job.limit and not has_branches:
            break
    if not clips:
        raise V2WError(f"the {job.split} split has only counterfactual branch clips", path=job.data)
    parents = {cl["key"]: cl for cl in clips}
    branches = [decode_sample(raw, name=name) for raw, name, meta in branch_raw if meta["branch_of"] in parents]
    for b in branches:
        if n_ctx > b["meta"]["shared_frames"]:
            raise V2WError(
                f"--context-frames {n_ctx} > the {b['meta']['shared_frames']} frames branch clips share with their "
                f"parents ({b['key']}); counterfactual rollouts start from the parent's context: use --context-frames "
                f"<= {b['meta']['shared_frames']}", path=job.data)

    # each set: (key, context frames, actions (T, A) raw, reference future, extra arrays to save)
    ctx_ref = lambda fr: (fr[:n_ctx], fr[n_ctx : n_ctx + horizon])  # noqa: E731
    sets = {"clips": [(cl["key"], *ctx_ref(cl["frames"]), cl["actions"], {}) for cl in clips]}
    if job.shuffle_actions:
        if len(clips) < 2:
            raise V2WError("--shuffle-actions needs at least 2 clips", path=job.data)
        perm = derangement(len(clips), cfg.seed)  # no clip keeps its own actions
        sets["shuffled"] = [(k, ctx, ref, clips[perm[i]]["actions"], {})
                            for i, (k, ctx, ref, _, _) in enumerate(sets["clips"])]
    if branches:
        sets["counterfactual"] = [
            (b["key"], parents[b["meta"]["branch_of"]]["frames"][:n_ctx], b["frames"][n_ctx : n_ctx + horizon],
             b["actions"], {"parent": np.array(b["meta"]["branch_of"]), "label": np.array(b["meta"].get("branch", ""))})
            for b in branches
        ]
    out = Path(job.out)
    timings = []
    roller = make_roller(model, cfg)
    for name, items in sets.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for s in range(0, len(items), job.batch_size):
            chunk = items[s : s + job.batch_size]
            ctx_frames = np.stack([it[1] for it in chunk])  # (B, C, H, W, 3)
            acts = torch.from_numpy(np.stack([it[3] for it in chunk]).astype(np.float32))  # (B, T, A) raw
            pixels = torch.from_numpy(ctx_frames).to(job.device).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
            roller.row_seeds = [clip_seed(cfg.seed, str(it[4].get("parent", it[0]))) for it in chunk]
            with torch.no_grad():
                latents = model.encode_frames(pixels)
                inputs = _action_inputs(model, acts, manifest) if c.action_dim else None
                pred = roller.rollout(latents, pixels, inputs.to(job.device) if inputs is not None else None, horizon)
                video = to_uint8(roller.decode(pred))
            for i, (key, ctx, ref, actions, extra) in enumerate(chunk):
                with atomic_open(out / name / f"{key}.npz") as f:
                    np.savez(f, context=ctx, pred=video[i], ref=ref, actions=actions, **extra)
                if on_clip:
                    on_clip(name, s + i + 1, len(items))
        timings += roller.timing
        roller.timing = []
    info = {
        "kind": "v2w-rollout",
        "format_version": 1,
        "mode": "batch",
        "model": job.model,
        "data": job.data,
        "split": job.split,
        "clips": len(clips),
        "context_frames": n_ctx,
        "horizon": horizon,
        "shuffled": job.shuffle_actions,
        "counterfactual": len(branches),
        "noise": "per clip: clip_seed(seed, clip key); branches use their parent's",
        "resolution": manifest["resolution"],
        "fps": manifest.get("fps"),
        "settings": settings(cfg),
        "window": roller.window,
        "mean_seconds_per_frame": float(np.mean(timings)) / max(job.batch_size, 1) if timings else None,
    }
    write_json_atomic(out / "rollout.json", info)
    return info


# ==================================================================== action sweep

SWEEP_HORIZON = 6  # default frames per row
SWEEP_MIN_TILE = 96  # px: tiles are upscaled (nearest neighbour) to at least this height
SWEEP_VIDEO_FPS = 4.0  # the sweep video plays slowly: it is for comparing rows, not for watching motion


def action_names(model) -> tuple[list[str], str]:
    """The model's action names and where they came from: ``meta["trained"]["action_names"]``
    ("trained"), else ``meta["action_names"]`` ("model"), else "action 0", "action 1", ... ("unnamed")."""
    a = model.unet.config.action_dim or 0
    trained = (model.meta.get("trained") or {}).get("action_names")
    for source, names in (("trained", trained), ("model", model.meta.get("action_names"))):
        if names and len(names) == a:
            return [str(n) for n in names], source
    return [f"action {i}" for i in range(a)], "unnamed"


def sweep_rows(model, horizon: int, ids: list[int] | None = None) -> tuple[list[str], np.ndarray, dict]:
    """The rows of an action sweep -> (labels, raw actions (R, H, A) float32, description).

    Discrete models: one row per action id, one-hot, held for all H frames. Continuous models: two
    rows per dimension d, the mean action with d at mean - std and at mean + std, in raw units from
    the training stats (``meta["trained"]["action_stats"]``); without stats the actions are taken
    as normalised already and the rows are 0 with d at -1 / +1. ``ids``: only these ids / dimensions."""
    c = model.unet.config
    a = c.action_dim or 0
    if not a:
        raise V2WError("the model takes no actions (causalized without --action-dim): there is nothing to sweep")
    names, source = action_names(model)
    ids = list(range(a)) if ids is None else [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < a]
    if bad or not ids:
        what = "action ids" if c.action_type == "discrete" else "action dimensions"
        raise V2WError(f"--sweep-actions must be {what} in [0, {a}); got {bad or 'none'}")
    if c.action_type == "discrete":
        labels, rows, units = [names[i] for i in ids], np.eye(a, dtype=np.float32)[ids], "one-hot"
    else:
        stats = (model.meta.get("trained") or {}).get("action_stats") or {}
        if stats.get("mean") is not None and stats.get("std") is not None:
            mean, std, units = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32), "raw"
            if mean.shape != (a,) or std.shape != (a,):
                raise V2WError(f"the model's action_stats are {mean.shape} but its actions {a}-d")
        else:
            mean, std, units = np.zeros(a, np.float32), np.ones(a, np.float32), "normalised"
        labels, rows = [], []
        for i in ids:
            for sign in (-1, 1):
                row = mean.copy()
                row[i] += sign * std[i]
                rows.append(row)
                labels.append(f"{names[i]} {sign:+d}σ")
        rows = np.stack(rows)
    actions = np.repeat(rows[:, None], horizon, axis=1).astype(np.float32)
    return labels, actions, {"action_type": c.action_type, "units": units, "ids": ids, "names": source}


def _explicit_rows(model, rows, horizon: int) -> tuple[list[str], np.ndarray, dict]:
    """run_sweep(rows=[(label, action), ...]): each action (A,) held for H frames, or (H, A); raw units."""
    a = model.unet.config.action_dim or 0
    labels, acts = [], []
    for label, act in rows:
        act = np.asarray(act, np.float32)
        act = np.repeat(act[None], horizon, axis=0) if act.ndim == 1 else act[:horizon]
        if act.shape != (horizon, a) or not np.isfinite(act).all():
            raise V2WError(f"sweep row {label!r}: actions must be finite, ({a},) or ({horizon}, {a}); got {act.shape}")
        labels.append(str(label))
        acts.append(act)
    if not acts:
        raise V2WError("no sweep rows")
    about = {"action_type": model.unet.config.action_type, "units": "raw", "ids": None, "names": "given"}
    return labels, np.stack(acts), about


def sweep_spread(preds: np.ndarray) -> dict | None:
    """preds (R, H, h, w, 3) uint8 -> the pixel PSNR between every pair of rows at every horizon:
    the mean over pairs per horizon, its mean over horizons, and per row the mean against the others.
    Lower = the actions change the prediction more; identical frames count as PSNR_CAP_DB."""
    r, h = preds.shape[:2]
    if r < 2:
        return None
    x = preds.reshape(r, h, -1).astype(np.float64)
    psnr = np.zeros((h, r, r))
    for i in range(r):
        mse = ((x[i : i + 1] - x) ** 2).mean(axis=2).T  # (H, R)
        psnr[:, i] = psnr_from_mse(mse)
    iu = np.triu_indices(r, 1)
    per_h = psnr[:, iu[0], iu[1]].mean(axis=1)
    off = ~np.eye(r, dtype=bool)
    per_row = psnr[:, off].reshape(h, r, r - 1).mean(axis=(0, 2))  # each row against every other row
    return {
        "psnr_db": float(per_h.mean()),
        "per_horizon_psnr_db": [float(v) for v in per_h],
        "per_row_psnr_db": [float(v) for v in per_row],
        "pairs": len(iu[0]),
        "what": f"pixel PSNR between the rows' predictions (mean over row pairs); lower = the actions change the "
        f"prediction more; identical frames count as {PSNR_CAP_DB:g} dB",
    }


def run_sweep(job: RolloutJob, cfg: RolloutConfig, rows=None, on_frame=None) -> dict:
    """One context rolled out once per action -> OUT/{sweep.png, sweep.mp4, sweep.npz, rollout.json}.

    The rows (``sweep_rows``; ``job.sweep_actions`` picks ids / dimensions; or ``rows`` =
    [(label, raw action (A,) or (H, A)), ...]) share the context, the seed and the noise
    (``Roller.row_seeds``), so they differ only by their actions; they run batched,
    ``job.batch_size`` rows per forward (the chunking changes the result only by float rounding). Context
    actions are unknown: zeros, as in run_interactive. ``on_frame(k, seconds, total)`` counts
    predicted frames over all chunks."""
    if job.actions:
        raise V2WError("--action-sweep makes its own actions: drop --actions (or drop --action-sweep)")
    if not job.context:
        raise V2WError("--action-sweep needs --context: the image, video or .npy of frames to start every row from")
    model = open_model(job.model, job.device)
    n_ctx = job.context_frames or int(model.meta.get("context_frames", 1))
    horizon = job.horizon or (8 if getattr(model, "family", "") == "wan" else SWEEP_HORIZON)  # Wan: whole latent frames
    if horizon < 1:
        raise V2WError(f"--horizon must be >= 1. Got {horizon}")
    if rows is None:
        labels, acts, about = sweep_rows(model, horizon, job.sweep_actions)
    else:
        labels, acts, about = _explicit_rows(model, rows, horizon)
    resize = (model.meta.get("trained") or {}).get("resize", "crop")
    frames = read_frames(job.context, job.size or model_size(model), resize)
    if frames.shape[0] < n_ctx:
        raise V2WError(f"{frames.shape[0]} context frame(s) but --context-frames {n_ctx}", path=job.context)
    frames = frames[:n_ctx]
    check_size(model, frames.shape[1:3], job.context)
    t_start = time.perf_counter()
    pixels = to_pixels(frames, job.device)
    n_rows, bs = len(labels), max(1, job.batch_size)
    chunks = -(-n_rows // bs)
    roller = make_roller(model, cfg)
    preds = []
    with torch.no_grad():
        latents = model.encode_frames(pixels)
        inputs = _per_frame_inputs(model, torch.from_numpy(acts), n_ctx).to(job.device)
        for ci, s in enumerate(range(0, n_rows, bs)):
            n = min(bs, n_rows - s)
            roller.row_seeds = [cfg.seed] * n  # the same noise in every row: rows differ only by their actions

            def progress(k, seconds, total, ci=ci):
                on_frame(ci * total + k, seconds, chunks * total)

            pred = roller.rollout(
                latents.expand(n, -1, -1, -1, -1).contiguous(),
                pixels.expand(n, -1, -1, -1, -1).contiguous(),
                inputs[s : s + n],
                horizon,
                on_frame=progress if on_frame else None,
            )
            preds.append(to_uint8(roller.decode(pred)))
    pred_u8 = np.concatenate(preds)  # (R, H, h, w, 3)
    all_frames = np.concatenate([np.repeat(frames[None], n_rows, axis=0), pred_u8], axis=1)  # (R, C+H, h, w, 3)
    seconds = time.perf_counter() - t_start
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "sweep.npz") as f:  # the frames first: the slow part is done
        np.savez(f, frames=all_frames, actions=acts, labels=np.asarray(labels, dtype=str))
    grid = _sweep_canvas(all_frames, labels, n_ctx, list(range(all_frames.shape[1])))
    _save_png(grid, out / "sweep.png")
    video = np.stack([_sweep_canvas(all_frames, labels, n_ctx, [k]) for k in range(all_frames.shape[1])])
    with atomic_open(out / "sweep.mp4") as f:
        f.write(encode_mp4_even(video, SWEEP_VIDEO_FPS))
    rollout_seconds = float(sum(roller.timing))
    info = {
        "kind": "v2w-rollout",
        "format_version": 1,
        "mode": "action-sweep",
        "model": job.model,
        "context": job.context,
        "context_frames": n_ctx,
        "horizon": horizon,
        "rows": n_rows,
        "labels": labels,
        "action_names": about["names"],  # trained | model | unnamed | given
        "action_type": about["action_type"],
        "action_units": about["units"],  # one-hot | raw (mean +- std from the training stats) | normalised
        "sweep_actions": about["ids"],
        "same_noise_every_row": True,
        "settings": settings(roller.cfg),
        "window": roller.window,
        "resolution": list(frames.shape[1:3]),
        "spread": sweep_spread(pred_u8),
        "timings": {
            "seconds": seconds,
            "rollout_seconds": rollout_seconds,
            "batch_size": bs,
            "chunks": chunks,
            "seconds_per_batched_frame": roller.timing,
        },
        "mean_seconds_per_frame": rollout_seconds / (n_rows * horizon),  # per row and predicted frame
        "files": {"grid": "sweep.png", "video": "sweep.mp4", "frames": "sweep.npz"},
        "video_fps": SWEEP_VIDEO_FPS,
    }
    write_json_atomic(out / "rollout.json", info)
    return info


def encode_mp4_even(frames: np.ndarray, fps: float) -> bytes:
    """encode_mp4 after padding (T, H, W, 3) frames with white to even H and W."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    return encode_mp4(frames, fps)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_open(path) as f:
        Image.fromarray(image).save(f, format="PNG")


def _label_font():
    """PIL's built-in font (no downloads) and whether it has a σ glyph (else labels say "sd")."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    try:  # a missing glyph renders as the same box as an unassigned code point
        has_sigma = font.getmask("σ").tobytes() != font.getmask("\ue000").tobytes()
    except Exception:  # noqa: BLE001 - a bitmap font without unicode support
        has_sigma = False
    return font, has_sigma


def _sweep_canvas(frames: np.ndarray, labels: list[str], n_ctx: int, cols: list[int]) -> np.ndarray:
    """frames (R, T, h, w, 3) -> an image with a header row ("ctx", "+1", ...), a label margin and
    the columns ``cols`` of every row; tiles upscaled (nearest) to >= SWEEP_MIN_TILE px tall,
    context tiles with a blue border."""
    from PIL import Image, ImageDraw

    r, _, h, w, _ = frames.shape
    scale = max(1, -(-SWEEP_MIN_TILE // h))
    th, tw, gap, pad = h * scale, w * scale, 2, 6
    font, has_sigma = _label_font()
    shown = [lab if has_sigma else lab.replace("σ", "sd") for lab in labels]
    shown = [lab if len(lab) <= 28 else lab[:25] + "..." for lab in shown]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = int(max(probe.textlength(lab, font=font) for lab in shown)) + 2 * pad
    text_h = probe.textbbox((0, 0), "Ag+1", font=font)[3]
    header = text_h + 2 * pad
    width = margin + len(cols) * (tw + gap) + gap
    height = header + r * (th + gap) + gap
    canvas = np.full((height, width, 3), 255, np.uint8)
    bw = max(1, scale)  # border width
    for i in range(r):
        y = header + gap + i * (th + gap)
        for j, c in enumerate(cols):
            tile = frames[i, c].repeat(scale, axis=0).repeat(scale, axis=1)
            if c < n_ctx:
                tile = tile.copy()
                for edge in (np.s_[:bw], np.s_[-bw:], np.s_[:, :bw], np.s_[:, -bw:]):
                    tile[edge] = (40, 90, 220)
            x = margin + gap + j * (tw + gap)
            canvas[y : y + th, x : x + tw] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(cols):
        name = ("ctx" if n_ctx == 1 else f"ctx {c + 1}") if c < n_ctx else f"+{c - n_ctx + 1}"
        x = margin + gap + j * (tw + gap) + (tw - draw.textlength(name, font=font)) / 2
        draw.text((x, pad), name, fill=(40, 90, 220) if c < n_ctx else (0, 0, 0), font=font)
    for i, lab in enumerate(shown):
        y = header + gap + i * (th + gap) + (th - text_h) / 2
        draw.text((pad, y), lab, fill=(0, 0, 0), font=font)
    return np.asarray(img)
