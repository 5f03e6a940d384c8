"""The KL-f8 VAE (pipelines.models.vae) on tiny configs: its config from DynamiCrafter's ddconfig, exact
loading of LDM-layout keys, clear key errors, and encode/decode against an independent functional
re-implementation of DynamiCrafter's LDM Encoder/Decoder (lvdm/modules/networks/ae_modules.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from pipelines.errors import V2WError
from pipelines.models.vae import (
    DYNAMICRAFTER_DDCONFIG,
    convert_ldm_vae_state_dict,
    decode_video,
    encode_video,
    ldm_ddconfig_from_state_dict,
    ldm_vae_shapes,
    load_vae,
    tiny_ldm_ddconfig,
    vae_config_from_ldm,
)


def _ldm_vae_ckpt(dd, prefix="first_stage_model.", seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in ldm_vae_shapes(dd).items():
        if len(s) > 1:
            v = torch.randn(s, generator=g) / (s[1] * s[2] * s[3]) ** 0.5
        elif "norm" in k and k.endswith("weight"):
            v = 1 + 0.1 * torch.randn(s, generator=g)
        else:
            v = 0.05 * torch.randn(s, generator=g)
        sd[prefix + k] = v
    return sd


class _LDMRef:
    """Functional LDM AutoencoderKL (ae_modules semantics) over an LDM-layout state dict."""

    def __init__(self, sd, dd, prefix="first_stage_model."):
        self.sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        self.dd = dd

    def conv(self, x, p, stride=1, padding=1):
        return F.conv2d(x, self.sd[p + ".weight"], self.sd[p + ".bias"], stride=stride, padding=padding)

    def norm(self, x, p):
        return F.group_norm(x, 32, self.sd[p + ".weight"], self.sd[p + ".bias"], eps=1e-6)

    def resnet(self, x, p):
        h = self.conv(F.silu(self.norm(x, p + ".norm1")), p + ".conv1")
        h = self.conv(F.silu(self.norm(h, p + ".norm2")), p + ".conv2")
        if p + ".nin_shortcut.weight" in self.sd:
            x = self.conv(x, p + ".nin_shortcut", padding=0)
        return x + h

    def attn(self, x, p):
        h = self.norm(x, p + ".norm")
        q, k, v = (self.conv(h, f"{p}.{n}", padding=0) for n in "qkv")
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        w = torch.softmax(torch.bmm(q, k.reshape(b, c, hh * ww)) * c**-0.5, dim=2)
        h = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.conv(h, p + ".proj_out", padding=0)

    def mid(self, h, p):
        return self.resnet(self.attn(self.resnet(h, p + ".mid.block_1"), p + ".mid.attn_1"), p + ".mid.block_2")

    def encode_mean(self, x):
        n, nrb = len(self.dd["ch_mult"]), self.dd["num_res_blocks"]
        h = self.conv(x, "encoder.conv_in")
        for i in range(n):
            for j in range(nrb):
                h = self.resnet(h, f"encoder.down.{i}.block.{j}")
            if i != n - 1:
                h = self.conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
        h = self.mid(h, "encoder")
        h = self.conv(F.silu(self.norm(h, "encoder.norm_out")), "encoder.conv_out")
        moments = self.conv(h, "quant_conv", padding=0)
        return moments[:, : self.dd["z_channels"]]

    def decode(self, z):
        n, nrb = len(self.dd["ch_mult"]), self.dd["num_res_blocks"]
        h = self.conv(self.conv(z, "post_quant_conv", padding=0), "decoder.conv_in")
        h = self.mid(h, "decoder")
        for i in reversed(range(n)):
            for j in range(nrb + 1):
                h = self.resnet(h, f"decoder.up.{i}.block.{j}")
            if i != 0:
                h = self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
        return self.conv(F.silu(self.norm(h, "decoder.norm_out")), "decoder.conv_out")


def test_vae_config_from_dynamicrafter_ddconfig():
    cfg = vae_config_from_ldm(DYNAMICRAFTER_DDCONFIG)
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["layers_per_block"] == 2 and cfg["latent_channels"] == 4 and cfg["mid_block_add_attention"]
    assert cfg["scaling_factor"] == 0.18215
    with pytest.raises(V2WError, match="attn_resolutions"):
        vae_config_from_ldm({**DYNAMICRAFTER_DDCONFIG, "attn_resolutions": [32]})
    # the full-size key layout converts completely (shape-only, no weights allocated)
    shapes = ldm_vae_shapes(DYNAMICRAFTER_DDCONFIG)
    assert len(shapes) == 248  # SD KL-f8 VAE: 248 tensors in LDM layout
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert ldm_ddconfig_from_state_dict({"first_stage_model." + k: v for k, v in meta.items()}) == DYNAMICRAFTER_DDCONFIG
    new_sd, source = convert_ldm_vae_state_dict(meta, cfg)
    with torch.device("meta"):
        model = AutoencoderKL(**cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(source.values()) == set(meta)  # every LDM key consumed
    assert {k: tuple(v.shape) for k, v in new_sd.items()} == expected  # every parameter filled, right shape


def test_vae_loads_tiny_ldm_checkpoint_exactly():
    dd = tiny_ldm_ddconfig()
    sd = _ldm_vae_ckpt(dd)
    sd["model.diffusion_model.x"] = torch.zeros(1)  # other prefixes are ignored
    vae, loaded = load_vae(sd, ddconfig=dd)
    assert sorted(loaded) == sorted(k for k in sd if k.startswith("first_stage_model."))
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    # inferred ddconfig gives the same model
    vae2, loaded2 = load_vae(sd)
    assert loaded2 == loaded
    # numerics against the functional LDM reference
    ref = _LDMRef(sd, dd)
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mode()
        torch.testing.assert_close(mean, ref.encode_mean(x), atol=1e-5, rtol=1e-4)
        z = torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(vae.decode(z).sample, ref.decode(z), atol=1e-5, rtol=1e-4)


def test_vae_key_errors_list_keys():
    dd = tiny_ldm_ddconfig()
    sd = _ldm_vae_ckpt(dd)
    bad = {**sd, "first_stage_model.encoder.extra.weight": torch.zeros(1), "first_stage_model.loss.logvar": torch.zeros(())}
    with pytest.raises(V2WError, match=r"2 unexpected \(e\.g\. first_stage_model\.encoder\.extra\.weight, first_stage_model\.loss\.logvar"):
        load_vae(bad, ddconfig=dd)
    bad = dict(sd)
    del bad["first_stage_model.decoder.up.1.block.0.conv2.bias"]
    with pytest.raises(V2WError, match=r"1 missing \(e\.g\. decoder\.up_blocks\.2\.resnets\.0\.conv2\.bias"):
        load_vae(bad, ddconfig=dd)
    bad = dict(sd)
    bad["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(V2WError, match=r"other shapes.*first_stage_model\.encoder\.conv_in\.weight"):
        load_vae(bad, ddconfig=dd)
    with pytest.raises(V2WError, match="nothing in the checkpoint starts with"):
        load_vae({"x": torch.zeros(1)})


def test_vae_encode_decode_video_per_frame():
    dd = tiny_ldm_ddconfig()
    vae, _ = load_vae(_ldm_vae_ckpt(dd), ddconfig=dd)
    frames = torch.rand(2, 3, 3, 32, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        z = encode_video(vae, frames)
        assert z.shape == (2, 4, 3, 4, 2)
        # frame by frame == encoding each frame separately
        for b in range(2):
            for t in range(3):
                single = vae.encode(frames[b : b + 1, :, t]).latent_dist.mode() * 0.18215
                torch.testing.assert_close(z[b : b + 1, :, t], single, atol=0, rtol=0)
        # bigger chunks agree to float tolerance
        torch.testing.assert_close(encode_video(vae, frames, chunk_size=None), z, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encode_video(vae, frames, chunk_size=4), z, atol=1e-5, rtol=1e-4)
        # sampling is reproducible with a generator and differs from the mode
        s1 = encode_video(vae, frames, sample=True, generator=torch.Generator().manual_seed(0))
        s2 = encode_video(vae, frames, sample=True, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s1, s2)
        assert not torch.allclose(s1, z)
        x = decode_video(vae, z)
        assert x.shape == (2, 3, 3, 32, 16)
        single = vae.decode(z[1:2, :, 2] / 0.18215).sample
        torch.testing.assert_close(x[1:2, :, 2], single, atol=0, rtol=0)
        torch.testing.assert_close(decode_video(vae, z, chunk_size=None), x, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        encode_video(vae, frames[:, :, 0])
