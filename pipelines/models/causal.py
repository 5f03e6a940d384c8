"""Causal temporal layers and the weight maps that turn bidirectional ones into them (docs/design.md §3).

Pure functions first (easy to test alone), then the two modules the U-Nets swap in:

* ``transfer_temporal_kernel``: a centred temporal kernel (taps on frames t-h..t+h) becomes a
  causal one (taps on t-2h..t) by ``shift`` (same taps, output delayed h frames), ``masked``
  (future taps dropped) or ``extrapolative`` (each future frame replaced by the least-squares
  polynomial extrapolation, of degree ``order``, from the kernel's own past and present frames
  t-h..t). For k = 3, order 1 this is Vid2World's (0, w0 - w2, w1 + 2 w2).
* ``CausalTemporalConv3d``: a Conv3d with zero padding of k-1 frames on the left only.
* ``FrameGroupNorm``: a GroupNorm over (B, C, T, H, W) that either pools statistics over all
  frames (``per_frame=False``, DynamiCrafter's behaviour: a future frame leaks into the past) or
  normalises each frame alone (``per_frame=True``: exactly causal).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.errors import V2WError

TRANSFERS = ("shift", "masked", "extrapolative")
TEMPORAL_NORMS = ("per-frame", "pooled")


def is_per_frame(temporal_norm: str) -> bool:
    """The one check of a temporal-norm setting (``--norm``): True for per-frame, False for pooled."""
    if temporal_norm not in TEMPORAL_NORMS:
        raise V2WError(f"--norm must be one of {{{', '.join(TEMPORAL_NORMS)}}}. Got {temporal_norm!r}")
    return temporal_norm == "per-frame"


def extrapolation_matrix(half: int, order: int) -> np.ndarray:
    """E with x[t+j] ~= sum_i E[j-1, i] x[t-half+i] for j = 1..half (future from past+present).

    Least-squares fit of a degree-``order`` polynomial through frames t-half..t (offsets
    -half..0), evaluated at offsets 1..half. Exact when ``order`` = half (interpolation).
    """
    if not 0 <= order <= half:
        raise ValueError(f"extrapolation order must be in [0, {half}] for a kernel of {2 * half + 1} taps. Got {order}")
    past = np.arange(-half, 1, dtype=np.float64)
    future = np.arange(1, half + 1, dtype=np.float64)
    v_past = past[:, None] ** np.arange(order + 1)[None]  # (half+1, order+1) Vandermonde
    v_future = future[:, None] ** np.arange(order + 1)[None]
    return v_future @ np.linalg.pinv(v_past)  # (half, half+1)


def transfer_temporal_kernel(weight: torch.Tensor, transfer: str, order: int = 1, dim: int = 2) -> torch.Tensor:
    """Map a centred temporal kernel (taps t-h..t+h along ``dim``) to a causal one (taps t-2h..t).

    weight: e.g. a Conv3d weight (out, in, k, kh, kw) with the time taps on ``dim`` = 2; k odd.
    Returns a tensor of the same shape; the causal conv applies it after left-padding k-1 frames.
    """
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {{{', '.join(TRANSFERS)}}}. Got {transfer!r}")
    k = weight.shape[dim]
    if k % 2 != 1:
        raise ValueError(f"temporal kernel size must be odd. Got {k}")
    if transfer == "shift" or k == 1:
        return weight.clone()
    half = k // 2
    w = weight.movedim(dim, 0).to(torch.float64)  # (k, ...): taps at offsets -half..+half
    past, future = w[: half + 1], w[half + 1 :]
    if transfer == "extrapolative":
        e = torch.from_numpy(extrapolation_matrix(half, order)).to(w.device)  # (half, half+1), on the weight's device
        past = past + torch.einsum("ji,j...->i...", e, future)
    causal = torch.cat([torch.zeros_like(future), past])  # offsets -2h..-h-1 get 0, -h..0 get past
    return causal.to(weight.dtype).movedim(0, dim).contiguous()


class CausalTemporalConv3d(nn.Conv3d):
    """Conv3d whose temporal taps see only the present and the past: zero-pad k-1 frames on the left.

    Keeps the parameter names ``weight``/``bias`` so checkpoints keep their keys.
    """

    activation_cache = None  # a LayerCache while pipelines.models.cache.activation_cache is active

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, transfer: str = "extrapolative", order: int = 1) -> "CausalTemporalConv3d":
        kt = conv.kernel_size[0]
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=(0, conv.padding[1], conv.padding[2]),
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if kt != 2 * conv.padding[0] + 1 or conv.stride[0] != 1 or conv.dilation[0] != 1:
            raise ValueError(f"expected a 'same' temporal conv (k = 2p + 1, stride 1). Got {conv}")
        with torch.no_grad():
            if conv.weight.device.type != "meta":
                new.weight.copy_(transfer_temporal_kernel(conv.weight, transfer, order))
                if conv.bias is not None:
                    new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_cache is not None:  # rollout: the last k-1 history inputs
            return super().forward(self.activation_cache.conv_input(self, x, self.kernel_size[0] - 1))
        # F.pad pads the last dims first: (w_left, w_right, h_top, h_bottom, t_front, t_back)
        return super().forward(F.pad(x, (0, 0, 0, 0, self.kernel_size[0] - 1, 0)))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm for (B, C, T, H, W) features: statistics pooled over frames, or per frame.

    ``per_frame=False`` is DynamiCrafter's temporal GroupNorm (pools over T, H, W); True makes it
    exactly causal. Same parameters either way, so the switch needs no weight change.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, per_frame: bool = False):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.per_frame = per_frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or not self.per_frame:
            return super().forward(x)
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", per_frame={self.per_frame}"
