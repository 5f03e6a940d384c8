"""v2w rollout: DDIM maths, guidance, exact cache, determinism, batch layout, bad actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.diffusion import make_scheduler
from pipelines.errors import V2WError
from pipelines.models.world_model import load_model
from pipelines.rollout import Roller, RolloutConfig, RolloutJob, ddim_step, guide, read_actions_file, run_batch
from v2w_cli.app import app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "fresh"), action_dim=4, action_type="discrete"))
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "pooled"), action_dim=4, action_type="discrete", norm="pooled"))
    model = load_model(root / "fresh")
    torch.manual_seed(0)
    model.unet.action_encoder.embedding.data.normal_(0, 5.0)  # make actions matter
    model.save_pretrained(root / "model")
    make_atari_episodes(root / "raw", episodes=4, frames=24, seed=2)
    prepare_run(PrepareConfig(sources=[str(root / "raw")], out=str(root / "data"), size=(32, 32), resize="stretch",
                              clip_len=6, stride=6, num_actions=4, val_fraction=0.5, store="npy"))
    return root


def inputs(model, n_ctx=2, horizon=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 3, n_ctx, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        lat = model.encode_frames(pixels)
    ids = torch.randint(0, 4, (1, n_ctx + horizon), generator=g)
    return lat, pixels, torch.nn.functional.one_hot(ids, 4).float()


def test_ddim_step_matches_diffusers_for_v_prediction():
    s = make_scheduler(kind="ddim")
    s.set_timesteps(10)
    x = torch.randn(2, 4, 3, 3)
    v = torch.randn(2, 4, 3, 3)
    ts = [int(t) for t in s.timesteps]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ap = s.alphas_cumprod[t_prev] if t_prev >= 0 else s.final_alpha_cumprod
        for eta in (0.0, 1.0):
            noise = torch.randn_like(x)
            ref = s.step(v, t, x, eta=eta, variance_noise=noise).prev_sample
            ours, _ = ddim_step(x, v, s.alphas_cumprod[t], ap, eta, noise)
            if s.alphas_cumprod[t] == 0 and not torch.isfinite(ref).all():
                # diffusers 0.42.1 returns NaN where alpha_cumprod is 0 (t = 999 under zero terminal SNR);
                # the closed form there: x0 = -v, eps = x_t, sigma = eta sqrt(1 - a_prev)
                sigma = eta * (1 - ap).sqrt()
                ref = ap.sqrt() * -v + (1 - ap - sigma**2).clamp(min=0).sqrt() * x + sigma * noise
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_guidance_scale_one_is_the_conditional_pass():
    vc, vu = torch.randn(2, 4, 1, 3, 3), torch.randn(2, 4, 1, 3, 3)
    torch.testing.assert_close(guide(vc, vu, 1.0, 0.0), vc)
    torch.testing.assert_close(guide(vc, vu, 1.0, 0.7), vc)
    g = guide(vc, vu, 2.5, 0.0)
    torch.testing.assert_close(g, vu + 2.5 * (vc - vu))


def test_shapes_and_determinism(env):
    model = load_model(env / "model")
    lat, pix, acts = inputs(model)
    run = lambda seed: Roller(model, RolloutConfig(steps=3, seed=seed)).rollout(lat, pix, acts, 4)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 4, 4, 4, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("window,horizon", [(8, 4), (4, 5)])
def test_cache_equals_no_cache(env, window, horizon):
    model = load_model(env / "model")
    lat, pix, acts = inputs(model, horizon=horizon)
    cached = Roller(model, RolloutConfig(steps=4, cache=True, window=window)).rollout(lat, pix, acts, horizon)
    plain = Roller(model, RolloutConfig(steps=4, cache=False, window=window)).rollout(lat, pix, acts, horizon)
    assert (cached - plain).abs().max() <= 1e-4  # also after the window slides (window 4, 2 + 5 frames)


def test_zero_initialised_action_layers_make_guidance_a_no_op(env):
    fresh = load_model(env / "fresh")
    lat, pix, acts = inputs(fresh)
    guided = Roller(fresh, RolloutConfig(steps=3, guidance=2.5)).rollout(lat, pix, acts, 3)
    plain = Roller(fresh, RolloutConfig(steps=3, guidance=1.0)).rollout(lat, pix, acts, 3)
    assert (guided - plain).abs().max() <= 1e-6
    trained_like = load_model(env / "model")  # with non-zero action embeddings guidance matters
    g2 = Roller(trained_like, RolloutConfig(steps=3, guidance=2.5)).rollout(lat, pix, acts, 3)
    p2 = Roller(trained_like, RolloutConfig(steps=3, guidance=1.0)).rollout(lat, pix, acts, 3)
    assert (g2 - p2).abs().max() > 1e-5  # the random tiny U-Net's outputs are small (~0.05)


def test_pooled_norm_model_refuses_the_cache(env):
    pooled = load_model(env / "pooled")
    with pytest.raises(V2WError, match="per-frame temporal norms"):
        Roller(pooled, RolloutConfig(cache=True))
    r = Roller(pooled, RolloutConfig(steps=2))
    assert r.cfg.cache is False
    lat, pix, acts = inputs(pooled)
    assert r.rollout(lat, pix, acts, 2).shape[2] == 2


def test_full_mode_baseline(env):
    model = load_model(env / "model")
    lat, pix, acts = inputs(model)
    out = Roller(model, RolloutConfig(steps=3, mode="full")).rollout(lat, pix, acts, 4)
    assert out.shape == (1, 4, 4, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(V2WError, match="context \\+ horizon <= window"):
        Roller(model, RolloutConfig(steps=3, mode="full", window=4)).rollout(lat, pix, acts, 4)


def test_bad_actions_files(env, tmp_path):
    model = load_model(env / "model")
    cases = {
        "wide.npy": (np.zeros((5, 3), np.float32), r"must be \(H, 4\) or \(H,\) integer ids"),
        "ids.npy": (np.array([0, 1, 7]), r"action ids must be in \[0, 4\)"),
        "nan.npy": (np.full((3, 4), np.nan, np.float32), "finite"),
        "rank3.npy": (np.zeros((2, 2, 4), np.float32), "one row per predicted frame"),
    }
    for name, (arr, msg) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(V2WError, match=msg):
            read_actions_file(str(tmp_path / name), model)
    np.save(tmp_path / "short.npy", np.array([0, 1]))
    with pytest.raises(V2WError, match="2 action rows for a horizon of 5"):
        read_actions_file(str(tmp_path / "short.npy"), model, horizon=5)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(V2WError, match="cannot load actions"):
        read_actions_file(str(tmp_path / "obj.npy"), model)
    assert read_actions_file(str(tmp_path / "ids.npy").replace("ids", "short"), model).shape == (2, 4)


def test_batch_mode_layout_and_shuffled_actions(env, tmp_path):
    job = RolloutJob(model=str(env / "model"), out=str(tmp_path / "pred"), data=str(env / "data"), limit=3,
                     shuffle_actions=True, context_frames=2, batch_size=2)
    info = run_batch(job, RolloutConfig(steps=2))
    files = sorted((tmp_path / "pred" / "clips").glob("*.npz"))
    assert len(files) == 3 == info["clips"] and info["horizon"] == 4
    shuffled = {f.name: np.load(f) for f in (tmp_path / "pred" / "shuffled").glob("*.npz")}
    for f in files:
        d = np.load(f)
        assert d["context"].shape == (2, 32, 32, 3) and d["pred"].shape == d["ref"].shape == (4, 32, 32, 3)
        assert d["pred"].dtype == np.uint8 and d["actions"].shape == (6, 4)
        s = shuffled[f.name]
        assert np.array_equal(s["ref"], d["ref"]) and not np.array_equal(s["actions"], d["actions"])
    assert json.loads((tmp_path / "pred" / "rollout.json").read_text())["shuffled"] is True


def test_cli_interactive_outputs(env, tmp_path):
    frames = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "ctx.npy", frames)
    np.save(tmp_path / "acts.npy", np.array([1, 2, 3]))
    res = CliRunner().invoke(app, ["rollout", "--model", str(env / "model"), "--context", str(tmp_path / "ctx.npy"),
                                   "--context-frames", "2", "--actions", str(tmp_path / "acts.npy"), "--out",
                                   str(tmp_path / "o"), "--steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["horizon"] == 3 and len(info["seconds_per_frame"]) == 3 and info["settings"]["seed"] == 0
    out = np.load(tmp_path / "o" / "frames.npy")
    assert out.shape == (5, 32, 32, 3) and np.array_equal(out[:2], frames)
    assert (tmp_path / "o" / "video.mp4").stat().st_size > 0 and (tmp_path / "o" / "grid.png").exists()
    res = CliRunner().invoke(app, ["rollout", "--model", str(env / "pooled"), "--context", str(tmp_path / "ctx.npy"),
                                   "--actions", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "p"), "--cache"])
    assert res.exit_code == 1 and "per-frame temporal norms" in res.output
