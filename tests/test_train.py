"""v2w train: Diffusion Forcing maths, dropout rates, exact resume, frozen modules, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.diffusion import dynamic_rescale_table, make_scheduler
from pipelines.errors import V2WError
from pipelines.models.action import shift_actions
from pipelines.models.world_model import load_model
from pipelines.train import TrainConfig, diffusion_forcing_loss, list_checkpoints, run
from v2w_cli.app import app, normalize_argv


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Real Breakout clips (32x32) and the tiny causal model with 4 discrete actions."""
    root = tmp_path_factory.mktemp("train")
    make_atari_episodes(root / "raw", episodes=5, frames=30, seed=1)
    prepare_run(PrepareConfig(sources=[str(root / "raw")], out=str(root / "data"), size=(32, 32), resize="stretch",
                              clip_len=6, stride=3, num_actions=4, shard_size=4, val_fraction=0.2, store="npy"))
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "model"), action_dim=4, action_type="discrete"))
    return root


def cfg(setup, out, **kw) -> TrainConfig:
    base = dict(model=str(setup / "model"), data=str(setup / "data"), out=str(out), steps=6, batch_size=2,
                save_every=2, log_every=1, device="cpu", lr=1e-4)
    return TrainConfig(**{**base, **kw})


class Recorder(torch.nn.Module):
    """Stands in for the world model: records what the loss feeds it, predicts zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, ts, frame0, fs=None, actions=None):
        self.calls.append({"x": x, "ts": ts, "frame0": frame0, "actions": actions})
        return torch.zeros_like(x[:, :4])


def test_noise_levels_are_independent_per_frame_and_cover_the_range():
    rec, g = Recorder(), torch.Generator().manual_seed(0)
    lat = torch.randn(256, 4, 8, 2, 2)
    diffusion_forcing_loss(rec, lat, torch.zeros(256, 3, 8, 8), None, make_scheduler(), dynamic_rescale_table(), g)
    ts = rec.calls[0]["ts"].float()
    assert ts.shape == (256, 8) and ts.min() < 10 and ts.max() > 990
    assert abs(ts.mean().item() - 499.5) < 20
    corr = np.corrcoef(ts.T.numpy())
    assert np.abs(corr[~np.eye(8, dtype=bool)]).max() < 0.25  # frames draw independently
    assert (ts[:, 0] != ts[:, 1]).float().mean() > 0.99


def test_action_shift_and_dropout_rates():
    a = torch.arange(1, 4 * 10 + 1, dtype=torch.float32).view(1, 10, 4)
    assert torch.equal(shift_actions(a)[0, 0], torch.zeros(4)) and torch.equal(shift_actions(a)[0, 1:], a[0, :-1])
    rec, g = Recorder(), torch.Generator().manual_seed(0)
    actions = torch.ones(512, 16, 3)
    diffusion_forcing_loss(rec, torch.randn(512, 4, 16, 1, 1), torch.ones(512, 3, 4, 4), actions, make_scheduler(),
                           dynamic_rescale_table(), g, action_dropout=0.2, cond_dropout=0.05)
    got = rec.calls[0]["actions"]
    dropped = (got[:, 1:].abs().sum(-1) == 0).float().mean().item()  # frame 0 is always zero (the shift)
    assert abs(dropped - 0.2) < 0.02 and not got[:, 0].any()
    cond_dropped = (rec.calls[0]["frame0"].abs().sum((1, 2, 3)) == 0).float().mean().item()
    assert abs(cond_dropped - 0.05) < 0.03
    concat = rec.calls[0]["x"][:, 4:]
    assert torch.equal(concat[:, :, 0] == 0, concat[:, :, -1] == 0)  # the concat latent is frame 0 on every frame


def test_loss_target_is_dynamic_rescaled_velocity():
    rec, g = Recorder(), torch.Generator().manual_seed(3)
    lat = torch.randn(2, 4, 3, 2, 2)
    loss, per_frame, ts = diffusion_forcing_loss(rec, lat, torch.zeros(2, 3, 4, 4), None, make_scheduler(),
                                                 dynamic_rescale_table(), g, cond_dropout=0.0)
    # zero prediction: loss = mean(v^2) with v from x0 * scale_arr[t]
    g2 = torch.Generator().manual_seed(3)
    ts2 = torch.randint(0, 1000, (2, 3), generator=g2)
    noise = torch.randn(lat.shape, generator=g2)
    s = make_scheduler()
    ac = s.alphas_cumprod[ts2][:, None, :, None, None]
    x0 = lat * dynamic_rescale_table()[ts2][:, None, :, None, None]
    v = ac.sqrt() * noise - (1 - ac).sqrt() * x0
    assert torch.equal(ts, ts2)
    torch.testing.assert_close(per_frame, (v**2).mean(dim=(1, 3, 4)))


def test_overfitting_one_clip_lowers_the_loss(setup, tmp_path):
    """Steps at a high learning rate on one clip and one noise draw: that loss falls a lot."""
    from pipelines.data.stream import ClipStream, collate

    model = load_model(setup / "model")
    clip = collate([next(ClipStream(setup / "data").samples())[2]])
    with torch.no_grad():
        lat = model.encode_frames(clip["frames"])
    params = [p for p in model.unet.parameters()] + list(model.image_proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched, table = make_scheduler(), dynamic_rescale_table()

    def fixed_loss():
        with torch.no_grad():
            return diffusion_forcing_loss(model, lat, clip["frames"][:, :, 0], clip["actions"], sched, table,
                                          torch.Generator().manual_seed(123), 0.0, 0.0)[0].item()

    before = fixed_loss()
    model.unet.train()
    for i in range(80):
        loss = diffusion_forcing_loss(model, lat, clip["frames"][:, :, 0], clip["actions"], sched, table,
                                      torch.Generator().manual_seed(123), 0.0, 0.0)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.unet.eval()
    after = fixed_loss()
    assert after < 0.35 * before, (before, after)  # measured: 0.225 -> 0.056


def test_resume_gives_the_identical_loss_sequence(setup, tmp_path):
    full = run(cfg(setup, tmp_path / "full"))
    first = run(cfg(setup, tmp_path / "split"), stop_after=3)  # "killed" after step 3 (last save: step 2)
    assert first.steps == 3 and [s for s, _ in list_checkpoints(tmp_path / "split")] == [2]
    second = run(cfg(setup, tmp_path / "split", resume="latest"))
    assert second.resumed_from == 2
    assert first.losses[:2] + second.losses == full.losses  # bit-for-bit on CPU
    log = [json.loads(ln) for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert set(log[0]) >= {"loss", "loss_by_noise_level", "lr", "grad_norm", "samples_per_s", "memory_mb"}
    assert list((tmp_path / "split" / "tensorboard").glob("events.out.tfevents.*"))
    a, b = load_model(tmp_path / "full" / "final"), load_model(tmp_path / "split" / "final")
    for (k, x), (_, y) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(x, y), k


def test_preview_gif(setup, tmp_path):
    from PIL import Image

    run(cfg(setup, tmp_path / "run", steps=2, preview_every=2, ema_decay=0.0))
    gif = Image.open(tmp_path / "run" / "previews" / "step-0000002.gif")
    assert gif.n_frames == 6 and gif.size == (64, 32)  # reference | prediction, every clip frame


def test_half_written_checkpoints_are_ignored_on_resume(setup, tmp_path):
    out = tmp_path / "run"
    run(cfg(setup, out, steps=4))
    ckdir = out / "checkpoints"
    (ckdir / ".step-6.tmp123").mkdir()  # a temp folder left by a kill mid-save
    (ckdir / ".step-6.tmp123" / "model.safetensors").write_bytes(b"partial")
    (ckdir / "step-8").mkdir()  # no state.json: not a complete checkpoint
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    res = run(cfg(setup, out, steps=6, resume="latest"))
    assert res.resumed_from == 4 and res.steps == 6
    assert not (ckdir / ".step-6.tmp123").exists()


def test_frozen_modules_get_no_gradient_and_no_optimizer_state(setup, tmp_path):
    out = tmp_path / "run"
    run(cfg(setup, out, steps=2, ema_decay=0.0))
    opt = torch.load(out / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    model = load_model(setup / "model")
    n_trainable = sum(1 for _ in model.unet.parameters()) + sum(1 for _ in model.image_proj.parameters())
    assert len(opt["state"]) == n_trainable  # the VAE and CLIP tower are not in the optimizer
    trained = load_model(out / "final")
    for name in ("vae", "image_encoder"):
        for (k, a), (_, b) in zip(getattr(model, name).state_dict().items(), getattr(trained, name).state_dict().items()):
            assert torch.equal(a, b), (name, k)
    # and the loss sends them no gradient
    from pipelines.data.stream import ClipStream, collate

    clip = collate([next(ClipStream(setup / "data").samples())[2]])
    with torch.no_grad():
        lat = model.encode_frames(clip["frames"])
    loss = diffusion_forcing_loss(model, lat, clip["frames"][:, :, 0], clip["actions"], make_scheduler(),
                                  dynamic_rescale_table(), torch.Generator().manual_seed(0))[0]
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters()) and all(p.grad is None for p in model.image_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters())


def test_train_temporal_only_changes_temporal_and_new_layers(setup, tmp_path):
    from pipelines.models.attention import TemporalTransformer
    from pipelines.models.unet import TemporalConvBlock

    run(cfg(setup, tmp_path / "run", steps=2, train="temporal", ema_decay=0.0, lr=1e-3))
    base = load_model(setup / "model").unet
    a, b = base.state_dict(), load_model(tmp_path / "run" / "final").unet.state_dict()
    allowed = {
        f"{name}.{k}" if name else k
        for name, m in base.named_modules()
        if isinstance(m, (TemporalConvBlock, TemporalTransformer)) or name in ("time_embed", "action_encoder")
        for k in m.state_dict()
    }
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and changed <= allowed, sorted(changed - allowed)[:5]
    assert any("temopral_conv" in k for k in changed) and any(k.startswith("action_encoder.") for k in changed)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path, monkeypatch):
    import pipelines.train as train_mod

    real = train_mod.diffusion_forcing_loss
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        loss, per, ts = real(*a, **kw)
        return (loss * float("nan") if calls["n"] == 3 else loss), per, ts

    monkeypatch.setattr(train_mod, "diffusion_forcing_loss", flaky)
    with pytest.raises(V2WError, match=r"loss is nan at step 3; stopped without saving\. Last good checkpoint: .*step-2"):
        run(cfg(setup, tmp_path / "run"))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_bad_inputs(setup, tmp_path):
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m7"), action_dim=7))
    with pytest.raises(V2WError, match="the data has 4-d actions but the model expects 7-d; causalize with --action-dim 4"):
        run(cfg(setup, tmp_path / "a", model=str(tmp_path / "m7")))
    prepare_run(PrepareConfig(sources=[str(setup / "raw")], out=str(tmp_path / "d24"), size=(24, 24), clip_len=6,
                              num_actions=4, val_fraction=0.2, store="npy"))
    with pytest.raises(V2WError, match="frames are 24x24; this model needs sizes divisible by 16"):
        run(cfg(setup, tmp_path / "b", data=str(tmp_path / "d24")))
    prepare_run(PrepareConfig(sources=[str(setup / "raw")], out=str(tmp_path / "dval"), size=(32, 32), clip_len=6,
                              num_actions=4, val_fraction=0.0, store="npy"))
    with pytest.raises(V2WError, match="the val split is empty"):
        from pipelines.data.stream import ClipStream

        ClipStream(tmp_path / "dval", "val")
    run(cfg(setup, tmp_path / "c", steps=2))
    with pytest.raises(V2WError, match="has checkpoints already; pass --resume"):
        run(cfg(setup, tmp_path / "c", steps=4))
    with pytest.raises(V2WError, match="--precision must be one of"):
        run(cfg(setup, tmp_path / "d", precision="fp8"))


def test_cli_train_resume_and_final_is_causal(setup, tmp_path):
    runner = CliRunner()
    args = ["train", "--model", str(setup / "model"), "--data", str(setup / "data"), "--out", str(tmp_path / "r"),
            "--steps", "2", "--save-every", "1", "--device", "cpu", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 2
    res = runner.invoke(app, normalize_argv(args[:5] + ["--out", str(tmp_path / "r"), "--steps", "3", "--device", "cpu", "--resume", "--json"]))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["resumed_from"] == 2
    res = runner.invoke(app, ["causalize", "--ckpt", str(tmp_path / "r" / "final"), "--check", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["check"]["causal"]
    assert normalize_argv(["train", "--resume", "--quiet"]) == ["train", "--resume", "latest", "--quiet"]
    assert normalize_argv(["train", "--resume", "step-4"]) == ["train", "--resume", "step-4"]
    # pretrain's --resume is a plain flag: a trailing one must stay bare
    assert normalize_argv(["pretrain", "--quiet", "--resume"]) == ["pretrain", "--quiet", "--resume"]
    shutil.rmtree(tmp_path / "r")


@pytest.mark.slow
def test_two_processes_on_cpu_resume_identically(setup, tmp_path):
    """`--num-processes 2` (accelerate launch, gloo on the CPU): disjoint shards per rank, and a
    stop + resume ends with the same weights as one uninterrupted run."""
    import subprocess
    import sys

    def train(out, steps, *extra):
        cmd = [sys.executable, "-m", "v2w_cli", "train", "--model", str(setup / "model"), "--data", str(setup / "data"),
               "--out", str(out), "--steps", str(steps), "--save-every", "2", "--device", "cpu", "--num-processes", "2",
               "--quiet", *extra]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)

    train(tmp_path / "full", 4)
    train(tmp_path / "split", 2)
    train(tmp_path / "split", 4, "--resume")
    state = json.loads((tmp_path / "full" / "checkpoints" / "step-4" / "state.json").read_text())
    assert sorted(p["rank"] for p in state["processes"]) == [0, 1]
    a, b = load_model(tmp_path / "full" / "final"), load_model(tmp_path / "split" / "final")
    for (k, x), (_, y) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(x, y), k
