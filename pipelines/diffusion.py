"""Noise-schedule maths shared by training and rollout (pure tensor functions; no U-Net inside).

docs/design.md §5, §6: 1000 steps, betas linear in sqrt space 0.00085 -> 0.012 ("scaled_linear"), rescaled to
zero terminal SNR, v-prediction; DynamiCrafter's dynamic rescale multiplies x0 by
``scale_arr[t]`` (linspace 1 -> 0.7 over the first 400 steps, then 0.7) before noising.
Diffusers' schedulers own the schedule; their ``add_noise``/``get_velocity`` take (N,) timesteps,
so per-frame timesteps (B, T) are applied by folding frames into the batch.
"""

from __future__ import annotations

import torch

# The schedule every MODEL records in config.json ("schedule"); training, sampling and the tiny
# checkpoints all read it from here.
DEFAULT_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",  # linear in sqrt space
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
    "dynamic_rescale": {"base_scale": 0.7, "turning_step": 400},
}


def make_scheduler(schedule: dict | None = None, kind: str = "ddpm"):
    """A diffusers DDPM (training) or DDIM (sampling, trailing spacing) scheduler for the schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler  # diffusers is slow to import: only when a schedule is built

    cfg = {k: v for k, v in {**DEFAULT_SCHEDULE, **(schedule or {})}.items() if k in DEFAULT_SCHEDULE and k != "dynamic_rescale"}
    if kind == "ddim":
        return DDIMScheduler(**cfg, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    return DDPMScheduler(**cfg, clip_sample=False)


def dynamic_rescale_table(num_timesteps: int = 1000, base_scale: float = 0.7, turning_step: int = 400) -> torch.Tensor:
    """DynamiCrafter's ``scale_arr``: linspace(1, base_scale, turning_step) then base_scale."""
    head = torch.linspace(1.0, base_scale, turning_step, dtype=torch.float64)
    tail = torch.full((num_timesteps - turning_step,), base_scale, dtype=torch.float64)
    return torch.cat([head, tail]).float()


def rescale_table(schedule: dict | None, num_timesteps: int) -> torch.Tensor:
    """The dynamic-rescale table of a MODEL's schedule (its defaults where the schedule has none)."""
    dr = (schedule or {}).get("dynamic_rescale", DEFAULT_SCHEDULE["dynamic_rescale"])
    return dynamic_rescale_table(num_timesteps, dr["base_scale"], dr["turning_step"])


def _fold(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, T, H, W) + (B, T) -> (B*T, C, H, W) + (B*T,)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), t.reshape(b * f)


def _unfold(x: torch.Tensor, b: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(b, n // b, c, h, w).permute(0, 2, 1, 3, 4)


def add_noise_per_frame(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x0) with one timestep per (sample, frame): x0, noise (B, C, T, H, W), t (B, T)."""
    x, tt = _fold(x0, t)
    n, _ = _fold(noise, t)
    return _unfold(scheduler.add_noise(x, n, tt), x0.shape[0])


def velocity_per_frame(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0, per frame."""
    x, tt = _fold(x0, t)
    n, _ = _fold(noise, t)
    return _unfold(scheduler.get_velocity(x, n, tt), x0.shape[0])


def rescale_per_frame(table: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 * scale_arr[t] with t (B, T) broadcast over channels and pixels."""
    s = table.to(x0.device)[t].to(x0.dtype)  # (B, T)
    return x0 * s[:, None, :, None, None]


def flow_sigma(u: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """Flow matching's noise fraction with the resolution shift (Wan, SD3): u in [0, 1] ->
    sigma = shift u / (1 + (shift - 1) u); x_sigma = (1 - sigma) x0 + sigma eps, velocity eps - x0."""
    return shift * u / (1 + (shift - 1) * u)
