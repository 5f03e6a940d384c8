"""DynamiCrafter's video U-Net, key-for-key (``lvdm/modules/networks/openaimodel3d.py``), plus the
three things Vid2World adds: causal temporal layers, per-frame noise levels and per-frame actions.

Shapes: x (B, C, T, H, W); timesteps (B,) or (B, T); context (B, 77 + T*16, D) = empty-text tokens
then 16 Resampler tokens per frame (or any length, repeated for every frame); fs (B,) frame
stride / fps; actions (B, T, A) floats or (B, T) integer ids. Output (B, out_channels, T, H, W).
How actions enter (``action_injection``: time | scale-shift | tokens) is described in
``pipelines/models/action.py``.
Inside, features are (B*T, C, H, W) except in the temporal layers, which see (B, C, T, H, W).

The config keeps DynamiCrafter's ``unet_config.params`` names, so its inference YAML builds the
same network; v2w's additions are the last block of fields and default to "bidirectional base".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from pipelines.errors import V2WError
from pipelines.models.action import ACTION_INJECTIONS, ActionEncoder
from pipelines.models.attention import TEXT_TOKENS, SpatialTransformer, TemporalTransformer
from pipelines.models.causal import CausalTemporalConv3d, FrameGroupNorm, is_per_frame
from pipelines.models.checkpoint import (
    UNET_PREFIX,
    check_keys,
    load_state_dict,
    rename_legacy_keys,
    unet_params_from_yaml,
)
from pipelines.models.upsample import upsample_conv


OUT_CONVS = ("same", "causal-height")


@dataclass
class UNetConfig:
    # --- DynamiCrafter's UNetModel arguments (same names and meaning) ---
    in_channels: int = 8  # noisy latent (4) + frame-0 latent concatenated (4)
    model_channels: int = 320
    out_channels: int = 4
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])
    dropout: float = 0.1
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    conv_resample: bool = True
    dims: int = 2
    context_dim: int | None = 1024
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    num_heads: int = -1
    num_head_channels: int = 64
    transformer_depth: int = 1
    use_linear: bool = True
    use_checkpoint: bool = True  # recorded; v2w enables checkpointing with enable_gradient_checkpointing()
    temporal_conv: bool = True
    tempspatial_aware: bool = False
    temporal_attention: bool = True
    use_relative_position: bool = False
    use_causal_attention: bool = False
    temporal_length: int = 16  # training clip length (the Resampler's video_length); masks work for any T
    use_fp16: bool = False  # recorded; v2w casts with --precision instead
    addition_attention: bool = True
    temporal_selfatt_only: bool = True
    image_cross_attention: bool = True
    image_cross_attention_scale_learnable: bool = False
    default_fs: int = 24
    fs_condition: bool = True
    # --- v2w (Vid2World) additions ---
    causal: bool = False  # causal temporal convs + masked temporal attention
    temporal_norm: str = "pooled"  # "pooled" (DynamiCrafter) or "per-frame" (exactly causal)
    action_dim: int = 0  # 0 = no action conditioning
    action_type: str = "continuous"  # "continuous" (MLP) or "discrete" (embedding of ids / multi-hot)
    image_tokens_per_frame: int = 16
    action_injection: str = "time"  # time (Vid2World) | scale-shift (AdaGN in every ResBlock) | tokens (cross-attention)
    action_tokens: int = 4  # tokens per frame for action_injection "tokens"
    # the official Vid2World checkpoints build their final conv with causal=True while dims=2, which
    # makes it causal along the image *height*: "causal-height" reproduces that (docs/design.md §14)
    out_conv: str = "same"

    def __post_init__(self):
        is_per_frame(self.temporal_norm)  # validates
        if self.out_conv not in OUT_CONVS:
            raise V2WError(f"out_conv must be one of {{{', '.join(OUT_CONVS)}}}. Got {self.out_conv!r}")
        if self.action_injection not in ACTION_INJECTIONS:
            raise V2WError(f"action_injection must be one of {{{', '.join(ACTION_INJECTIONS)}}}. Got {self.action_injection!r}")

    @property
    def per_frame_norm(self) -> bool:
        """Temporal norms normalise each frame alone (exactly causal, and what the activation cache needs)."""
        return is_per_frame(self.temporal_norm)

    @classmethod
    def from_dynamicrafter(cls, config=None, builtin: str | None = None) -> "UNetConfig":
        """The config of a DynamiCrafter U-Net: ``config`` is a built-in name, an inference YAML (path or
        parsed) or its ``unet_config.params``; it overrides the built-in ``builtin`` (default: the 512)."""
        if isinstance(config, str) and config in BUILTIN_CONFIGS:
            config, builtin = None, config
        params = {**cls().to_dict(), **BUILTIN_CONFIGS[builtin or "dynamicrafter-512"]}
        if config is not None:
            params.update(unet_params_from_yaml(config))
        return cls.from_dict(params)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise V2WError(f"unknown U-Net config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


BUILTIN_CONFIGS = {
    "dynamicrafter-512": {},  # the defaults above are inference_512_v1.0.yaml
    "dynamicrafter-256": {"image_cross_attention_scale_learnable": True, "default_fs": 3},
    "dynamicrafter-1024": {"default_fs": 10},
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding in DynamiCrafter's [cos | sin] order: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class CausalHeightConv2d(nn.Conv2d):
    """The official Vid2World U-Net's final conv: a k x k conv whose output row i reads input rows
    i-k+1..i (zero padding of k-1 rows on top, none below; (k-1)/2 columns each side). It is
    DynamiCrafter's "same" conv built through ``conv_nd(2, ..., causal=True)``, whose causal axis is
    the first spatial one: height, not time. Kept so those checkpoints compute what they were
    trained to (``UNetConfig.out_conv = "causal-height"``); parameter names stay ``weight``/``bias``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        return F.conv2d(F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (DynamiCrafter's ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class TemporalConvBlock(nn.Module):
    """Four GroupNorm -> SiLU -> (Dropout) -> Conv3d (3,1,1) blocks, residual; conv4 zero-initialised.

    Attribute names follow the checkpoint: conv1 = (norm, act, conv); conv2..4 = (norm, act, drop, conv).
    """

    def __init__(self, channels: int, dropout: float = 0.1, spatial_aware: bool = False, per_frame_norm: bool = False):
        super().__init__()
        k_h, p_h = ((3, 3, 1), (1, 1, 0)) if spatial_aware else ((3, 1, 1), (1, 0, 0))
        k_w, p_w = ((3, 1, 3), (1, 0, 1)) if spatial_aware else ((3, 1, 1), (1, 0, 0))

        def norm():
            return FrameGroupNorm(32, channels, per_frame=per_frame_norm)

        self.conv1 = nn.Sequential(norm(), nn.SiLU(), nn.Conv3d(channels, channels, k_h, padding=p_h))
        self.conv2 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, k_w, padding=p_w))
        self.conv3 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, k_h, padding=p_h))
        self.conv4 = nn.Sequential(norm(), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, k_w, padding=p_w))
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def conv_slots(self) -> list[tuple[str, nn.Sequential, int]]:
        """(name, sequential, index of its Conv3d) for conv1..conv4."""
        return [(n, getattr(self, n), len(getattr(self, n)) - 1) for n in ("conv1", "conv2", "conv3", "conv4")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_conv:  # without autograd: the same maths at x's resolution
            return upsample_conv(x, self.conv)
        return F.interpolate(x, scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-zero conv, skip; then the
    temporal conv stack on (B, C, T, H, W) when ``temporal_conv``."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        temporal_conv: bool = False,
        tempspatial_aware: bool = False,
        per_frame_norm: bool = False,
        action_modulation: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        if action_modulation:
            # action embedding -> per-channel (scale, shift) after the second GroupNorm; the
            # embedding starts at zero and the bias is zero, so this starts as the identity
            self.action_mod = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            nn.init.zeros_(self.action_mod[-1].bias)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)
        if temporal_conv:
            # (sic) the checkpoint spells it "temopral_conv"
            self.temopral_conv = TemporalConvBlock(out_channels, 0.1, tempspatial_aware, per_frame_norm)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch_size: int, action_emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
        else:
            h = self.out_layers[0](h + emb_out)
        if action_emb is not None and hasattr(self, "action_mod"):
            scale, shift = self.action_mod(action_emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.out_layers[1:](h)
        h = self.skip_connection(x) + h
        if hasattr(self, "temopral_conv"):
            h = rearrange(h, "(b t) c h w -> b c t h w", b=batch_size)
            h = rearrange(self.temopral_conv(h), "b c t h w -> (b t) c h w")
        return h


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children with what each needs: ResBlocks get the embedding, spatial transformers
    the context, temporal transformers the (B, C, T, H, W) view."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None, batch_size: int,
        action_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size, action_emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = rearrange(x, "(b t) c h w -> b c t h w", b=batch_size)
                x = rearrange(layer(x), "b c t h w -> (b t) c h w")
            else:
                x = layer(x)
        return x


class VideoUNet(nn.Module):
    """DynamiCrafter's UNetModel with optional causal temporal layers and per-frame actions."""

    def __init__(self, config: UNetConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = UNetConfig()
        elif isinstance(config, dict):
            config = UNetConfig.from_dict(config)
        if overrides:
            config = UNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = c = config
        if c.dims != 2:
            raise V2WError(f"only dims=2 (DynamiCrafter's setting) is supported. Got {c.dims}")
        if c.use_relative_position:
            raise V2WError("use_relative_position=True is not supported (DynamiCrafter's released configs use false)")
        if not c.temporal_selfatt_only:
            raise V2WError("temporal_selfatt_only=False is not supported (DynamiCrafter's released configs use true)")
        if c.action_injection == "tokens" and c.action_dim and (c.action_tokens < 1 or not c.context_dim):
            raise V2WError("action_injection 'tokens' needs action_tokens >= 1 and a context_dim (cross-attention)")
        if c.num_heads == -1 and c.num_head_channels == -1:
            raise V2WError("either num_heads or num_head_channels has to be set")
        self.gradient_checkpointing = False
        per_frame = c.per_frame_norm
        causal_attn = c.causal or c.use_causal_attention
        ted = c.model_channels * 4  # time embedding width

        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        if c.fs_condition:
            self.fps_embedding = nn.Sequential(nn.Linear(c.model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
            nn.init.zeros_(self.fps_embedding[-1].weight)
            nn.init.zeros_(self.fps_embedding[-1].bias)
        if c.action_dim:
            self.action_encoder = ActionEncoder(
                c.action_dim, self.action_embed_dim, c.model_channels, c.action_type, embed_then_mlp=c.action_injection == "vid2world"
            )
        modulate = bool(c.action_dim) and c.action_injection == "scale-shift"
        act_tokens = c.action_tokens if c.action_dim and c.action_injection == "tokens" else 0

        def heads_for(ch: int) -> tuple[int, int]:
            if c.num_head_channels == -1:
                return c.num_heads, ch // c.num_heads
            return ch // c.num_head_channels, c.num_head_channels

        def res(ch_in: int, ch_out: int | None = None, temporal: bool = True, **kw) -> ResBlock:
            return ResBlock(
                ch_in, ted, c.dropout, ch_out, c.use_scale_shift_norm,
                temporal_conv=c.temporal_conv and temporal, tempspatial_aware=c.tempspatial_aware,
                per_frame_norm=per_frame, action_modulation=modulate, **kw,
            )

        def attn_layers(ch: int) -> list[nn.Module]:
            heads, dim_head = heads_for(ch)
            layers: list[nn.Module] = [
                SpatialTransformer(
                    ch, heads, dim_head, c.transformer_depth, context_dim=c.context_dim, use_linear=c.use_linear,
                    image_cross_attention=c.image_cross_attention,
                    image_cross_attention_scale_learnable=c.image_cross_attention_scale_learnable,
                    action_tokens=act_tokens,
                )
            ]
            if c.temporal_attention:
                layers.append(
                    TemporalTransformer(
                        ch, heads, dim_head, c.transformer_depth, use_linear=c.use_linear,
                        causal=causal_attn, per_frame_norm=per_frame,
                    )
                )
            return layers

        # 1. input blocks
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1))])
        if c.addition_attention:
            # init_attn: 8 heads, Conv1d projections whatever use_linear says, causal when causalized
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(
                    c.model_channels, 8, c.num_head_channels, c.transformer_depth, use_linear=False,
                    causal=c.causal, per_frame_norm=per_frame,
                )
            )
        chans, ch, ds = [c.model_channels], c.model_channels, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers += attn_layers(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, temporal=False, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2

        # 2. middle block
        self.middle_block = TimestepEmbedSequential(res(ch), *attn_layers(ch), res(ch))

        # 3. output blocks
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), c.model_channels * mult)]
                ch = c.model_channels * mult
                if ds in c.attention_resolutions:
                    layers += attn_layers(ch)
                if level and i == c.num_res_blocks:
                    up = res(ch, ch, temporal=False, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample, ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        out_conv = CausalHeightConv2d(c.model_channels, c.out_channels, 3) if c.out_conv == "causal-height" else \
            nn.Conv2d(c.model_channels, c.out_channels, 3, padding=1)
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), out_conv)
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        if c.causal:
            # fresh causal model: temporal convs causal with identity transfer ("shift" keeps taps);
            # causalize() builds from a base instead and applies the chosen weight transfer
            self._make_temporal_convs_causal("shift")

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_config(cls, config: str | dict | UNetConfig = "dynamicrafter-512", **overrides) -> "VideoUNet":
        """Build from a built-in name, a config dict or a UNetConfig (random init; works under meta)."""
        if isinstance(config, str):
            if config not in BUILTIN_CONFIGS:
                raise V2WError(f"config must be one of {{{', '.join(BUILTIN_CONFIGS)}}} or a dict. Got {config!r}")
            config = UNetConfig.from_dict({**UNetConfig().to_dict(), **BUILTIN_CONFIGS[config]})
        return cls(config, **overrides)

    @classmethod
    def from_dynamicrafter(cls, checkpoint, config=None, **overrides) -> "VideoUNet":
        """Load the U-Net of a DynamiCrafter checkpoint (path or state dict) with zero missing and
        zero unexpected keys. ``config``: inference YAML path, its ``unet_config.params`` dict, or
        a built-in name (default: the 512 config)."""
        source = "<state dict>" if isinstance(checkpoint, dict) else str(checkpoint)
        sd = load_state_dict(checkpoint)
        unet_sd = {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)} or sd
        with torch.device("meta"):
            unet = cls(UNetConfig.from_dynamicrafter(config), **overrides)
        check_keys(unet, rename_legacy_keys(unet_sd), "U-Net", source)
        return unet

    def _make_temporal_convs_causal(self, transfer: str, order: int = 1) -> list[str]:
        """Swap every temporal Conv3d for a causal one with the given weight transfer; returns names."""
        names = []
        for name, module in self.named_modules():
            if isinstance(module, TemporalConvBlock):
                for slot, seq, idx in module.conv_slots():
                    if not isinstance(seq[idx], CausalTemporalConv3d):
                        seq[idx] = CausalTemporalConv3d.from_conv(seq[idx], transfer, order)
                        names.append(f"{name}.{slot}.{idx}")
        return names

    @property
    def action_embed_dim(self) -> int:
        """Width of the action encoder's output: the time embedding's (time, scale-shift) or
        ``action_tokens`` tokens of the context width (tokens)."""
        c = self.config
        if c.action_injection == "tokens":
            return c.action_tokens * c.context_dim
        return c.model_channels * 4

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ forward

    def time_embedding(self, timesteps: torch.Tensor, b: int, t: int, dtype: torch.dtype) -> torch.Tensor:
        """(B,) or (B, T) noise levels -> (B*T, D): one embedding per frame (Diffusion Forcing)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        if timesteps.ndim == 1:
            emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
            return emb.repeat_interleave(t, dim=0)
        if timesteps.shape != (b, t):
            raise V2WError(f"timesteps must be (B,) or (B, T) = ({b}, {t}). Got {tuple(timesteps.shape)}")
        return self.time_embed(timestep_embedding(timesteps.reshape(-1), self.config.model_channels).to(dtype))

    def frame_context(self, context: torch.Tensor | None, b: int, t: int) -> torch.Tensor | None:
        """(B, L, D) -> (B*T, L', D): per-frame image tokens when L = 77 + T * tokens_per_frame."""
        if context is None:
            return None
        n_img = self.config.image_tokens_per_frame
        if context.shape[1] == TEXT_TOKENS + t * n_img:
            text, img = context[:, :TEXT_TOKENS], context[:, TEXT_TOKENS:]
            text = text.repeat_interleave(t, dim=0)
            img = rearrange(img, "b (t l) c -> (b t) l c", t=t)
            return torch.cat([text, img], dim=1)
        return context.repeat_interleave(t, dim=0)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        fs: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        features_adapter: list | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser output (B, out_channels, T, H, W); see the module docstring for shapes.
        ``action_mask`` (B, T): multiplies each frame's action *embedding* (the official Vid2World
        ``action_mask``: 0 = no action for that frame, whatever the encoder's biases give a zero input)."""
        if features_adapter is not None:
            raise V2WError("features_adapter (T2I-adapter features) is not supported")
        c = self.config
        b, _, t, _, _ = x.shape
        # 1. embeddings: per-frame noise level (+ fps) (+ per-frame action)
        emb = self.time_embedding(timesteps, b, t, x.dtype)
        if c.fs_condition:
            if fs is None:
                fs = torch.full((b,), c.default_fs, dtype=torch.long, device=x.device)
            fs_emb = self.fps_embedding(timestep_embedding(fs.reshape(-1), c.model_channels).to(x.dtype))
            emb = emb + fs_emb.repeat_interleave(t, dim=0)
        if actions is not None and not c.action_dim:
            raise V2WError("this model has no action conditioning (action_dim 0) but actions were given")
        action_emb = None
        if c.action_dim and (actions is not None or c.action_injection == "tokens"):
            if actions is None:  # the tokens are part of the context: no action = the zero action (as dropout trains)
                actions = torch.zeros(b, t, c.action_dim, device=x.device, dtype=x.dtype)
            action_emb = self.action_encoder(actions)
            if action_mask is not None:
                if action_mask.shape != (b, t):
                    raise V2WError(f"action_mask must be (B, T) = ({b}, {t}). Got {tuple(action_mask.shape)}")
                action_emb = action_emb * action_mask[..., None].to(action_emb.dtype)
            action_emb = action_emb.reshape(b * t, -1).to(emb.dtype)
        if action_emb is not None and c.action_injection in ("time", "vid2world"):
            emb, action_emb = emb + action_emb, None
        context = self.frame_context(context, b, t)
        if action_emb is not None and c.action_injection == "tokens":
            if context is None:
                raise V2WError("the 'tokens' action injection adds tokens to the cross-attention context; give a context")
            context = torch.cat([context, action_emb.reshape(b * t, c.action_tokens, -1).to(context.dtype)], dim=1)
            action_emb = None

        # 2. U-Net on (B*T, C, H, W)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        hs = []
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context, b, action_emb)
            if i == 0 and c.addition_attention:
                h = self._run(self.init_attn, h, emb, context, b, action_emb)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context, b, action_emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, context, b, action_emb)
        return rearrange(self.out(h), "(b t) c h w -> b c t h w", b=b)

    def _run(self, block, h, emb, context, b, action_emb=None):
        """One block; ``action_emb`` (B*T, D) only in the scale-shift injection mode."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, h, emb, context, b, action_emb, use_reentrant=False)
        return block(h, emb, context, b, action_emb)
