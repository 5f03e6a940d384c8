"""Loading prepared clips: tensors, normalisation, rank/worker sharding, damaged shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_npz

from pipelines.data.loader import ActionNormalizer, load_clips, shard_urls
from pipelines.data.prepare import PrepareConfig, run
from pipelines.errors import V2WError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    src = write_npz(tmp / "src", lengths=(16,) * 8)
    run(PrepareConfig(sources=[str(src)], out=str(tmp / "data"), clip_len=4, shard_size=3, val_fraction=0.25))
    return tmp / "data"


def test_yields_model_ready_tensors(data):
    clips = list(load_clips(data, "train"))
    assert len(clips) == 6 * 4
    c = clips[0]
    assert c["frames"].shape == (4, 3, 16, 24) and c["frames"].dtype == torch.float32
    assert -1.0 <= c["frames"].min() and c["frames"].max() <= 1.0
    assert c["actions"].shape == (4, 3) and c["actions"].dtype == torch.float32
    acts = torch.cat([c["actions"] for c in clips])
    torch.testing.assert_close(acts.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(acts.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_normalizer_round_trip_and_discrete_identity():
    m = {"action_type": "continuous", "action_stats": {"mean": [1.0, 2.0], "std": [2.0, 0.0]}}
    n = ActionNormalizer(m)
    a = np.array([[3.0, 2.0]], np.float32)
    np.testing.assert_allclose(n(a), [[1.0, 0.0]])
    np.testing.assert_allclose(n.inverse(n(a)), a)
    d = ActionNormalizer({"action_type": "discrete", "action_stats": {"mean": [0.5], "std": [0.5]}})
    assert d(a) is a


def test_shuffle_is_seeded_and_keeps_every_clip(data):
    keys = lambda **kw: [c["key"] for c in load_clips(data, "train", **kw)]  # noqa: E731
    plain, a, b = keys(), keys(shuffle=10, seed=1), keys(shuffle=10, seed=1)
    assert a == b and sorted(a) == sorted(plain) and a != plain


def test_ranks_see_disjoint_shards(data, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({c["key"] for c in load_clips(data, "train")})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert seen[0] | seen[1] == {c["key"] for c in load_clips(data, "train")}


def test_dataloader_workers_split_shards(data):
    loader = torch.utils.data.DataLoader(load_clips(data, "train"), batch_size=None, num_workers=2)
    keys = [c["key"] for c in loader]
    assert len(keys) == len(set(keys)) == 24


def test_urls_with_manifest(data):
    urls = shard_urls(data, "val")
    clips = list(load_clips(urls=urls, manifest=data / "manifest.json"))
    assert len(clips) == 2 * 4
    with pytest.raises(V2WError, match="manifest"):
        load_clips(urls=urls)


def test_truncated_shard_names_the_problem(data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shard = copy / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(V2WError, match="truncated or corrupt"):
        list(load_clips(copy, "train"))


def test_missing_split_and_manifest(data, tmp_path):
    with pytest.raises(V2WError, match="split must be one of"):
        load_clips(data, "test")
    with pytest.raises(V2WError, match="no manifest.json"):
        load_clips(tmp_path, "train")


def test_pipe_urls(data):
    urls = [f"pipe:cat {u}" for u in shard_urls(data, "val")]
    assert len(list(load_clips(urls=urls, manifest=data / "manifest.json"))) == 8


def test_encode_latents_adds_vae_latents_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize_run
    from pipelines.data.encode import encode_latents
    from pipelines.data.prepare import load_manifest
    from pipelines.models.world_model import load_model
    from v2w_cli.app import app

    src = write_npz(tmp_path / "src", lengths=(8, 8, 8))
    for f in src.glob("*.npz"):  # 16x24 frames -> 16x16 so the VAE's /8 works
        d = dict(np.load(f))
        np.savez(f, image=d["image"][:, :, :16], action=d["action"])
    run(PrepareConfig(sources=[str(src)], out=str(tmp_path / "data"), clip_len=4, shard_size=2, val_fraction=0.34, store="npy"))
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m")))
    before = load_manifest(tmp_path / "data")

    calls = []

    def stop_after_two(p):
        calls.append(p)
        if p["clips_done"] == 3:  # one shard of two clips finished, the next one half written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_latents(tmp_path / "data", tmp_path / "m", on_progress=stop_after_two)
    half = load_manifest(tmp_path / "data")
    assert half["latents"]["complete"] is False
    assert sum("latents" in sh for s in ("train", "val") for sh in half["splits"][s]["shards"]) == 1
    clips = list(load_clips(tmp_path / "data", "train"))  # a half-encoded DATA still loads
    assert len(clips) == 4

    res = CliRunner().invoke(app, ["encode", str(tmp_path / "data"), "--model", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "data")
    assert m["latents"]["complete"] and m["latents"]["shape"] == ["T", 4, 2, 2]
    assert [s["samples"] for s in m["splits"]["train"]["shards"]] == [s["samples"] for s in before["splits"]["train"]["shards"]]
    model = load_model(tmp_path / "m")
    for clip in load_clips(tmp_path / "data", "train"):
        assert clip["latents"].shape == (4, 4, 2, 2)
        with torch.no_grad():
            expect = model.encode_frames(clip["frames"].permute(1, 0, 2, 3)[None])[0].permute(1, 0, 2, 3)
        torch.testing.assert_close(clip["latents"], expect, atol=2e-3, rtol=2e-3)  # float16 storage
