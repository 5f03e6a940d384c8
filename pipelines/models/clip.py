"""OpenCLIP ViT towers in OpenCLIP's own parameter layout (docs/design.md §2), with no open_clip/torchvision.

DynamiCrafter conditions on two frozen OpenCLIP ViT-H/14 towers:

* ``embedder.model.*`` (``FrozenOpenCLIPImageEmbedderV2``): frame 0 in [-1, 1] -> kornia bicubic
  antialiased resize to 224 (``align_corners=True``) -> [0, 1] -> CLIP mean/std -> ``conv1`` patches
  + class token + positional embedding -> ``ln_pre`` -> every resblock. *No* ``ln_post`` and *no*
  ``proj``: (B, 257, 1280) tokens for the Resampler. :class:`OpenCLIPVisionTower`.
* ``cond_stage_model.model.*`` (``FrozenOpenCLIPEmbedder``, layer "penultimate"): token + positional
  embedding -> all resblocks but the last, with the causal mask -> ``ln_final``: (B, 77, 1024).
  :class:`OpenCLIPTextTower`. Vid2World only ever feeds it the empty prompt, so
  :func:`compute_empty_text_context` runs it once and the tower can then be dropped.

Parameter names are exactly OpenCLIP's (``visual.conv1.weight``, ``transformer.resblocks.N.attn.
in_proj_weight``, ...), so a DynamiCrafter checkpoint loads by stripping its prefix. The loaders
(:func:`load_vision_tower`, :func:`load_text_tower`) account for every key under their prefix: each is
either loaded or on an explicit list of intentionally dropped keys (DynamiCrafter deleted only the
text *transformer* from ``embedder`` and only ``visual`` from ``cond_stage_model``, so ``embedder.
model.*`` still holds ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``
and ``logit_scale``); anything else, any missing key and any shape mismatch raise :class:`V2WError`.

Numerics: exact (erf) GELU, LayerNorm eps 1e-5, attention through
``F.scaled_dot_product_attention`` with nn.MultiheadAttention's packed q/k/v projection (same math,
last-bit float differences only).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.errors import V2WError
from pipelines.statedict import load_strict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>

# Keys DynamiCrafter left behind in ``embedder.model`` (it deleted only ``model.transformer``):
# the text tower's embeddings/head, which the image embedder never uses. Dropped on purpose.
VISION_DROPPED_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
    "text_projection",
    "logit_scale",
    "attn_mask",  # a non-persistent buffer in open_clip; tolerated in case an old export saved it
)
# ``cond_stage_model.model`` lost only ``visual``; everything else is a real text-tower parameter.
TEXT_DROPPED_KEYS = ("attn_mask",)

_MAX_LISTED = 8
_RESBLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.")


# --------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class CLIPVisionConfig:
    """OpenCLIP VisionTransformer hyper-parameters (defaults: ViT-H/14, 224 px -> 257 tokens)."""

    width: int = 1280
    layers: int = 32
    heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    mlp_ratio: float = 4.0
    output_dim: int = 1024  # ``visual.proj`` columns (unused by DynamiCrafter, but in the checkpoint)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + 1

    @property
    def mlp_width(self) -> int:
        return int(round(self.width * self.mlp_ratio))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CLIPTextConfig:
    """OpenCLIP text transformer hyper-parameters (defaults: ViT-H/14's text tower)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 1024  # ``text_projection`` columns
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")

    @property
    def mlp_width(self) -> int:
        return int(round(self.width * self.mlp_ratio))

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Building blocks (OpenCLIP names)


class PackedSelfAttention(nn.Module):
    """nn.MultiheadAttention-compatible self-attention: ``in_proj_weight`` (3D, D), ``in_proj_bias``
    (3D,), ``out_proj`` Linear. Batch-first (B, L, D)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        if not self.in_proj_weight.is_meta:
            nn.init.xavier_uniform_(self.in_proj_weight)
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``ln_1``, ``attn``, ``ln_2``, ``mlp.{c_fc, gelu, c_proj}``."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, mlp_width)),
                    ("gelu", nn.GELU()),  # exact (erf) GELU, as in OpenCLIP ViT-H/14
                    ("c_proj", nn.Linear(mlp_width, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``resblocks`` ModuleList, as in OpenCLIP (batch-first here; OpenCLIP 2.22 ran LND)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, eps: float = 1e-5):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False, num_blocks: int | None = None) -> torch.Tensor:
        blocks = self.resblocks if num_blocks is None else self.resblocks[:num_blocks]
        for block in blocks:
            x = block(x, causal=causal)
        return x


# --------------------------------------------------------------------------------------------------
# Resize (kornia-compatible)


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    g = torch.exp(-x.pow(2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def kornia_resize(
    x: torch.Tensor, size: tuple[int, int], align_corners: bool = True, antialias: bool = True
) -> torch.Tensor:
    """``kornia.geometry.resize(x, size, interpolation="bicubic", align_corners, antialias)`` in torch.

    kornia's antialiasing is *not* torch's ``antialias=True`` (a widened bicubic filter): when
    downscaling it first blurs with a separable Gaussian (sigma = max((factor - 1) / 2, 0.001) per
    axis, kernel size = max(int(4 sigma), 3) rounded up to odd, reflect padding) and then calls
    ``F.interpolate(mode="bicubic", align_corners=...)``. This reproduces those steps, so results
    match kornia up to float rounding (checked in the tests when kornia is importable).
    x: (B, C, H, W) floating point.
    """
    h, w = x.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return x  # F.interpolate with align_corners=True is the identity at equal size
    factors = (h / size[0], w / size[1])
    if antialias and max(factors) > 1:
        sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
        ks = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
        ks = [k if k % 2 else k + 1 for k in ks]
        ks = [1 if h == 1 else ks[0], 1 if w == 1 else ks[1]]
        b, c = x.shape[:2]
        y = x.reshape(b * c, 1, h, w)
        kdtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        y = y.to(kdtype)
        kx = _gaussian_kernel1d(ks[1], sigmas[1], kdtype, x.device).view(1, 1, 1, ks[1])
        ky = _gaussian_kernel1d(ks[0], sigmas[0], kdtype, x.device).view(1, 1, ks[0], 1)
        px, py = ks[1] // 2, ks[0] // 2
        if px:
            y = F.conv2d(F.pad(y, (px, px, 0, 0), mode="reflect"), kx)
        if py:
            y = F.conv2d(F.pad(y, (0, 0, py, py), mode="reflect"), ky)
        x = y.reshape(b, c, h, w).to(x.dtype)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=align_corners)


# --------------------------------------------------------------------------------------------------
# Towers


class _VisualTrunk(nn.Module):
    """OpenCLIP ``VisionTransformer`` parameters: conv1, class/positional embedding, ln_pre,
    transformer, ln_post, proj."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        c = config
        scale = c.width**-0.5
        self.conv1 = nn.Conv2d(3, c.width, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(c.num_tokens, c.width))
        self.ln_pre = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_width, c.layer_norm_eps)
        self.ln_post = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(c.width, c.output_dim))


class OpenCLIPVisionTower(nn.Module):
    """DynamiCrafter's ``FrozenOpenCLIPImageEmbedderV2``: images in [-1, 1] -> (B, 1 + grid^2, width)
    tokens, the last resblock's output with no ``ln_post`` and no ``proj``.

    Parameters live under ``visual.`` exactly as in OpenCLIP (``ln_post``/``proj`` included, so the
    checkpoint loads with nothing left over, though ``forward`` does not use them).
    """

    def __init__(self, config: CLIPVisionConfig | None = None):
        super().__init__()
        self.config = config or CLIPVisionConfig()
        self.visual = _VisualTrunk(self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> CLIP-normalised (B, 3, S, S) pixels (float32 or wider)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(frames.shape)}")
        x = frames if frames.dtype in (torch.float32, torch.float64) else frames.float()
        s = self.config.image_size
        x = kornia_resize(x, (s, s), align_corners=True, antialias=True)
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Already-normalised (B, 3, S, S) pixels -> (B, 1 + grid^2, width), pre-``ln_post``."""
        v = self.visual
        x = v.conv1(pixels.to(device=self.device, dtype=self.dtype))  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        return v.transformer(x)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(frames))


class OpenCLIPTextTower(nn.Module):
    """OpenCLIP text transformer (``visual`` removed); :meth:`encode_penultimate` is DynamiCrafter's
    ``FrozenOpenCLIPEmbedder(layer="penultimate")``."""

    def __init__(self, config: CLIPTextConfig | None = None):
        super().__init__()
        c = self.config = config or CLIPTextConfig()
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(c.context_length, c.width))
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_width, c.layer_norm_eps)
        self.ln_final = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.text_projection = nn.Parameter(c.width**-0.5 * torch.randn(c.width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def encode_penultimate(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, context_length) -> (B, context_length, width): token + positional embedding,
        every resblock but the last with the causal mask, then ``ln_final``."""
        c = self.config
        if tokens.ndim != 2 or tokens.shape[1] != c.context_length:
            raise ValueError(f"expected tokens (B, {c.context_length}), got shape {tuple(tokens.shape)}")
        x = self.token_embedding(tokens.to(self.device)) + self.positional_embedding
        x = self.transformer(x, causal=True, num_blocks=c.layers - 1)
        return self.ln_final(x)

    forward = encode_penultimate


def empty_prompt_tokens(context_length: int = 77, batch_size: int = 1) -> torch.Tensor:
    """open_clip.tokenize("") : [[49406, 49407, 0, ..., 0]] as int64 (batch_size, context_length)."""
    tokens = torch.zeros(batch_size, context_length, dtype=torch.long)
    tokens[:, 0] = SOT_TOKEN
    tokens[:, 1] = EOT_TOKEN
    return tokens


@torch.no_grad()
def compute_empty_text_context(text_tower: OpenCLIPTextTower) -> torch.Tensor:
    """DynamiCrafter's ``get_learned_conditioning([""])``: (1, context_length, width) float32, on the
    tower's device. Compute once (e.g. at causalize time), store it, drop the text tower."""
    tokens = empty_prompt_tokens(text_tower.config.context_length).to(text_tower.device)
    return text_tower.encode_penultimate(tokens).float()


# --------------------------------------------------------------------------------------------------
# Config inference and loading


class TowerLoad(NamedTuple):
    """What a loader returns: the module, the checkpoint keys it loaded and the keys it dropped on
    purpose (full keys, prefix included). Unpacks as ``module, loaded, dropped``."""

    module: nn.Module
    loaded: list[str]
    dropped: list[str]


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _listing(keys: Iterable[str], prefix: str = "") -> str:
    keys = sorted(keys)
    shown = ", ".join(prefix + k for k in keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def _require(sub: Mapping[str, torch.Tensor], names: Iterable[str], prefix: str, what: str) -> None:
    missing = [n for n in names if n not in sub]
    if missing:
        raise V2WError(
            f"cannot infer the {what} config: missing {_listing(missing, prefix)}. "
            f"Is the key prefix {prefix!r} right for this checkpoint?"
        )


def _num_resblocks(keys: Iterable[str], base: str = "") -> int:
    idx = set()
    for k in keys:
        if k.startswith(base):
            m = _RESBLOCK_RE.match(k[len(base) :])
            if m:
                idx.add(int(m.group(1)))
    return max(idx) + 1 if idx else 0


def _default_heads(width: int, vision: bool) -> int:
    # OpenCLIP's large vision towers use 16 heads with a wider head (ViT-H/14: 1280 = 16 x 80,
    # ViT-g: 1408 = 16 x 88, ViT-bigG: 1664 = 16 x 104); everything else uses 64-wide heads.
    if vision and width in (1280, 1408, 1664):
        return 16
    return max(1, width // 64)


def infer_vision_config(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "embedder.model.", heads: int | None = None
) -> CLIPVisionConfig:
    """Widths/layers/patch/image size from the shapes under ``prefix + "visual."``.

    Head count is not visible in the shapes: pass ``heads`` or get OpenCLIP's convention (16 for
    1280/1408/1664-wide towers, else width // 64)."""
    sub = _strip(state_dict, prefix + "visual.")
    p = prefix + "visual."
    _require(sub, ["conv1.weight", "positional_embedding", "proj", "transformer.resblocks.0.mlp.c_fc.weight"], p, "vision")
    width, _, patch, patch_w = sub["conv1.weight"].shape
    if patch != patch_w:
        raise V2WError(f"{p}conv1.weight has non-square patches {patch}x{patch_w}; only square ViTs are supported")
    tokens = sub["positional_embedding"].shape[0]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise V2WError(f"{p}positional_embedding has {tokens} rows, not 1 + a square number of patches")
    mlp_width = sub["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    try:
        return CLIPVisionConfig(
            width=int(width),
            layers=_num_resblocks(sub),
            heads=heads or _default_heads(int(width), vision=True),
            patch_size=int(patch),
            image_size=int(grid * patch),
            mlp_ratio=mlp_width / width,
            output_dim=int(sub["proj"].shape[1]),
        )
    except ValueError as e:
        raise V2WError(f"vision tower under {prefix!r}: {e}") from None


def infer_text_config(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "cond_stage_model.model.", heads: int | None = None
) -> CLIPTextConfig:
    """Widths/layers/context/vocab from the shapes under ``prefix`` (``heads`` default: width // 64)."""
    sub = _strip(state_dict, prefix)
    _require(
        sub,
        ["token_embedding.weight", "positional_embedding", "text_projection", "transformer.resblocks.0.mlp.c_fc.weight"],
        prefix,
        "text",
    )
    vocab, width = sub["token_embedding.weight"].shape
    mlp_width = sub["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    try:
        return CLIPTextConfig(
            width=int(width),
            layers=_num_resblocks(sub),
            heads=heads or _default_heads(int(width), vision=False),
            context_length=int(sub["positional_embedding"].shape[0]),
            vocab_size=int(vocab),
            embed_dim=int(sub["text_projection"].shape[1]),
            mlp_ratio=mlp_width / width,
        )
    except ValueError as e:
        raise V2WError(f"text tower under {prefix!r}: {e}") from None


def _load_into(
    make_module,
    sub: dict[str, torch.Tensor],
    dropped: list[str],
    unexpected: list[str],
    prefix: str,
    what: str,
    dtype: torch.dtype | None,
    device,
    config_given: bool = False,
    source: str | None = None,
) -> TowerLoad:
    with torch.device("meta"):
        module = make_module()
    fix = "pass config=None to infer it from the checkpoint" if config_given else f"is the key prefix {prefix!r} right for this checkpoint?"
    # a meta module adopts the checkpoint tensors (no second copy); .to() then casts/moves if asked.
    load_strict(module, sub, f"{what} checkpoint", source, against="the OpenCLIP layout", hint=f"Config {module.config}; {fix}",
                prefix=prefix, unused=sorted(unexpected))
    module.to(device=device, dtype=dtype)
    module.requires_grad_(False).eval()
    loaded = sorted(prefix + k for k in sub)
    return TowerLoad(module, loaded, sorted(prefix + k for k in dropped))


def load_vision_tower(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "embedder.model.",
    config: CLIPVisionConfig | None = None,
    *,
    heads: int | None = None,
    ignore_prefixes: Iterable[str] = (),
    dtype: torch.dtype | None = torch.float32,
    device=None,
    source: str | None = None,
) -> TowerLoad:
    """Build an :class:`OpenCLIPVisionTower` from the ``prefix + "visual.*"`` keys of ``state_dict``.

    Keys under ``prefix`` that are not ``visual.*`` must be on :data:`VISION_DROPPED_KEYS` (the text
    parts DynamiCrafter left in ``embedder.model``) or start with one of ``ignore_prefixes`` (relative
    to ``prefix``; e.g. ``("transformer.",)`` for a full OpenCLIP checkpoint); anything else, any
    missing key and any shape mismatch raise V2WError. ``config=None`` infers it from the shapes
    (``heads`` as in :func:`infer_vision_config`). Returns ``(module, loaded_keys, dropped_keys)``,
    frozen and in eval mode, cast to ``dtype`` (None keeps the checkpoint's) on ``device``.
    Parameters may share storage with ``state_dict`` when no cast/move is needed. ``source``: the
    checkpoint file, named in errors.
    """
    sub = _strip(state_dict, prefix)
    if not sub:
        raise V2WError(f"no vision-tower keys: nothing in the checkpoint starts with {prefix!r}")
    ignore = tuple(ignore_prefixes)
    visual, dropped, unexpected = {}, [], []
    for k, v in sub.items():
        if k.startswith("visual."):
            visual[k] = v
        elif k in VISION_DROPPED_KEYS or (ignore and k.startswith(ignore)):
            dropped.append(k)
        else:
            unexpected.append(k)
    if not visual:
        raise V2WError(f"no vision-tower keys: nothing starts with {prefix + 'visual.'!r}")
    given, config = config is not None, config or infer_vision_config(state_dict, prefix, heads=heads)
    return _load_into(
        lambda: OpenCLIPVisionTower(config), visual, dropped, unexpected, prefix, "vision tower", dtype, device, given, source
    )


def load_text_tower(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = "cond_stage_model.model.",
    config: CLIPTextConfig | None = None,
    *,
    heads: int | None = None,
    ignore_prefixes: Iterable[str] = (),
    dtype: torch.dtype | None = torch.float32,
    device=None,
    source: str | None = None,
) -> TowerLoad:
    """Build an :class:`OpenCLIPTextTower` from the keys under ``prefix`` (see :func:`load_vision_tower`;
    only :data:`TEXT_DROPPED_KEYS` and ``ignore_prefixes``, e.g. ``("visual.",)`` for a full OpenCLIP
    checkpoint, are dropped). Returns ``(module, loaded_keys, dropped_keys)``."""
    sub = _strip(state_dict, prefix)
    if not sub:
        raise V2WError(f"no text-tower keys: nothing in the checkpoint starts with {prefix!r}")
    ignore = tuple(ignore_prefixes)
    kept, dropped = {}, []
    for k, v in sub.items():
        if k in TEXT_DROPPED_KEYS or (ignore and k.startswith(ignore)):
            dropped.append(k)
        else:
            kept[k] = v
    given, config = config is not None, config or infer_text_config(state_dict, prefix, heads=heads)
    return _load_into(lambda: OpenCLIPTextTower(config), kept, dropped, [], prefix, "text tower", dtype, device, given, source)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EOT_TOKEN",
    "SOT_TOKEN",
    "TEXT_DROPPED_KEYS",
    "VISION_DROPPED_KEYS",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "OpenCLIPTextTower",
    "OpenCLIPVisionTower",
    "TowerLoad",
    "compute_empty_text_context",
    "empty_prompt_tokens",
    "infer_text_config",
    "infer_vision_config",
    "kornia_resize",
    "load_text_tower",
    "load_vision_tower",
]
