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
    assert (sampling["distilled"]["guidance"], sampling["history_noise"]) == (2.5, 20)  # the v2w teacher's defaults
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


@pytest.fixture(scope="module")
def official_teacher(tmp_path_factory):
    """The tiny official-layout CS:GO stand-in, imported as v2w causalize imports the real one (pooled norms)."""
    import yaml

    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize_run
    from pipelines.official import tiny_official_checkpoint

    root = tmp_path_factory.mktemp("official")
    ckpt, cfg = tiny_official_checkpoint("csgo")
    torch.save(ckpt, root / "csgo.ckpt")
    (root / "csgo.yaml").write_text(yaml.safe_dump(cfg))
    causalize_run(CausalizeConfig(ckpt=str(root / "csgo.ckpt"), out=str(root / "model"), base_config=str(root / "csgo.yaml")))
    return root / "model"


def test_an_official_import_distils_under_its_own_sampler(official_teacher):
    """vid2world profile: the teacher at the student's own steps, unguided, is again exactly the student
    (the official last step, history level and image-token rule agree on both sides); guided it is not;
    the student records the profile and the history level of the official 50-step sampler."""
    from pipelines.distill import history_level

    model = load_model(official_teacher).eval()
    level = Roller(model, RolloutConfig(steps=50)).history_noise  # the official rollout's own rule at 50 steps
    assert model.meta["sampling"]["profile"] == "vid2world" and history_level(model) == level != 20
    lat = torch.randn(2, 4, 5, 4, 4)
    acts = torch.nn.functional.one_hot(torch.randint(0, 51, (2, 5)), 51).float()
    frame0 = torch.rand(2, 3, 32, 32) * 2 - 1
    same = GuidedDistillation(_session(model), DistillConfig(student_steps=2, teacher_steps=2, guidance=1.0),
                              load_model(official_teacher))
    assert same.official and same.cfg.history_noise == level
    for seed in range(4):  # both segments: the last one lands on abar_0 with rescale 1 on both sides
        assert same.loss(_session(model, seed), lat, frame0, acts)[0].item() < 1e-8, seed
    guided = GuidedDistillation(_session(model), DistillConfig(student_steps=2, teacher_steps=4, guidance=2.5),
                                load_model(official_teacher))
    assert guided.loss(_session(model, 1), lat, frame0, acts)[0].item() > 1e-8
    meta = guided.final_meta()["sampling"]
    assert (meta["profile"], meta["history_noise"], meta["steps"], meta["guidance"]) == ("vid2world", level, 2, 1.0)
    student = load_model(official_teacher)
    student.meta["sampling"] = meta
    roller = Roller(student, RolloutConfig())
    assert (roller.official, roller.history_noise, roller.cfg.steps) == (True, level, 2)  # samples as it was taught
