"""Causalization of diffusers' UNet3DConditionModel (docs/design.md §3) on a tiny random model, plus the
generic causality probe it is checked with."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from pipelines.errors import V2WError
from pipelines.models.causal import CausalTemporalConv3d, FrameGroupNorm
from pipelines.models.probe import causality_probe, module_leaks, per_module_leaks
from pipelines.models.unet3d import (
    CausalTemporalAttnProcessor,
    UNet3DWorldModel,
    causalize_unet3d,
    temporal_probe_spec,
)

B, C, T, H, W = 1, 4, 5, 8, 8
K = 2  # frames >= K are perturbed


def tiny_unet() -> UNet3DConditionModel:
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    for m in unet.modules():  # conv4 starts at zero (identity layer): randomise so leaks can show
        if isinstance(m, TemporalConvLayer):
            nn.init.normal_(m.conv4[-1].weight, std=0.1)
            nn.init.normal_(m.conv4[-1].bias, std=0.1)
    return unet.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: intra-op threads only add overhead (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base():
    return tiny_unet()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, C, T, H, W, generator=g), torch.tensor([321]), torch.randn(B, 6, 32, generator=g)


@pytest.fixture(scope="module")
def causal(base):
    return causalize_unet3d(copy.deepcopy(base), "extrapolative", "per-frame")


def run(unet, inputs):
    _, t, ctx = inputs
    return lambda v: unet(v, t, ctx).sample


def test_base_model_is_not_causal(base, inputs):
    r = causality_probe(run(base, inputs), inputs[0], K)
    assert r["k"] == K and r["max_leak"] > 1e-3
    types, axes = temporal_probe_spec(base)
    leaks = per_module_leaks(base, run(base, inputs), inputs[0], K, types, frame_axes=axes)
    assert set(leaks) == {"temporal_conv", "temporal_transformer", "temporal_attention"}
    assert min(leaks.values()) > 1e-3


def test_per_frame_causal_model_does_not_leak(causal, inputs):
    unet, _ = causal
    r = causality_probe(run(unet, inputs), inputs[0], K)
    assert r["max_leak"] <= 1e-5
    assert r["future_change"] > 1e-2  # the perturbation did reach the output
    # per layer, including the temporal attentions' token outputs (B*H*W, T, C): frames on axis 1
    types, axes = temporal_probe_spec(unet)
    per = module_leaks(unet, run(unet, inputs), inputs[0], K, types, frame_axes=axes)
    assert len(per) == 8 + 5 + 10
    assert max(r["max_leak"] for r in per.values()) <= 1e-5


def test_pooled_norm_leaks(base, inputs):
    unet, report = causalize_unet3d(copy.deepcopy(base), "extrapolative", "pooled")
    assert report["norm"] == "pooled"
    leak = causality_probe(run(unet, inputs), inputs[0], K)["max_leak"]
    print(f"pooled-norm causal UNet3D: max leak {leak:.3g}")
    assert leak > 1e-4  # pooled GroupNorm statistics carry the future into the past


def test_report_counts(base, causal):
    unet, report = causal
    n_tcl = sum(isinstance(m, TemporalConvLayer) for m in base.modules())
    n_ttm = sum(isinstance(m, TransformerTemporalModel) for m in base.modules())
    assert (n_tcl, n_ttm) == (8, 5)
    c = report["counts"]
    assert c["temporal_conv_layers"] == n_tcl and c["temporal_transformers"] == n_ttm
    assert c["temporal_convs"] == 4 * n_tcl == len(report["temporal_convs"])
    assert c["norms"] == 4 * n_tcl + n_ttm == len(report["norms"])
    assert c["temporal_attentions"] == 2 * n_ttm == len(report["temporal_attentions"])  # attn1 + attn2 (both self)
    assert "transformer_in.transformer_blocks.0.attn1" in report["temporal_attentions"]
    assert c["positional_embeddings"] == 0 and c["skipped_cross_attentions"] == 0
    # every temporal conv / norm was swapped; spatial attention keeps its processor
    assert all(isinstance(unet.get_submodule(n), CausalTemporalConv3d) for n in report["temporal_convs"])
    assert all(
        isinstance(unet.get_submodule(n), FrameGroupNorm) and unet.get_submodule(n).per_frame for n in report["norms"]
    )
    masked = set(report["temporal_attentions"])
    for name, m in unet.named_modules():
        if isinstance(m, Attention):
            assert isinstance(m.processor, CausalTemporalAttnProcessor) == (name in masked), name
    assert any(isinstance(m, Attention) and ".attentions." in n for n, m in unet.named_modules())
    with pytest.raises(V2WError, match="already causalized"):
        causalize_unet3d(unet)
    with pytest.raises(V2WError, match="transfer"):
        causalize_unet3d(copy.deepcopy(base), transfer="bogus")


def test_state_dict_keys_unchanged(base, causal):
    unet, _ = causal
    before, after = base.state_dict(), unet.state_dict()
    assert list(before) == list(after)
    assert all(before[k].shape == after[k].shape for k in before)
    assert torch.equal(before["transformer_in.norm.weight"], after["transformer_in.norm.weight"])
    # a causalized model loads a bidirectional diffusers checkpoint key-for-key
    fresh, _ = causalize_unet3d(tiny_unet())
    fresh.load_state_dict(before, strict=True)


def test_extrapolative_conv_reproduces_linear_inputs(base):
    conv = base.get_submodule("mid_block.temp_convs.0.conv2.3")
    assert conv.kernel_size == (3, 1, 1)
    causal_conv = CausalTemporalConv3d.from_conv(conv, "extrapolative", 1)
    g = torch.Generator().manual_seed(2)
    a, b = (
        torch.randn(2, conv.in_channels, 1, 3, 3, generator=g),
        torch.randn(2, conv.in_channels, 1, 3, 3, generator=g),
    )
    x = a + b * torch.arange(6.0).view(1, 1, 6, 1, 1)  # linear in time
    with torch.no_grad():
        y, yc = conv(x), causal_conv(x)
    torch.testing.assert_close(yc[:, :, 1:-1], y[:, :, 1:-1], atol=1e-5, rtol=1e-5)  # interior frames
    assert not torch.allclose(yc[:, :, -1], y[:, :, -1], atol=1e-3)  # the original's last frame sees zero padding


def test_world_model_matches_diffusers_forward(causal, inputs):
    unet, _ = causal
    x, t, ctx = inputs
    model = UNet3DWorldModel(unet)
    with torch.no_grad():
        ref = unet(x, t, ctx).sample
        out = model(x, t, ctx)
        out_bt = model(x, t[:, None].expand(B, T), ctx)
    assert out.shape == (B, 4, T, H, W)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_bt, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.zeros(B, T + 1, dtype=torch.long), ctx)


def test_world_model_per_frame_conditioning_is_causal(causal, inputs):
    unet, _ = causal
    x, _, ctx = inputs
    model = UNet3DWorldModel(unet)
    steps = torch.tensor([[0, 100, 400, 700, 999]])
    actions = torch.randn(B, T, model.time_embed_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x, steps, ctx, actions)
        y_future = model(
            x, torch.where(torch.arange(T) >= K, 0, steps), ctx, actions + (torch.arange(T) >= K).view(1, T, 1)
        )
    diff = (y_future - y).abs()
    assert diff[:, :, :K].max() <= 1e-5 < diff[:, :, K:].max()  # future noise levels/actions don't reach the past
    r = causality_probe(lambda v: model(v, steps, ctx, actions), x, K)
    assert r["max_leak"] <= 1e-5


def test_world_model_refuses_non_causal(base):
    with pytest.raises(V2WError, match="causalize_unet3d"):
        UNet3DWorldModel(base)
    unet, report = causalize_unet3d(tiny_unet())
    model = UNet3DWorldModel(unet)
    unet.get_submodule(report["temporal_attentions"][0]).set_processor(AttnProcessor2_0())
    with pytest.raises(V2WError, match="no longer causal"):
        model.check_causal()


def test_probe_generic_layouts():
    x = torch.randn(2, 3, 6, 4, 4)
    leaky = nn.Conv3d(3, 3, (3, 1, 1), padding=(1, 0, 0))
    with torch.no_grad():
        assert causality_probe(leaky, x, 3)["max_leak"] > 1e-3
        assert causality_probe(CausalTemporalConv3d.from_conv(leaky, "masked"), x, 3)["max_leak"] == 0.0
    # frames on another axis
    xt = x.transpose(1, 2)  # (B, T, C, H, W)
    assert causality_probe(lambda v: v.cumsum(1), xt, 2, dim=1)["max_leak"] == 0.0
    assert causality_probe(lambda v: v.flip(1), xt, 2, dim=1)["max_leak"] > 0
    with pytest.raises(ValueError, match="k must be"):
        causality_probe(lambda v: v, x, 0)
    with pytest.raises(ValueError, match="no module"):
        per_module_leaks(leaky, leaky, x, 3, {"attn": (Attention,)})
    assert per_module_leaks(leaky, leaky, x, 3, {"conv": (nn.Conv3d,)})["conv"] > 1e-3


def test_positional_embeddings_are_reported():
    # UNet3DConditionModel never sets them, but TransformerTemporalModel can: report, warn, stay causal
    torch.manual_seed(0)
    tm = TransformerTemporalModel(
        2, 8, in_channels=16, norm_num_groups=4, positional_embeddings="sinusoidal", num_positional_embeddings=8
    )
    holder = nn.ModuleDict({"tm": tm}).eval()
    with pytest.warns(UserWarning, match="positional embeddings"):
        _, report = causalize_unet3d(holder)
    assert report["positional_embeddings"] == ["tm.transformer_blocks.0"]
    assert report["counts"]["temporal_attentions"] == 2 and report["counts"]["temporal_convs"] == 0

    def fn(v):  # (B, C, T, H, W) <-> (B*T, C, H, W)
        b, c, t, h, w = v.shape
        y = holder["tm"](v.transpose(1, 2).reshape(b * t, c, h, w), num_frames=t, return_dict=False)[0]
        return y.reshape(b, t, c, h, w).transpose(1, 2)

    assert causality_probe(fn, torch.randn(2, 16, 6, 3, 3), 3)["max_leak"] <= 1e-5
