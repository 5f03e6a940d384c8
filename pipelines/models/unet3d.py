"""Causalization of diffusers' ``UNet3DConditionModel`` (ModelScope text-to-video): a second base
family next to DynamiCrafter, to show that docs/design.md §3 is not tied to one code base.

Where the UNet3D mixes frames (everything else works on (B*T, C, H, W), one frame at a time):

* ``TemporalConvLayer`` (after every ResnetBlock2D; attribute ``temp_convs`` of the 3D blocks):
  four ``nn.Sequential`` (``conv1``..``conv4``) of GroupNorm -> SiLU [-> Dropout] -> Conv3d with
  kernel (3, 1, 1), padding (1, 0, 0); ``conv4``'s conv is zero-initialised so the layer starts
  as the identity. It reshapes to (B, C, T, H, W), so its GroupNorms pool over all frames.
* ``TransformerTemporalModel`` (``transformer_in`` right after ``conv_in``, and ``temp_attentions``
  in the cross-attention blocks): a GroupNorm on (B, C, T, H, W) (pooled over frames), then
  tokens (B*H*W, T, C) through ``BasicTransformerBlock``s with ``double_self_attention=True``,
  i.e. ``attn1`` *and* ``attn2`` are both self-attention over frames (the UNet passes no
  ``encoder_hidden_states`` to them). UNet3DConditionModel builds them without
  ``positional_embeddings``, so there is no temporal positional encoding; other configs of
  the class may set ``positional_embeddings="sinusoidal"`` (absolute, added before each
  attention): the report lists such blocks, since docs/design.md §3 says none.

``causalize_unet3d`` swaps, in place, each temporal Conv3d for ``CausalTemporalConv3d`` (weights
transferred), each of those GroupNorms for ``FrameGroupNorm`` (same Parameter objects), and sets
``CausalTemporalAttnProcessor`` (lower-triangular mask over frames) on the temporal attentions
only; spatial attentions keep their processor. Parameter names do not change, so a diffusers
checkpoint loads into the causal model as is.

``UNet3DWorldModel`` runs the same network with per-frame timesteps (B, T) and optional per-frame
action embeddings added to each frame's time embedding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel
from torch import nn

from pipelines.errors import V2WError
from pipelines.fileio import atomic_dir, write_json_atomic
from pipelines.models.causal import TRANSFERS, CausalTemporalConv3d, FrameGroupNorm, is_per_frame
from pipelines.models.model_folder import model_header, read_model_config

__all__ = ["CausalTemporalAttnProcessor", "UNet3DWorldModel", "causalize_unet3d", "temporal_probe_spec"]


class CausalTemporalAttnProcessor:
    """diffusers attention processor: self-attention over frames with a lower-triangular mask.

    Same computation as ``AttnProcessor2_0`` (query/key/value over the sequence axis, which inside
    a TransformerTemporalModel is the frame axis of (B*H*W, T, C) tokens) except that token i only
    attends to tokens j <= i. A call with ``encoder_hidden_states`` is a cross-attention whose keys
    are not frames: it runs unmasked (``AttnProcessor2_0``).
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3:
            raise ValueError(f"temporal attention expects (B*H*W, T, C) tokens. Got shape {tuple(hidden_states.shape)}")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        batch, frames, _ = hidden_states.shape

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, frames, batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
            causal = torch.ones(frames, frames, dtype=torch.bool, device=hidden_states.device).tril()
            mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))

        if attn.group_norm is not None:  # pools over frames: not causal; causalize_unet3d refuses it
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (z.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for z in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=mask is None, scale=attn.scale
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def temporal_probe_spec(unet: nn.Module) -> tuple[dict, dict]:
    """(module_types, frame_axes) for ``probe.module_leaks``/``per_module_leaks`` on a UNet3D.

    "temporal_conv" (TemporalConvLayer) and "temporal_transformer" (TransformerTemporalModel)
    output (B*T, C, H, W) video features (frame axis "auto" -> "bt"); "temporal_attention" (the
    Attention modules inside the temporal transformers) outputs (B*H*W, T, C) tokens: axis 1.
    """
    names = {
        f"{n}.{s}" if n else s
        for n, tm in unet.named_modules()
        if isinstance(tm, TransformerTemporalModel)
        for s, m in tm.named_modules()
        if isinstance(m, Attention)
    }

    def temporal_attention(name: str, module: nn.Module) -> bool:
        return name in names

    types = {
        "temporal_conv": (TemporalConvLayer,),
        "temporal_transformer": (TransformerTemporalModel,),
        "temporal_attention": temporal_attention,
    }
    return types, {"temporal_attention": 1}


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)  # also right for nn.Sequential children ("conv1.2")


def _frame_norm(gn: nn.GroupNorm, per_frame: bool) -> FrameGroupNorm:
    new = FrameGroupNorm(gn.num_groups, gn.num_channels, eps=gn.eps, affine=gn.affine, per_frame=per_frame)
    if gn.affine:  # share the Parameter objects: same device, dtype, requires_grad, optimizer state
        new.weight, new.bias = gn.weight, gn.bias
    return new.train(gn.training)


def _causal_conv(conv: nn.Conv3d, transfer: str, order: int) -> CausalTemporalConv3d:
    new = CausalTemporalConv3d.from_conv(conv, transfer, order)
    new.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    return new.train(conv.training)


def causalize_unet3d(
    unet: UNet3DConditionModel, transfer: str = "extrapolative", norm: str = "per-frame", order: int = 1
) -> tuple[UNet3DConditionModel, dict]:
    """Make a UNet3DConditionModel (or any module built from diffusers' TemporalConvLayer and
    TransformerTemporalModel) causal in time, in place. Returns (unet, report).

    report: {"transfer", "norm", "order", "counts": {...}, and per layer type the list of module
    names: "temporal_conv_layers", "temporal_convs", "norms", "temporal_transformers",
    "temporal_attentions", "skipped_cross_attentions", "positional_embeddings"}.
    """
    if transfer not in TRANSFERS:
        raise V2WError(f"--transfer must be one of {', '.join(TRANSFERS)}. Got {transfer!r}")
    per_frame = is_per_frame(norm)
    if not isinstance(order, int) or order < 0:
        raise V2WError(f"--order must be a non-negative integer. Got {order!r}")
    if transfer == "extrapolative" and order > 1:
        raise V2WError(
            f"--order {order} is too high for the UNet3D's 3-tap temporal convs (one past frame). Use 0 or 1."
        )
    mods = list(unet.named_modules())
    if any(isinstance(m, CausalTemporalConv3d) for _, m in mods) or any(
        isinstance(getattr(m, "processor", None), CausalTemporalAttnProcessor) for _, m in mods
    ):
        raise V2WError("this UNet3D is already causalized; causalize the original (bidirectional) weights once")
    conv_layers = [(n, m) for n, m in mods if isinstance(m, TemporalConvLayer)]
    transformers = [(n, m) for n, m in mods if isinstance(m, TransformerTemporalModel)]
    if not conv_layers and not transformers:
        raise V2WError(
            f"{type(unet).__name__} has no TemporalConvLayer or TransformerTemporalModel: not a diffusers UNet3D"
        )

    def join(prefix: str, sub: str) -> str:
        return f"{prefix}.{sub}" if prefix and sub else prefix or sub

    convs, norms, attns, cross, pos = [], [], [], [], []
    for name, layer in conv_layers:
        for sub_name, sub in list(layer.named_modules()):
            full = join(name, sub_name)
            if isinstance(sub, nn.Conv3d) and sub.kernel_size[0] > 1:
                _replace(unet, full, _causal_conv(sub, transfer, order))
                convs.append(full)
            elif isinstance(sub, nn.GroupNorm):
                _replace(unet, full, _frame_norm(sub, per_frame))
                norms.append(full)
    for name, tm in transformers:
        for sub_name, sub in list(tm.named_modules()):
            full = join(name, sub_name)
            if isinstance(sub, nn.GroupNorm):
                if sub is not tm.norm:  # e.g. Attention.group_norm on (N, C, T): pools over frames
                    raise V2WError(f"{full}: a GroupNorm over frames inside a temporal attention is not supported")
                _replace(unet, full, _frame_norm(sub, per_frame))
                norms.append(full)
            elif isinstance(sub, Attention):
                if sub.is_cross_attention:  # keys are text tokens, not frames
                    cross.append(full)
                else:
                    sub.set_processor(CausalTemporalAttnProcessor())
                    attns.append(full)
            elif isinstance(sub, BasicTransformerBlock) and getattr(sub, "pos_embed", None) is not None:
                pos.append(full)
    if pos:
        warnings.warn(
            f"{len(pos)} temporal transformer blocks add absolute positional embeddings over frames "
            f"({pos[0]}, ...); docs/design.md §3 assumes none. They are causal but tie frames to absolute positions.",
            stacklevel=2,
        )
    report = {
        "transfer": transfer,
        "norm": norm,
        "order": order,
        "counts": {
            "temporal_conv_layers": len(conv_layers),
            "temporal_convs": len(convs),
            "norms": len(norms),
            "temporal_transformers": len(transformers),
            "temporal_attentions": len(attns),
            "skipped_cross_attentions": len(cross),
            "positional_embeddings": len(pos),
        },
        "temporal_conv_layers": [n for n, _ in conv_layers],
        "temporal_convs": convs,
        "norms": norms,
        "temporal_transformers": [n for n, _ in transformers],
        "temporal_attentions": attns,
        "skipped_cross_attentions": cross,
        "positional_embeddings": pos,
    }
    return unet, report


class UNet3DWorldModel(nn.Module):
    """A causalized UNet3DConditionModel with per-frame timesteps and per-frame action embeddings.

    forward(x (B, C, T, H, W), timesteps (B,) / scalar / (B, T), encoder_hidden_states (B, L, D),
    actions (B, T, time_embed_dim) or None) -> (B, out_channels, T, H, W).

    The same computation as ``UNet3DConditionModel.forward`` (no class labels, attention mask,
    ControlNet residuals or cross_attention_kwargs), except that each frame gets its own time
    embedding ``time_embedding(time_proj(t[b, f])) + actions[b, f]`` where diffusers repeats one
    per clip. With (B,) timesteps and no actions it equals ``unet(x, t, ctx).sample``.
    """

    def __init__(self, unet: UNet3DConditionModel, require_causal: bool = True):
        super().__init__()
        self.unet = unet
        self.require_causal = require_causal
        self._causal_attn = [
            n for n, m in unet.named_modules() if isinstance(getattr(m, "processor", None), CausalTemporalAttnProcessor)
        ]
        if require_causal and not self._causal_attn:
            raise V2WError("UNet3DWorldModel needs a causalized UNet3D: call causalize_unet3d(unet) first")

    @classmethod
    def from_unet(
        cls, unet: UNet3DConditionModel, transfer: str = "extrapolative", norm: str = "per-frame", order: int = 1
    ) -> UNet3DWorldModel:
        unet, report = causalize_unet3d(unet, transfer, norm, order)
        model = cls(unet)
        model.report = report
        return model

    @property
    def time_embed_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    def check_causal(self) -> None:
        """Fail if a temporal attention lost its causal processor (e.g. ``unet.set_attn_processor``)."""
        for name in self._causal_attn:
            if not isinstance(self.unet.get_submodule(name).processor, CausalTemporalAttnProcessor):
                raise V2WError(
                    f"{name}: the causal temporal attention processor was replaced (set_attn_processor / "
                    "attention slicing?); the model is no longer causal"
                )

    def frame_embeddings(
        self, timesteps, batch: int, frames: int, device, actions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-frame embeddings (B*T, D), batch-major like diffusers' ``repeat_interleave``."""
        unet = self.unet
        if not torch.is_tensor(timesteps):
            dtype = torch.float32 if isinstance(timesteps, float) else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=device)
        timesteps = timesteps.to(device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        if timesteps.ndim == 1:
            t_emb = unet.time_proj(timesteps.expand(batch)).to(dtype=unet.dtype)
            emb = unet.time_embedding(t_emb, None)
            emb = emb.repeat_interleave(frames, dim=0, output_size=emb.shape[0] * frames)
        elif timesteps.ndim == 2 and timesteps.shape[1] == frames and timesteps.shape[0] in (1, batch):
            t_emb = unet.time_proj(timesteps.expand(batch, frames).reshape(-1)).to(dtype=unet.dtype)
            emb = unet.time_embedding(t_emb, None)
        else:
            raise ValueError(f"timesteps must be (B,) or (B, T) = ({batch}, {frames}). Got {tuple(timesteps.shape)}")
        if actions is not None:
            if actions.shape != (batch, frames, emb.shape[-1]):
                raise ValueError(
                    f"actions must be (B, T, time_embed_dim) = ({batch}, {frames}, {emb.shape[-1]}). Got {tuple(actions.shape)}"
                )
            emb = emb + actions.reshape(batch * frames, -1).to(emb.dtype)
        return emb

    def forward(
        self,
        x: torch.Tensor,
        timesteps,
        encoder_hidden_states: torch.Tensor,
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.require_causal:
            self.check_causal()
        unet = self.unet
        if x.ndim != 5:
            raise ValueError(f"x must be (B, C, T, H, W). Got shape {tuple(x.shape)}")
        batch, _, frames = x.shape[:3]
        # Mirrors UNet3DConditionModel.forward (diffusers 0.42), with per-frame `emb`.
        factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % factor != 0 for s in x.shape[-2:])
        upsample_size = None

        emb = self.frame_embeddings(timesteps, batch, frames, x.device, actions)
        ctx = encoder_hidden_states.repeat_interleave(
            frames, dim=0, output_size=encoder_hidden_states.shape[0] * frames
        )

        h = x.permute(0, 2, 1, 3, 4).reshape((batch * frames, -1) + x.shape[3:])
        h = unet.conv_in(h)
        h = unet.transformer_in(h, num_frames=frames, return_dict=False)[0]

        def cross(block) -> dict:  # only cross-attention blocks take the text context
            return {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}

        res = (h,)
        for block in unet.down_blocks:
            h, r = block(hidden_states=h, temb=emb, num_frames=frames, **cross(block))
            res += r

        if unet.mid_block is not None:
            h = unet.mid_block(h, emb, encoder_hidden_states=ctx, num_frames=frames)

        for i, block in enumerate(unet.up_blocks):
            is_final = i == len(unet.up_blocks) - 1
            skips = res[-len(block.resnets) :]
            res = res[: -len(block.resnets)]
            if not is_final and forward_upsample_size:
                upsample_size = res[-1].shape[2:]
            h = block(
                hidden_states=h,
                temb=emb,
                res_hidden_states_tuple=skips,
                upsample_size=upsample_size,
                num_frames=frames,
                **cross(block),
            )

        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        return h.reshape((batch, frames) + h.shape[1:]).permute(0, 2, 1, 3, 4)


# --------------------------------------------------------------------------------------------------
# MODEL directory for the unet3d family:  MODEL/config.json (family "unet3d") + MODEL/unet/ (diffusers)
#                                          [+ MODEL/action_encoder.safetensors]


def load_unet3d_base(path: str) -> UNet3DConditionModel:
    """A diffusers UNet3DConditionModel from a local folder (its own, or a pipeline's ``unet/``)."""
    root = Path(path)
    if not root.exists():
        raise V2WError("UNet3D checkpoint folder not found (a diffusers folder with config.json)", path=root)
    sub = "unet" if (root / "unet" / "config.json").exists() else None
    if sub is None and not (root / "config.json").exists():
        raise V2WError("no config.json (or unet/config.json): not a diffusers UNet3DConditionModel folder", path=root)
    try:
        return UNet3DConditionModel.from_pretrained(str(root), subfolder=sub, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise V2WError(f"cannot load UNet3DConditionModel ({str(e).splitlines()[0]})", path=root) from None


def save_unet3d_model(model: UNet3DWorldModel, path, meta: dict, action_encoder: nn.Module | None = None):
    """Write MODEL atomically: diffusers ``save_pretrained`` of the causal weights + v2w config.json."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        model.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if action_encoder is not None:
            save_file({k: v.contiguous() for k, v in action_encoder.state_dict().items()}, str(tmp / "action_encoder.safetensors"))
        cfg = {**model_header("unet3d"), **meta}
        write_json_atomic(tmp / "config.json", cfg)
    return path


def load_unet3d_model(path, device="cpu") -> UNet3DWorldModel:
    """Rebuild the causal architecture over the saved (already transferred) weights."""
    cfg = read_model_config(path)
    unet = load_unet3d_base(str(Path(path) / "unet"))
    # the saved kernels are causal already: "shift" keeps them as they are
    model = UNet3DWorldModel.from_unet(unet, transfer="shift", norm=cfg.get("causalize", {}).get("norm", "per-frame"))
    model.meta = cfg
    return model.to(device)
