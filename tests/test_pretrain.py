"""`v2w pretrain`: a bidirectional base trained from scratch, written in DynamiCrafter's own layout,
that `v2w causalize --ckpt BASE` reads through the real checkpoint's code path."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.errors import V2WError
from pipelines.models.tiny import small_ldm_ddconfig
from pipelines.models.vae import ldm_vae_shapes, load_vae, vae_config_from_ldm, vae_to_ldm_state_dict
from pipelines.models.world_model import load_model
from pipelines.pretrain import PretrainConfig, run
from pipelines.train import TrainConfig, diffusion_forcing_loss
from pipelines.train import run as train_run
from v2w_cli.app import app


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Real Boxing clips (32x32) and a tiny base pretrained for a few steps on them."""
    root = tmp_path_factory.mktemp("pretrain")
    make_atari_episodes(root / "raw", game="boxing", episodes=4, frames=30, seed=3)
    prepare_run(PrepareConfig(sources=[str(root / "raw")], out=str(root / "data"), size=(32, 32), resize="stretch",
                              clip_len=8, stride=4, num_actions=18, shard_size=4, val_fraction=0.25, store="npy"))
    # the default objective (L1 + PatchGAN from step 1, adaptive weight, learned log-variance); LPIPS is
    # off because its weights are not part of a fresh install
    res = run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(root / "base"), arch="tiny",
                             vae_steps=3, vae_batch_size=4, steps=2, batch_size=2, save_every=1, log_every=1, device="cpu"))
    return root, res


def test_vae_to_ldm_is_the_inverse_of_load_vae():
    from diffusers import AutoencoderKL

    dd = small_ldm_ddconfig()
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config_from_ldm(dd))
    ldm = vae_to_ldm_state_dict(vae, dd)
    assert {k: tuple(v.shape) for k, v in ldm.items()} == ldm_vae_shapes(dd)
    back, _ = load_vae({f"first_stage_model.{k}": v for k, v in ldm.items()}, ddconfig=dd)
    ours, theirs = vae.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_base_is_in_dynamicrafter_layout(base):
    root, res = base
    ckpt = torch.load(root / "base" / "model.ckpt", weights_only=True)
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"] if "." in k}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model", "embedder", "image_proj_model"}
    assert any(k.startswith("first_stage_model.encoder.down.0.block.0.conv1.") for k in ckpt["state_dict"])
    assert ckpt["global_step"] == 2
    cfg = yaml.safe_load((root / "base" / "inference.yaml").read_text())["model"]["params"]
    vae_report = json.loads((root / "base" / "work" / "vae.json").read_text())
    assert cfg["scale_factor"] == pytest.approx(vae_report["scale_factor"])
    assert cfg["unet_config"]["params"]["temporal_length"] == 8
    assert res.report["vae"]["steps"] == 3 and res.report["unet"]["steps"] == 2
    assert res.report["vae"]["val_round_trip_psnr_db"] > 0
    assert res.report["vae"]["objective"]["kind"] == "lpips-gan" and "d_loss" in res.report["vae"]["last_terms"]
    assert set(res.report["vae"]["round_trip"]["held_out"]) == {"all"}  # one source folder


def test_causalize_reads_the_base_folder_exactly(base, tmp_path):
    root, _ = base
    res = causalize_run(CausalizeConfig(ckpt=str(root / "base"), out=str(tmp_path / "m"), action_dim=18, action_type="discrete"))
    assert res.check["causal"]
    model, trained = load_model(tmp_path / "m"), load_model(root / "base" / "work" / "run" / "final")
    # the VAE, Resampler and every U-Net weight the causal model kept arrive bit-exact
    for part in ("vae", "image_proj", "image_encoder"):
        a, b = getattr(model, part).state_dict(), getattr(trained, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
    a, b = model.unet.state_dict(), trained.unet.state_dict()
    temporal_conv = [k for k in b if "temopral_conv" in k]  # (DynamiCrafter's spelling) weights transferred, not copied
    same = [k for k in b if k not in temporal_conv]
    assert temporal_conv and all(torch.equal(a[k], b[k]) for k in same)
    assert model.meta["latent_scale"] == pytest.approx(trained.meta["latent_scale"])
    # the checkpoint file itself: its inference.yaml beside it is the config (a small arch, not the default)
    causalize_run(CausalizeConfig(ckpt=str(root / "base" / "model.ckpt"), out=str(tmp_path / "f"), action_dim=18, action_type="discrete"))
    assert load_model(tmp_path / "f").unet.config.model_channels == model.unet.config.model_channels


def test_from_scratch_reinitialises_only_the_unet_and_resampler(base, tmp_path):
    root, _ = base
    causalize_run(CausalizeConfig(ckpt=str(root / "base"), out=str(tmp_path / "s"), action_dim=18, action_type="discrete", from_scratch=True))
    causalize_run(CausalizeConfig(ckpt=str(root / "base"), out=str(tmp_path / "p"), action_dim=18, action_type="discrete"))
    s, p = load_model(tmp_path / "s"), load_model(tmp_path / "p")
    assert all(torch.equal(s.vae.state_dict()[k], v) for k, v in p.vae.state_dict().items())
    w = "input_blocks.1.0.in_layers.2.weight"
    assert not torch.equal(s.unet.state_dict()[w], p.unet.state_dict()[w])
    assert s.meta["causalize"]["from_scratch"] is True


def test_half_checkpoint_is_smaller_and_loads(base, tmp_path):
    root, _ = base
    res = run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(tmp_path / "h"), arch="tiny", vae_steps=1, vae_batch_size=4,
                             steps=1, batch_size=2, device="cpu", half=True))
    full = (root / "base" / "model.ckpt").stat().st_size
    assert (tmp_path / "h" / "model.ckpt").stat().st_size < 0.6 * full
    assert res.report["checkpoint_mb"] > 0
    causalize_run(CausalizeConfig(ckpt=str(tmp_path / "h"), out=str(tmp_path / "m")))
    assert next(load_model(tmp_path / "m").unet.parameters()).dtype == torch.float32


def test_refuses_to_overwrite_and_resumes(base, tmp_path):
    root, _ = base
    with pytest.raises(V2WError, match="already holds a pretrained base"):
        run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(root / "base"), arch="tiny", device="cpu"))
    # resume: the finished VAE is kept (same file), the finished U-Net run is exported again
    before = (root / "base" / "work" / "vae.safetensors").read_bytes()
    res = run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(root / "base"), arch="tiny", vae_steps=3, vae_batch_size=4,
                             steps=2, batch_size=2, device="cpu", resume=True))
    assert (root / "base" / "work" / "vae.safetensors").read_bytes() == before and res.report["losses_this_call"] == 0


def test_shared_noise_levels_are_one_per_clip(base):
    root, _ = base
    model = load_model(root / "base" / "work" / "init")
    from pipelines.diffusion import dynamic_rescale_table, make_scheduler

    sched = make_scheduler(None)
    table = dynamic_rescale_table(1000, 0.7, 400)
    z, f0 = torch.randn(3, 4, 8, 4, 4), torch.rand(3, 3, 32, 32) * 2 - 1
    for shared in (True, False):
        _, _, ts = diffusion_forcing_loss(model, z, f0, None, sched, table, torch.Generator().manual_seed(0), shared_noise=shared)
        assert (ts == ts[:, :1]).all() == shared


def test_time_limit_stops_saves_and_records(base, tmp_path):
    root, _ = base
    causalize_run(CausalizeConfig(ckpt=str(root / "base"), out=str(tmp_path / "m"), action_dim=18, action_type="discrete"))
    res = train_run(TrainConfig(model=str(tmp_path / "m"), data=str(root / "data"), out=str(tmp_path / "r"), steps=1000,
                                batch_size=2, device="cpu", time_limit=1e-9, ema_decay=0))
    assert res.steps < 1000
    trained = json.loads((tmp_path / "r" / "final" / "config.json").read_text())["trained"]
    assert trained["steps"] == res.steps and trained["planned_steps"] == 1000


def test_cli_pretrain_errors_and_help(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--help"])
    assert res.exit_code == 0 and "v2w pretrain" in res.output
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "nope" in res.output
    res = runner.invoke(app, ["causalize", "--ckpt", str(tmp_path), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "no model.ckpt" in res.output


def test_info_shows_a_base(base):
    root, _ = base
    res = CliRunner().invoke(app, ["info", str(root / "base"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["kind"] == "v2w-pretrain"


def test_vae_shift_and_init_from_a_base(base, tmp_path):
    root, _ = base
    res = run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(tmp_path / "b2"), arch="tiny", vae_steps=1, vae_batch_size=4,
                             steps=1, batch_size=2, device="cpu", vae_shift=4, init=str(root / "base")))
    vae = res.report["vae"]
    assert vae["shift"] == 4 and set(vae["val_round_trip_by_shift_db"]) == {"0", "1", "2", "4", "8", "16"}
    assert res.report["config"]["init"] == str(root / "base")
    with pytest.raises(V2WError, match="vae-shift"):
        PretrainConfig(data="d", out="o", vae_shift=-1)
    with pytest.raises(V2WError, match="pass the --arch the BASE was made with"):  # another architecture does not fit
        run(PretrainConfig(perceptual_weight=0, disc_start=1, data=str(root / "data"), out=str(tmp_path / "b3"), arch="small", vae_steps=1, vae_batch_size=4,
                           steps=1, batch_size=2, device="cpu", init=str(root / "base")))
