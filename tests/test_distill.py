"""v2w distill: the target formula, the exact no-op case, a resumable run, and a student that the
later stages sample at its own step count."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from pipelines.distill import DistillConfig, GuidedDistillation, run, student_step_coefficients
from pipelines.errors import V2WError
from pipelines.models.surgery import check_causality
from pipelines.models.world_model import load_model
from pipelines.sampler import Roller, RolloutConfig, ddim_step
from pipelines.train import TrainConfig


def test_student_step_is_linear_in_v():
    """x_prev of one deterministic DDIM step equals A x + B v, for interior and final steps."""
    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 1, 3, 3), torch.randn(2, 4, 1, 3, 3)
    for a, ap, r in ((torch.tensor(0.3), torch.tensor(0.6), 0.95), (torch.tensor(0.0), torch.tensor(0.2), 1.0),
                     (torch.tensor(0.9), torch.tensor(1.0), 1.1)):
        want, _ = ddim_step(x, v, a, ap, 0.0, None, r)
        coef_a, coef_b = student_step_coefficients(a, ap, r)
        torch.testing.assert_close(coef_a * x + coef_b * v, want, rtol=0, atol=1e-6)


def _session(model, seed=0):
    return SimpleNamespace(model=model, wrapped=model, generator=torch.Generator().manual_seed(seed), cfg=SimpleNamespace(fs=3))


def test_a_student_equal_to_an_unguided_teacher_at_its_own_steps_has_zero_loss(rollout_env):
    """teacher_steps == student_steps, guidance 1: the teacher's one substep is the student's step, so
    the target is the teacher's own v and a student with the teacher's weights scores 0."""
    model = load_model(rollout_env / "model").eval()
    cfg = DistillConfig(student_steps=3, teacher_steps=3, guidance=1.0, guidance_rescale=0.0)
    obj = GuidedDistillation(_session(model), cfg, load_model(rollout_env / "model"))
    lat = torch.randn(2, 4, 5, 4, 4)
    acts = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 5)), 4).float()
    for seed in range(4):  # several (newest frame, segment) draws
        loss, per, ts = obj.loss(_session(model, seed), lat, torch.rand(2, 3, 32, 32) * 2 - 1, acts)
        assert loss.item() < 1e-8, (seed, loss.item())
    guided = GuidedDistillation(_session(model), DistillConfig(student_steps=3, teacher_steps=6), load_model(rollout_env / "model"))
    assert guided.loss(_session(model, 1), lat, torch.rand(2, 3, 32, 32) * 2 - 1, acts)[0].item() > 1e-6  # a real target
    with pytest.raises(V2WError, match="divide"):
        DistillConfig(student_steps=3, teacher_steps=4)


def test_distill_run_resumes_and_the_student_samples_at_its_steps(rollout_env, tmp_path):
    dcfg = DistillConfig(student_steps=2, teacher_steps=4)

    def tcfg(out, **kw):
        return TrainConfig(**{**dict(model=str(rollout_env / "model"), data=str(rollout_env / "data"), out=str(out), steps=4,
                                     batch_size=2, save_every=2, log_every=1, device="cpu", lr=1e-4, ema_decay=0.0,
                                     action_dropout=0.0, cond_dropout=0.0), **kw})

    full = run(tcfg(tmp_path / "full"), dcfg)
    run(tcfg(tmp_path / "split"), dcfg, stop_after=3)
    again = run(tcfg(tmp_path / "split", resume="latest"), dcfg)
    assert again.resumed_from == 2 and again.losses == full.losses[2:]  # bit for bit
    student = load_model(tmp_path / "full" / "final")
    sampling = student.meta["sampling"]
    assert (sampling["steps"], sampling["guidance"], sampling["eta"]) == (2, 1.0, 0.0) and sampling["distilled"]["teacher_steps"] == 4
    assert json.loads((tmp_path / "full" / "config.json").read_text())["objective"]["sampling"]["steps"] == 2
    assert check_causality(student.unet)["causal"]  # the teacher's architecture: still exactly causal
    roller = Roller(student, RolloutConfig())
    assert (roller.cfg.steps, roller.cfg.guidance, roller.cfg.eta) == (2, 1.0, 0.0)  # its own defaults
    lat = torch.randn(1, 4, 2, 4, 4)
    acts = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 10)), 4).float()
    pix = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    cached = Roller(student, RolloutConfig(cache=True, window=4)).rollout(lat, pix, acts, 8)
    plain = Roller(student, RolloutConfig(cache=False, window=4)).rollout(lat, pix, acts, 8)
    assert (cached - plain).abs().max() <= 1e-4  # cache == no cache, across window slides
