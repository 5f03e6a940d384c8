"""Attention blocks of DynamiCrafter's video U-Net, key-for-key (``lvdm/modules/attention.py``).

* ``CrossAttention``: ``to_q/to_k/to_v/to_out.0``; with image cross-attention the context is
  77 text tokens followed by image tokens, attended separately (``to_k/to_v`` and
  ``to_k_ip/to_v_ip``) and summed (the 256 config scales the image part by tanh(alpha) + 1).
* ``SpatialTransformer``: attention over the pixels of each frame, (B*T, C, H, W).
* ``TemporalTransformer``: attention over the frames at each pixel, (B, C, T, H, W). Both of
  its attentions are self-attention whatever the config says; ``causal=True`` adds a
  lower-triangular mask over frames to both; its GroupNorm pools over frames unless
  ``per_frame_norm``.

Softmax attention runs through ``F.scaled_dot_product_attention`` (same maths as DynamiCrafter's
einsum + softmax, fused).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from pipelines.models.causal import FrameGroupNorm

TEXT_TOKENS = 77
FF_ROWS_PER_BLOCK = 256  # FeedForward on CPU without autograd: rows per block (L2-sized intermediates)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False, past: int = 0
) -> torch.Tensor:
    """Multi-head softmax attention on (B, N, heads * d) tensors.

    causal: query i (at absolute position past + i) sees keys 0..past + i, where ``past`` keys
    precede the queries (a rollout cache); with past = 0 this is the usual lower triangle."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if causal and past and q.shape[2] > 1:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(diagonal=past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        # one query after a past: it sees everything; no past: the plain causal triangle
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and not past)
    return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    activation_cache = None  # a LayerCache while pipelines.models.cache.activation_cache is active

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        image_cross_attention: bool = False,
        image_cross_attention_scale_learnable: bool = False,
        text_context_len: int = TEXT_TOKENS,
        action_tokens: int = 0,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        self.text_context_len = text_context_len
        self.scale_learnable = image_cross_attention_scale_learnable
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if image_cross_attention_scale_learnable:
                self.alpha = nn.Parameter(torch.tensor(0.0))
        self.action_tokens = action_tokens
        if action_tokens:
            # random init, like to_k_ip: the tokens themselves start at zero (the action encoder's
            # zero last layer), so this term is exactly zero until the encoder learns
            self.to_k_action = nn.Linear(context_dim, inner, bias=False)
            self.to_v_action = nn.Linear(context_dim, inner, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q = self.to_q(x)
        if context is None:  # self-attention
            k, v, past = self.to_k(x), self.to_v(x), 0
            if self.activation_cache is not None:  # rollout: keys/values of history frames
                k, v, past = self.activation_cache.keys_values(self, k, v)
            out = _attend(q, k, v, self.heads, causal, past)
        else:
            if self.action_tokens:
                context, act = context[:, : -self.action_tokens], context[:, -self.action_tokens :]
            text = context[:, : self.text_context_len]
            out = _attend(q, self.to_k(text), self.to_v(text), self.heads)
            if self.action_tokens:
                out = out + _attend(q, self.to_k_action(act), self.to_v_action(act), self.heads)
            if self.image_cross_attention:
                image = context[:, self.text_context_len :]
                out_ip = _attend(q, self.to_k_ip(image), self.to_v_ip(image), self.heads)
                out = out + out_ip * (torch.tanh(self.alpha) + 1 if self.scale_learnable else 1.0)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)  # exact GELU, as DynamiCrafter


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or torch.is_grad_enabled() or rows <= FF_ROWS_PER_BLOCK:
            return self.net(x)
        # CPU inference: tokens are independent here, so a long token list goes through in blocks of
        # rows and the (rows, 8 * dim) GEGLU intermediate stays in the core's L2 cache. Measured on one
        # thread (init_attn's feed-forward, 1280 tokens): 10.7-14 -> 6.4 ms; same numbers per row.
        flat, out = x.reshape(rows, x.shape[-1]), x.new_empty(rows, x.shape[-1])
        for i in range(0, rows, FF_ROWS_PER_BLOCK):
            out[i : i + FF_ROWS_PER_BLOCK] = self.net(flat[i : i + FF_ROWS_PER_BLOCK])
        return out.view(x.shape)


class BasicTransformerBlock(nn.Module):
    """attn1 (self) -> attn2 (cross, or self when context_dim is None) -> GEGLU feed-forward."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None, **attn2_kwargs):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout, **attn2_kwargs)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = self.attn1(self.norm1(x), causal=causal) + x
        x = self.attn2(self.norm2(x), context=context, causal=causal) + x
        return self.ff(self.norm3(x)) + x


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SpatialTransformer(nn.Module):
    """Per-frame transformer over pixels: x (B*T, C, H, W), context (B*T, L, context_dim)."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_linear: bool = False,
        image_cross_attention: bool = False,
        image_cross_attention_scale_learnable: bool = False,
        action_tokens: int = 0,
    ):
        super().__init__()
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner,
                n_heads,
                d_head,
                dropout,
                context_dim,
                image_cross_attention=image_cross_attention,
                image_cross_attention_scale_learnable=image_cross_attention_scale_learnable,
                action_tokens=action_tokens,
            )
            for _ in range(depth)
        )
        self.proj_out = _zero(nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TemporalTransformer(nn.Module):
    """Transformer over frames at each pixel: x (B, C, T, H, W). Self-attention only.

    causal: lower-triangular mask over frames (frame t attends to frames <= t) in both attentions.
    per_frame_norm: GroupNorm statistics per frame instead of pooled over all frames.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = False,
        causal: bool = False,
        per_frame_norm: bool = False,
    ):
        super().__init__()
        inner = n_heads * d_head
        self.causal = causal
        self.norm = FrameGroupNorm(32, in_channels, eps=1e-6, per_frame=per_frame_norm)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv1d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, dropout, None) for _ in range(depth)
        )
        self.proj_out = _zero(nn.Linear(inner, in_channels) if use_linear else nn.Conv1d(inner, in_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x_in = x
        x = rearrange(self.norm(x), "b c t h w -> (b h w) c t")
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "n c t -> n t c")
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, causal=self.causal)
        if self.use_linear:
            x = self.proj_out(x)
        else:
            x = self.proj_out(rearrange(x, "n t c -> n c t"))
            x = rearrange(x, "n c t -> n t c")
        x = rearrange(x, "(b h w) t c -> b c t h w", b=b, h=h, w=w)
        return x + x_in
