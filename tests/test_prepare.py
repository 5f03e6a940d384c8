"""``v2w prepare`` end to end on small inputs in every source format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import episode_actions, episode_frames, write_npz, write_videos

from pipelines.data.prepare import PrepareConfig, load_manifest, run, split_episodes
from pipelines.data.shards import decode_sample, iter_shard
from pipelines.data.video import encode_mp4, psnr_uint8
from pipelines.errors import V2WError


def read_split(data: Path, split: str) -> list[dict]:
    m = load_manifest(data)
    return [decode_sample(s) for sh in m["splits"][split]["shards"] for s in iter_shard(data / sh["name"])]


def prep(src, out, **kw) -> dict:
    kw.setdefault("val_fraction", 0.25)
    return run(PrepareConfig(sources=[str(s) for s in (src if isinstance(src, list) else [src])], out=str(out), **kw)).manifest


def test_npz_round_trip_exact_with_npy_store(npz_src, tmp_path):
    m = prep(npz_src, tmp_path / "data", clip_len=6, stride=6, store="npy")
    lengths = {0: 20, 1: 24, 2: 18, 3: 30}
    clips = read_split(tmp_path / "data", "train") + read_split(tmp_path / "data", "val")
    assert len(clips) == sum(n // 6 for n in lengths.values())
    for c in clips:
        e = int(c["meta"]["episode_id"].split("_")[1])
        s = c["meta"]["start_frame"]
        np.testing.assert_array_equal(c["frames"], episode_frames(e, lengths[e])[s : s + 6])
        np.testing.assert_array_equal(c["actions"], episode_actions(e, lengths[e])[s : s + 6])
        assert c["actions"].dtype == np.float32 and c["frames"].dtype == np.uint8
    assert m["resolution"] == [16, 24] and m["action_dim"] == 3 and m["frames_storage"] == "npy"


def test_videos_round_trip_mp4_and_psnr_recorded(videos_src, tmp_path):
    m = prep(videos_src, tmp_path / "data", clip_len=8)
    assert m["fps"] == 10.0 and m["roundtrip_psnr_db"]["min"] > 35
    for c in read_split(tmp_path / "data", "train"):
        e = int(c["meta"]["episode_id"][2:])
        s = c["meta"]["start_frame"]
        ref = episode_frames(e, (20, 24, 18, 30)[e])[s : s + 8]
        assert c["frames"].shape == ref.shape and psnr_uint8(c["frames"], ref) > 30
        np.testing.assert_array_equal(c["actions"], episode_actions(e, (20, 24, 18, 30)[e])[s : s + 8])


@pytest.mark.parametrize("length,clip,stride", [(30, 8, 8), (30, 8, 3), (30, 30, 5), (16, 8, 1), (7, 8, 8)])
def test_clip_windowing_counts(tmp_path, length, clip, stride):
    src = write_npz(tmp_path / "src", lengths=(length, 12))
    out = tmp_path / "data"
    if length < clip and 12 < clip:
        with pytest.raises(V2WError, match="no training clips"):
            prep(src, out, clip_len=clip, stride=stride, val_fraction=0, store="npy")
        return
    m = prep(src, out, clip_len=clip, stride=stride, val_fraction=0, store="npy")
    expect = sum(max(0, (n - clip) // stride + 1) for n in (length, 12))
    assert m["splits"]["train"]["samples"] == expect
    starts = sorted(c["meta"]["start_frame"] for c in read_split(out, "train") if c["meta"]["episode_id"] == "episode_0")
    assert starts == list(range(0, length - clip + 1, stride))
    if length < clip:
        assert m["too_short"] == [str(src / "episode_0.npz")]


def test_manifest_stats_equal_numpy_over_train_clips(npz_src, tmp_path):
    m = prep(npz_src, tmp_path / "data", clip_len=5, stride=3, store="npy")
    acts = np.concatenate([c["actions"] for c in read_split(tmp_path / "data", "train")])
    st = m["action_stats"]
    np.testing.assert_allclose(st["mean"], acts.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st["std"], acts.std(0), rtol=1e-6)
    np.testing.assert_allclose(st["min"], acts.min(0))
    np.testing.assert_allclose(st["max"], acts.max(0))
    assert st["count"] == len(acts)


def test_padded_rows_are_zero_and_left_out_of_stats(tmp_path):
    src = write_videos(tmp_path / "src", lengths=(10, 10), rows="T-1")
    m = prep(src, tmp_path / "data", clip_len=5, val_fraction=0, store="npy")
    clips = read_split(tmp_path / "data", "train")
    last = [c for c in clips if c["meta"]["start_frame"] == 5]
    assert all(not c["actions"][-1].any() and c["meta"]["real_action_rows"] == 4 for c in last)
    real = np.concatenate([c["actions"][: c["meta"]["real_action_rows"]] for c in clips])
    assert m["action_stats"]["count"] == len(real) == 18
    np.testing.assert_allclose(m["action_stats"]["mean"], real.mean(0), rtol=1e-6)


def test_split_is_by_episode_and_deterministic(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(12,) * 10)
    m = prep(src, tmp_path / "a", clip_len=4, val_fraction=0.3, seed=3, store="npy")
    train = {c["meta"]["episode_id"] for c in read_split(tmp_path / "a", "train")}
    val = {c["meta"]["episode_id"] for c in read_split(tmp_path / "a", "val")}
    assert len(val) == 3 and len(train) == 7 and not train & val
    assert set(m["val_episodes"]) == val
    m2 = prep(src, tmp_path / "b", clip_len=4, val_fraction=0.3, seed=3, store="npy")
    assert m2["val_episodes"] == m["val_episodes"]
    for a, b in zip(m["splits"]["train"]["shards"], m2["splits"]["train"]["shards"]):
        assert a["sha256"] == b["sha256"]  # byte-identical shards for the same inputs
    others = {tuple(prep(src, tmp_path / f"s{s}", clip_len=4, val_fraction=0.3, seed=s, store="npy")["val_episodes"]) for s in range(4)}
    assert len(others) > 1


def test_split_function_edge_cases():
    from pipelines.data.episode import EpisodeRef

    refs = [EpisodeRef("npz", f"{i}.npz", f"e{i}") for i in range(5)]
    assert split_episodes(refs[:1], 0.5, 0)["val"] == []
    s = split_episodes(refs, 0.01, 0)
    assert len(s["val"]) == 1 and len(s["train"]) == 4  # at least one val episode when asked for
    assert len(split_episodes(refs, 0.99, 0)["train"]) == 1  # never an empty train split


def test_integer_ids_stored_one_hot(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ids = np.array([0, 1, 2, 3, 2, 1, 0, 1])
    for e in range(2):
        (src / f"e{e}.mp4").write_bytes(encode_mp4(episode_frames(e, 8), 8.0))
        np.save(src / f"e{e}.npy", ids[:7])
    (src / "actions.json").write_text(json.dumps({"actions": ["NOOP", "FIRE", "RIGHT", "LEFT"]}))
    m = prep(src, tmp_path / "data", clip_len=8, val_fraction=0, num_actions=4)
    assert m["action_type"] == "discrete" and m["action_dim"] == 4 and m["action_names"][3] == "LEFT"
    c = read_split(tmp_path / "data", "train")[0]
    np.testing.assert_array_equal(c["actions"][:7], np.eye(4)[ids[:7]])
    assert not c["actions"][7].any()


def test_fps_resampling_sums_deltas(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(20, 20))
    for f in src.glob("*.npz"):
        d = dict(np.load(f))
        np.savez(f, **d, fps=np.array(10.0))
    with pytest.raises(V2WError, match="--action-kind"):
        prep(src, tmp_path / "data", clip_len=5, fps=5, val_fraction=0, store="npy")
    m = prep(src, tmp_path / "data", clip_len=5, fps=5, action_kind="delta", val_fraction=0, store="npy")
    assert m["fps"] == 5
    for c in read_split(tmp_path / "data", "train"):
        e = int(c["meta"]["episode_id"].split("_")[1])
        s = c["meta"]["start_frame"]
        full = episode_actions(e, 20)
        np.testing.assert_array_equal(c["frames"], episode_frames(e, 20)[::2][s : s + 5])
        np.testing.assert_allclose(c["actions"], (full[0::2] + full[1::2])[s : s + 5], rtol=1e-6)


def test_size_resizes_and_center_crops(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(8, 8))
    m = prep(src, tmp_path / "data", clip_len=8, size=(8, 8), val_fraction=0, store="npy")
    assert m["resolution"] == [8, 8]
    assert read_split(tmp_path / "data", "train")[0]["frames"].shape == (8, 8, 8, 3)


def test_resize_crop_keeps_the_center_and_stretch_keeps_everything():
    from pipelines.data.video import resize_frames

    f = np.zeros((1, 20, 40, 3), np.uint8)
    f[:, :, 10:30] = 255  # the middle half of the width is white
    out = resize_frames(f, (10, 10))  # scale 0.5 -> 10x20, crop columns 5..15 = white part
    assert out.shape == (1, 10, 10, 3) and out[:, :, 1:-1].min() > 200
    out = resize_frames(f, (10, 10), "stretch")  # 40 -> 10 columns: white stays the middle half
    assert out[:, :, 3:7].min() > 200 and out[:, :, :2].max() < 50 and out[:, :, -2:].max() < 50
    with pytest.raises(V2WError, match="--resize must be one of"):
        resize_frames(f, (10, 10), "pad")


def test_different_sizes_need_size_flag(tmp_path):
    src = tmp_path / "src"
    write_videos(src, lengths=(10,), h=16, w=24)
    (src / "ep00.mp4").rename(src / "a.mp4")
    (src / "ep00.npy").rename(src / "a.npy")
    write_videos(src, lengths=(10,), h=16, w=16)
    with pytest.raises(V2WError, match="pass --size HxW"):
        prep(src, tmp_path / "data", clip_len=5, val_fraction=0)
    m = prep(src, tmp_path / "data", clip_len=5, val_fraction=0, size=(16, 16))
    assert m["resolution"] == [16, 16]


# ---------------------------------------------------------------- every source format


def test_every_format_prepares(tmp_path):
    from test_source_csgo_recon import _write_csgo, _write_traj
    from test_source_lerobot import write_dataset

    for i in range(3):
        _write_csgo(tmp_path / "csgo" / f"f{i}.hdf5", n=6)
        _write_traj(tmp_path / "recon" / f"traj{i}", 6)
    lerobot = write_dataset(tmp_path / "lerobot")
    for name, src, fmt in [("csgo", tmp_path / "csgo", "hdf5"), ("recon", tmp_path / "recon", "recon"), ("lerobot", lerobot, "lerobot")]:
        m = prep(src, tmp_path / f"data_{name}", clip_len=4, stride=1, val_fraction=0.34)
        assert m["made_from"]["sources"][0]["format"] == fmt, name
        assert m["splits"]["train"]["samples"] > 0 and m["splits"]["val"]["samples"] > 0, name
    assert load_manifest(tmp_path / "data_csgo")["action_dim"] == 51
    assert load_manifest(tmp_path / "data_recon")["action_names"] == ["dx", "dy", "dyaw"]


# ---------------------------------------------------------------- bad input and safety


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "damage,message",
    [
        ("corrupt_video", r"ep01\.mp4: cannot decode video"),
        ("truncated_video", r"ep01\.mp4: cannot decode video"),
        ("nan_action", r"ep01\.npy: actions contain NaN/inf"),
        ("wrong_rows", r"ep01\.npy: actions have 5 rows but the episode has 24 frames"),
        ("pickled_actions", r"ep01\.npy: cannot load actions"),
        ("missing_actions", r"ep01\.npy: actions file not found"),
        ("unreadable", r"ep01\.mp4: cannot decode video"),
    ],
)
def test_bad_input_is_one_clear_error_and_old_output_survives(videos_src, tmp_path, damage, message):
    out = tmp_path / "data"
    prep(videos_src, out, clip_len=8)
    before = _snapshot(out)
    video, acts = videos_src / "ep01.mp4", videos_src / "ep01.npy"
    if damage == "corrupt_video":
        video.write_bytes(b"\x00" * 100 + video.read_bytes()[100:])
    elif damage == "truncated_video":
        video.write_bytes(video.read_bytes()[:300])
    elif damage == "nan_action":
        a = np.load(acts)
        a[2, 0] = np.nan
        np.save(acts, a)
    elif damage == "wrong_rows":
        np.save(acts, np.zeros((5, 3), np.float32))
    elif damage == "pickled_actions":
        np.save(acts, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "missing_actions":
        acts.unlink()
        shutil.copy(videos_src / "ep00.npy", videos_src / "ep01b.npy")  # a valid pair beside it
        shutil.copy(videos_src / "ep00.mp4", videos_src / "ep01b.mp4")
    elif damage == "unreadable":
        video.write_text("this is not a video")
    with pytest.raises(V2WError, match=message):
        prep(videos_src, out, clip_len=8)
    assert _snapshot(out) == before


def test_skip_bad_lists_skipped_files(videos_src, tmp_path):
    (videos_src / "ep01.mp4").write_text("not a video")
    a = np.load(videos_src / "ep02.npy")
    a[0, 0] = np.inf
    np.save(videos_src / "ep02.npy", a)
    m = prep(videos_src, tmp_path / "data", clip_len=8, skip_bad=True, val_fraction=0)
    skipped = {Path(s["file"]).name: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"ep01.mp4", "ep02.npy"}
    assert "cannot decode" in skipped["ep01.mp4"] and "NaN/inf" in skipped["ep02.npy"]
    assert m["splits"]["train"]["episodes"] == 2 and any("skipped" in w for w in m["warnings"])


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(V2WError, match="empty: no known dataset layout"):
        prep(tmp_path / "empty", tmp_path / "data")
    with pytest.raises(V2WError, match="nope: source not found"):
        prep(tmp_path / "nope", tmp_path / "data")
    with pytest.raises(V2WError, match="--format must be one of"):
        prep(tmp_path / "empty", tmp_path / "data", format="avi")


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(npz_src, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(V2WError, match="is not a v2w dataset"):
        prep(npz_src, out, clip_len=4)
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_bad_options():
    for kw, msg in [({"clip_len": 0}, "--clip-len"), ({"val_fraction": 1.0}, "--val-fraction"), ({"store": "gif"}, "--store"), ({"action_kind": "x"}, "--action-kind")]:
        with pytest.raises(V2WError, match=msg):
            PrepareConfig(sources=["x"], out="y", **kw)


# ---------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(12,) * 8)
    kw = dict(clip_len=4, stride=2, shard_size=3, val_fraction=0.25, store="npy")
    full = prep(src, tmp_path / "full", **kw)

    out = tmp_path / "data"
    calls = []

    def stop_after_five(p):
        calls.append(p["episodes_done"])
        if p["episodes_done"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(PrepareConfig(sources=[str(src)], out=str(out), **kw), on_progress=stop_after_five)
    assert not out.exists() and (tmp_path / "data.partial" / "progress.json").exists()
    logs = []
    res = run(PrepareConfig(sources=[str(src)], out=str(out), **kw), log=logs.append)
    assert res.resumed_shards >= 2 and any("resuming" in m for m in logs)
    assert res.frames_decoded < 8 * 12  # finished episodes were not decoded again
    assert not (tmp_path / "data.partial").exists()
    for split in ("train", "val"):
        assert [s["sha256"] for s in res.manifest["splits"][split]["shards"]] == [
            s["sha256"] for s in full["splits"][split]["shards"]
        ]
    assert res.manifest["action_stats"] == full["action_stats"]
    assert res.manifest["splits"]["train"]["episodes"] == full["splits"]["train"]["episodes"]


def test_resume_discards_a_damaged_shard(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(12,) * 6)
    kw = dict(clip_len=4, shard_size=2, val_fraction=0, store="npy")
    full = prep(src, tmp_path / "full", **kw)

    def stop(p):
        if p["episodes_done"] == 4:
            raise Interrupt

    out = tmp_path / "data"
    with pytest.raises(Interrupt):
        run(PrepareConfig(sources=[str(src)], out=str(out), **kw), on_progress=stop)
    shard = tmp_path / "data.partial" / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:100])  # damaged after it was recorded
    res = run(PrepareConfig(sources=[str(src)], out=str(out), **kw))
    assert res.resumed_shards == 1
    assert [s["sha256"] for s in res.manifest["splits"]["train"]["shards"]] == [
        s["sha256"] for s in full["splits"]["train"]["shards"]
    ]


def test_changed_options_start_over(tmp_path):
    src = write_npz(tmp_path / "src", lengths=(12,) * 4)

    def stop(p):
        if p["episodes_done"] == 3:
            raise Interrupt

    out = tmp_path / "data"
    with pytest.raises(Interrupt):
        run(PrepareConfig(sources=[str(src)], out=str(out), clip_len=4, shard_size=1, store="npy"), on_progress=stop)
    res = run(PrepareConfig(sources=[str(src)], out=str(out), clip_len=6, shard_size=1, store="npy"))
    assert res.resumed_shards == 0 and res.manifest["clip_len"] == 6


def test_parallel_workers_give_identical_shards(tmp_path):
    src = write_videos(tmp_path / "src", lengths=(16, 20, 24, 18))
    one = prep(src, tmp_path / "one", clip_len=8, workers=1)
    two = prep(src, tmp_path / "two", clip_len=8, workers=2)
    for split in ("train", "val"):
        assert [s["sha256"] for s in one["splits"][split]["shards"]] == [s["sha256"] for s in two["splits"][split]["shards"]]


def test_replaces_an_older_dataset_only_on_success(npz_src, tmp_path):
    out = tmp_path / "data"
    prep(npz_src, out, clip_len=4, store="npy")
    m = prep(npz_src, out, clip_len=6, store="npy")
    assert load_manifest(out)["clip_len"] == 6 == m["clip_len"]
    assert not list(tmp_path.glob(".data.old-*")) and not (tmp_path / "data.partial").exists()
    shutil.rmtree(out)


def test_sigkill_mid_run_resumes_to_the_same_bytes(tmp_path):
    """Kill -9 a real `v2w prepare` process after a few shards; the re-run completes identically."""
    import json as _json
    import os
    import signal
    import subprocess
    import sys
    import time

    src = write_npz(tmp_path / "src", lengths=(24,) * 16)
    args = ["--clip-len", "4", "--shard-size", "2", "--val-fraction", "0.25", "--store", "mp4", "--quiet"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "v2w_cli", "prepare", str(src), "--out", str(full), *args], check=True)

    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "v2w_cli", "prepare", str(src), "--out", str(out), *args])
    progress = tmp_path / "data.partial" / "progress.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(_json.loads(progress.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("prepare finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    res = subprocess.run(
        [sys.executable, "-m", "v2w_cli", "prepare", str(src), "--out", str(out), *args[:-1], "--json"],
        check=True, capture_output=True, text=True,
    )
    assert _json.loads(res.stdout)["resumed_shards"] >= 3
    a, b = load_manifest(full), load_manifest(out)
    for split in ("train", "val"):
        assert [s["sha256"] for s in a["splits"][split]["shards"]] == [s["sha256"] for s in b["splits"][split]["shards"]]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in (full / "train").iterdir())
