"""pipelines.sampler: DDIM maths, guidance, the exact activation cache, determinism, the full-mode baseline."""

from __future__ import annotations

import pytest
import torch

from pipelines.diffusion import make_scheduler
from pipelines.errors import V2WError
from pipelines.models.world_model import load_model
from pipelines.sampler import Roller, RolloutConfig, ddim_step, guide


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


def test_guidance_rescale_is_diffusers_and_keeps_a_zero_prediction_zero():
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    vc, vu = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    v = vu + 2.5 * (vc - vu)
    assert torch.equal(guide(vc, vu, 2.5, 0.7), rescale_noise_cfg(v, vc, 0.7))  # bit for bit
    zero = torch.zeros(2, 4, 1, 3, 3)  # a zero-initialised output layer (--from-scratch before training)
    assert torch.isnan(rescale_noise_cfg(zero, zero, 0.7)).all()  # what diffusers' version gives
    assert torch.equal(guide(zero, zero, 2.5, 0.7), zero)


def test_shapes_and_determinism(rollout_env):
    model = load_model(rollout_env / "model")
    lat, pix, acts = inputs(model)
    run = lambda seed: Roller(model, RolloutConfig(steps=3, seed=seed)).rollout(lat, pix, acts, 4)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 4, 4, 4, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("window,horizon", [(8, 4), (4, 5)])
def test_cache_equals_no_cache(rollout_env, window, horizon):
    model = load_model(rollout_env / "model")
    lat, pix, acts = inputs(model, horizon=horizon)
    cached = Roller(model, RolloutConfig(steps=4, cache=True, window=window)).rollout(lat, pix, acts, horizon)
    plain = Roller(model, RolloutConfig(steps=4, cache=False, window=window)).rollout(lat, pix, acts, horizon)
    assert (cached - plain).abs().max() <= 1e-4  # also after the window slides (window 4, 2 + 5 frames)


def test_history_frames_join_the_cache_in_the_new_frames_pass(rollout_env):
    """activation_cache(..., "append", keep=k): one call over k history frames + the new frame leaves the
    cache as an append of the k frames alone would, and gives the new frame what a read pass gives."""
    from pipelines.models.cache import ActivationCache, activation_cache

    model = load_model(rollout_env / "model")
    roller = Roller(model, RolloutConfig(steps=2))
    lat, pix, acts = inputs(model, n_ctx=3)
    ctx = roller.image_context(pix[:, :, 0], 4)
    x, concat = torch.randn(1, 4, 3, *lat.shape[3:]), lat[:, :, :1]
    ts = torch.tensor([[20, 20, 700]])
    two = ActivationCache()
    with torch.no_grad(), activation_cache(model.unet, two, "append"):
        roller._unet(x[:, :, :2], ts[:, :2], concat, ctx, acts[:, :2], 0, 2)
    with torch.no_grad(), activation_cache(model.unet, two, "read"):
        new_b = roller._unet(x[:, :, 2:], ts[:, 2:], concat, ctx, acts[:, 2:3], 2, 1)
    one = ActivationCache()
    with torch.no_grad(), activation_cache(model.unet, one, "append", keep=2):
        new_a = roller._unet(x, ts, concat, ctx, acts[:, :3], 0, 3)[:, :, 2:]
    torch.testing.assert_close(new_a, new_b, atol=1e-5, rtol=1e-5)
    assert two.store.keys() == one.store.keys()
    for key, kept in one.store.items():  # attention keys/values hold 2 frames; conv inputs their last k-1
        for a, b in zip(kept if isinstance(kept, tuple) else (kept,), two.store[key] if isinstance(kept, tuple) else (two.store[key],)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_zero_initialised_action_layers_make_guidance_a_no_op(rollout_env):
    fresh = load_model(rollout_env / "fresh")
    lat, pix, acts = inputs(fresh)
    guided = Roller(fresh, RolloutConfig(steps=3, guidance=2.5)).rollout(lat, pix, acts, 3)
    plain = Roller(fresh, RolloutConfig(steps=3, guidance=1.0)).rollout(lat, pix, acts, 3)
    assert (guided - plain).abs().max() <= 1e-6
    trained_like = load_model(rollout_env / "model")  # with non-zero action embeddings guidance matters
    g2 = Roller(trained_like, RolloutConfig(steps=3, guidance=2.5)).rollout(lat, pix, acts, 3)
    p2 = Roller(trained_like, RolloutConfig(steps=3, guidance=1.0)).rollout(lat, pix, acts, 3)
    assert (g2 - p2).abs().max() > 1e-5  # the random tiny U-Net's outputs are small (~0.05)


def test_pooled_norm_model_refuses_the_cache(rollout_env):
    pooled = load_model(rollout_env / "pooled")
    with pytest.raises(V2WError, match="per-frame temporal norms"):
        Roller(pooled, RolloutConfig(cache=True))
    r = Roller(pooled, RolloutConfig(steps=2))
    assert r.cfg.cache is False
    lat, pix, acts = inputs(pooled)
    assert r.rollout(lat, pix, acts, 2).shape[2] == 2


def test_full_mode_baseline(rollout_env):
    model = load_model(rollout_env / "model")
    lat, pix, acts = inputs(model)
    out = Roller(model, RolloutConfig(steps=3, mode="full")).rollout(lat, pix, acts, 4)
    assert out.shape == (1, 4, 4, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(V2WError, match="context \\+ horizon <= window"):
        Roller(model, RolloutConfig(steps=3, mode="full", window=4)).rollout(lat, pix, acts, 4)


def test_window_start_moves_by_the_slide():
    from pipelines.sampler import window_start

    assert [window_start(n, 4, 1) for n in range(2, 9)] == [0, 0, 1, 2, 3, 4, 5]  # the newest 4 frames
    starts = [window_start(n, 4, 2) for n in range(2, 10)]
    assert starts == [0, 0, 2, 2, 4, 4, 6, 6]  # moves 2 frames at a time
    assert all(1 <= n - s <= 3 for n, s in zip(range(2, 10), starts))  # 1..window-1 history frames


def test_slide_keeps_cache_equal_to_no_cache_and_rebuilds_less(rollout_env):
    model = load_model(rollout_env / "model")
    lat, pix, acts = inputs(model, horizon=7)
    out, rebuilt = {}, {}
    for slide, cache in ((1, True), (3, True), (3, False)):
        roller = Roller(model, RolloutConfig(steps=2, cache=cache, window=5, slide=slide))
        stream = roller.stream(lat, pix, acts[:, :2])
        out[slide, cache] = torch.cat([stream.step(acts[:, 2 + k]) for k in range(7)], dim=2)
        rebuilt[slide, cache] = stream.rebuild_seconds > 0
    assert (out[3, True] - out[3, False]).abs().max() <= 1e-4  # exact across the 3-frame moves
    assert (out[3, True] - out[1, True]).abs().max() > 1e-4  # a different (shorter on average) history
    assert rebuilt[1, True] and rebuilt[3, True]
    with pytest.raises(V2WError, match="--slide must be at most"):
        Roller(model, RolloutConfig(window=4, slide=4))
