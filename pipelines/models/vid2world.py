"""The official Vid2World U-Net in v2w's VideoUNet: its config, its key names (docs/design.md §14).

The checkpoints the paper's authors released (``thuml/Vid2World-*``) are DynamiCrafter Lightning
files whose U-Net (``lvdm/modules/networks/openaimodel3d.py`` at official commit ae24077, read in
public copies) differs from DynamiCrafter's in four places, each reproduced here by name:

=====================  =====================================  ===========================================
official               its keys                               v2w
=====================  =====================================  ===========================================
causal temporal conv   ``...temopral_conv.convN.I.conv3d.*``  ``CausalTemporalConv3d`` (``...convN.I.*``)
final conv             ``out.2.conv2d.*`` (causal=True with   ``UNetConfig.out_conv = "causal-height"``
                       dims=2: causal along image height)     (``out.2.*``)
continuous actions     ``action_emb_proj.{0,2,4}``            ``action_encoder.mlp.{0,2,4}``
CS:GO's 51-d actions   ``action_emb_preprocess.weight``,      ``action_encoder.embedding``,
                       ``action_emb_proj.{0,2}``              ``action_encoder.mlp.{0,2}``
=====================  =====================================  ===========================================

and in what they compute: the action embedding is added to the time embedding and masked per frame
(``action_mask``; ``action_injection = "vid2world"``), and the GroupNorms of the temporal layers pool
over all frames of the window (``temporal_norm = "pooled"``, v2w's default for an import because it
is what the weights were trained with; ``per-frame`` makes the model exactly causal and cacheable).
The causal attention mask is a plain attribute there, not a state-dict entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.errors import V2WError
from pipelines.models.unet import BUILTIN_CONFIGS, UNetConfig

# the official UNetModel's constructor defaults (they differ from DynamiCrafter's released YAML)
OFFICIAL_UNET_DEFAULTS = dict(
    dropout=0.0, channel_mult=[1, 2, 4, 8], conv_resample=True, dims=2, context_dim=None, use_scale_shift_norm=False,
    resblock_updown=False, num_heads=-1, num_head_channels=-1, transformer_depth=1, use_linear=False,
    use_checkpoint=False, temporal_conv=False, tempspatial_aware=False, temporal_attention=True,
    use_relative_position=True, use_causal_attention=False, temporal_length=None, use_fp16=False,
    addition_attention=False, temporal_selfatt_only=True, image_cross_attention=False,
    image_cross_attention_scale_learnable=False, default_fs=4, fs_condition=False, action_emb=False, action_dim=13,
)
CSGO_ACTION_DIM = 51  # the official code switches to the embedding layout at exactly this width

# the released configs' U-Net params (configs/*/config_*_test*.yaml): DynamiCrafter-512 plus these
_RELEASED = dict(
    in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
    channel_mult=[1, 2, 4, 4], dropout=0.1, num_head_channels=64, transformer_depth=1, context_dim=1024,
    use_linear=True, use_checkpoint=True, temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
    use_relative_position=False, use_causal_attention=True, addition_attention=True, image_cross_attention=True,
    default_fs=3, fs_condition=True, action_emb=True,
)
OFFICIAL_CONFIGS = {
    "rt1": {**_RELEASED, "temporal_length": 16, "action_dim": 13},
    "csgo": {**_RELEASED, "temporal_length": 16, "action_dim": CSGO_ACTION_DIM},
    "recon": {**_RELEASED, "temporal_length": 20, "action_dim": 3},
}


def unet_config_from_official(params: dict, temporal_norm: str = "pooled") -> UNetConfig:
    """The official ``unet_config.params`` (over its constructor defaults) -> a v2w UNetConfig."""
    p = {**OFFICIAL_UNET_DEFAULTS, **params}
    if not p["use_causal_attention"]:
        raise V2WError("this is not a Vid2World world model (use_causal_attention is false): causalize it as a DynamiCrafter base")
    action_dim = int(p.pop("action_dim")) if p.pop("action_emb") else 0
    p.pop("use_causal_attention")
    names = set(UNetConfig().to_dict())
    unknown = sorted(set(p) - names)
    if unknown:
        raise V2WError(f"unknown official U-Net config keys {unknown}")
    return UNetConfig.from_dict({
        **UNetConfig().to_dict(), **BUILTIN_CONFIGS["dynamicrafter-512"], **p,
        "causal": True, "temporal_norm": temporal_norm, "action_dim": action_dim,
        "action_type": "discrete" if action_dim == CSGO_ACTION_DIM else "continuous",
        "action_injection": "vid2world", "out_conv": "causal-height",
    })


_CONV3D = re.compile(r"^(.*\.temopral_conv\.conv\d\.\d+)\.conv3d\.(weight|bias)$")


def official_to_v2w_key(key: str) -> str:
    """One official U-Net key (``model.diffusion_model.`` stripped) -> the VideoUNet key."""
    m = _CONV3D.match(key)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    if key.startswith("out.2.conv2d."):
        return "out.2." + key[len("out.2.conv2d."):]
    if key == "action_emb_preprocess.weight":
        return "action_encoder.embedding"
    if key.startswith("action_emb_proj."):
        return "action_encoder.mlp." + key[len("action_emb_proj."):]
    return key


def v2w_to_official_key(key: str, config: UNetConfig) -> str:
    """The inverse of :func:`official_to_v2w_key` for a ``vid2world`` VideoUNet (export and tests)."""
    if key == "action_encoder.embedding":
        return "action_emb_preprocess.weight"
    if key.startswith("action_encoder.mlp."):
        return "action_emb_proj." + key[len("action_encoder.mlp."):]
    if key.startswith("out.2.") and config.out_conv == "causal-height":
        return "out.2.conv2d." + key[len("out.2."):]
    m = re.match(r"^(.*\.temopral_conv\.(conv1\.2|conv[234]\.3))\.(weight|bias)$", key)  # the Conv3d slots
    if m and config.causal:
        return f"{m.group(1)}.conv3d.{m.group(3)}"
    return key


def is_official_unet(keys) -> bool:
    """Does this U-Net state dict (prefix stripped) use the official Vid2World layout?"""
    return any(k.startswith("action_emb_proj.") or k.startswith("out.2.conv2d.") or ".conv3d." in k for k in keys)


def guess_official_config(keys, shapes: dict | None = None) -> dict:
    """The released config that fits an official U-Net's keys: CS:GO when ``action_emb_preprocess``
    is there, else the continuous action width read off ``action_emb_proj.0.weight`` (13: RT-1, 3: RECON)."""
    keys = set(keys)
    if "action_emb_preprocess.weight" in keys:
        return dict(OFFICIAL_CONFIGS["csgo"])
    width = int(shapes["action_emb_proj.0.weight"][1]) if shapes and "action_emb_proj.0.weight" in shapes else 13
    return dict(OFFICIAL_CONFIGS["recon" if width == 3 else "rt1"], action_dim=width)


# the eight world models the paper's authors released (HF hub, MIT), and how each was trained
@dataclass(frozen=True)
class Release:
    domain: str
    transfer: str  # the weight transfer it was causalized with
    action_guidance: bool  # trained with action dropout (guidance works); the -NAG models were not
    training_steps: int


RELEASES = {
    "thuml/Vid2World-RT1": Release("rt1", "extrapolative", True, 100_000),
    "thuml/Vid2World-CSGO": Release("csgo", "extrapolative", True, 100_000),
    "thuml/Vid2World-RECON": Release("recon", "extrapolative", True, 100_000),
    "thuml/Vid2World-RT1-NAG": Release("rt1", "extrapolative", False, 30_000),
    "thuml/Vid2World-RT1-Masked-NAG": Release("rt1", "masked", False, 30_000),
    "thuml/Vid2World-RT1-30k": Release("rt1", "extrapolative", True, 30_000),
    "thuml/Vid2World-RT1-Masked": Release("rt1", "masked", True, 30_000),
    "thuml/Vid2World-RT1-Shift": Release("rt1", "shift", True, 30_000),
}


def release_of(name: str) -> str | None:
    """The canonical repo id of a released model (case-insensitive), or None."""
    return {k.lower(): k for k in RELEASES}.get(str(name).lower())


