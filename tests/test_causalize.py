"""Causalization: weight-transfer maths, causal layers, checkpoint loading, probe, MODEL round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig, run
from pipelines.errors import V2WError
from pipelines.models.causal import (
    CausalTemporalConv3d,
    FrameGroupNorm,
    extrapolation_matrix,
    transfer_temporal_kernel,
)
from pipelines.models.dynamicrafter import load_dynamicrafter_base
from pipelines.models.surgery import causalize, check_causality, probe_inputs
from pipelines.models.tiny import TINY_UNET, tiny_dynamicrafter_checkpoint, tiny_inference_config
from pipelines.models.unet import VideoUNet
from pipelines.models.world_model import load_model
from v2w_cli.app import app

runner = CliRunner()


# ---------------------------------------------------------------- weight transfer (pure maths)


def test_transfer_formulas_for_three_taps():
    w = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)  # (w0, w1, w2) on frames (t-1, t, t+1)
    flat = lambda mode, **kw: transfer_temporal_kernel(w, mode, **kw).flatten().tolist()  # noqa: E731
    assert flat("shift") == [1.0, 2.0, 3.0]
    assert flat("masked") == [0.0, 1.0, 2.0]
    assert flat("extrapolative") == [0.0, 1.0 - 3.0, 2.0 + 2 * 3.0]  # (0, w0 - w2, w1 + 2 w2)
    assert flat("extrapolative", order=0) == [0.0, 1.0 + 1.5, 2.0 + 1.5]  # constant fit = mean of (t-1, t)


def test_extrapolation_matrix_is_exact_on_polynomials():
    for half, order in [(1, 1), (2, 1), (2, 2), (3, 2)]:
        e = extrapolation_matrix(half, order)
        t = np.arange(-half, half + 1, dtype=np.float64)
        for coeffs in np.random.default_rng(order).normal(size=(3, order + 1)):
            x = np.polyval(coeffs, t)
            np.testing.assert_allclose(e @ x[: half + 1], x[half + 1 :], atol=1e-9)
    with pytest.raises(ValueError, match="order"):
        extrapolation_matrix(1, 2)


@pytest.mark.parametrize("k,order", [(3, 1), (5, 1), (5, 2)])
def test_extrapolative_causal_conv_reproduces_original_on_polynomial_inputs(k, order):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 5, (k, 1, 1), padding=(k // 2, 0, 0)).double()
    causal = CausalTemporalConv3d.from_conv(conv, "extrapolative", order).double()
    t = torch.arange(12, dtype=torch.float64)
    coeffs = torch.randn(order + 1, 1, 4, 1, 3, 3, dtype=torch.float64)
    x = sum(c * t.view(1, 1, -1, 1, 1) ** i for i, c in enumerate(coeffs))  # (1, 4, 12, 3, 3), degree <= order
    y, yc = conv(x), causal(x)
    h = k // 2
    # interior frames: the original sees real frames on both sides, the causal one k-1 real past frames
    torch.testing.assert_close(yc[:, :, 2 * h : -h], y[:, :, 2 * h : -h], atol=1e-8, rtol=1e-8)
    masked = CausalTemporalConv3d.from_conv(conv, "masked").double()
    assert (masked(x)[:, :, 2 * h : -h] - y[:, :, 2 * h : -h]).abs().max() > 1e-3  # masking is not exact


def test_causal_conv_sees_only_the_past():
    conv = CausalTemporalConv3d.from_conv(nn.Conv3d(2, 2, (3, 1, 1), padding=(1, 0, 0)), "shift")
    x = torch.randn(1, 2, 6, 2, 2)
    x2 = x.clone()
    x2[:, :, 4:] += 1.0
    assert torch.equal(conv(x)[:, :, :4], conv(x2)[:, :, :4])
    # zero padding on the left: frame 0 equals the last tap applied to frame 0 alone
    expect = torch.einsum("oi,bihw->bohw", conv.weight[:, :, 2, 0, 0], x[:, :, 0]) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x)[:, :, 0], expect)


def test_frame_group_norm_per_frame_and_pooled():
    x = torch.randn(2, 32, 5, 3, 3)
    pooled = FrameGroupNorm(8, 32)
    torch.testing.assert_close(pooled(x), nn.GroupNorm(8, 32)(x))
    per = FrameGroupNorm(8, 32, per_frame=True)
    manual = torch.stack([nn.GroupNorm(8, 32)(x[:, :, i]) for i in range(5)], dim=2)
    torch.testing.assert_close(per(x), manual)


# ---------------------------------------------------------------- checkpoint loading


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """The tiny base written exactly as DynamiCrafter's Lightning .ckpt (torch.save of a dict)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save(tiny_dynamicrafter_checkpoint(), path)
    yaml_path = path.with_name("inference_tiny.yaml")
    import yaml

    yaml_path.write_text(yaml.safe_dump(tiny_inference_config()))
    return path, yaml_path


def test_lightning_checkpoint_loads_every_key(tiny_ckpt):
    path, yaml_path = tiny_ckpt
    base, source = load_dynamicrafter_base(str(path), base_config=str(yaml_path))
    sd = tiny_dynamicrafter_checkpoint()["state_dict"]
    for key, value in base.unet.state_dict().items():
        assert torch.equal(value, sd[f"model.diffusion_model.{key}"]), key
    assert base.vae is not None and base.image_encoder is not None and base.image_proj is not None
    assert base.empty_text.shape == (1, 77, TINY_UNET["context_dim"]) and source == str(path)


def test_bare_and_safetensors_state_dicts_load(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    path, yaml_path = tiny_ckpt
    sd = tiny_dynamicrafter_checkpoint()["state_dict"]
    torch.save(sd, tmp_path / "bare.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    ref = VideoUNet.from_dynamicrafter(path, config=str(yaml_path))
    for f in ("bare.pt", "w.safetensors"):
        unet = VideoUNet.from_dynamicrafter(tmp_path / f, config=str(yaml_path))
        for (k, a), (_, b) in zip(ref.state_dict().items(), unet.state_dict().items()):
            assert torch.equal(a, b), (f, k)
    unet = VideoUNet.from_dynamicrafter(sd, config={"unet_config": {"params": TINY_UNET}})  # dict + params dict
    assert unet.config.model_channels == TINY_UNET["model_channels"]


def test_mismatched_config_lists_offending_keys(tiny_ckpt, tmp_path):
    import yaml

    path, _ = tiny_ckpt
    bad = tiny_inference_config()
    bad["model"]["params"]["unet_config"]["params"]["channel_mult"] = [1, 2, 2]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(V2WError, match=r"U-Net keys do not match the config: \d+ missing \(e\.g\. input_blocks"):
        VideoUNet.from_dynamicrafter(path, config=str(tmp_path / "bad.yaml"))
    with pytest.raises(V2WError, match="other shapes"):  # default 512 config: everything too big
        VideoUNet.from_dynamicrafter(path)


def test_unexpected_key_and_damaged_files(tiny_ckpt, tmp_path):
    path, yaml_path = tiny_ckpt
    ck = tiny_dynamicrafter_checkpoint()
    ck["state_dict"]["model.diffusion_model.extra.weight"] = torch.zeros(1)
    torch.save(ck, tmp_path / "extra.ckpt")
    with pytest.raises(V2WError, match=r"1 unexpected \(e\.g\. extra\.weight\)"):
        load_dynamicrafter_base(str(tmp_path / "extra.ckpt"), base_config=str(yaml_path))
    ck = tiny_dynamicrafter_checkpoint()
    ck["state_dict"]["weird_buffer"] = torch.zeros(1)
    torch.save(ck, tmp_path / "weird.ckpt")
    with pytest.raises(V2WError, match="unexpected top-level keys .*weird_buffer"):
        load_dynamicrafter_base(str(tmp_path / "weird.ckpt"), base_config=str(yaml_path))
    (tmp_path / "trunc.ckpt").write_bytes(path.read_bytes()[:4096])
    with pytest.raises(V2WError, match=r"trunc\.ckpt: checkpoint is truncated or corrupt"):
        load_dynamicrafter_base(str(tmp_path / "trunc.ckpt"))
    torch.save({"state_dict": {}, "callback": nn.Linear(1, 1)}, tmp_path / "pickled.ckpt")
    with pytest.raises(V2WError, match="--unsafe-pickle"):
        load_dynamicrafter_base(str(tmp_path / "pickled.ckpt"))
    with pytest.raises(V2WError, match="checkpoint not found"):
        load_dynamicrafter_base(str(tmp_path / "nope.ckpt"))


def test_builtin_name_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = runner.invoke(app, ["causalize", "--ckpt", "dynamicrafter", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "Doubiiu/DynamiCrafter_512" in res.output and "--ckpt /path/to/model.ckpt" in res.output
    assert not (tmp_path / "m").exists()


def test_512_config_is_dynamicrafter_sized():
    with torch.device("meta"):
        unet = VideoUNet.from_config("dynamicrafter-512")
    n = sum(p.numel() for p in unet.parameters())
    assert 1.43e9 < n < 1.45e9
    temporal_convs = [k for k in unet.state_dict() if "temopral_conv" in k and k.endswith(("conv1.2.weight", "3.weight"))]
    assert len(temporal_convs) == 88  # 22 ResBlocks x 4 temporal convs


# ---------------------------------------------------------------- causalize + probe


@pytest.fixture(scope="module")
def tiny_unet():
    ck = tiny_dynamicrafter_checkpoint()
    return VideoUNet.from_dynamicrafter(ck, config={"unet_config": {"params": TINY_UNET}}).eval()


def test_probe_fails_for_base_and_passes_for_causal(tiny_unet):
    base = check_causality(tiny_unet)
    assert not base["causal"] and base["max_leak"] > 1e-3
    causal, report = causalize(tiny_unet, "extrapolative", "per-frame", return_report=True)
    chk = check_causality(causal)
    assert chk["causal"] and chk["max_leak"] <= 1e-5 and chk["future_change"] > 1e-3
    assert all(v <= 1e-5 for v in chk["per_layer"].values())
    assert report["temporal_convs"] == 4 * sum("temopral_conv.conv1.2.weight" in k for k in tiny_unet.state_dict())
    assert report["dropped"] == [] and report["new"] == []
    pooled = check_causality(causalize(tiny_unet, norm="pooled"))
    assert not pooled["causal"] and pooled["max_leak"] > 1e-6


def test_causalize_transfers_exactly_and_leaves_base_alone(tiny_unet):
    before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    causal = causalize(tiny_unet, "masked", "per-frame")
    for k, v in tiny_unet.state_dict().items():
        assert torch.equal(v, before[k])
    key = "input_blocks.1.0.temopral_conv.conv2.3.weight"
    w = before[key]
    expect = torch.cat([torch.zeros_like(w[:, :, :1]), w[:, :, :2]], dim=2)
    assert torch.equal(causal.state_dict()[key], expect)
    with pytest.raises(V2WError, match="causal already"):
        causalize(causal)
    with pytest.raises(V2WError, match="--transfer must be one of"):
        causalize(tiny_unet, transfer="future")


@pytest.mark.parametrize("action_type,actions", [("continuous", lambda: torch.randn(1, 6, 3)), ("discrete", lambda: torch.randint(0, 3, (1, 6)))])
def test_new_action_layers_start_as_the_base(tiny_unet, action_type, actions):
    causal = causalize(tiny_unet, action_dim=3, action_type=action_type).eval()
    inp = probe_inputs(causal)
    inp.pop("actions", None)
    with torch.no_grad():
        plain = causal(**inp)
        with_actions = causal(**inp, actions=actions())
    assert torch.equal(plain, with_actions)
    assert all(p.requires_grad for p in causal.action_encoder.parameters())


def test_per_frame_timesteps(tiny_unet):
    inp = probe_inputs(tiny_unet)
    t = inp.pop("timesteps")
    with torch.no_grad():
        same = tiny_unet(timesteps=torch.full_like(t, 300), **inp)
        single = tiny_unet(timesteps=torch.tensor([300]), **inp)
        varied = tiny_unet(timesteps=t, **inp)
    torch.testing.assert_close(same, single, atol=1e-5, rtol=1e-5)
    assert (varied - single).abs().max() > 1e-4
    with pytest.raises(V2WError, match="timesteps must be"):
        tiny_unet(timesteps=torch.zeros(1, 3, dtype=torch.long), **inp)


# ---------------------------------------------------------------- stage, MODEL files, CLI


def test_causalize_writes_a_model_that_round_trips(tmp_path):
    res = run(CausalizeConfig(ckpt="tiny-random", out=str(tmp_path / "m"), action_dim=4, action_type="discrete", transfer="masked"))
    assert res.check["causal"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["kind"] == "v2w-model" and cfg["unet"]["causal"] and cfg["causalize"]["transfer"] == "masked"
    model = load_model(tmp_path / "m")
    inp = probe_inputs(model.unet)
    a = torch.randint(0, 4, (1, inp["x"].shape[2]))
    inp["actions"] = a
    built = causalize(
        VideoUNet.from_dynamicrafter(tiny_dynamicrafter_checkpoint(), config={"unet_config": {"params": TINY_UNET}}),
        "masked", action_dim=4, action_type="discrete",
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.unet.eval()(**inp), built(**inp), atol=1e-6, rtol=1e-5)
    frames = torch.rand(1, 3, 3, 64, 64) * 2 - 1
    z = model.encode_frames(frames)
    assert z.shape == (1, 4, 3, 8, 8) and model.decode_latents(z).shape == frames.shape
    assert model.image_context(frames[:, :, 0], 10).shape == (1, 77 + 10 * 16, TINY_UNET["context_dim"])


def test_cli_causalize_and_check(tmp_path):
    res = runner.invoke(app, ["causalize", "--ckpt", "tiny-random", "--check"])
    assert res.exit_code == 0 and "causal" in res.output and "base model" in res.output
    res = runner.invoke(app, ["causalize", "--ckpt", "tiny-random", "--out", str(tmp_path / "m"), "--norm", "pooled", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["check"]["causal"] is False and out["report"]["temporal_norms_per_frame"] == 0
    res = runner.invoke(app, ["info", str(tmp_path / "m"), "--json"])
    assert json.loads(res.stdout)["family"] == "dynamicrafter"
    res = runner.invoke(app, ["causalize", "--ckpt", str(tmp_path / "m"), "--check", "--json"])  # probe a MODEL
    assert res.exit_code == 0 and json.loads(res.stdout)["check"]["max_leak"] > 0
    res = runner.invoke(app, ["causalize", "--ckpt", "tiny-random", "--out", str(tmp_path / "x"), "--transfer", "bogus"])
    assert res.exit_code == 1 and "--transfer must be one of" in res.output


def test_unet3d_family_through_the_cli(tmp_path):
    from diffusers import UNet3DConditionModel

    from pipelines.models.unet3d import UNet3DWorldModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32, sample_size=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    )
    for name, p in unet.named_parameters():  # wake the zero-initialised temporal layers so leaks show
        if "temp_convs" in name and "conv4" in name:
            p.data.normal_(0, 0.05)
    unet.save_pretrained(tmp_path / "base")
    res = runner.invoke(app, ["causalize", "--ckpt", str(tmp_path / "base"), "--family", "unet3d", "--out", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["check"]["causal"]
    model = load_model(tmp_path / "m")
    assert isinstance(model, UNet3DWorldModel)
    x = torch.randn(1, 4, 5, 8, 8)
    ctx = torch.randn(1, 3, 32)
    x2 = x.clone()
    x2[:, :, 3:] += 1
    with torch.no_grad():
        assert torch.equal(model.eval()(x, torch.tensor([10]), ctx)[:, :, :3], model(x2, torch.tensor([10]), ctx)[:, :, :3])


def test_python_api_names_from_the_design():
    import inspect

    from pipelines.models import VideoUNet as V
    from pipelines.models import causalize as c
    from pipelines.models import load_model as lm

    assert inspect.isfunction(c) and inspect.isfunction(lm) and inspect.isclass(V)
    with torch.device("meta"):
        empty = V.from_config("dynamicrafter-512")
    assert next(empty.parameters()).device.type == "meta"
