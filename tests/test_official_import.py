"""Official Vid2World checkpoints in v2w: the import (keys, metadata, errors) and the guided
autoregressive rollout against the official sampler's computation.

The rollout reference (``official_rollout`` below) is written from the official sampler as read in
``lvdm/models/samplers/ddim.py`` (DDIMSampler.ddim_sampling with ``ar=True, ar_noise_schedule=1``,
p_sample_ddim) and ``ddpm3d.py`` (DiffusionWrapper's action shift, log_images' ``uc``) of the
public copies of thuml/Vid2World: it recomputes the whole window at every DDIM step, builds its
schedule from ``make_beta_schedule`` + ``rescale_zero_terminal_snr`` + ``make_ddim_timesteps
('uniform_trailing')`` + ``make_ddim_sampling_parameters`` in float64 numpy, and runs the network
that ``tests/models/test_vid2world_reference.py`` shows equal to the official U-Net. Random draws
are the one thing it takes from v2w (recorded, then fed in by role), because the two samplers draw
them in different orders; and the VAE encodes with the posterior mode where the official
``encode_first_stage`` samples (a random draw again).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import pipelines.sampler as sampler_mod
from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.errors import V2WError
from pipelines.models.action import shift_actions
from pipelines.models.world_model import load_model
from pipelines.official import RELEASES, load_official, release_of, tiny_official_checkpoint
from pipelines.sampler import Roller, RolloutConfig


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    out = {}
    for domain in ("csgo", "rt1"):
        ckpt, cfg = tiny_official_checkpoint(domain)
        torch.save(ckpt, root / f"{domain}.ckpt")
        (root / f"{domain}.yaml").write_text(yaml.safe_dump(cfg))
        out[domain] = (root / f"{domain}.ckpt", root / f"{domain}.yaml")
    return out


@pytest.fixture(scope="module")
def imported(official_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    for domain, (ckpt, cfg) in official_files.items():
        for norm in ("pooled", "per-frame"):
            causalize_run(CausalizeConfig(ckpt=str(ckpt), out=str(root / f"{domain}-{norm}"), base_config=str(cfg),
                                          norm=None if norm == "pooled" else norm))
    return root


def test_import_loads_every_key_and_records_what_the_model_expects(imported, official_files):
    m = load_model(imported / "csgo-pooled")
    c = m.unet.config
    assert (c.causal, c.temporal_norm, c.action_injection, c.out_conv) == (True, "pooled", "vid2world", "causal-height")
    assert (c.action_dim, c.action_type) == (51, "discrete")
    assert m.meta["sampling"]["profile"] == "vid2world" and m.meta["context_layout"] == "vid2world"
    assert m.meta["context_frames"] == 4 and len(m.meta["action_names"]) == 51
    assert m.meta["action_names"][0] == "key_w" and m.meta["action_names"][13] == "mouse_x_-1000"
    # every official key went somewhere: U-Net keys mapped 1:1, the rest by the DynamiCrafter loader
    sd = torch.load(official_files["csgo"][0], weights_only=True)["state_dict"]
    n_unet = sum(k.startswith("model.diffusion_model.") for k in sd)
    assert n_unet == len(m.unet.state_dict())
    assert m.meta["vid2world"]["dropped_keys"] == 13  # the DDPM schedule buffers, on the explicit list
    rt1 = load_model(imported / "rt1-per-frame")
    assert (rt1.unet.config.action_dim, rt1.unet.config.action_type, rt1.unet.config.temporal_norm) == (13, "continuous", "per-frame")
    assert rt1.meta["context_frames"] == 1 and rt1.meta["action_names"][-1] == "world_vector_z"


def test_a_corrupted_official_checkpoint_is_one_clear_error(official_files, tmp_path):
    ckpt, cfg = official_files["csgo"]
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    del sd["model.diffusion_model.action_emb_proj.2.bias"]
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, bad)
    with pytest.raises(V2WError, match="action_emb_proj.2.bias"):
        load_official(str(bad), str(cfg))
    with pytest.raises(V2WError, match="drop --action-dim"):
        causalize_run(CausalizeConfig(ckpt=str(ckpt), out=str(tmp_path / "x"), base_config=str(cfg), action_dim=4))
    assert not (tmp_path / "x").exists()


def test_release_names_offline_name_the_repo_and_the_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert release_of("THUML/vid2world-csgo") == "thuml/Vid2World-CSGO" and len(RELEASES) == 8
    with pytest.raises(V2WError, match=r"thuml/Vid2World-CSGO.*--ckpt /path/to"):
        causalize_run(CausalizeConfig(ckpt="thuml/Vid2World-CSGO", out=str(tmp_path / "m")))


# --------------------------------------------------------------------------- the official sampler


def official_schedule(steps: int):
    """make_beta_schedule('linear', 1000, 0.00085, 0.012) + rescale_zero_terminal_snr, then the DDIM
    parameters of make_ddim_timesteps('uniform_trailing') / make_ddim_sampling_parameters (eta 1)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    s = np.sqrt(abar)
    s0, sT = s[0].copy(), s[-1].copy()
    s = (s - sT) * s0 / (s0 - sT)
    abar = s**2
    ddim_t = np.flip(np.round(np.arange(1000, 0, -1000 / steps))).astype(np.int64) - 1  # ascending
    a = abar[ddim_t]
    a_prev = np.asarray([abar[0]] + abar[ddim_t[:-1]].tolist())
    sigmas = 1.0 * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    scale_arr = np.concatenate([np.linspace(1.0, 0.7, 400), np.full(1000, 0.7)])
    ddim_scale = scale_arr[ddim_t]
    ddim_scale_prev = np.concatenate([ddim_scale[:1], ddim_scale[:-1]])
    return abar, ddim_t, a_prev, sigmas, ddim_scale, ddim_scale_prev


def rescale_noise_cfg(cfg, cond, phi):
    dims = list(range(1, cfg.ndim))
    return phi * cfg * (cond.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True)) + (1 - phi) * cfg


def official_rollout(model, z_ctx, pixels0, raw_actions, horizon, steps, scale, phi, draws):
    """The official AR sampler (one window, no slide) on the same network; ``draws`` = v2w's noise by role."""
    unet = model.unet
    abar, ddim_t, a_prev, sigmas, sc, sc_prev = official_schedule(steps)
    b, _, n_ctx = z_ctx.shape[:3]
    small_t = int(ddim_t[1])  # iterator[-2]: the second-smallest DDIM timestep
    acts = shift_actions(raw_actions)  # DiffusionWrapper: frame t gets a_{t-1}, frame 0 zeros
    text = model.empty_text.expand(b, -1, -1)
    ctx_c = torch.cat([text, model.image_proj(model.image_encoder(pixels0))], 1)
    xrec = model.decode_latents(model.encode_frames(pixels0[:, :, None]))[:, :, 0]  # log_images' uc image
    ctx_u = torch.cat([text, model.image_proj(model.image_encoder(xrec))], 1)
    sq = lambda t: torch.tensor(abar[t], dtype=torch.float64).sqrt().float()  # noqa: E731
    sq1 = lambda t: torch.tensor(1 - abar[t], dtype=torch.float64).sqrt().float()  # noqa: E731
    clean = [z_ctx[:, :, i : i + 1] for i in range(n_ctx)]
    noisy = [sq(small_t) * clean[i] + sq1(small_t) * draws["context"][i] for i in range(n_ctx)]  # q_sample, no rescale
    for k in range(horizon):
        t_new = n_ctx + k
        x = draws["init"][k]
        for j, index in enumerate(reversed(range(steps))):
            step = int(ddim_t[index])
            win = torch.cat(noisy + [x], dim=2)
            ts = torch.full((b, t_new + 1), small_t, dtype=torch.long)
            ts[:, -1] = step
            inp = torch.cat([win, z_ctx[:, :, :1].expand(-1, -1, t_new + 1, -1, -1)], dim=1)
            mask_c = torch.ones(b, t_new + 1)
            mask_u = mask_c.clone()
            mask_u[:, -1] = 0  # only the newest frame's action embedding is dropped
            a = acts[:, : t_new + 1]
            e_c = unet(inp, ts, context=ctx_c, fs=torch.full((b,), 3), actions=a, action_mask=mask_c)
            e_u = unet(inp, ts, context=ctx_u, fs=torch.full((b,), 3), actions=a, action_mask=mask_u)
            out = rescale_noise_cfg(e_u + scale * (e_c - e_u), e_c, phi)
            # p_sample_ddim, v-parameterisation, per-frame sqrt(abar_t) from the per-frame timesteps
            st = torch.tensor(abar[ts.numpy()], dtype=torch.float64).float()[:, None, :, None, None]
            e_t = st.sqrt() * out + (1 - st).sqrt() * win
            x0 = st.sqrt() * win - (1 - st).sqrt() * out
            x0 = x0 * float(sc_prev[index] / sc[index])
            ap, sig = float(a_prev[index]), float(sigmas[index])
            x_prev = ap**0.5 * x0 + (1 - ap - sig**2) ** 0.5 * e_t + sig * draws["ddim"][k][j]
            x = x_prev[:, :, -1:]  # ar_alter_history_frames=False: only the newest frame moves
        clean.append(x)
        noisy.append(sq(small_t) * x + sq1(small_t) * draws["renoise"][k])
    return torch.cat(clean[n_ctx:], dim=2)


def _recorded_rollout(model, z_ctx, pixels, acts_in, horizon, cfg, monkeypatch):
    """v2w's rollout, recording every random draw in order."""
    draws = []
    real = sampler_mod.randn

    def rec(shape, generator):
        out = real(shape, generator)
        draws.append(out.clone())
        return out

    monkeypatch.setattr(sampler_mod, "randn", rec)
    with torch.no_grad():
        pred = Roller(model, cfg).rollout(z_ctx, pixels, acts_in, horizon)
    monkeypatch.setattr(sampler_mod, "randn", real)
    n_ctx, steps = z_ctx.shape[2], cfg.steps
    roles = {"context": draws[:n_ctx], "init": [], "ddim": [], "renoise": []}
    i = n_ctx
    for _ in range(horizon):  # per frame: init, one draw per DDIM step, the re-noise when it joins the history
        roles["init"].append(draws[i])
        roles["ddim"].append(draws[i + 1 : i + 1 + steps])
        roles["renoise"].append(draws[i + 1 + steps])
        i += steps + 2
    assert i == len(draws)
    return pred, roles


@pytest.mark.parametrize("domain,norm,cache", [("csgo", "pooled", False), ("rt1", "pooled", False), ("csgo", "per-frame", True)])
def test_guided_rollout_matches_the_official_sampler(imported, domain, norm, cache, monkeypatch):
    model = load_model(imported / f"{domain}-{norm}").eval()
    torch.manual_seed(0)
    b, n_ctx, horizon, steps = 2, 2, 2, 4
    pixels = torch.rand(b, 3, n_ctx, 32, 32) * 2 - 1
    with torch.no_grad():
        z_ctx = model.encode_frames(pixels)
    a_dim = model.unet.config.action_dim
    raw = (torch.rand(b, n_ctx + horizon, a_dim) < 0.2).float() if domain == "csgo" else torch.randn(b, n_ctx + horizon, a_dim)
    cfg = RolloutConfig(steps=steps, guidance=2.5, guidance_rescale=0.7, eta=1.0, cache=cache, seed=3)
    pred, draws = _recorded_rollout(model, z_ctx, pixels, shift_actions(raw), horizon, cfg, monkeypatch)
    with torch.no_grad():
        ref = official_rollout(model, z_ctx, pixels[:, :, 0], raw, horizon, steps, 2.5, 0.7, draws)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(pred, ref, rtol=0, atol=1e-5)
    # and the v2w profile is a different computation on the same model
    v2w_pred, _ = _recorded_rollout(model, z_ctx, pixels, shift_actions(raw), horizon,
                                    RolloutConfig(steps=steps, cache=cache, seed=3, profile="v2w"), monkeypatch)
    assert (v2w_pred - pred).abs().max() > 1e-3


# --------------------------------------------------------------------------- fine-tuning an import


def test_fine_tuning_an_imported_model_runs_resumes_and_masks_dropped_actions(imported, tmp_path):
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.prepare import run as prepare_run
    from pipelines.data.synthetic import write_npz
    from pipelines.train import TrainConfig, diffusion_forcing_loss, list_checkpoints
    from pipelines.train import run as train_run

    write_npz(tmp_path / "raw", lengths=(12, 12, 12), dim=13, h=32, w=32)  # RT-1's 13-d continuous actions
    prepare_run(PrepareConfig(sources=[str(tmp_path / "raw")], out=str(tmp_path / "data"), size=(32, 32), resize="stretch",
                              clip_len=4, stride=4, shard_size=4, val_fraction=0.0, store="npy"))

    def cfg(out, **kw):
        return TrainConfig(**{**dict(model=str(imported / "rt1-pooled"), data=str(tmp_path / "data"), out=str(out), steps=4,
                                     batch_size=2, save_every=2, log_every=1, device="cpu", lr=1e-4), **kw})

    full = train_run(cfg(tmp_path / "full"))
    train_run(cfg(tmp_path / "split"), stop_after=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "split")] == [2]
    second = train_run(cfg(tmp_path / "split", resume="latest"))
    assert second.resumed_from == 2 and second.losses == full.losses[2:]
    tuned = load_model(tmp_path / "full" / "final")
    assert tuned.meta["sampling"]["profile"] == "vid2world" and tuned.unet.config.out_conv == "causal-height"

    class Recorder(torch.nn.Module):
        def forward(self, x, ts, frame0, fs=None, actions=None, action_mask=None):
            self.seen = (actions, action_mask)
            return torch.zeros_like(x[:, :4])

    from pipelines.diffusion import dynamic_rescale_table, make_scheduler

    rec, ones = Recorder(), torch.ones(256, 8, 51)
    diffusion_forcing_loss(rec, torch.randn(256, 4, 8, 1, 1), torch.ones(256, 3, 4, 4), ones, make_scheduler(),
                           dynamic_rescale_table(), torch.Generator().manual_seed(0), action_dropout=0.2, mask_actions=True)
    acts, mask = rec.seen
    assert torch.equal(acts[:, 1:], ones[:, 1:])  # the inputs stay: the official dropout masks the embedding
    assert abs((mask == 0).float().mean().item() - 0.2) < 0.02


def test_an_imported_model_takes_raw_actions_in_training_and_rollout(imported, tmp_path):
    from pipelines.data.stream import ClipStream
    from pipelines.rollout import normalize_actions

    m = load_model(imported / "rt1-pooled")
    raw = torch.randn(1, 3, 13) * 5 + 2
    stats = {"action_type": "continuous", "action_stats": {"mean": [1.0] * 13, "std": [2.0] * 13}}
    assert torch.equal(normalize_actions(m, raw, stats), raw)  # official loaders do not normalise
    assert ClipStream.__init__.__defaults__[-1] is True  # v2w models keep normalising


# --------------------------------------------------------------------------- play and the action layouts


def test_csgo_layout_encoder_and_play_bindings():
    from pipelines.data.sources.csgo_hdf5 import ACTION_NAMES, encode_action
    from pipelines.play import KeyBindings

    a = encode_action(["w", "shift"], ["left"], mouse_x=95, mouse_y=-3)
    on = [ACTION_NAMES[i] for i in np.flatnonzero(a)]
    assert on == ["key_w", "key_shift", "click_left", "mouse_x_100", "mouse_y_-4"]  # nearest bins (a tie: the first listed)
    assert [ACTION_NAMES[i] for i in np.flatnonzero(encode_action())] == ["mouse_x_0", "mouse_y_0"]  # still: the 0 bins
    with pytest.raises(V2WError, match="not one of"):
        encode_action(["q"])

    class Fake:
        meta = {"action_names": list(ACTION_NAMES)}
        unet = type("U", (), {"config": type("C", (), {"action_dim": 51, "action_type": "discrete"})()})()

    kb = KeyBindings.for_model(Fake())
    assert kb.kind == "csgo"
    vec, label = kb.action(["w", "MouseRight", "ArrowLeft", "z"], mouse=(0.0, 12.0))
    assert label == "key_w click_right mouse_x_-30 mouse_y_10" and vec.shape == (51,)


def test_playing_an_imported_csgo_model_records_a_replayable_episode(imported, tmp_path):
    from pipelines.play import PlaySession, PlaySettings
    from pipelines.rollout import RolloutJob, run_interactive

    model = load_model(imported / "csgo-per-frame")
    ctx = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    session = PlaySession(model, ctx, PlaySettings(steps=2, guidance=2.5, seed=1), model_name=str(imported / "csgo-per-frame"))
    frames = [session.step(k, m)["frame"] for k, m in ((["w"], (0, 0)), (["MouseLeft"], (250, -40)), ([], (0, 0)))]
    rec = session.record(tmp_path / "rec")
    acts = np.load(rec / "acts.npy")
    assert acts.shape == (3, 51) and acts.dtype == np.float32 and acts[1, 11] == 1  # multi-hot rows, not ids
    run_interactive(RolloutJob(model=str(imported / "csgo-per-frame"), out=str(tmp_path / "replay"), context=str(rec / "context.npy"),
                               actions=str(rec / "acts.npy"), context_frames=4), RolloutConfig(steps=2, guidance=2.5, seed=1))
    np.testing.assert_array_equal(np.load(tmp_path / "replay" / "frames.npy"), np.load(rec / "frames.npy"))
    assert len(frames) == 3
