"""Device and dtype correctness without a GPU: train, rollout and eval under bf16 autocast on the CPU,
and every model built on the ``meta`` device (no tensor created on a fixed device or dtype)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train import cfg, setup  # noqa: F401  (the tiny model + Breakout DATA fixture)

from pipelines.evaluate import EvalConfig
from pipelines.evaluate import run as evaluate
from pipelines.models.action import ACTION_INJECTIONS, ActionEncoder
from pipelines.models.clip import CLIPTextConfig, CLIPVisionConfig, OpenCLIPTextTower, OpenCLIPVisionTower
from pipelines.models.resampler import Resampler
from pipelines.models.surgery import causalize
from pipelines.models.unet import VideoUNet
from pipelines.models.world_model import load_model
from pipelines.rollout import RolloutJob, run_batch
from pipelines.sampler import Roller, RolloutConfig
from pipelines.train import run as train_run


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one AcceleratorState per process and refuses a second mixed precision: start
    this test from a fresh one and leave a fresh one for the tests after it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_train_bf16_on_cpu(setup, tmp_path, fresh_accelerate_state):  # noqa: F811
    res = train_run(cfg(setup, tmp_path / "run", steps=3, precision="bf16", ema_decay=0.9))
    assert res.steps == 3 and all(np.isfinite(res.losses))
    final = load_model(tmp_path / "run" / "final")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in final.unet.parameters())


def test_rollout_and_eval_under_bf16_autocast(rollout_env, tmp_path):
    model = load_model(rollout_env / "model")
    pixels = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    acts = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).float()[None]
    with torch.no_grad():
        lat = model.encode_frames(pixels)
        ref = Roller(model, RolloutConfig(steps=3, guidance=2.0)).rollout(lat, pixels, acts, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = Roller(model, RolloutConfig(steps=3, guidance=2.0)).rollout(lat, pixels, acts, 4)
            frames = model.decode_latents(out)
    assert torch.isfinite(out).all() and torch.isfinite(frames).all()
    assert (out.float() - ref).abs().max() < 0.25 * ref.abs().max()  # bf16 keeps ~3 significant digits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run_batch(RolloutJob(model=str(rollout_env / "model"), out=str(tmp_path / "pred"), data=str(rollout_env / "data"),
                             limit=2, context_frames=2, shuffle_actions=True), RolloutConfig(steps=2))
        rep = evaluate(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep"), metrics=("psnr", "ssim"),
                                  baseline="copy-last"))
    for name in ("model", "copy-last", "shuffled-actions"):
        assert np.isfinite(rep["sets"][name]["psnr"]) and np.isfinite(rep["sets"][name]["ssim"])
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["sets"]["model"]["n_clips"] == 2


def test_rollout_precision_flag(rollout_env, tmp_path):
    """``--precision bf16``: the U-Net and CLIP passes under autocast, the DDIM maths and the latents in
    fp32; cache and no cache agree to bf16's rounding; the setting is recorded in rollout.json."""
    from typer.testing import CliRunner

    from v2w_cli.app import app

    model = load_model(rollout_env / "model")
    pixels = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    acts = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()[None]
    with torch.no_grad():
        lat = model.encode_frames(pixels)
    out = {(p, c): Roller(model, RolloutConfig(steps=3, guidance=2.0, precision=p, cache=c, window=4)).rollout(lat, pixels, acts, 6)
           for p in ("fp32", "bf16") for c in (True, False)}
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out.values())
    scale = out["fp32", False].abs().max()
    assert (out["fp32", True] - out["fp32", False]).abs().max() <= 1e-4  # exact cache in fp32
    assert 0 < (out["bf16", False] - out["fp32", False]).abs().max() < 0.25 * scale  # bf16 did run, and stays close
    assert (out["bf16", True] - out["bf16", False]).abs().max() < 0.25 * scale
    np.save(tmp_path / "ctx.npy", ((pixels[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy())
    np.save(tmp_path / "acts.npy", np.array([1, 2, 3]))
    res = CliRunner().invoke(app, ["rollout", "--model", str(rollout_env / "model"), "--context", str(tmp_path / "ctx.npy"),
                                   "--context-frames", "2", "--actions", str(tmp_path / "acts.npy"), "--out",
                                   str(tmp_path / "o"), "--steps", "2", "--precision", "bf16", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["precision"] == "bf16"


@pytest.mark.parametrize("injection", ACTION_INJECTIONS)
def test_every_model_builds_on_the_meta_device(injection):
    with torch.device("meta"):
        base = VideoUNet.from_config("dynamicrafter-512")  # 1.4B parameters, no memory
        causal = causalize(base, action_dim=7, action_injection=injection)
        parts = [base, causal, Resampler(dim=1024, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280,
                                         output_dim=1024, ff_mult=4, video_length=16),
                 OpenCLIPVisionTower(CLIPVisionConfig()), OpenCLIPTextTower(CLIPTextConfig()), ActionEncoder(7, 1280, 320, "continuous")]
    for module in parts:
        tensors = list(module.parameters()) + list(module.buffers())
        assert tensors and all(t.device.type == "meta" for t in tensors), type(module).__name__
    assert sum(p.numel() for p in base.parameters()) > 1_000_000_000
