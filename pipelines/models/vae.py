"""DynamiCrafter's first stage: the Stable Diffusion KL-f8 VAE as diffusers' ``AutoencoderKL`` (docs/design.md §2).

The checkpoint stores it in LDM layout under ``first_stage_model.*`` (``encoder.down.0.block.0.
norm1.weight``, ``encoder.mid.attn_1.q.weight`` as 1x1 convs, ...). :func:`load_vae` converts those
keys with diffusers' own ``convert_ldm_vae_checkpoint(checkpoint, config)`` and verifies that every
key under the prefix was consumed and every model parameter was filled (zero missing, zero
unexpected, shapes checked), raising :class:`V2WError` that lists the first offending keys.

Videos are (B, C, T, H, W). DynamiCrafter's ``perframe_ae`` encodes and decodes one frame at a time
(:func:`encode_video`/:func:`decode_video` default ``chunk_size=1``; larger chunks are faster and agree
to float tolerance). DynamiCrafter samples the posterior; here the posterior mode is the default
(``sample=True`` to sample). Latents are scaled by 0.18215.
"""

from __future__ import annotations

from typing import Mapping

import torch

from pipelines.errors import V2WError
from pipelines.statedict import load_strict

LATENT_SCALE = 0.18215
_MAX_LISTED = 8

# DynamiCrafter ``first_stage_config.params.ddconfig`` (all of 256/512/1024 configs).
DYNAMICRAFTER_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def tiny_ldm_ddconfig() -> dict:
    """A small LDM ddconfig for tests: still 8x downsampling (4 levels), channels 32/64/64/64 so the
    channel-changing ``nin_shortcut`` is exercised, one res block per level (GroupNorm needs 32 | ch)."""
    return {
        "double_z": True,
        "z_channels": 4,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def ldm_vae_shapes(dd: Mapping, embed_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an LDM/DynamiCrafter AutoencoderKL state dict (``ae_modules`` Encoder/Decoder
    + quant convs), for a ``ddconfig``. Used to write LDM-layout checkpoints (tiny bases, tests)."""
    ch, mult, nrb, z = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"], dd["z_channels"]
    e = embed_dim or z
    shapes = {}

    def conv(name, cout, cin, k):
        shapes[name + ".weight"] = (cout, cin, k, k)
        shapes[name + ".bias"] = (cout,)

    def norm(name, c):
        shapes[name + ".weight"] = (c,)
        shapes[name + ".bias"] = (c,)

    def resnet(p, cin, cout):
        norm(p + ".norm1", cin)
        conv(p + ".conv1", cout, cin, 3)
        norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".nin_shortcut", cout, cin, 1)

    def mid(p, c):
        resnet(p + ".mid.block_1", c, c)
        norm(p + ".mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.mid.attn_1.{n}", c, c, 1)
        resnet(p + ".mid.block_2", c, c)

    conv("encoder.conv_in", ch, dd["in_channels"], 3)
    in_mult = [1] + mult
    for i in range(len(mult)):
        cin, cout = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            resnet(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", 2 * z, cin, 3)

    cin = ch * mult[-1]
    conv("decoder.conv_in", cin, z, 3)
    mid("decoder", cin)
    for i in reversed(range(len(mult))):
        cout = ch * mult[i]
        for j in range(nrb + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", dd["out_ch"], cin, 3)
    conv("quant_conv", 2 * e, 2 * z, 1)
    conv("post_quant_conv", z, e, 1)
    return shapes


def vae_config_from_ldm(ddconfig: Mapping, embed_dim: int | None = None, scaling_factor: float = LATENT_SCALE) -> dict:
    """LDM ``ddconfig`` -> diffusers ``AutoencoderKL`` config (kwargs).

    Same mapping as diffusers' ``create_vae_diffusers_config_from_ldm``. The LDM encoder/decoder
    always have a mid-block attention (``mid.attn_1``), which ``AutoencoderKL`` also has
    (``mid_block_add_attention=True``); per-level attention (non-empty ``attn_resolutions``), a
    single-moment encoder (``double_z=False``), linear attention and ``embed_dim != z_channels`` have
    no AutoencoderKL counterpart and are refused.
    """
    d = dict(ddconfig)
    required = ("ch", "ch_mult", "num_res_blocks", "z_channels")
    missing = [k for k in required if k not in d]
    if missing:
        raise V2WError(f"VAE ddconfig lacks {', '.join(missing)}")
    if list(d.get("attn_resolutions") or []):
        raise V2WError(
            f"VAE ddconfig has attn_resolutions {list(d['attn_resolutions'])}; only [] (attention in the "
            "mid block only, as in Stable Diffusion / DynamiCrafter) converts to diffusers' AutoencoderKL"
        )
    if not d.get("double_z", True):
        raise V2WError("VAE ddconfig has double_z: false; AutoencoderKL needs a mean+logvar encoder")
    if d.get("attn_type", "vanilla") != "vanilla" or d.get("use_linear_attn", False):
        raise V2WError("VAE ddconfig uses linear attention; only vanilla attention converts to AutoencoderKL")
    if embed_dim is not None and int(embed_dim) != int(d["z_channels"]):
        raise V2WError(f"VAE embed_dim {embed_dim} differs from z_channels {d['z_channels']}; not supported")
    block_out = [int(d["ch"]) * int(m) for m in d["ch_mult"]]
    if any(c % 32 for c in block_out):
        raise V2WError(f"VAE channels {block_out} must be multiples of 32 (GroupNorm with 32 groups)")
    return {
        "in_channels": int(d.get("in_channels", 3)),
        "out_channels": int(d.get("out_ch", 3)),
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
        "block_out_channels": block_out,
        "layers_per_block": int(d["num_res_blocks"]),
        "act_fn": "silu",
        "latent_channels": int(d["z_channels"]),
        "norm_num_groups": 32,
        "sample_size": int(d.get("resolution", 256)),
        "scaling_factor": float(scaling_factor),
        "mid_block_add_attention": True,
    }


def ldm_ddconfig_from_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "first_stage_model.") -> dict:
    """Infer an LDM ddconfig from the shapes under ``prefix`` (``resolution`` is not stored: 256)."""
    sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    need = ["encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight"]
    missing = [prefix + k for k in need if k not in sub]
    if missing:
        raise V2WError(f"cannot infer the VAE config: missing {', '.join(missing)}. Is the prefix {prefix!r} right?")
    ch, in_channels = sub["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(k.split(".")[2]) for k in sub if k.startswith("encoder.down.")})
    blocks = sorted({int(k.split(".")[4]) for k in sub if k.startswith("encoder.down.0.block.")})
    if not levels or not blocks:
        raise V2WError(f"cannot infer the VAE config: no {prefix}encoder.down.N.block.M keys")
    ch_mult = []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        if key not in sub:
            raise V2WError(f"cannot infer the VAE config: missing {prefix}{key}")
        ch_mult.append(int(sub[key].shape[0]) // int(ch))
    return {
        "double_z": True,
        "z_channels": int(sub["decoder.conv_in.weight"].shape[1]),
        "resolution": 256,
        "in_channels": int(in_channels),
        "out_ch": int(sub["decoder.conv_out.weight"].shape[0]),
        "ch": int(ch),
        "ch_mult": ch_mult,
        "num_res_blocks": len(blocks),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def _listing(keys, prefix: str = "") -> str:
    keys = sorted(keys)
    shown = ", ".join(prefix + k for k in keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def convert_ldm_vae_state_dict(sub: Mapping[str, torch.Tensor], config: dict) -> tuple[dict, dict]:
    """LDM VAE keys (prefix stripped) -> (diffusers state dict, {diffusers key: LDM key}).

    Runs diffusers' ``convert_ldm_vae_checkpoint(checkpoint, config)`` once on shape-only meta
    stand-ins to learn exactly which LDM key feeds which diffusers key (that function silently skips
    keys it does not know, so this is how unexpected keys are found), then applies the same
    mapping, including the 1x1-conv -> linear reshape of the attention weights, to the real tensors.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    stand_ins = {"first_stage_model." + k: torch.empty(tuple(v.shape), device="meta") for k, v in sub.items()}
    origin = {id(t): k[len("first_stage_model.") :] for k, t in stand_ins.items()}
    converted = convert_ldm_vae_checkpoint(stand_ins, config)
    new_sd, source = {}, {}
    for new_key, t in converted.items():
        if t is None:
            continue
        base = t._base if t._base is not None else t
        ldm_key = origin.get(id(base))
        if ldm_key is None:  # not one of ours: should not happen
            raise V2WError(f"VAE conversion produced {new_key} from an unknown source")
        new_sd[new_key] = sub[ldm_key].reshape(t.shape)
        source[new_key] = ldm_key
    return new_sd, source


def vae_to_ldm_state_dict(vae, ddconfig: Mapping) -> dict[str, torch.Tensor]:
    """The inverse of :func:`load_vae`'s conversion: a diffusers ``AutoencoderKL`` -> LDM-layout keys
    (no prefix), e.g. to write a DynamiCrafter checkpoint. Uses the same diffusers mapping, so a
    round trip through :func:`load_vae` is exact (tested)."""
    shapes = ldm_vae_shapes(ddconfig)
    stand_ins = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    _, source = convert_ldm_vae_state_dict(stand_ins, dict(vae.config))
    sd = vae.state_dict()
    missing = sorted(set(sd) - set(source))
    if missing or len(source) != len(shapes):
        raise V2WError(f"VAE does not match ddconfig {dict(ddconfig)}: {_listing(missing) or 'unmapped LDM keys'}")
    return {source[k]: v.detach().reshape(shapes[source[k]]).contiguous().cpu() for k, v in sd.items()}


def load_vae(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "first_stage_model.",
    ddconfig: Mapping | None = None,
    *,
    embed_dim: int | None = None,
    scaling_factor: float = LATENT_SCALE,
    dtype: torch.dtype | None = torch.float32,
    device=None,
    source: str | None = None,
):
    """LDM-layout VAE keys under ``prefix`` -> (diffusers ``AutoencoderKL``, loaded checkpoint keys).

    ``ddconfig`` is DynamiCrafter's ``first_stage_config.params.ddconfig``; None infers it from the
    shapes (:func:`ldm_ddconfig_from_state_dict`). Every key under ``prefix`` must be consumed and
    every model parameter filled with the right shape, else V2WError lists the first offending keys.
    The model is returned frozen, in eval mode, cast to ``dtype`` (None: float32). ``source``: the
    checkpoint file, named in errors.
    """
    from diffusers import AutoencoderKL

    sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        raise V2WError(f"no VAE keys: nothing in the checkpoint starts with {prefix!r}")
    given = ddconfig is not None
    if ddconfig is None:
        ddconfig = ldm_ddconfig_from_state_dict(state_dict, prefix)
    config = vae_config_from_ldm(ddconfig, embed_dim=embed_dim, scaling_factor=scaling_factor)
    new_sd, origin = convert_ldm_vae_state_dict(sub, config)

    vae = AutoencoderKL(**config)
    unused = sorted(set(sub) - set(origin.values()))
    hint = f"The ddconfig: {dict(ddconfig)}" + ("; if it is wrong, ddconfig=None infers it from the checkpoint" if given else "")
    # copies (and casts) into the float32 model; missing keys are diffusers parameter names
    load_strict(vae, new_sd, "VAE checkpoint", source, against="the ddconfig", hint=hint, prefix=prefix, unused=unused, origin=origin)
    if device is not None:
        vae.to(device=device)
    if dtype is not None and dtype != torch.float32:
        vae.to(dtype=dtype)
    vae.requires_grad_(False).eval()
    loaded = sorted(prefix + origin[k] for k in new_sd)
    return vae, loaded


def _check_video(x: torch.Tensor, name: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} must be (B, C, T, H, W), got shape {tuple(x.shape)}")


def _param(vae) -> torch.Tensor:
    return next(vae.parameters())


def encode_video(
    vae,
    frames: torch.Tensor,
    scale: float = LATENT_SCALE,
    *,
    sample: bool = False,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 1,
) -> torch.Tensor:
    """Frames (B, 3, T, H, W) in [-1, 1] -> latents (B, 4, T, H/8, W/8) * ``scale``.

    Encodes ``chunk_size`` frames per VAE call (1 = DynamiCrafter's ``perframe_ae``; None = all at
    once), frames flattened batch-major ((b t) order). ``sample=False`` takes the posterior mode
    (mean); ``sample=True`` draws from it with ``generator``. Gradients are not disabled here: wrap
    in ``torch.no_grad()`` for a frozen VAE. Output dtype/device are the VAE's.
    """
    _check_video(frames, "frames")
    b, c, t, h, w = frames.shape
    p = _param(vae)
    x = frames.to(device=p.device, dtype=p.dtype).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    n = x.shape[0] if not chunk_size else int(chunk_size)
    outs = []
    for i in range(0, x.shape[0], n):
        dist = vae.encode(x[i : i + n]).latent_dist
        outs.append(dist.sample(generator=generator) if sample else dist.mode())
    z = torch.cat(outs, 0) * scale
    return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def decode_video(
    vae, latents: torch.Tensor, scale: float = LATENT_SCALE, *, chunk_size: int | None = 1
) -> torch.Tensor:
    """Latents (B, 4, T, h, w) (scaled by ``scale``) -> frames (B, 3, T, 8h, 8w), nominally in [-1, 1]
    (not clamped, as in DynamiCrafter's ``decode_first_stage``). ``chunk_size`` as in :func:`encode_video`."""
    _check_video(latents, "latents")
    b, c, t, h, w = latents.shape
    p = _param(vae)
    z = latents.to(device=p.device, dtype=p.dtype).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / scale
    n = z.shape[0] if not chunk_size else int(chunk_size)
    outs = [vae.decode(z[i : i + n]).sample for i in range(0, z.shape[0], n)]
    x = torch.cat(outs, 0)
    return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


__all__ = [
    "DYNAMICRAFTER_DDCONFIG",
    "LATENT_SCALE",
    "convert_ldm_vae_state_dict",
    "decode_video",
    "encode_video",
    "ldm_ddconfig_from_state_dict",
    "ldm_vae_shapes",
    "load_vae",
    "vae_to_ldm_state_dict",
    "tiny_ldm_ddconfig",
    "vae_config_from_ldm",
]
