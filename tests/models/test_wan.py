"""The Wan 2.1 family (pipelines/models/wan.py, wan_model.py): parity with diffusers' transformer,
per-frame noise levels, exact block causality, the activation cache, actions, and the real
diffusers folder layout (tiny configs built from the real config keys)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.errors import V2WError
from pipelines.models.cache import ActivationCache, activation_cache
from pipelines.models.probe import causality_probe
from pipelines.models.wan import (
    TEXT_TOKENS,
    TINY_WAN_TRANSFORMER,
    TINY_WAN_VAE,
    WanWorldConfig,
    WanWorldTransformer,
    group_actions,
    tiny_wan_transformer,
)
from pipelines.models.world_model import load_model
from v2w_cli.app import app

TEXT_DIM = TINY_WAN_TRANSFORMER["text_dim"]


def inputs(b=2, f=3, seed=0, action_dim=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)  # 4x4 tokens per latent frame
    ctx = torch.randn(b, TEXT_TOKENS, TEXT_DIM, generator=g)
    ts = torch.randint(0, 1000, (b, f), generator=g)
    acts = torch.randn(b, f, 4 * action_dim, generator=g)
    return x, ctx, ts, acts


def world(causal=True, action_dim=3, seed=0, actions_matter=True):
    m = WanWorldTransformer(tiny_wan_transformer(seed), WanWorldConfig(action_dim=action_dim, causal=causal)).eval()
    if actions_matter and action_dim:
        torch.manual_seed(seed + 1)
        for p in m.action_encoder.parameters():
            p.data.normal_(0, 0.3)
    return m


def test_parity_with_diffusers_with_the_mask_off_and_one_timestep():
    ours = world(causal=False, action_dim=0)
    ref = tiny_wan_transformer(0).eval()  # the same seed: the same weights, diffusers' own processors
    x, ctx, _, _ = inputs()
    t = torch.tensor([500, 20])
    with torch.no_grad():
        a, b = ours(x, t, ctx), ref(x, t, ctx, return_dict=False)[0]
    assert (a - b).abs().max() <= 1e-5 and b.abs().max() > 0.1


def test_per_frame_noise_levels_are_diffusers_per_token_timesteps():
    """Each latent frame's level reaches all its tokens: the same as diffusers' (B, seq_len) timestep path."""
    ours = world(causal=False, action_dim=0)
    ref = tiny_wan_transformer(0).eval()
    x, ctx, ts, _ = inputs()
    with torch.no_grad():
        a = ours(x, ts, ctx)
        b = ref(x, ts.repeat_interleave(16, dim=1), ctx, return_dict=False)[0]  # 16 tokens per frame
        shared = ours(x, ts[:, :1].expand(-1, 3), ctx) - ours(x, ts[:, 0], ctx)
    assert (a - b).abs().max() <= 1e-5
    assert shared.abs().max() <= 1e-5


def test_block_causality_is_exact_and_the_base_leaks():
    x, ctx, ts, acts = inputs(f=4)
    for k in (1, 2, 3):
        probe = causality_probe(lambda v: world()(v, ts, ctx, acts), x, k)  # noqa: B023
        assert probe["max_leak"] == 0.0 and probe["future_change"] > 0.1, (k, probe)
    base = causality_probe(lambda v: world(causal=False)(v, ts, ctx, acts), x, 2)
    assert base["max_leak"] > 1e-3  # full 3D attention: the past sees the future
    with torch.no_grad():  # within a frame attention stays full: a change inside frame 2 moves all of frame 2
        m = world()
        y0, x2 = m(x, ts, ctx, acts), x.clone()
        x2[:, :, 2, 0, 0] += 1.0
        d = (m(x2, ts, ctx, acts) - y0)[:, :, 2].abs().amax(dim=(0, 1))
    assert (d > 0).all()


def test_cache_equals_no_cache_with_rotary_offsets():
    m = world()
    x, ctx, ts, acts = inputs(b=1, f=5)
    ts[:, :4] = 20  # history at its noise level, the newest frame anywhere
    with torch.no_grad():
        full = m(x, ts, ctx, acts)
        cache = ActivationCache()
        with activation_cache(m, cache, "append"):
            m(x[:, :, :3], ts[:, :3], ctx, acts[:, :3])  # prefill
            m(x[:, :, 3:4], ts[:, 3:4], ctx, acts[:, 3:4], frame_offset=3)  # a frame joins the history
        with activation_cache(m, cache, "read"):
            new = m(x[:, :, 4:], ts[:, 4:], ctx, acts[:, 4:], frame_offset=4)
            again = m(x[:, :, 4:], ts[:, 4:], ctx, acts[:, 4:], frame_offset=4)  # read leaves the cache as it was
        wrong = m(x[:, :, 4:], ts[:, 4:], ctx, acts[:, 4:], frame_offset=0)
    assert (full[:, :, 4:] - new).abs().max() <= 1e-5 and torch.equal(new, again)
    assert (full[:, :, 4:] - wrong).abs().max() > 1e-3  # no history and the wrong position: different


def test_actions_group_by_latent_frame_and_receive_gradients():
    a = torch.arange(9 * 2, dtype=torch.float32).reshape(1, 9, 2)  # 9 video frames -> 3 latent frames
    g = group_actions(a)
    assert g.shape == (1, 3, 8)
    assert torch.equal(g[0, 0], torch.zeros(8))
    assert torch.equal(g[0, 1], a[0, 1:5].flatten()) and torch.equal(g[0, 2], a[0, 5:9].flatten())
    with pytest.raises(V2WError, match=r"1 \+ 4k video frames"):
        group_actions(torch.zeros(1, 8, 2))
    m = world(actions_matter=False).train()  # zero-initialised last layer, as causalize leaves it
    x, ctx, ts, acts = inputs()
    with torch.no_grad():
        assert torch.equal(m(x, ts, ctx, acts), m(x, ts, ctx, None))  # starts as the base
    m(x, ts, ctx, acts).square().mean().backward()
    last = list(m.action_encoder.parameters())[-2]  # the last Linear's weight
    assert last.grad is not None and last.grad.abs().sum() > 0


def _diffusers_folder(tmp_path):
    """A tiny Wan base in the diffusers layout WanPipeline reads (real key names and file names)."""
    transformers = pytest.importorskip("transformers")
    from diffusers import AutoencoderKLWan

    folder = tmp_path / "wan-base"
    tiny_wan_transformer(3).save_pretrained(folder / "transformer")
    torch.manual_seed(4)
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(folder / "vae")
    cfg = transformers.UMT5Config(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
                                  relative_attention_num_buckets=8, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(5)
    encoder = transformers.UMT5EncoderModel(cfg).eval()
    encoder.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return folder, encoder


def test_real_layout_loads_strictly_and_round_trips(tmp_path):
    from pipelines.models.wan_model import load_wan_base

    folder, encoder = _diffusers_folder(tmp_path)
    base = load_wan_base(str(folder))  # strict: zero missing / unexpected keys, or it raises
    saved = tiny_wan_transformer(3).state_dict()
    assert all(torch.equal(base.transformer.state_dict()[k], v) for k, v in saved.items())
    with torch.no_grad():
        eos = encoder(torch.tensor([[1]]), attention_mask=torch.ones(1, 1, dtype=torch.long)).last_hidden_state
    assert base.empty_text.shape == (1, TEXT_TOKENS, TEXT_DIM)
    assert torch.allclose(base.empty_text[:, :1], eos, atol=1e-6) and not base.empty_text[:, 1:].any()
    assert base.schedule["flow_shift"] == 3.0
    # causalize it, reload the MODEL: the same outputs
    causalize_run(CausalizeConfig(ckpt=str(folder), out=str(tmp_path / "model"), family="wan", action_dim=3))
    model = load_model(tmp_path / "model")
    assert model.family == "wan" and torch.equal(model.empty_text, base.empty_text)
    x, ctx, ts, acts = inputs()
    fresh = WanWorldTransformer(base.transformer, WanWorldConfig(action_dim=3)).eval()
    with torch.no_grad():
        assert torch.equal(model.transformer(x, ts, ctx, acts), fresh(x, ts, ctx, acts))


def test_broken_folders_and_offline_hub_are_one_line(tmp_path, monkeypatch):
    from pipelines.models.wan_model import load_wan_base

    folder, _ = _diffusers_folder(tmp_path)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(V2WError, match=r"missing vae/diffusion_pytorch_model.safetensors"):
        load_wan_base(str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = CliRunner().invoke(app, ["causalize", "--family", "wan", "--ckpt", "wan2.1-t2v-1.3b", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in res.output and "--ckpt" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "m").exists()


def test_cli_tiny_wan_causalize_check_and_info(tmp_path):
    res = CliRunner().invoke(app, ["causalize", "--family", "wan", "--ckpt", "tiny-wan", "--out", str(tmp_path / "m"),
                                   "--action-dim", "3", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["check"]["causal"] and info["check"]["max_leak"] == 0.0
    res = CliRunner().invoke(app, ["causalize", "--family", "wan", "--ckpt", "tiny-wan", "--check", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["base_check"]["max_leak"] > 1e-3
    res = CliRunner().invoke(app, ["info", str(tmp_path / "m")])
    assert res.exit_code == 0 and "wan" in res.output
    res = CliRunner().invoke(app, ["causalize", "--family", "wan", "--ckpt", "tiny-wan", "--out", str(tmp_path / "s"),
                                   "--action-injection", "scale-shift"])
    assert res.exit_code == 1 and "--action-injection time only" in res.output
