"""OpenCLIP towers (pipelines.models.clip) on tiny configs.

Reference checks run when the optional packages are importable: transformers' CLIPVisionModel /
CLIPTextModel with converted weights, and kornia's resize."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pipelines.errors import V2WError
from pipelines.models.clip import (
    CLIP_MEAN,
    CLIP_STD,
    VISION_DROPPED_KEYS,
    CLIPTextConfig,
    CLIPVisionConfig,
    OpenCLIPTextTower,
    OpenCLIPVisionTower,
    compute_empty_text_context,
    empty_prompt_tokens,
    infer_text_config,
    infer_vision_config,
    kornia_resize,
    load_text_tower,
    load_vision_tower,
)

VCFG = CLIPVisionConfig(width=64, layers=3, heads=4, patch_size=4, image_size=16, output_dim=32)
TCFG = CLIPTextConfig(width=64, layers=3, heads=4, context_length=77, vocab_size=49408, embed_dim=32)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random, well-scaled values for every parameter (LayerNorm weights near 1, biases non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _vision_ckpt(prefix="embedder.model.", seed=0):
    tower = OpenCLIPVisionTower(VCFG)
    _randomize(tower, seed)
    sd = {prefix + k: v.clone() for k, v in tower.state_dict().items()}
    # What DynamiCrafter left in embedder.model after `del model.transformer`.
    g = torch.Generator().manual_seed(seed + 1)
    sd[prefix + "token_embedding.weight"] = torch.randn(100, 48, generator=g)
    sd[prefix + "positional_embedding"] = torch.randn(77, 48, generator=g)
    sd[prefix + "ln_final.weight"] = torch.ones(48)
    sd[prefix + "ln_final.bias"] = torch.zeros(48)
    sd[prefix + "text_projection"] = torch.randn(48, 32, generator=g)
    sd[prefix + "logit_scale"] = torch.tensor(4.6)
    if prefix:
        sd["model.diffusion_model.other.weight"] = torch.zeros(3)  # outside the prefix: not our business
    return tower, sd


def _text_ckpt(prefix="cond_stage_model.model.", seed=10):
    tower = OpenCLIPTextTower(TCFG)
    _randomize(tower, seed)
    return tower, {prefix + k: v.clone() for k, v in tower.state_dict().items()}


def _openclip_to_hf_layers(sd, src, dst, layers):
    out = {}
    for i in range(layers):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        for a, b in (("q", 0), ("k", 1), ("v", 2)):
            out[f"{d}self_attn.{a}_proj.weight"] = sd[s + "attn.in_proj_weight"].chunk(3, 0)[b]
            out[f"{d}self_attn.{a}_proj.bias"] = sd[s + "attn.in_proj_bias"].chunk(3, 0)[b]
        for x, y in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            out[f"{d}{y}.weight"] = sd[f"{s}{x}.weight"]
            out[f"{d}{y}.bias"] = sd[f"{s}{x}.bias"]
    return out


def _load_hf(model, sd):
    # transformers < 5 nests the tower under text_model./vision_model.; 5.x does not
    names = set(model.state_dict())
    sd = {k if k in names else k.split(".", 1)[1]: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing
    return model.eval()


def test_vision_param_names_are_openclip():
    names = set(OpenCLIPVisionTower(VCFG).state_dict())
    for k in [
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.2.ln_1.bias",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.0.attn.in_proj_bias",
        "visual.transformer.resblocks.0.attn.out_proj.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.transformer.resblocks.0.mlp.c_proj.bias",
        "visual.ln_post.bias",
        "visual.proj",
    ]:
        assert k in names, k
    assert "visual.conv1.bias" not in names
    text = set(OpenCLIPTextTower(TCFG).state_dict())
    assert {"token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale"} <= text
    assert "transformer.resblocks.2.attn.in_proj_weight" in text


def test_default_configs_are_vit_h14():
    v, t = CLIPVisionConfig(), CLIPTextConfig()
    assert (v.width, v.layers, v.heads, v.patch_size, v.image_size, v.num_tokens, v.mlp_width) == (
        1280, 32, 16, 14, 224, 257, 5120,
    )
    assert (t.width, t.layers, t.heads, t.context_length, t.vocab_size, t.embed_dim) == (1024, 24, 16, 77, 49408, 1024)
    with torch.device("meta"):
        n = sum(p.numel() for p in OpenCLIPVisionTower().parameters())
    assert 630e6 < n < 634e6  # OpenCLIP ViT-H/14 visual: ~632M


def test_vision_tower_loads_and_drops_text_keys():
    ref, sd = _vision_ckpt()
    tower, loaded, dropped = load_vision_tower(sd, heads=4)
    assert tower.config == VCFG
    assert sorted(dropped) == sorted("embedder.model." + k for k in VISION_DROPPED_KEYS if k != "attn_mask")
    assert set(loaded) == {k for k in sd if k.startswith("embedder.model.visual.")}
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tower(x)
    assert out.shape == (2, 1 + 4 * 4, 64)
    torch.testing.assert_close(out, ref(x))
    # a different input size is resized to the model's image_size first
    assert tower(torch.rand(1, 3, 40, 24) * 2 - 1).shape == (1, 17, 64)


def test_infer_configs():
    _, sd = _vision_ckpt()
    assert infer_vision_config(sd, heads=4) == VCFG
    assert infer_vision_config(sd).heads == 1  # width 64 -> OpenCLIP's 64-wide heads
    _, tsd = _text_ckpt()
    assert infer_text_config(tsd, heads=4) == TCFG


def test_vision_tower_errors_list_keys():
    _, sd = _vision_ckpt()
    bad = dict(sd)
    bad["embedder.model.transformer.resblocks.0.ln_1.weight"] = torch.ones(48)
    bad["embedder.model.visual.extra_thing"] = torch.ones(1)
    with pytest.raises(V2WError, match=r"2 unexpected \(e\.g\. .*embedder\.model\.transformer\.resblocks\.0\.ln_1\.weight"):
        load_vision_tower(bad, heads=4)
    bad = dict(sd)
    del bad["embedder.model.visual.transformer.resblocks.1.attn.out_proj.bias"]
    del bad["embedder.model.visual.ln_post.weight"]
    with pytest.raises(V2WError, match=r"2 missing \(e\.g\. .*resblocks\.1\.attn\.out_proj\.bias") as e:
        load_vision_tower(bad, heads=4)
    assert "embedder.model.visual.ln_post.weight" in str(e.value)
    # explicit config that does not fit: a clear shape error naming the key and both shapes
    with pytest.raises(V2WError, match=r"other shapes.*visual\.conv1\.weight is \(64, 3, 4, 4\), the OpenCLIP layout needs \(64, 3, 8, 8\)"):
        load_vision_tower(sd, config=CLIPVisionConfig(width=64, layers=3, heads=4, patch_size=8, image_size=16, output_dim=32))
    with pytest.raises(V2WError, match="nothing in the checkpoint starts with 'nope.'"):
        load_vision_tower(sd, prefix="nope.")
    # a full OpenCLIP checkpoint: drop the text transformer explicitly
    tower, loaded, dropped = load_vision_tower(
        {**sd, "embedder.model.transformer.resblocks.0.ln_1.weight": torch.ones(48)},
        heads=4,
        ignore_prefixes=("transformer.",),
    )
    assert "embedder.model.transformer.resblocks.0.ln_1.weight" in dropped


def test_text_tower_load_penultimate_and_empty_context():
    ref, sd = _text_ckpt()
    tower, loaded, dropped = load_text_tower(sd, heads=4)
    assert set(loaded) == set(sd) and dropped == []
    tokens = empty_prompt_tokens()
    assert tokens.dtype == torch.long and tokens.shape == (1, 77)
    assert tokens[0, :3].tolist() == [49406, 49407, 0] and int(tokens[0, 2:].abs().sum()) == 0
    ctx = compute_empty_text_context(tower)
    assert ctx.shape == (1, 77, 64) and ctx.dtype == torch.float32
    torch.testing.assert_close(ctx, ref.encode_penultimate(tokens))
    # penultimate = the last block is not run: changing it must not change the output
    with torch.no_grad():
        tower.transformer.resblocks[-1].mlp.c_fc.weight.add_(1.0)
    torch.testing.assert_close(compute_empty_text_context(tower), ctx)
    # causal: a later token does not change earlier outputs
    t2 = tokens.clone()
    t2[0, 5] = 1234
    out1, out2 = tower(tokens), tower(t2)
    torch.testing.assert_close(out1[:, :5], out2[:, :5])
    assert not torch.allclose(out1[:, 5:], out2[:, 5:])


def test_text_tower_rejects_visual_keys():
    _, sd = _text_ckpt()
    sd["cond_stage_model.model.visual.conv1.weight"] = torch.zeros(8, 3, 4, 4)
    with pytest.raises(V2WError, match=r"1 unexpected \(e\.g\. cond_stage_model\.model\.visual\.conv1\.weight"):
        load_text_tower(sd, heads=4)
    sd["cond_stage_model.model.attn_mask"] = torch.zeros(77, 77)
    _, _, dropped = load_text_tower(sd, heads=4, ignore_prefixes=("visual.",))
    assert sorted(dropped) == ["cond_stage_model.model.attn_mask", "cond_stage_model.model.visual.conv1.weight"]


def test_preprocess_matches_dynamicrafter_steps():
    tower = OpenCLIPVisionTower(VCFG)
    x = torch.rand(2, 3, 16, 16) * 2 - 1  # already at image_size: resize is the identity
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(tower.preprocess(x), ((x + 1) / 2 - mean) / std)


@pytest.mark.skipif(importlib.util.find_spec("kornia") is None, reason="kornia not installed")
def test_kornia_resize_matches_kornia():
    import kornia

    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 320, 512), (1, 3, 100, 60), (1, 3, 230, 224), (1, 3, 224, 224)]:
        x = torch.rand(shape, generator=g) * 2 - 1
        ref = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
        torch.testing.assert_close(kornia_resize(x, (224, 224)), ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_vision_tower_matches_transformers():
    import transformers

    ref_tower, sd = _vision_ckpt(prefix="")
    tower, _, _ = load_vision_tower(sd, prefix="", heads=4)
    hf = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        **_openclip_to_hf_layers(sd, "visual.", "vision_model.", VCFG.layers),
    }
    cfg = transformers.CLIPVisionConfig(
        hidden_size=VCFG.width,
        intermediate_size=VCFG.mlp_width,
        num_hidden_layers=VCFG.layers,
        num_attention_heads=VCFG.heads,
        image_size=VCFG.image_size,
        patch_size=VCFG.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attn_implementation="eager",
    )
    model = _load_hf(transformers.CLIPVisionModel(cfg), hf)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = tower(x)
        theirs = model(pixel_values=tower.preprocess(x)).last_hidden_state  # before post_layernorm
    diff = (ours - theirs).abs().max().item()
    print(f"vision tower vs transformers CLIPVisionModel: max abs diff {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_text_tower_matches_transformers():
    import transformers

    _, sd = _text_ckpt(prefix="")
    tower, _, _ = load_text_tower(sd, prefix="", heads=4)
    hf = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        **_openclip_to_hf_layers(sd, "", "text_model.", TCFG.layers),
    }
    cfg = transformers.CLIPTextConfig(
        vocab_size=TCFG.vocab_size,
        hidden_size=TCFG.width,
        intermediate_size=TCFG.mlp_width,
        num_hidden_layers=TCFG.layers,
        num_attention_heads=TCFG.heads,
        max_position_embeddings=TCFG.context_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = _load_hf(transformers.CLIPTextModel(cfg), hf)
    tokens = torch.cat([empty_prompt_tokens(), empty_prompt_tokens()])
    tokens[1, 1:6] = torch.tensor([320, 1125, 539, 320, 49407])  # a 4-word prompt, then EOT, then padding
    tokens[1, 6] = 0
    with torch.no_grad():
        ours = tower.encode_penultimate(tokens)
        # no attention_mask: like open_clip, every position (padding included) attends causally
        out = model(input_ids=tokens, output_hidden_states=True)
        theirs = getattr(model, "text_model", model).final_layer_norm(out.hidden_states[-2])
    diff = (ours - theirs).abs().max().item()
    print(f"text tower penultimate vs transformers CLIPTextModel: max abs diff {diff:.3g}")
    assert diff < 1e-4
