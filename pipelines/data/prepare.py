"""``v2w prepare``: raw video+action logs -> sharded WebDataset clips + manifest (docs/design.md §7).

Steps, per run:
  1. detect each source's format and list its episodes (cheap, nothing decoded);
  2. split *by episode* into train/val with ``seed`` (an episode never lands in both; recorded
     counterfactual branches, see ``pipelines.data.sample``, follow their parent episode);
  3. per episode, in ``workers`` processes: decode, validate actions, resample fps, resize +
     center crop, cut clips of ``clip_len`` frames every ``stride`` frames, encode;
  4. write shards in a fixed order into ``OUT.partial/``, recording after each finished shard
     its sha256 and a snapshot of the running statistics in ``progress.json``;
  5. write ``manifest.json`` and rename ``OUT.partial`` to ``OUT``.

An interrupted run resumes from ``OUT.partial`` when re-run with the same options and inputs:
finished shards whose sha256 still matches are kept and their episodes are not decoded again.
``OUT`` itself is only replaced by the final rename, so a failed run leaves it untouched.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines import __version__
from pipelines.data.actions import (
    RunningStats,
    resample_actions,
    resample_frame_indices,
    to_action_matrix,
    valid_rows_after_resample,
)
from pipelines.data.episode import ACTION_KINDS, EpisodeRef, SourceOptions
from pipelines.data.shards import SPLITS, ShardWriter, clip_key, npy_bytes, shard_name
from pipelines.data.sources import detect_format, reader
from pipelines.data.sources.recon import ego_actions
from pipelines.data.video import RESIZE_MODES, decode_video, encode_mp4, psnr_uint8, resize_frames
from pipelines.errors import V2WError
from pipelines.fileio import read_artifact, read_json, replace_dir, sha256_file, write_json_atomic

MANIFEST_KIND = "v2w-dataset"
FORMAT_VERSION = 1


@dataclass
class PrepareConfig:
    sources: list[str]  # files or folders, one format each
    out: str  # DATA folder to create (replaced only when the run succeeds)
    format: str | None = None  # force a reader; None = auto-detect per source
    size: tuple[int, int] | None = None  # (H, W) output frames; None = keep the source's
    resize: str = "crop"  # crop: cover (H, W) keeping aspect, center crop; stretch: per-axis scale
    fps: float | None = None  # output frame rate; None = keep the source's
    clip_len: int = 16  # frames per clip (docs/design.md §5: RT-1 16, CS:GO 16, RECON 20)
    stride: int | None = None  # frames between clip starts; None = clip_len (no overlap)
    val_fraction: float = 0.1  # fraction of *episodes* held out
    seed: int = 0  # split and episode order
    shard_size: int = 256  # clips per shard
    num_actions: int | None = None  # integer action ids -> one-hot of this size
    action_kind: str | None = None  # delta|absolute|discrete when the source does not say
    store: str = "mp4"  # mp4 (H.264 4:4:4, PSNR recorded) or npy (exact)
    crf: int = 10  # x264 quality for mp4 (0 = lossless, larger = smaller files)
    workers: int = 1  # decoding processes
    skip_bad: bool = False  # skip unreadable episodes (listed in the manifest) instead of failing
    image_key: str | None = None
    action_keys: tuple[str, ...] | None = None
    camera: str | None = None
    src_fps: float | None = None

    def __post_init__(self) -> None:  # every setting checked once, on construction
        if not self.sources:
            raise V2WError("no sources given; pass at least one file or folder")
        if self.clip_len < 1:
            raise V2WError(f"--clip-len must be >= 1. Got {self.clip_len}")
        if self.stride is not None and self.stride < 1:
            raise V2WError(f"--stride must be >= 1. Got {self.stride}")
        if not 0 <= self.val_fraction < 1:
            raise V2WError(f"--val-fraction must be in [0, 1). Got {self.val_fraction}")
        if self.shard_size < 1:
            raise V2WError(f"--shard-size must be >= 1. Got {self.shard_size}")
        if self.resize not in RESIZE_MODES:
            raise V2WError(f"--resize must be one of {{{', '.join(RESIZE_MODES)}}}. Got {self.resize!r}")
        if self.store not in ("mp4", "npy"):
            raise V2WError(f"--store must be one of {{mp4, npy}}. Got {self.store!r}")
        if self.action_kind is not None and self.action_kind not in ACTION_KINDS:
            raise V2WError(f"--action-kind must be one of {{{', '.join(ACTION_KINDS)}}}. Got {self.action_kind!r}")
        for name in ("fps", "src_fps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise V2WError(f"--{name.replace('_', '-')} must be > 0. Got {v}")
        if self.num_actions is not None and self.num_actions < 1:
            raise V2WError(f"--num-actions must be >= 1. Got {self.num_actions}")

    def source_options(self) -> SourceOptions:
        return SourceOptions(self.image_key, self.action_keys, self.camera, self.src_fps)


@dataclass
class ClipSample:
    key: str
    files: dict[str, bytes]
    actions: np.ndarray  # (T, A) as stored
    valid: np.ndarray  # (T,) bool, False for padded rows
    psnr: float | None


@dataclass
class EpisodeResult:
    ref: EpisodeRef
    clips: list[ClipSample]
    fps: float | None
    hw: tuple[int, int]
    action_dim: int
    action_kind: str | None
    action_names: list[str] | None
    frames: int  # after resampling


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class PrepareResult:
    out: Path
    manifest: dict
    seconds: float
    resumed_shards: int = 0
    frames_decoded: int = 0


# ---------------------------------------------------------------- per-episode work (in workers)


def _process_episode(ref: EpisodeRef, cfg: PrepareConfig, skip_clips: int) -> EpisodeResult | Failure:
    try:
        return _process_episode_unsafe(ref, cfg, skip_clips)
    except V2WError as e:
        return Failure(e.path or ref.path, str(e).removeprefix(f"{e.path}: ") if e.path else str(e))
    except Exception as e:  # a decoder library failing in an unforeseen way is still the file's fault
        return Failure(ref.path, f"unexpected {type(e).__name__}: {e}")


def _process_episode_unsafe(ref: EpisodeRef, cfg: PrepareConfig, skip_clips: int) -> EpisodeResult:
    ep = reader(ref.format).load_episode(ref, cfg.source_options())
    frames = ep.frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise V2WError(f"frames must be (T, H, W, 3) uint8; got {frames.dtype} {frames.shape}", path=ref.path)
    n = frames.shape[0]
    if n == 0:
        raise V2WError("episode has no frames", path=ref.path)
    actions, real_rows = to_action_matrix(ep.actions, n, cfg.num_actions, ep.actions_path or ref.path)
    if ep.action_names is not None and len(ep.action_names) != actions.shape[1]:
        raise V2WError(
            f"{len(ep.action_names)} action names for {actions.shape[1]}-d actions", path=ep.actions_path or ref.path
        )
    kind = "discrete" if cfg.num_actions else (ep.action_kind or cfg.action_kind)
    fps = ep.fps
    valid = np.arange(n) < real_rows

    # 1. frame rate
    if cfg.fps is not None and (fps is None or abs(fps - cfg.fps) > 1e-6 * cfg.fps):
        if fps is None:
            raise V2WError("the source has no frame rate, so --fps cannot resample it; pass --src-fps", path=ref.path)
        if ref.branch is not None:  # check_branches catches this from branches.json; the container disagreed
            raise V2WError(f"--fps {cfg.fps} would resample this {fps} fps branch clip and shift it against its "
                           "parent; drop --fps, or move branches.json and the branch videos away",
                           path=ref.branch["file"])
        if kind is None:
            raise V2WError(
                "resampling fps must know how to aggregate actions; pass --action-kind delta (summed) "
                "or absolute (last value)",
                path=ref.path,
            )
        idx = resample_frame_indices(n, fps, cfg.fps)
        if "position" in ep.extra_meta and "yaw" in ep.extra_meta:
            # poses are exact at every frame: recompute ego-frame deltas between kept frames
            pos, yaw = np.asarray(ep.extra_meta["position"]), np.asarray(ep.extra_meta["yaw"])
            new = ego_actions(pos[idx], yaw[idx]).astype(np.float32)
            actions = np.concatenate([new, np.zeros((1, new.shape[1]), np.float32)])
            valid = np.arange(len(idx)) < len(idx) - 1
        else:
            actions = resample_actions(actions, fps, cfg.fps, len(idx), "delta" if kind == "delta" else "last")
            valid = valid_rows_after_resample(len(idx), real_rows, fps, cfg.fps)
        frames, fps = frames[idx], cfg.fps

    # 2. resize (center crop or stretch)
    if cfg.size is not None:
        frames = resize_frames(frames, cfg.size, cfg.resize)

    # 3. clips
    t, stride = cfg.clip_len, cfg.stride or cfg.clip_len
    starts = list(range(0, frames.shape[0] - t + 1, stride))
    clips = []
    for i, s in enumerate(starts):
        if i < skip_clips:
            continue
        clip_frames = np.ascontiguousarray(frames[s : s + t])
        clip_actions = np.ascontiguousarray(actions[s : s + t])
        meta = {
            "source": ref.path,
            "format": ref.format,
            "episode_id": ref.episode_id,
            "start_frame": s,
            "num_frames": t,
            "fps": fps,
            "real_action_rows": int(valid[s : s + t].sum()),
        }
        if ref.branch is not None and s == 0:  # a branch episode is exactly one clip
            meta |= _branch_meta(ref.branch)
        files = {"actions.npy": npy_bytes(clip_actions), "meta.json": json.dumps(meta).encode()}
        psnr = None
        if cfg.store == "mp4":
            files["frames.mp4"] = encode_mp4(clip_frames, fps or 30.0, crf=cfg.crf)
            back, _ = decode_video(files["frames.mp4"], name=f"{ref.path} (re-encoded clip {s})")
            if back.shape != clip_frames.shape:
                raise V2WError(f"mp4 round trip changed clip shape {clip_frames.shape} -> {back.shape}", path=ref.path)
            psnr = min(psnr_uint8(clip_frames, back), 100.0)
        else:
            files["frames.npy"] = npy_bytes(clip_frames)
        clips.append(ClipSample(clip_key(ref.episode_id, s), files, clip_actions, valid[s : s + t], psnr))
    return EpisodeResult(
        ref, clips, fps, tuple(frames.shape[1:3]), actions.shape[1], kind, ep.action_names, int(frames.shape[0])
    )


def _branch_meta(branch: dict) -> dict:
    """meta.json fields of a branch clip: the key of its parent's clip covering the same frames
    (the first ``shared_frames`` identical, the rest played under other actions) and its label."""
    return {
        "branch_of": clip_key(branch["parent"], branch["start"]),
        "branch": branch["label"],
        "shared_frames": branch["shared_frames"],
        "branch_start": branch["start"],
    }


# ---------------------------------------------------------------- listing and splitting


def list_sources(cfg: PrepareConfig) -> tuple[list[EpisodeRef], list[dict]]:
    """All episode refs (ids made unique across sources) and a summary per source."""
    refs, summary, seen = [], [], {}
    multi = len(cfg.sources) > 1
    for i, src in enumerate(cfg.sources):
        path = Path(src)
        if not path.exists():
            raise V2WError("source not found", path=src)
        fmt = cfg.format or detect_format(path)
        found = reader(fmt).list_episodes(path, cfg.source_options())
        if not found:
            raise V2WError(f"no episodes found (format {fmt})", path=src)
        renamed = {}  # the reader's id -> the dataset's, for branch parents
        for ref in found:
            eid = f"src{i}/{ref.episode_id}" if multi else ref.episode_id
            key = clip_key(eid, 0)
            if key in seen:  # ids that sanitise to the same key
                eid = f"{eid}~{len(seen)}"
            seen[clip_key(eid, 0)] = True
            renamed[ref.episode_id] = eid
            refs.append(EpisodeRef(ref.format, ref.path, eid, ref.key, ref.branch))
        for j in range(len(refs) - len(found), len(refs)):
            b = refs[j].branch
            if b is not None:
                if b["parent"] not in renamed:
                    raise V2WError(f"branch {Path(refs[j].path).name} names parent {b['parent']!r}, which is not "
                                   "among the episodes; re-record the branches or remove the file", path=b["file"])
                r = refs[j]
                refs[j] = EpisodeRef(r.format, r.path, r.episode_id, r.key, {**b, "parent": renamed[b["parent"]]})
        n_branch = sum(r.branch is not None for r in found)
        summary.append({"path": str(src), "format": fmt, "episodes": len(found) - n_branch}
                       | ({"branch_episodes": n_branch} if n_branch else {}))
    check_branches(cfg, refs)
    return refs, summary


def check_branches(cfg: PrepareConfig, refs: list[EpisodeRef]) -> None:
    """A branch clip is only a counterfactual of its parent's clip when the prepared clip covers
    the recorded one exactly: same clip length, no frame-rate resampling."""
    for r in refs:
        b = r.branch
        if b is None:
            continue
        if b["clip_len"] != cfg.clip_len:
            raise V2WError(
                f"branches were recorded as clips of {b['clip_len']} frames but --clip-len is {cfg.clip_len}; "
                f"prepare with --clip-len {b['clip_len']}, or move branches.json and the branch videos away",
                path=b["file"],
            )
        src_fps = cfg.src_fps or b.get("fps")
        if cfg.fps is not None and (src_fps is None or abs(src_fps - cfg.fps) > 1e-6 * cfg.fps):
            raise V2WError(
                f"--fps {cfg.fps} would resample the {src_fps} fps branch clips and shift their frames against "
                "the parents'; drop --fps, or move branches.json and the branch videos away",
                path=b["file"],
            )


def split_episodes(refs: list[EpisodeRef], val_fraction: float, seed: int) -> dict[str, list[EpisodeRef]]:
    """Deterministic episode-level split; train is shuffled (so shards mix episodes), val sorted.

    Counterfactual branches are not episodes of their own: only the others are split (so adding
    branches changes nothing else), and each branch follows its parent into the parent's split,
    right after it, so a branch and its parent never straddle train and val."""
    children: dict[str, list[EpisodeRef]] = {}
    for r in sorted((r for r in refs if r.branch is not None), key=lambda r: r.episode_id):
        children.setdefault(r.branch["parent"], []).append(r)
    refs = sorted((r for r in refs if r.branch is None), key=lambda r: r.episode_id)
    perm = np.random.default_rng(seed).permutation(len(refs))
    n_val = 0
    if val_fraction > 0 and len(refs) >= 2:
        n_val = min(len(refs) - 1, max(1, round(len(refs) * val_fraction)))
    val = sorted((refs[i] for i in perm[:n_val]), key=lambda r: r.episode_id)

    def with_branches(rs):
        return [x for r in rs for x in (r, *children.get(r.episode_id, []))]

    return {"train": with_branches(refs[i] for i in perm[n_val:]), "val": with_branches(val)}


def fingerprint(cfg: PrepareConfig, refs: list[EpisodeRef]) -> str:
    """Hash of everything that determines the output bytes (not workers)."""
    opts = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "out")}
    files = []
    for r in refs:
        st = os.stat(r.path)
        files.append([r.path, r.episode_id, str(r.key), st.st_size, st.st_mtime_ns] + ([r.branch] if r.branch else []))
    blob = json.dumps({"v": FORMAT_VERSION, "opts": opts, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- the run


class _State:
    """Everything the manifest needs, snapshotted at each finished shard for resume."""

    def __init__(self, d: dict | None = None):
        d = d or {}
        self.stats = RunningStats.from_dict(d.get("stats", {}))
        self.psnr_sum, self.psnr_n = d.get("psnr_sum", 0.0), d.get("psnr_n", 0)
        self.psnr_min = d.get("psnr_min")
        self.skipped: list[dict] = d.get("skipped", [])
        self.too_short: list[str] = d.get("too_short", [])
        self.ref_info: dict | None = d.get("ref_info")  # first episode's fps/hw/dim/kind/names
        self.splits = d.get("splits") or {s: {"shards": [], "samples": 0, "episodes": 0, "pos": [0, 0]} for s in SPLITS}
        self.branches: dict = d.get("branches") or {"count": {s: 0 for s in SPLITS}, "shared_frames": []}

    def to_dict(self) -> dict:
        return {
            "stats": self.stats.to_dict(),
            "psnr_sum": self.psnr_sum,
            "psnr_n": self.psnr_n,
            "psnr_min": self.psnr_min,
            "skipped": list(self.skipped),
            "too_short": list(self.too_short),
            "ref_info": self.ref_info,
            "splits": json.loads(json.dumps(self.splits)),
            "branches": json.loads(json.dumps(self.branches)),
        }


def _check_consistent(state: _State, res: EpisodeResult, cfg: PrepareConfig) -> None:
    info = {
        "fps": res.fps,
        "hw": list(res.hw),
        "action_dim": res.action_dim,
        "action_kind": res.action_kind,
        "action_names": res.action_names,
        "first": res.ref.path,
    }
    ref = state.ref_info
    if ref is None:
        state.ref_info = info
        return
    p, first = res.ref.path, ref["first"]
    if list(res.hw) != ref["hw"]:
        raise V2WError(
            f"frames are {res.hw[0]}x{res.hw[1]} but {first} has {ref['hw'][0]}x{ref['hw'][1]}; pass --size HxW",
            path=p,
        )
    if res.action_dim != ref["action_dim"]:
        raise V2WError(f"actions are {res.action_dim}-d but {first} has {ref['action_dim']}-d", path=p)
    if (res.fps is None) != (ref["fps"] is None) or (res.fps and abs(res.fps - ref["fps"]) > 1e-3 * ref["fps"]):
        raise V2WError(f"frame rate {res.fps} differs from {first} ({ref['fps']}); pass --fps N to resample all", path=p)
    if ref["action_names"] is None and res.action_names is not None:
        ref["action_names"] = res.action_names


def _load_progress(partial: Path, fp: str, quiet_log: Callable[[str], None]) -> tuple[_State, int]:
    """Restore the state after the last finished shard whose sha256 verifies; drop the rest."""
    progress_path = partial / "progress.json"
    if not progress_path.exists():
        return _State(), 0
    try:
        progress = read_json(progress_path)
    except V2WError:
        return _State(), 0
    if progress.get("fingerprint") != fp:
        quiet_log(f"{partial}: left by a run with other options or inputs; starting over")
        return _State(), 0
    kept_state, kept = _State(), 0
    for entry in progress.get("shards", []):
        path = partial / entry["name"]
        if not path.exists() or sha256_file(path) != entry["sha256"]:
            break
        kept_state, kept = _State(entry["state"]), kept + 1
    return kept_state, kept


def run(
    cfg: PrepareConfig,
    on_progress: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Prepare a DATA folder. ``on_progress`` gets dicts with keys episodes_done, episodes_total,
    frames_done (decoded output frames), samples; ``log`` gets one-line notes (resume, skips)."""
    t0 = time.time()
    log = log or (lambda msg: None)
    out = Path(cfg.out)
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise V2WError("exists and is not a v2w dataset; choose another --out or remove it", path=out)
    partial = out.with_name(out.name + ".partial")

    # 1-2. list and split
    refs, source_summary = list_sources(cfg)
    splits = split_episodes(refs, cfg.val_fraction, cfg.seed)
    fp = fingerprint(cfg, refs)

    # resume or start fresh
    state, kept = _load_progress(partial, fp, log)
    if kept == 0 and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    shard_log: list[dict] = []
    if kept:
        shard_log = read_json(partial / "progress.json")["shards"][:kept]
        log(f"resuming: {kept} finished shard(s) verified by sha256 and kept")
        keep_names = {e["name"] for e in shard_log}
        for split in SPLITS:  # remove shards after the last verified one, and half-written temp files
            for p in (partial / split).iterdir() if (partial / split).exists() else []:
                if f"{split}/{p.name}" not in keep_names:
                    p.unlink()
    write_json_atomic(partial / "progress.json", {"fingerprint": fp, "shards": shard_log})

    total = sum(len(v) for v in splits.values())
    done_before = sum(state.splits[s]["pos"][0] for s in SPLITS)
    progress = {"episodes_done": done_before, "episodes_total": total, "frames_done": 0, "samples": 0}
    if on_progress:
        on_progress(dict(progress))

    # 3-4. process and write, split by split
    executor = None
    if cfg.workers > 1:
        import multiprocessing as mp

        executor = cf.ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"))
    try:
        for split in SPLITS:
            _write_split(split, splits[split], cfg, state, partial, fp, shard_log, executor, progress, on_progress, log)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    # 5. manifest, then the one rename that makes the result visible
    manifest = _manifest(cfg, state, splits, source_summary)
    if manifest["splits"]["train"]["samples"] == 0:
        raise V2WError(
            f"no training clips: every episode is shorter than --clip-len {cfg.clip_len} or was skipped "
            f"({len(state.too_short)} too short, {len(state.skipped)} skipped)",
            path=cfg.sources[0],
        )
    write_json_atomic(partial / "manifest.json", manifest)
    (partial / "progress.json").unlink()
    replace_dir(partial, out)
    return PrepareResult(out, manifest, time.time() - t0, kept, progress["frames_done"])


def _write_split(split, refs, cfg, state, partial, fp, shard_log, executor, progress, on_progress, log) -> None:
    sp = state.splits[split]
    start_ep, skip_clips = sp["pos"]
    writer: ShardWriter | None = None
    in_shard = 0

    def close_shard(next_pos: list[int]) -> None:
        nonlocal writer, in_shard
        if writer is None:
            return
        name = shard_name(split, len(sp["shards"]))
        sha = writer.close()
        sp["shards"].append({"name": name, "sha256": sha, "samples": in_shard})
        sp["pos"] = next_pos
        shard_log.append({"name": name, "sha256": sha, "state": state.to_dict()})
        write_json_atomic(partial / "progress.json", {"fingerprint": fp, "shards": shard_log})
        writer, in_shard = None, 0

    def results():
        todo = deque((i, refs[i], skip_clips if i == start_ep else 0) for i in range(start_ep, len(refs)))
        if executor is None:
            for i, ref, skip in todo:
                yield i, _process_episode(ref, cfg, skip)
            return
        pending = deque()
        while todo or pending:  # bounded look-ahead keeps memory flat on long datasets
            while todo and len(pending) < 2 * cfg.workers:
                i, ref, skip = todo.popleft()
                pending.append((i, executor.submit(_process_episode, ref, cfg, skip)))
            i, fut = pending.popleft()
            yield i, fut.result()

    try:
        for i, res in results():
            first_clip = skip_clips if i == start_ep else 0
            if isinstance(res, EpisodeResult):
                try:
                    _check_consistent(state, res, cfg)
                except V2WError as e:
                    res = Failure(res.ref.path, str(e).removeprefix(f"{res.ref.path}: "))
            if isinstance(res, Failure):
                if not cfg.skip_bad:
                    raise V2WError(res.reason, path=res.path)
                state.skipped.append({"file": res.path, "reason": res.reason})
                log(f"skipped {res.path}: {res.reason}")
            elif not res.clips and first_clip == 0:
                state.too_short.append(res.ref.path)
            else:
                if first_clip == 0 and res.ref.branch is None:  # branches are counted as clips, not episodes
                    sp["episodes"] += 1
                for j, clip in enumerate(res.clips):
                    if writer is None:
                        writer = ShardWriter(partial / shard_name(split, len(sp["shards"])))
                    files = dict(clip.files)
                    meta = json.loads(files["meta.json"])
                    meta["split"] = split
                    files["meta.json"] = json.dumps(meta).encode()
                    writer.write(clip.key, files)
                    in_shard += 1
                    sp["samples"] += 1
                    if "branch_of" in meta:
                        state.branches["count"][split] += 1
                        if meta["shared_frames"] not in state.branches["shared_frames"]:
                            state.branches["shared_frames"].append(meta["shared_frames"])
                    if split == "train":
                        state.stats.update(clip.actions[clip.valid])
                    if clip.psnr is not None:
                        state.psnr_sum += clip.psnr
                        state.psnr_n += 1
                        state.psnr_min = clip.psnr if state.psnr_min is None else min(state.psnr_min, clip.psnr)
                    if in_shard >= cfg.shard_size:
                        last = j == len(res.clips) - 1
                        close_shard([i + 1, 0] if last else [i, first_clip + j + 1])
                progress["frames_done"] += res.frames
            progress["episodes_done"] += 1
            progress["samples"] = sum(state.splits[s]["samples"] for s in SPLITS)
            if on_progress:
                on_progress(dict(progress))
        close_shard([len(refs), 0])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _manifest(cfg: PrepareConfig, state: _State, splits: dict, source_summary: list[dict]) -> dict:
    info = state.ref_info or {}
    kind = info.get("action_kind")
    stats = state.stats.to_dict()
    stats.pop("m2")
    warnings = []
    if not splits["val"]:
        warnings.append("no validation episodes (need >= 2 episodes and --val-fraction > 0)")
    if stats["count"] and any(s < 1e-8 for s in stats["std"]):
        warnings.append("some action dimensions are constant over the train split (std 0)")
    if state.skipped:
        warnings.append(f"{len(state.skipped)} episode(s) skipped as unreadable (see 'skipped')")
    if _branches_entry(state) and (cfg.stride or cfg.clip_len) != cfg.clip_len:
        warnings.append(f"--stride {cfg.stride} != --clip-len {cfg.clip_len}: branches starting off the stride have "
                        "no parent clip (their branch_of names a clip that was not cut)")
    return {
        "kind": MANIFEST_KIND,
        "format_version": FORMAT_VERSION,
        "v2w_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "made_from": {"sources": source_summary, "options": _options_for_manifest(cfg)},
        "resolution": info.get("hw"),
        "fps": info.get("fps"),
        "clip_len": cfg.clip_len,
        "stride": cfg.stride or cfg.clip_len,
        "frames_storage": cfg.store,
        "roundtrip_psnr_db": None
        if cfg.store != "mp4" or not state.psnr_n
        else {"mean": state.psnr_sum / state.psnr_n, "min": state.psnr_min, "capped_at": 100.0},
        "action_dim": info.get("action_dim"),
        "action_type": "discrete" if kind == "discrete" else "continuous",
        "action_kind": kind,
        "num_actions": cfg.num_actions,
        "action_names": info.get("action_names"),
        "action_stats": {**stats, "computed_over": "train clips, real (unpadded) action rows"},
        "splits": {
            s: {
                "episodes": state.splits[s]["episodes"],
                "samples": state.splits[s]["samples"],
                "frames": state.splits[s]["samples"] * cfg.clip_len,
                "shards": state.splits[s]["shards"],
            }
            for s in SPLITS
        },
        "val_episodes": [r.episode_id for r in splits["val"] if r.branch is None],
        "branches": _branches_entry(state),
        "skipped": state.skipped,
        "too_short": state.too_short,
        "warnings": warnings,
    }


def _branches_entry(state: _State) -> dict | None:
    """Counterfactual branch clips per split and the frames they share with their parents
    (one number when all agree), or None when the data has none."""
    b = state.branches
    if not sum(b["count"].values()):
        return None
    shared = sorted(b["shared_frames"])
    return {"count": dict(b["count"]), "shared_frames": shared[0] if len(shared) == 1 else shared}


def _options_for_manifest(cfg: PrepareConfig) -> dict:
    d = asdict(cfg)
    d.pop("workers")
    d["size"] = list(cfg.size) if cfg.size else None
    d["action_keys"] = list(cfg.action_keys) if cfg.action_keys else None
    return d


def load_manifest(data: str | os.PathLike) -> dict:
    """Read and check ``DATA/manifest.json``."""
    return read_artifact(data, "manifest.json", MANIFEST_KIND, FORMAT_VERSION, "`v2w prepare`")




__all__ = ["PrepareConfig", "PrepareResult", "run", "load_manifest", "split_episodes", "list_sources"]
