"""DynamiCrafter's image-token Resampler (``image_proj_model``), key-for-key.

A Perceiver: ``num_queries * video_length`` learned latents cross-attend (with themselves) to the
CLIP image tokens of frame 0, producing ``num_queries`` (16) context tokens per frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))  # split across q and k, as the original (fp16)
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).type(q.dtype)
        return self.to_out((weight @ v).transpose(1, 2).reshape(b, n, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    """(B, N_img, embedding_dim) CLIP tokens -> (B, num_queries * video_length, output_dim)."""

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 1024,
        ff_mult: int = 4,
        video_length: int | None = 16,
    ):
        super().__init__()
        self.config = dict(
            dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_queries=num_queries,
            embedding_dim=embedding_dim, output_dim=output_dim, ff_mult=ff_mult, video_length=video_length,
        )
        total = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
