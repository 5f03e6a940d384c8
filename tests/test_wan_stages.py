"""train, rollout and eval on a Wan-family MODEL (the tiny-wan stand-in), as a user runs them."""

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
from pipelines.diffusion import flow_sigma
from pipelines.errors import V2WError
from pipelines.models.latent_frames import group_actions
from pipelines.models.world_model import load_model
from pipelines.sampler import RolloutConfig
from pipelines.train import TrainConfig, flow_forcing_loss, list_checkpoints, run
from pipelines.wan_sampler import WanRoller
from v2w_cli.app import app


@pytest.fixture(scope="module")
def wan_env(tmp_path_factory):
    """Breakout clips of 9 frames (1 + 4k: 3 latent frames) at 32x32 and tiny-wan with 4 discrete actions."""
    root = tmp_path_factory.mktemp("wan")
    make_atari_episodes(root / "raw", episodes=4, frames=30, seed=1)
    prepare_run(PrepareConfig(sources=[str(root / "raw")], out=str(root / "data"), size=(32, 32), resize="stretch",
                              clip_len=9, stride=4, num_actions=4, shard_size=4, val_fraction=0.25, store="npy"))
    causalize_run(CausalizeConfig(ckpt="tiny-wan", out=str(root / "model"), family="wan", action_dim=4, action_type="discrete"))
    return root


def cfg(env, out, **kw) -> TrainConfig:
    base = dict(model=str(env / "model"), data=str(env / "data"), out=str(out), steps=4, batch_size=2, save_every=2,
                log_every=1, device="cpu", lr=1e-3)
    return TrainConfig(**{**base, **kw})


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, ts, actions=None):
        self.calls.append({"x": x, "ts": ts, "actions": actions})
        return torch.zeros_like(x)


def test_flow_forcing_loss_is_the_flow_matching_target_per_latent_frame():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    acts = torch.randn(64, 9, 2, generator=torch.Generator().manual_seed(2))
    rec = Recorder()
    loss, per_frame, ts = flow_forcing_loss(rec, x0, acts, g, shift=3.0, action_dropout=0.5)
    call = rec.calls[0]
    sigma = call["ts"] / 1000
    assert sigma.shape == (64, 3) and (sigma[:, 0] != sigma[:, 1]).any()  # one level per latent frame
    # replay the generator: u, then the noise
    g2 = torch.Generator().manual_seed(0)
    u = torch.rand(64, 3, generator=g2)
    noise = torch.randn(x0.shape, generator=g2)
    torch.testing.assert_close(sigma, flow_sigma(u, 3.0))
    s = sigma[:, None, :, None, None]
    torch.testing.assert_close(call["x"], (1 - s) * x0 + s * noise)
    # a zero prediction: the loss is |eps - x0|^2 per frame
    torch.testing.assert_close(per_frame, (noise - x0).square().mean(dim=(1, 3, 4)))
    # actions: shifted (video frame t gets a_{t-1}), 4 per latent frame, dropped per latent frame at ~50%
    a = call["actions"]
    full = group_actions(torch.cat([torch.zeros(64, 1, 2), acts[:, :-1]], dim=1))
    kept = (a != 0).any(dim=-1)
    assert torch.equal(a[kept], full[kept]) and 0.3 < kept[:, 1:].float().mean() < 0.7
    assert ts.dtype == torch.long and ts.max() <= 999


def test_train_resumes_bit_exactly_and_writes_a_wan_model(wan_env, tmp_path):
    full = run(cfg(wan_env, tmp_path / "full"))
    first = run(cfg(wan_env, tmp_path / "split"), stop_after=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "split")] == [2]
    second = run(cfg(wan_env, tmp_path / "split", resume="latest"))
    assert first.losses[:2] + second.losses == full.losses and all(np.isfinite(full.losses))
    a, b = load_model(tmp_path / "full" / "final"), load_model(tmp_path / "split" / "final")
    assert a.family == "wan" and a.meta["trained"]["steps"] == 4 and a.meta["trained"]["clip_len"] == 9
    for (k, x), (_, y) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items()):
        assert torch.equal(x, y), k
    before = load_model(wan_env / "model").transformer.action_encoder.embedding
    assert not torch.equal(a.transformer.action_encoder.embedding, before)  # the action path trained


def test_train_temporal_changes_only_attention_time_embedding_and_actions(wan_env, tmp_path):
    run(cfg(wan_env, tmp_path / "run", steps=2, train="temporal", ema_decay=0.0))
    before = load_model(wan_env / "model").transformer.state_dict()
    after = load_model(tmp_path / "run" / "final").transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = (".attn1.", "condition_embedder.time_embedder.", "condition_embedder.time_proj.", "action_encoder.")
    assert changed and all(any(a in k for a in allowed) for k in changed), sorted(changed)[:5]
    assert any(".attn1." in k for k in changed) and not any(".ffn." in k or ".attn2." in k for k in changed)


def test_train_refuses_clips_that_are_not_1_plus_4k(wan_env, tmp_path):
    prepare_run(PrepareConfig(sources=[str(wan_env / "raw")], out=str(tmp_path / "d8"), size=(32, 32), resize="stretch",
                              clip_len=8, num_actions=4, store="npy"))
    with pytest.raises(V2WError, match=r"clips of 1 \+ 4k frames.*--clip-len 9"):
        run(cfg(wan_env, tmp_path / "run", data=str(tmp_path / "d8")))


def test_rollout_cache_equals_no_cache_and_follows_actions(wan_env):
    model = load_model(wan_env / "model")
    torch.manual_seed(0)
    model.transformer.action_encoder.embedding.data.normal_(0, 0.5)  # make actions matter
    g = torch.Generator().manual_seed(0)
    pix = torch.rand(2, 3, 5, 32, 32, generator=g) * 2 - 1
    acts = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 17), generator=g), 4).float()
    with torch.no_grad():
        lat = model.encode_frames(pix)
        for window in (8, 3):  # 3: the window slides twice
            runs = {c: WanRoller(model, RolloutConfig(steps=3, cache=c, window=window, guidance=2.0)) for c in (True, False)}
            out = {c: r.rollout(lat, pix, acts, 12) for c, r in runs.items()}
            assert out[True].shape == (2, 4, 3, 8, 8)
            assert (out[True] - out[False]).abs().max() <= 1e-5
            assert runs[True].frame_passes < runs[False].frame_passes
        other = acts.clone()
        other[:, 5:] = torch.nn.functional.one_hot(torch.tensor(2), 4).float()
        moved = WanRoller(model, RolloutConfig(steps=3, window=3, guidance=2.0)).rollout(lat, pix, other, 12)
        assert (moved - out[True]).abs().max() > 1e-2
        r = WanRoller(model, RolloutConfig(steps=3))
        video = r.decode(r.rollout(lat, pix, acts, 8))
        assert video.shape == (2, 3, 8, 32, 32) and video.abs().max() <= 1
        with pytest.raises(V2WError, match="multiple of 4"):
            r.rollout(lat, pix, acts, 6)


def test_cli_batch_rollout_and_eval(wan_env, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["rollout", "--model", str(wan_env / "model"), "--data", str(wan_env / "data"), "--split", "val",
                              "--out", str(tmp_path / "pred"), "--steps", "2", "--shuffle-actions", "--quiet"])
    assert res.exit_code == 0, res.output
    clip = np.load(sorted((tmp_path / "pred" / "clips").glob("*.npz"))[0])
    assert clip["context"].shape == (1, 32, 32, 3) and clip["pred"].shape == clip["ref"].shape == (8, 32, 32, 3)
    res = runner.invoke(app, ["eval", "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "rep"),
                              "--metrics", "psnr,ssim", "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(rep["sets"]) == {"model", "copy-last", "shuffled-actions"} and len(rep["sets"]["model"]["psnr_per_horizon"]) == 8
    res = runner.invoke(app, ["rollout", "--model", str(wan_env / "model"), "--data", str(wan_env / "data"), "--split", "val",
                              "--out", str(tmp_path / "p2"), "--context-frames", "2"])
    assert res.exit_code == 1 and "1 + 4k video frames" in res.output
    np.save(tmp_path / "ctx.npy", clip["context"])
    res = runner.invoke(app, ["rollout", "--model", str(wan_env / "model"), "--context", str(tmp_path / "ctx.npy"),
                              "--action-sweep", "--steps", "2", "--out", str(tmp_path / "sweep"), "--json"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "sweep" / "sweep.npz") as sweep:
        assert sweep["frames"].shape[:2] == (4, 1 + 8)  # 4 actions, context + 2 latent frames of 4


def test_streaming_vae_decode_equals_decoding_the_whole_clip(wan_env):
    model = load_model(wan_env / "model")
    g = torch.Generator().manual_seed(3)
    lat = torch.randn(2, 4, 4, 8, 8, generator=g)
    with torch.no_grad():
        whole = model.decode_latents(lat)
        stream = model.decoder_stream()
        parts = [stream.push(lat[:, :, :1]), stream.push(lat[:, :, 1:3]), stream.push(lat[:, :, 3:])]
    assert [p.shape[2] for p in parts] == [1, 8, 4] and whole.shape[2] == 13
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5


def test_play_session_on_wan_replays_with_v2w_rollout(wan_env, tmp_path):
    """v2w play on a Wan MODEL: one latent frame (4 video frames) per held action, shown frame by frame;
    record writes acts.npy for whole latent frames, and `v2w rollout --actions` reproduces every frame."""
    from pipelines.play import PlaySession, PlaySettings, load_context
    from pipelines.rollout import RolloutJob, run_interactive

    model = load_model(wan_env / "model")
    ctx, _ = load_context(model, data=str(wan_env / "data"), context_frames=1)
    session = PlaySession(model, ctx, PlaySettings(steps=2, guidance=2.0, seed=3), model_name=str(wan_env / "model"))
    keys = [["2"], ["4"], ["1"], [], ["3"], ["4"]]  # frames 1-4 use "2"; frames 5-8 use "3" (held at frame 5)
    frames = [session.step(k)["frame"] for k in keys]
    assert session.actions == [1, 1, 1, 1, 2, 2] and len(frames) == 6
    rec = session.record(tmp_path / "rec")
    assert np.load(rec / "acts.npy").tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    run_interactive(RolloutJob(model=str(wan_env / "model"), out=str(tmp_path / "replay"), context=str(rec / "context.npy"),
                               actions=str(rec / "acts.npy"), context_frames=1), RolloutConfig(steps=2, guidance=2.0, seed=3))
    replay = np.load(tmp_path / "replay" / "frames.npy")
    np.testing.assert_array_equal(replay[: 1 + 6], np.load(rec / "frames.npy"))
    assert np.array_equal(session.reset(), ctx[-1])
    assert all(np.array_equal(a, session.step(k)["frame"]) for a, k in zip(frames, keys))


def test_gradient_checkpointing_and_bf16_training(wan_env, tmp_path):
    from accelerate.state import AcceleratorState

    plain = run(cfg(wan_env, tmp_path / "a", steps=2, ema_decay=0.0))
    ckpt = run(cfg(wan_env, tmp_path / "b", steps=2, ema_decay=0.0, gradient_checkpointing=True))
    assert ckpt.losses == plain.losses  # recomputation changes memory, not numbers
    AcceleratorState._reset_state()  # accelerate allows one mixed precision per process state
    try:
        half = run(cfg(wan_env, tmp_path / "c", steps=2, precision="bf16"))
    finally:
        AcceleratorState._reset_state()
    assert all(np.isfinite(half.losses)) and abs(half.losses[0] - plain.losses[0]) < 0.1 * plain.losses[0]
    final = load_model(tmp_path / "c" / "final")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in final.transformer.parameters())
