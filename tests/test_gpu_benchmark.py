"""benchmarks/gpu.py --cpu-smoke: the GPU benchmark's code paths (v2w train's step with bf16, gradient
checkpointing and EMA; rollout with and without the cache; the tiny recipe's training) at a tiny
config on the CPU, so the script is known to run before a GPU is ever lent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu.json").read_text())
    assert rep["device"] == "cpu" and not rep["skipped"]
    assert [(r["train"], r["ema"]) for r in rep["train"]] == [("all", True), ("all", False), ("temporal", True), ("temporal", False)]
    for r in rep["train"]:
        assert "error" not in r and r["loss_finite"] and r["s_per_step"] > 0, r
    all_params, temporal_params = rep["train"][0]["trainable_params_m"], rep["train"][2]["trainable_params_m"]
    assert 0 < temporal_params < all_params
    assert len(rep["rollout"]) == 6 and all("error" not in r for r in rep["rollout"])
    for r in rep["rollout"]:  # the cache runs each new frame alone: fewer U-Net frame passes
        twin = next(x for x in rep["rollout"] if x["ddim_steps"] == r["ddim_steps"] and x["precision"] == r["precision"]
                    and x["cache"] != r["cache"])
        assert (r["unet_frame_passes"] < twin["unet_frame_passes"]) == r["cache"]
    diffs = rep["cache_vs_no_cache"]
    fp32 = next(d for k, d in diffs.items() if k.endswith("fp32"))
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["latent_std"] > 0.1  # exact, and not a zero prediction
    assert all(d["max_abs_diff"] < 0.2 * d["latent_std"] for d in diffs.values())  # bf16: rounding only
    rec = rep["recipe"]
    assert "error" not in rec and rec["steps"] >= 1 and rec["samples_per_s"] > 0 and math.isfinite(rec["loss_last"])
    md = (tmp_path / "gpu.md").read_text()
    assert "## 1. Train step" in md and "## 2. Rollout" in md and "samples/s" in md
