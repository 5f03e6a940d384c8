"""Autoregressive rollout of a Wan world model (flow matching, one latent frame = 4 video frames).

The same contract as :class:`pipelines.sampler.Roller` (both on :class:`pipelines.sampler.RollerBase`), in video frames: ``rollout(context latents,
context pixels, per-video-frame action inputs (B, C + H, A), H)`` with C = 1 + 4m context frames and
H a multiple of 4; ``decode(pred)`` turns the predicted latents into H video frames (the causal VAE
decodes them after the context's latents, as they were encoded). Per new latent frame:

1. the window: the new frame and up to ``window - 1`` latent frames before it, their rotary positions
   counted from the window's first frame (as in training, where clips start at 0);
2. the cache: history frames enter once, re-noised to sigma_h = history_noise / 1000 with noise drawn
   once (x = (1 - sigma_h) z + sigma_h eps); their keys/values stay in the activation cache, so each
   denoising step runs the new frame alone (when the window slides every position changes: rebuilt);
3. denoise from pure noise with Euler steps on diffusers' FlowMatchEulerDiscreteScheduler sigmas
   (Wan's shift): x <- x + (sigma_next - sigma) v, v guided on the newest frame's 4 actions
   (the unconditional pass zeroes them), then guidance rescale, as the U-Net sampler.
"""

from __future__ import annotations

import time

import torch

from pipelines.devices import autocast
from pipelines.errors import V2WError
from pipelines.models.cache import ActivationCache, activation_cache
from pipelines.models.latent_frames import TEMPORAL_COMPRESSION, group_actions, video_to_latent_frames
from pipelines.sampler import DEFAULT_HISTORY_NOISE, RollerBase, RolloutConfig, guide, randn, window_start


def flow_sigmas(steps: int, shift: float) -> list[float]:
    """sigma_0 = 1 (pure noise) ... sigma_steps = 0, diffusers' FlowMatchEuler schedule with Wan's shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # diffusers is slow to import: only when sampling

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    return [float(s) for s in sched.sigmas]


class WanRoller(RollerBase):
    """The Wan family's sampler (see the module doc) on the shared base; ``window`` counts latent frames."""

    def __init__(self, model, cfg: RolloutConfig):
        if cfg.mode != "autoregressive":
            raise V2WError("Wan models roll out autoregressively only (--mode autoregressive)")
        clip_len = (model.meta.get("trained") or {}).get("clip_len")
        super().__init__(model, cfg, model.transformer, cfg.window or (video_to_latent_frames(int(clip_len)) if clip_len else 5),
                         unit="latent frames")
        if cfg.cache is None:
            cfg.cache = True  # exact: no norm in a Wan block mixes frames
        self.sigmas = flow_sigmas(cfg.steps, float(model.meta.get("schedule", {}).get("flow_shift", 3.0)))
        self.history_noise = cfg.history_noise if cfg.history_noise is not None else DEFAULT_HISTORY_NOISE
        self.sigma_h = self.history_noise / 1000
        self._context = None  # the last rollout's context latents, for decode()

    # ------------------------------------------------------------------ pieces

    def _net(self, x, sigmas_per_frame, acts, offset: int):
        """The world transformer on latent frames at positions [offset, offset + F) of the window."""
        self.frame_passes += x.shape[0] * x.shape[2]
        with autocast(x.device, self.cfg.precision):
            return self.model(x, sigmas_per_frame * 1000, acts, frame_offset=offset).to(x.dtype)

    def _guided_v(self, x_all, sig_all, acts, offset: int):
        """Velocity of the newest frame (the last of x_all): conditional, or guided against the same pass
        with the newest frame's actions zeroed (both halves in one batch)."""
        if acts is None or self.cfg.guidance == 1.0:
            return self._net(x_all, sig_all, acts, offset)[:, :, -1:]
        uncond = acts.clone()
        uncond[:, -1] = 0
        v = self._net(torch.cat([x_all, x_all]), torch.cat([sig_all, sig_all]), torch.cat([acts, uncond]), offset)[:, :, -1:]
        v_c, v_u = v.chunk(2)
        return guide(v_c, v_u, self.cfg.guidance, self.cfg.guidance_rescale)

    # ------------------------------------------------------------------ the loop

    @torch.no_grad()
    def rollout(self, context_latents, context_pixels, actions, horizon: int, on_frame=None) -> torch.Tensor:
        """-> predicted latents (B, C_z, H / 4, h, w); ``actions`` per-video-frame inputs (B, C + H, A) or None."""
        n_video = context_pixels.shape[2]
        if horizon % TEMPORAL_COMPRESSION:
            raise V2WError(f"a Wan model predicts {TEMPORAL_COMPRESSION} video frames per latent frame: the horizon "
                           f"must be a multiple of {TEMPORAL_COMPRESSION}. Got {horizon}")
        acts = None
        if actions is not None:
            if actions.shape[1] < n_video + horizon:
                raise V2WError(f"need {n_video + horizon} per-frame actions, got {actions.shape[1]}")
            acts = group_actions(actions[:, : n_video + horizon])  # (B, latent frames, 4A)
        n_ctx = context_latents.shape[2]
        stream = self.stream(context_latents, context_pixels, actions[:, :n_video] if actions is not None else None)
        preds = []
        for k in range(horizon // TEMPORAL_COMPRESSION):
            t0 = time.perf_counter()
            preds.append(stream.step_latent(acts[:, n_ctx + k] if acts is not None else None))
            seconds = time.perf_counter() - t0
            for j in range(TEMPORAL_COMPRESSION):  # per video frame, as the U-Net sampler reports
                self.timing.append(seconds / TEMPORAL_COMPRESSION)
                if on_frame:
                    on_frame(k * TEMPORAL_COMPRESSION + j, seconds / TEMPORAL_COMPRESSION, horizon)
        return torch.cat(preds, dim=2)

    def stream(self, context_latents, context_pixels, context_actions=None) -> "WanRolloutStream":
        """A rollout advanced one latent frame (``step_latent``) or one video frame (``next_frame``) at a time."""
        self._context = context_latents
        return WanRolloutStream(self, context_latents, context_pixels, context_actions)

    def _renoise(self, z, generator):
        return (1 - self.sigma_h) * z + self.sigma_h * randn(z.shape, generator).to(z)

    def decode(self, pred: torch.Tensor) -> torch.Tensor:
        """Predicted latents -> their 4 video frames each: the causal VAE reads the context's latents first
        (their frames are known and dropped), then each predicted latent frame once."""
        stream = self.model.decoder_stream()
        stream.push(self._context)
        return stream.push(pred)


class WanRolloutStream:
    """One Wan rollout's state: clean and re-noised latents of every latent frame, their action groups,
    the key/value cache, and (for ``next_frame``) the streaming VAE decoder with decoded frames not yet
    shown. The same calls in the same order draw the same noise, so a stream fed the actions of a file
    reproduces ``WanRoller.rollout`` of that file exactly."""

    frames_per_step = TEMPORAL_COMPRESSION  # video frames one prediction makes

    def __init__(self, roller: WanRoller, context_latents, context_pixels, context_actions=None):
        self.roller = r = roller
        n_video = context_pixels.shape[2]
        if video_to_latent_frames(n_video) != context_latents.shape[2]:
            raise V2WError(f"{n_video} context frames but {context_latents.shape[2]} context latents")
        self.g = r._generators(context_latents.shape[0])
        self.clean = [context_latents[:, :, i : i + 1] for i in range(context_latents.shape[2])]
        self.noised = [r._renoise(z, self.g) for z in self.clean]
        self.groups = list(group_actions(context_actions).unbind(1)) if context_actions is not None else None
        self.cache, self.cache_start, self.cached = ActivationCache(), None, 0
        self.decoder, self.shown = None, []  # next_frame only

    @property
    def frames(self) -> int:
        return len(self.clean)

    @property
    def buffered(self) -> int:
        """Decoded video frames that ``next_frame`` has not returned yet."""
        return len(self.shown)

    @torch.no_grad()
    def step_latent(self, group: torch.Tensor | None = None) -> torch.Tensor:
        """The next latent frame (B, C, 1, h, w) given its 4 actions' inputs concatenated (B, 4A)."""
        r, cfg = self.roller, self.roller.cfg
        if (group is None) != (self.groups is None):
            raise V2WError("pass actions for every frame when the context had actions, and none otherwise")
        b = self.clean[0].shape[0]
        # 1. the window
        n = len(self.clean)
        start = window_start(n, r.window, r.cfg.slide)
        hist = n - start
        win_acts = None
        if self.groups is not None:
            self.groups.append(group)
            win_acts = torch.stack(self.groups[start : n + 1], dim=1)
        # 2. the cache: history frames that joined the window since (a slide changes every position: rebuilt)
        if cfg.cache:
            if self.cache_start != start:
                self.cache.clear()
                self.cache_start, self.cached = start, 0
            if self.cached < hist:
                x_add = torch.cat(self.noised[start + self.cached : n], dim=2)
                sig_add = torch.full((b, hist - self.cached), r.sigma_h, device=x_add.device)
                a_add = win_acts[:, self.cached : hist] if win_acts is not None else None
                if r._guided(win_acts):
                    x_add, sig_add, a_add = torch.cat([x_add, x_add]), torch.cat([sig_add, sig_add]), torch.cat([a_add, a_add])
                with activation_cache(r.unet, self.cache, "append"):
                    r._net(x_add, sig_add, a_add, self.cached)
                self.cached = hist
        # 3. denoise the new latent frame from pure noise (Euler on the flow)
        x = randn(self.clean[0].shape, self.g).to(self.clean[0])
        for sigma, sigma_next in zip(r.sigmas[:-1], r.sigmas[1:]):
            if cfg.cache:
                sig = torch.full((b, 1), sigma, device=x.device)
                with activation_cache(r.unet, self.cache, "read"):
                    v = r._guided_v(x, sig, win_acts[:, hist:] if win_acts is not None else None, hist)
            else:
                x_all = torch.cat([*self.noised[start:n], x], dim=2)
                sig = torch.tensor([r.sigma_h] * hist + [sigma], device=x.device).expand(b, -1)
                v = r._guided_v(x_all, sig, win_acts, 0)
            x = x + (sigma_next - sigma) * v
        # 4. it joins the history, re-noised once
        self.clean.append(x)
        self.noised.append(r._renoise(x, self.g))
        return x

    @torch.no_grad()
    def next_frame(self, action: torch.Tensor | None = None) -> torch.Tensor:
        """The next *video* frame (B, 3, 1, H, W) for ``v2w play``: when none is decoded ahead, the action
        held now is used for the next 4 frames (one latent frame: its 4 action inputs), predicted and
        decoded once; the following 3 calls return the frames already made (their action is ignored)."""
        if not self.shown:
            if self.decoder is None:
                self.decoder = self.roller.model.decoder_stream()
                self.decoder.push(torch.cat(self.clean, dim=2))  # the context's frames: known, not shown
            group = action.repeat(1, TEMPORAL_COMPRESSION) if action is not None else None
            frames = self.decoder.push(self.step_latent(group))
            self.shown = list(frames.split(1, dim=2))
        return self.shown.pop(0)
