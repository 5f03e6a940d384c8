"""``v2w distill``: a world model -> a few-step student that samples with guidance baked in.

Method: guided progressive distillation in one stage (Salimans & Ho 2022; guidance distilled as
Meng et al. 2023). The student's k DDIM steps (trailing spacing, deterministic, eta 0) split the
noise range into k segments. For a training clip, a newest frame j and a segment i are drawn; the
newest frame is noised to the segment's start t_i (pure noise at i = 0), the frames before j are the
history (re-noised once to the history level, as rollout feeds them). The *teacher* (the frozen
input MODEL, guided: v = v_u + s (v_c - v_u) on the newest frame's action, then rescaled) runs
``teacher_steps / k`` deterministic DDIM substeps from t_i to t_{i+1}. The student must land there in
one step. Its DDIM step is linear in its v, x_{i+1} = A x_t + B v (A, B from the schedule), so the
target is v* = (x_teacher - A x_t) / B and the loss MSE(v_student, v*), with the student fed the
conditional input only: guidance is in its weights, and it samples at guidance 1 with half the
passes. The student has the teacher's architecture (its weights start as the teacher's), so it is
as causal as the teacher, and the exact cache still equals no cache.

An imported official Vid2World model (sampling profile ``vid2world``) is distilled under its own
sampler's rules, which its student then samples with: DDIM's last step lands on abar_0, history is
q-sampled without the dynamic rescale at the level of the official sampler at its own step count
(the second-smallest of its 50 DDIM steps), guidance masks the newest action and is taken over the whole
window with the unconditional pass on the VAE round trip's CLIP tokens, and the image tokens follow
the official rule (split per frame only for a full window).

Everything else is ``v2w train``'s (``train.run(objective=...)``): data, resume bit for bit,
checkpoints, EMA, metrics.jsonl. The student MODEL records ``sampling = {steps: k, guidance: 1,
eta: 0, distilled: {...}}``, which rollout, play and eval read as their defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from pipelines.errors import V2WError
from pipelines.models.action import shift_actions
from pipelines.models.attention import TEXT_TOKENS
from pipelines.official import open_model
from pipelines.sampler import DEFAULT_HISTORY_NOISE, DDIM, Roller, RolloutConfig, ddim_step, randn
from pipelines.train import run as train_run


@dataclass
class DistillConfig:
    student_steps: int = 4  # k: the student's DDIM steps per frame (1, 2 or 4 ...)
    teacher_steps: int = 16  # the teacher's steps over the whole range (k divides it)
    guidance: float | None = None  # the teacher's causal action guidance, baked in [default: the teacher's sampling default, 2.5 for v2w]
    guidance_rescale: float = 0.7
    history_noise: int | None = None  # the history level [default: the teacher's sampler's, see history_level]
    min_history: int = 1  # the newest frame j is drawn from [min_history, T - 1]

    def __post_init__(self):
        if self.student_steps < 1 or self.teacher_steps < self.student_steps or self.teacher_steps % self.student_steps:
            raise V2WError(f"--student-steps must be >= 1 and divide --teacher-steps. Got {self.student_steps} and {self.teacher_steps}")
        if self.min_history < 1:
            raise V2WError(f"--min-history must be >= 1. Got {self.min_history}")


def student_step_coefficients(a: torch.Tensor, a_prev: torch.Tensor, rescale) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with x_prev = A x_t + B v for one deterministic DDIM step with dynamic rescale r:
    x0 = r (sqrt(a) x - sqrt(1-a) v), eps = sqrt(a) v + sqrt(1-a) x, x_prev = sqrt(a') x0 + sqrt(1-a') eps."""
    sa, s1a, sap, s1ap = a.sqrt(), (1 - a).sqrt(), a_prev.sqrt(), (1 - a_prev).clamp(min=0).sqrt()
    return sap * rescale * sa + s1ap * s1a, -sap * rescale * s1a + s1ap * sa


def history_level(model) -> int:
    """The history noise level a model's own sampler uses: v2w's default (20), or for an official
    import the second-smallest DDIM timestep at its recorded step count (50), as its rollout picks it."""
    sampling = model.meta.get("sampling") or {}
    if sampling.get("profile") != "vid2world":
        return DEFAULT_HISTORY_NOISE
    ts = DDIM(model.meta.get("schedule"), int(sampling.get("steps", 50)), 0.0).timesteps
    return ts[-2] if len(ts) > 1 else ts[-1]


class GuidedDistillation:
    """The objective ``train.run`` calls: ``loss(session, latents, frame0, actions)``."""

    def __init__(self, session, cfg: DistillConfig, teacher):
        self.cfg = cfg
        c = session.model.unet.config
        if not c.causal:
            raise V2WError("distil a causal world model (causalize + train first)")
        self.teacher = teacher.eval().requires_grad_(False)
        self.profile = (teacher.meta.get("sampling") or {}).get("profile", "v2w")
        self.official = self.profile == "vid2world"
        if cfg.history_noise is None:
            cfg.history_noise = history_level(teacher)
        # the teacher's guided v for a newest frame, exactly as its rollout computes it (uncached path)
        self.roller = Roller(self.teacher, RolloutConfig(steps=cfg.teacher_steps, eta=0.0, guidance=cfg.guidance,
                                                          guidance_rescale=cfg.guidance_rescale, history_noise=cfg.history_noise,
                                                          cache=False, profile=self.profile))
        cfg.guidance = self.roller.cfg.guidance  # resolved (None: the teacher's default), as the student records it
        self.student_ddim = DDIM(session.model.meta.get("schedule"), cfg.student_steps, 0.0, official=self.official)
        self.fs = session.cfg.fs

    def _segment(self, i: int) -> tuple[int, int]:
        """Student segment i: (t_i, t_{i+1}); t_{i+1} = -1 after the last step (the clean frame)."""
        ts = self.student_ddim.timesteps
        return ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)

    def _alphas(self, t: int, t_next: int):
        d = self.student_ddim
        if t_next >= 0:
            return d.ac[t], d.ac[t_next], d.table[t_next] / d.table[t]
        if self.official:  # the official last step: to abar_0, rescale factor 1
            return d.ac[t], d.ac[0], torch.tensor(1.0)
        return d.ac[t], torch.tensor(1.0), d.table[0] / d.table[t]

    @torch.no_grad()
    def teacher_target(self, x_t, t, t_next, hist_noised, concat, ctx, acts, hist, ctx_u=None) -> torch.Tensor:
        """The teacher's deterministic guided DDIM from t to t_next in teacher_steps / k substeps."""
        n = self.cfg.teacher_steps // self.cfg.student_steps
        end = max(t_next, 0)
        points = [round(t - m * (t - end) / n) for m in range(n + 1)]  # t .. end, integers
        x = x_t
        d = self.roller.ddim
        for m in range(n):
            tau, tau_next = points[m], points[m + 1]
            v = self.roller._predict_new(x, tau, hist_noised, concat, ctx, acts, None, hist, ctx_u)
            last = m == n - 1 and t_next < 0
            if last and self.official:
                a, ap, rescale = d.ac[tau], d.ac[0], 1.0
            else:
                a, ap = d.ac[tau], (torch.tensor(1.0) if last else d.ac[tau_next])
                rescale = d.table[0 if last else tau_next] / d.table[tau]
            x, _ = ddim_step(x, v, a, ap, 0.0, None, rescale)
        return x

    def loss(self, s, latents: torch.Tensor, frame0: torch.Tensor, actions: torch.Tensor | None):
        g, dev = s.generator, latents.device
        b, _, t_len = latents.shape[:3]
        if t_len < self.cfg.min_history + 1:
            raise V2WError(f"clips of {t_len} frames: distillation needs >= {self.cfg.min_history + 1} (history + newest)")
        j = int(torch.randint(self.cfg.min_history, t_len, (1,), generator=g))  # the newest frame
        i = int(torch.randint(0, self.cfg.student_steps, (1,), generator=g))  # the student's segment
        t, t_next = self._segment(i)
        z = latents[:, :, : j + 1]
        hist_noised = [self.roller.renoise(z[:, :, k : k + 1], g) for k in range(j)]
        noise = randn(z[:, :, j : j + 1].shape, g).to(z)
        x_t = noise if i == 0 else self.roller.ddim.renoise(z[:, :, j : j + 1], t, noise)
        acts = shift_actions(actions)[:, : j + 1] if actions is not None else None
        concat = z[:, :, :1]
        with torch.no_grad():
            if self.official:  # all the Resampler's tokens, and the unconditional pass's own (as a stream's window)
                ctx = self.roller.image_context(frame0, self.roller.window)
                ctx_u = self.roller.uncond_image_context(frame0, self.roller.window, ctx)
            else:
                ctx = self.roller.image_context(frame0, j + 1)[:, : TEXT_TOKENS + (j + 1) * self.teacher.unet.config.image_tokens_per_frame]
                ctx_u = None
            x_target = self.teacher_target(x_t, t, t_next, hist_noised, concat, ctx, acts, j, ctx_u)
        a, a_prev, rescale = self._alphas(t, t_next)
        coef_a, coef_b = student_step_coefficients(a, a_prev, rescale)
        v_target = (x_target - coef_a * x_t) / coef_b
        # the student: the conditional pass on the same window, its newest frame's v
        ts = torch.full((b, j + 1), self.cfg.history_noise, dtype=torch.long, device=dev)
        ts[:, -1] = t
        x_in = torch.cat([*hist_noised, x_t], dim=2)
        fs = torch.full((b,), self.fs, dtype=torch.long, device=dev)
        v = s.wrapped(torch.cat([x_in, concat.expand(-1, -1, j + 1, -1, -1)], dim=1), ts, frame0, fs=fs, actions=acts)[:, :, -1:]
        per = F.mse_loss(v.float(), v_target.float(), reduction="none").mean(dim=(1, 2, 3, 4))  # (B,)
        return per.mean(), per.detach()[:, None], ts[:, -1:].detach()

    def final_meta(self) -> dict:
        return {"sampling": {"profile": self.profile, "steps": self.cfg.student_steps, "guidance": 1.0, "eta": 0.0,
                             "history_noise": self.cfg.history_noise,
                             "distilled": {**asdict(self.cfg), "method": "guided progressive distillation (one stage)"}}}


def run(train_cfg, cfg: DistillConfig, on_progress=None, log=lambda m: None, stop_after: int | None = None):
    """Distil ``train_cfg.model`` on ``train_cfg.data`` into RUN/final (``train_cfg.out``) -> TrainResult."""
    def objective(session):
        return GuidedDistillation(session, cfg, open_model(train_cfg.model, session.accelerator.device))

    return train_run(train_cfg, on_progress=on_progress, log=log, stop_after=stop_after, objective=objective)
