"""The Wan 2.1 family (``--family wan``): diffusers' ``WanTransformer3DModel`` made block-causal over
latent frames, with per-frame noise levels and actions (docs/design.md §12).

What changes, and where (the transformer's own modules and weights are used as they are):

* **Block-causal self-attention.** Every block's ``attn1`` gets :class:`BlockCausalAttnProcessor`:
  the tokens of latent frame f attend to all tokens of frames <= f (full attention within a frame).
  It runs one attention call per query frame over the keys of frames <= f, so no (S x S) mask is
  ever built (at 480x832, 21 latent frames x 1560 tokens, that mask alone would be 1 GB) and any
  diffusers attention backend (flash, SDPA) applies. Cross-attention to the text is unchanged.
  Nothing else in a Wan block mixes frames (LayerNorm, FFN and modulation work per token), so the
  causal model is *exactly* causal.
* **Per-frame noise levels.** ``timesteps`` (B, F): each latent frame's embedding goes to all its
  tokens, through the per-token modulation path diffusers' blocks already have (Wan 2.2 TI2V's).
* **Actions.** Wan's VAE compresses time 4x: video frames 1 + 4k -> latent frames 1 + k, latent
  frame j >= 1 covering video frames 4j-3 .. 4j. Its four action inputs (a_{4j-4} .. a_{4j-1},
  frame t receives a_{t-1}) are *concatenated* (4A numbers: order matters, a sum would forget
  which step did what) and an :class:`ActionEncoder` (last layer zero: the model starts as the
  base) adds the result to that frame's time embedding before ``time_proj``, so actions reach
  every block's scale/shift/gate. Latent frame 0 is the single first video frame: no action, zeros.
* **Rotary positions** start at ``frame_offset``, so a cached rollout sees a new frame at its
  true index; the activation cache keeps every ``attn1``'s rotated keys and values per frame
  (``pipelines.models.cache.activation_cache``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from pipelines.errors import V2WError
from pipelines.models.action import ACTION_TYPES, ActionEncoder
from pipelines.models.latent_frames import TEMPORAL_COMPRESSION, group_actions, video_to_latent_frames  # noqa: F401  (re-exported)

TEXT_TOKENS = 512  # Wan's text context length (UMT5, padded with zeros)
WAN_HUB = {"wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}  # short names for --ckpt

# the tiny stand-in (``--ckpt tiny-wan``): the real config keys at a size a CPU runs in milliseconds
TINY_WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
    freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
TINY_WAN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                    temperal_downsample=[True, True], dropout=0.0, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                    scale_factor_temporal=4, scale_factor_spatial=4)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, S, heads, D) with interleaved (even, odd) pairs, as diffusers' processor."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class FrameLayout:
    """What the attention processors need to know about the current forward: tokens per latent frame
    and whether attention is block-causal (set by :class:`WanWorldTransformer` before every call)."""

    tokens_per_frame: int = 1
    causal: bool = True


class BlockCausalAttnProcessor:
    """Self-attention of a Wan block, block-causal over latent frames; reads and fills the activation
    cache (``attn.activation_cache``) when one is attached. Same projections, q/k norms and rotary
    embedding as diffusers' ``WanAttnProcessor``; with ``layout.causal`` False it is that processor."""

    def __init__(self, layout: FrameLayout):
        self.layout = layout

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise V2WError("BlockCausalAttnProcessor is for self-attention (attn1) without a mask")
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if rotary_emb is not None:
            q, k = apply_rotary(q, *rotary_emb), apply_rotary(k, *rotary_emb)
        past = 0
        cache = getattr(attn, "activation_cache", None)
        if cache is not None:  # the cached frames' keys/values come first (tokens are on dim 1)
            k, v, past = cache.keys_values(attn, k, v)
        if not self.layout.causal:
            out = dispatch_attention_fn(q, k, v)
        else:
            n = self.layout.tokens_per_frame
            # query frame f sees the past and the new frames up to f: one call per frame, no mask
            out = torch.cat([dispatch_attention_fn(q[:, f * n : (f + 1) * n], k[:, : past + (f + 1) * n], v[:, : past + (f + 1) * n])
                             for f in range(q.shape[1] // n)], dim=1)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


@dataclass
class WanWorldConfig:
    """The v2w part of a Wan world model's config (the transformer keeps diffusers' own)."""

    action_dim: int = 0  # per video frame; the encoder sees 4x this per latent frame
    action_type: str = "continuous"
    causal: bool = True
    action_init_std: float = 0.0

    def __post_init__(self):
        if self.action_type not in ACTION_TYPES:
            raise V2WError(f"--action-type must be one of {{{', '.join(ACTION_TYPES)}}}. Got {self.action_type!r}")

    @property
    def per_frame_norm(self) -> bool:
        return True  # no norm in a Wan block mixes frames: the activation cache is exact

    def to_dict(self) -> dict:
        return asdict(self)


class WanWorldTransformer(nn.Module):
    """``WanTransformer3DModel`` + block-causal self-attention + per-frame noise levels + actions.

    forward(x (B, C, F, h, w) latents, timesteps (B, F) or (B,), context (B, L, text_dim),
    actions (B, F, 4A) per latent frame (:func:`group_actions`) or None, frame_offset) -> (B, C, F, h, w).
    Its forward reuses the transformer's modules in diffusers' order (patch embedding, condition
    embedder, blocks, output norm and projection); only the time embedding is split open to add actions.
    """

    def __init__(self, transformer: WanTransformer3DModel, config: WanWorldConfig):
        super().__init__()
        if tuple(transformer.config.patch_size)[0] != 1:
            raise V2WError(f"Wan transformers with a temporal patch of {transformer.config.patch_size[0]} are not supported (1 expected)")
        self.transformer, self.config = transformer, config
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.action_encoder = (
            ActionEncoder(TEMPORAL_COMPRESSION * config.action_dim, inner, inner, config.action_type, config.action_init_std)
            if config.action_dim else None
        )
        self.layout = FrameLayout()
        for block in transformer.blocks:
            block.attn1.set_processor(BlockCausalAttnProcessor(self.layout))
        self.gradient_checkpointing = False

    def cached_layers(self) -> list[nn.Module]:
        """The layers that keep keys/values in an activation cache (every block's self-attention)."""
        return [block.attn1 for block in self.transformer.blocks]

    def frame_mixing_parameters(self) -> list[nn.Parameter]:
        """``v2w train --train temporal`` for a DiT: the layers where frames meet (every block's
        self-attention) and the time embedding that carries noise levels and actions."""
        ce = self.transformer.condition_embedder
        mods = [b.attn1 for b in self.transformer.blocks] + [ce.time_embedder, ce.time_proj]
        return [p for m in mods for p in m.parameters()] + (list(self.action_encoder.parameters()) if self.action_encoder else [])

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    def rotary(self, x: torch.Tensor, frame_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' ``WanRotaryPosEmbed.forward``, with latent frames numbered from ``frame_offset``."""
        rope = self.transformer.rope
        _, _, f, h, w = x.shape
        p_t, p_h, p_w = rope.patch_size
        ppf, pph, ppw = f // p_t, h // p_h, w // p_w
        if frame_offset + ppf > rope.max_seq_len:
            raise V2WError(f"latent frame {frame_offset + ppf} is past the rotary table ({rope.max_seq_len} positions)")
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        out = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t_part, h_part, w_part = table.split(sizes, dim=1)
            parts = [t_part[frame_offset : frame_offset + ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                     h_part[:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                     w_part[:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1)]
            out.append(torch.cat(parts, dim=-1).reshape(1, ppf * pph * ppw, 1, -1))
        return out[0], out[1]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                actions: torch.Tensor | None = None, frame_offset: int = 0) -> torch.Tensor:
        tr = self.transformer
        b, _, f, h, w = x.shape
        _, p_h, p_w = tr.config.patch_size
        n = (h // p_h) * (w // p_w)
        self.layout.tokens_per_frame, self.layout.causal = n, self.config.causal
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(b, f)
        rotary = self.rotary(x, frame_offset)
        tokens = tr.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # (B, F*n, D)
        # 1. one time embedding per latent frame (+ its actions), then to its n tokens
        ce = tr.condition_embedder
        t_freq = ce.timesteps_proj(timesteps.flatten()).unflatten(0, (b, f))
        time_dtype = next(iter(ce.time_embedder.parameters())).dtype
        temb = ce.time_embedder(t_freq.to(time_dtype)).type_as(context)  # (B, F, D)
        if actions is not None:
            if self.action_encoder is None:
                raise V2WError("this model has no action encoder (causalize with --action-dim A)")
            temb = temb + self.action_encoder(actions).to(temb.dtype)
        modulation = ce.time_proj(ce.act_fn(temb))  # (B, F, 6D)
        temb_tokens = temb.repeat_interleave(n, dim=1)  # (B, F*n, D)
        modulation = modulation.repeat_interleave(n, dim=1).unflatten(2, (6, -1))  # (B, F*n, 6, D)
        ctx = ce.text_embedder(context)
        # 2. the blocks
        for block in tr.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, ctx, modulation, rotary, use_reentrant=False)
            else:
                tokens = block(tokens, ctx, modulation, rotary)
        # 3. output norm, projection, unpatchify (diffusers' order)
        shift, scale = (tr.scale_shift_table.unsqueeze(0) + temb_tokens.unsqueeze(2)).chunk(2, dim=2)
        tokens = (tr.norm_out(tokens.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(tokens)
        tokens = tr.proj_out(tokens)
        tokens = tokens.reshape(b, f, h // p_h, w // p_w, 1, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return tokens.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def rebuild_rope(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """The rotary tables are computed at construction, not stored (non-persistent buffers): a
    transformer built on the ``meta`` device to load weights into gets them rebuilt on the CPU."""
    rope = transformer.rope
    if rope.freqs_cos.is_meta:
        transformer.rope = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    return transformer


def tiny_wan_transformer(seed: int = 0) -> WanTransformer3DModel:
    """A seeded random ``WanTransformer3DModel`` at :data:`TINY_WAN_TRANSFORMER` (real key names)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_WAN_TRANSFORMER)
