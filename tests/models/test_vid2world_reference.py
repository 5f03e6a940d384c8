"""The official Vid2World U-Net, read into v2w's VideoUNet, computes what the official code computes.

How we know the reference is the official computation: ``fixtures/vid2world_reference.safetensors``
was written by ``fixtures/make_vid2world_reference.py``, which imports the official module itself
(``lvdm/modules/networks/openaimodel3d.py`` of thuml/Vid2World at commit ae24077, in the public
copy weed33834/WorldFoundry, with the fork JulienRineau/Vid2World's ``timestep_embedding`` that
accepts per-frame (B, T) timesteps, as training needs), builds it at a tiny config, fills every
parameter with :func:`official_weights` and runs it on CPU in float32, eval mode. The file holds
the inputs, the official outputs and the official state dict's key list with shapes; the weights
are regenerated here from their names (a pure integer hash), so the official code is not needed
to run this test. Also stored: the key lists of the official U-Net at its real size (320 channels,
[1, 2, 4, 4]) for CS:GO (51-d actions) and RT-1 (13-d), built from the same module under
``torch.device("meta")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipelines.models.unet import VideoUNet
from pipelines.models.vid2world import (
    OFFICIAL_CONFIGS,
    guess_official_config,
    official_to_v2w_key,
    unet_config_from_official,
    v2w_to_official_key,
)

from test_unet_reference import _uniform  # noqa: E402  (the same name-hash weights as DynamiCrafter's fixture)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vid2world_reference.safetensors"


def official_weights(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A deterministic, non-trivial value for every official key (zero-initialised layers included):
    1-D weights are norms (1 + 0.2 u), other 1-D tensors biases (0.05 u), the rest u * sqrt(3 / fan_in)."""
    out = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape)) if shape else 1
        u = torch.from_numpy(_uniform(name, n)).reshape(shape)
        if len(shape) == 1:
            v = 1 + 0.2 * u if name.endswith("weight") else 0.05 * u
        else:
            v = u * (3.0 / max(int(np.prod(shape[1:])), 1)) ** 0.5
        out[name] = v.float()
    return out


def _meta():
    if not FIXTURE.exists():
        pytest.skip("fixture missing")
    with safe_open(FIXTURE, "pt") as f:
        return {k: json.loads(v) for k, v in f.metadata().items()}


@pytest.fixture(scope="module")
def tensors():
    with safe_open(FIXTURE, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _cases():
    return _meta()["cases"] if FIXTURE.exists() else []


def load_official(case: dict, norm: str = "pooled") -> VideoUNet:
    """The tiny official checkpoint of ``case`` (weights from their names) read into a VideoUNet."""
    official = official_weights(case["shapes"])
    unet = VideoUNet(unet_config_from_official(case["config"], norm)).eval()
    sd = {official_to_v2w_key(k): v for k, v in official.items()}
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return unet


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_forward_matches_the_official_unet(case, tensors):
    unet = load_official(case)
    n = case["name"]
    x, ts, fs, acts, mask = (tensors[f"{n}.{k}"] for k in ("x", "timesteps", "fs", "actions", "action_mask"))
    for ctx_name in ("context_per_frame", "context_all"):
        ref = tensors[f"{n}.out.{ctx_name}"]
        with torch.no_grad():
            out = unet(x, ts, context=tensors[f"{n}.{ctx_name}"], fs=fs, actions=acts, action_mask=mask)
        assert ref.abs().max() > 0.3, "the fixture should exercise a non-trivial output"
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_the_official_unet_leaks_through_its_pooled_norms_and_per_frame_is_exact(case, tensors):
    """What the import's --norm choice means: pooled (the trained function) lets a change of the last
    frame move earlier outputs a little; per-frame makes them not move at all."""
    n = case["name"]
    x, ts, fs, acts, ctx = (tensors[f"{n}.{k}"] for k in ("x", "timesteps", "fs", "actions", "context_all"))
    x2 = x.clone()
    x2[:, :, -1] += 1.0
    for norm, leaks in (("pooled", True), ("per-frame", False)):
        unet = load_official(case, norm)
        with torch.no_grad():
            a = unet(x, ts, context=ctx, fs=fs, actions=acts)[:, :, :-1]
            b = unet(x2, ts, context=ctx, fs=fs, actions=acts)[:, :, :-1]
        leak = (a - b).abs().max().item()
        assert (leak > 1e-4) if leaks else (leak == 0.0), (norm, leak)


@pytest.mark.parametrize("name", ["csgo", "rt1"])
def test_full_size_key_list_maps_exactly(name, tensors):
    """Every key of the official U-Net at its real size has exactly one place in v2w's, same shape."""
    meta = _meta()
    shapes = meta[f"full_{name}_shapes"]
    assert len(shapes) == {"csgo": 1521, "rt1": 1522}[name]  # counted from the official module
    cfg = unet_config_from_official(OFFICIAL_CONFIGS[name])
    assert guess_official_config(shapes, shapes)["action_dim"] == OFFICIAL_CONFIGS[name]["action_dim"]
    with torch.device("meta"):
        unet = VideoUNet(cfg)
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    mapped = {official_to_v2w_key(k): v for k, v in shapes.items()}
    assert len(mapped) == len(shapes), "two official keys map to one"
    assert set(mapped) == set(ours), (sorted(set(mapped) - set(ours))[:5], sorted(set(ours) - set(mapped))[:5])
    assert all(mapped[k] == ours[k] for k in ours)
    assert {v2w_to_official_key(k, cfg) for k in ours} == set(shapes)  # and back
    assert sum(int(np.prod(s)) for s in shapes.values()) == meta[f"full_{name}_params"]
