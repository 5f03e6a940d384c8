"""VideoUNet reproduces DynamiCrafter's own ``UNetModel`` (lvdm/modules/networks/openaimodel3d.py).

``fixtures/unet_reference.safetensors`` holds, for a few tiny configs, inputs and the output of
DynamiCrafter's reference code (github.com/Doubiiu/DynamiCrafter at commit in the file's metadata,
CPU, float32, eval) with every parameter set by ``fill_deterministic`` below. The weights are not
stored (a tiny U-Net with temporal layers is still ~1M parameters); they are regenerated here from
an exact integer hash of each parameter's name and index, and a stored fingerprint (float64 sum and
abs-sum of all of them) proves they came out the same. The reference code is not needed to run
this test; ``/tmp/dcref_make_fixture.py`` (outside the repo) regenerated the file from it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from pipelines.models.unet import VideoUNet

FIXTURE = Path(__file__).parents[1] / "fixtures" / "unet_reference.safetensors"


def _uniform(name: str, n: int) -> np.ndarray:
    """n values in [-1, 1), a pure function of (name, index): splitmix64 on uint64 (exact everywhere)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(zlib.crc32(name.encode())) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**52 - 1.0


@torch.no_grad()
def fill_deterministic(model: nn.Module) -> None:
    """Set every parameter (including the zero-initialised ones) to a non-trivial deterministic value."""
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            u = torch.from_numpy(_uniform(name, p.numel())).reshape(p.shape)
            if p_name == "alpha":
                v = torch.full_like(u, 0.5)
            elif isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                v = 1 + 0.2 * u if p_name == "weight" else 0.1 * u
            elif p.ndim >= 2:  # Linear / Conv weight: variance 1 / fan_in
                v = u * (3.0 / (p[0].numel())) ** 0.5
            else:
                v = 0.05 * u
            p.copy_(v.to(p.dtype))


def _cases():
    if not FIXTURE.exists():
        return []
    with safe_open(FIXTURE, "pt") as f:
        return json.loads(f.metadata()["cases"])


@pytest.fixture(scope="module")
def tensors():
    out = {}
    with safe_open(FIXTURE, "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_video_unet_matches_dynamicrafter_reference(case, tensors):
    torch.manual_seed(0)
    model = VideoUNet(case["config"]).eval()
    assert {k for k, _ in model.named_parameters()} == set(model.state_dict()), "unexpected buffers"
    fill_deterministic(model)
    params = [p.detach().double() for p in model.parameters()]
    fingerprint = torch.tensor([sum(p.sum() for p in params), sum(p.abs().sum() for p in params)], dtype=torch.float64)
    torch.testing.assert_close(fingerprint, tensors[f"{case['name']}.fingerprint"], rtol=1e-9, atol=0)
    assert sum(p.numel() for p in params) == case["num_params"]

    n = case["name"]
    x, ts, ctx, fs, ref = (tensors[f"{n}.{k}"] for k in ("x", "timesteps", "context", "fs", "out"))
    t = x.shape[2]
    with torch.no_grad():
        out = model(x, ts, context=ctx, fs=fs)
        out_per_frame_t = model(x, ts[:, None].expand(-1, t).contiguous(), context=ctx, fs=fs)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.5  # the fixture exercises a non-trivial output
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    # per-frame (B, T) noise levels, all equal within a clip: same as (B,)
    torch.testing.assert_close(out_per_frame_t, ref, rtol=0, atol=1e-4)
