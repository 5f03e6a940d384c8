"""Sampling a causal world model: DDIM for v-prediction, causal action guidance and the
autoregressive roller (docs/design.md §6). Rollout, training previews and play all sample here.

For each new frame:
  1. history = the context frames and earlier predictions, each re-noised ONCE to
     ``history_noise`` (q_sample of x0 * scale_arr[t_h], the training noising) when it joins the
     history, and fed with that noise level as its per-frame timestep;
  2. the new frame starts from pure noise and is denoised by DDIM (``steps``, trailing spacing,
     ``eta``) with v-prediction and DynamiCrafter's dynamic rescale of the predicted x0 by
     scale_arr[t_prev] / scale_arr[t];
  3. causal action guidance: a second pass with only the newest frame's action zeroed,
     v = v_u + s (v_c - v_u), then guidance rescale (diffusers' ``rescale_noise_cfg``); both
     passes run as one batch;
  4. past the window, the oldest history frames leave the window; the conditioning frame
     (concat latent and CLIP image) is the first frame of the current window.

Exact activation cache (``cache=True``, per-frame-norm models): history frames run through the
U-Net once per window and their temporal keys/values and conv inputs are kept, so each denoising
step computes only the new frame. When the window slides, the cache is rebuilt from the frames
now in the window (a one-pass prefill), because every frame's activations depend on the frames
before it in the window: cached and uncached rollouts stay equal to float precision at every
frame. ``mode="full"`` instead denoises all new frames jointly (the bidirectional-style baseline).

Sampling profiles (``RolloutConfig.profile``; default the model's ``sampling.profile``, else
``v2w``): ``vid2world`` reproduces the official Vid2World sampler for the checkpoints it released
(docs/design.md §14): history re-noised to the second-smallest DDIM timestep without the dynamic
rescale, the last DDIM step landing on abar_0 (not 1) with no rescale, the guidance rescale's std
taken over the whole window, the unconditional pass masking the newest frame's action *embedding*
and seeing the CLIP tokens of the VAE reconstruction of the conditioning frame, and the image
context split per frame only when the window holds exactly the Resampler's frame count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.devices import autocast, check_precision
from pipelines.diffusion import add_noise_per_frame, make_scheduler, rescale_per_frame, rescale_table
from pipelines.errors import V2WError
from pipelines.models.attention import TEXT_TOKENS
from pipelines.models.cache import ActivationCache, activation_cache

SAMPLING_MODES = ("autoregressive", "full")
PROFILES = ("v2w", "vid2world")
DEFAULT_HISTORY_NOISE = 20  # the v2w profile's history noise level


@dataclass
class RolloutConfig:
    """How to sample (``v2w rollout``'s flags of the same names)."""

    steps: int | None = None  # DDIM steps per frame; None = the model's (a distilled student's), else 50
    eta: float | None = None  # DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like); None = the model's, else 1
    guidance: float | None = None  # causal action guidance scale (1 = conditional only); None = the model's (2.5)
    guidance_rescale: float = 0.7  # blend of the guided v with its std-matched version (0 = off)
    history_noise: int | None = None  # noise level of history frames; None = the profile's (v2w: 20, vid2world: 2nd-smallest DDIM step)
    history_guidance: float = 0.0  # > 0: also guide against a pass without history (beyond the paper)
    window: int | None = None  # frames in the model's view; None = training length
    slide: int = 1  # once the window is full, it moves by this many frames at a time (the cache is rebuilt once per move)
    cache: bool | None = None  # exact activation cache; None = on for per-frame-norm models
    mode: str = "autoregressive"  # autoregressive | full
    seed: int = 0
    fs: int | None = None  # fps conditioning; None = the model's
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the network passes; the DDIM maths stays fp32
    profile: str | None = None  # v2w | vid2world (the official sampler's details); None = the model's

    def __post_init__(self):
        check_precision(self.precision)
        if self.profile is not None and self.profile not in PROFILES:
            raise V2WError(f"--profile must be one of {{{', '.join(PROFILES)}}}. Got {self.profile!r}")
        if self.mode not in SAMPLING_MODES:
            raise V2WError(f"--mode must be one of {{{', '.join(SAMPLING_MODES)}}}. Got {self.mode!r}")
        if self.steps is not None and self.steps < 1:
            raise V2WError(f"--steps must be >= 1. Got {self.steps}")
        if self.window is not None and self.window < 2:
            raise V2WError(f"--window must be >= 2. Got {self.window}")
        if self.slide < 1:
            raise V2WError(f"--slide must be >= 1. Got {self.slide}")
        if self.history_noise is not None and not 0 <= self.history_noise < 1000:
            raise V2WError(f"--history-noise must be in [0, 999]. Got {self.history_noise}")


def ddim_step(
    x_t: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None,
    x0_rescale: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step for v-prediction -> (x_prev, predicted x0).

    x0 = sqrt(a) x_t - sqrt(1 - a) v;  eps = sqrt(a) v + sqrt(1 - a) x_t;  x0 *= x0_rescale
    sigma = eta sqrt((1 - a_prev) / (1 - a) (1 - a / a_prev))
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise
    """
    a, ap = alpha, alpha_prev
    x0 = a.sqrt() * x_t - (1 - a).sqrt() * v
    eps = a.sqrt() * v + (1 - a).sqrt() * x_t
    x0 = x0 * x0_rescale
    sigma = eta * ((1 - ap) / (1 - a) * (1 - a / ap)).clamp(min=0).sqrt()
    x_prev = ap.sqrt() * x0 + (1 - ap - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance on the newest action, then guidance rescale (Lin et al. 2024, as diffusers'
    ``rescale_noise_cfg``: v's per-sample std matched to the conditional pass's, blended by ``rescale``).
    A v that is all zeros (a zero-initialised output layer: ``--from-scratch`` before training) stays
    zero instead of 0/0 = NaN."""
    v = v_uncond + scale * (v_cond - v_uncond)
    if rescale <= 0:
        return v
    dims = list(range(1, v.ndim))
    std_cond, std_v = v_cond.std(dim=dims, keepdim=True), v.std(dim=dims, keepdim=True)
    rescaled = v * (std_cond / std_v.clamp_min(torch.finfo(std_v.dtype).tiny))
    return rescale * rescaled + (1 - rescale) * v


def randn(shape, generator) -> torch.Tensor:
    """Standard normal noise of ``shape`` from one generator, or row by row from a list of them."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


def apply_model_defaults(cfg: RolloutConfig, model) -> RolloutConfig:
    """Fill what the caller left to the model (None) from its ``sampling`` defaults (an imported
    official model records its own; a -NAG one, trained without action dropout, guidance 1; a
    ``v2w distill`` student its step count, guidance 1 (baked in) and eta 0)."""
    sampling = model.meta.get("sampling") or {}
    if cfg.guidance is None:
        cfg.guidance = float(sampling.get("guidance", 2.5))
    if cfg.steps is None:
        cfg.steps = int(sampling.get("steps", 50))
    if cfg.eta is None:
        cfg.eta = float(sampling.get("eta", 1.0))
    if cfg.history_noise is None and sampling.get("history_noise") is not None:  # a student: its teacher's level
        cfg.history_noise = int(sampling["history_noise"])
    return cfg


class DDIM:
    """The noise schedule seen by a sampler: DDIM timesteps, alphas_cumprod and the rescale table."""

    def __init__(self, schedule: dict | None, steps: int, eta: float, official: bool = False):
        self.train_scheduler = make_scheduler(schedule)  # q_sample exactly as training noises
        sched = make_scheduler(schedule, kind="ddim")
        sched.set_timesteps(steps)
        self.timesteps = [int(t) for t in sched.timesteps]
        self.ac = sched.alphas_cumprod.float()
        self.table = rescale_table(schedule, len(self.ac))
        self.eta = eta
        # the official Vid2World DDIM (LDM's make_ddim_sampling_parameters): the last step lands on
        # abar_0 instead of 1, and its dynamic-rescale factor is 1 (its "previous" scale is its own)
        self.official = official

    def renoise(self, z: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """Clean latents (B, 4, T, h, w) -> noised to level t, the way training noises them (the official
        sampler's q_sample of history frames skips the dynamic rescale)."""
        ts = torch.full((z.shape[0], z.shape[2]), t, dtype=torch.long, device=z.device)
        x0 = z if self.official else rescale_per_frame(self.table, z, ts)
        return add_noise_per_frame(self.train_scheduler, x0, noise, ts)

    def denoise(self, x: torch.Tensor, predict_v: Callable[[torch.Tensor, int], torch.Tensor], generator) -> torch.Tensor:
        """The DDIM loop from pure noise x: ``predict_v(x, t)`` is the (guided) model."""
        for i, t in enumerate(self.timesteps):
            t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            v = predict_v(x, t)
            if t_prev >= 0:
                a_t, a_prev, rescale = self.ac[t], self.ac[t_prev], self.table[t_prev] / self.table[t]
            elif self.official:
                a_t, a_prev, rescale = self.ac[t], self.ac[0], 1.0
            else:
                a_t, a_prev, rescale = self.ac[t], torch.tensor(1.0), self.table[0] / self.table[t]
            noise = randn(x.shape, generator).to(x) if self.eta > 0 else None
            x, _ = ddim_step(x, v, a_t, a_prev, self.eta, noise, rescale)
        return x


class RollerBase:
    """What every family's sampler shares (the U-Net's below, Wan's in ``pipelines/wan_sampler.py``):
    the model in eval mode, the settings with the model's defaults filled in, the window and its
    slide, the random generators, the timing. A family supplies its network call, its schedule and
    its stream (``stream(...)`` -> an object with ``step``/``next_frame``), which rollout and play share."""

    # one seed per batch row (None: one generator for the whole batch, seeded with cfg.seed): a row's
    # noise then does not depend on the other rows in its batch, so two rollouts of one context under
    # different actions (counterfactual branches, an action sweep) differ only by their actions
    row_seeds: list[int] | None = None

    def __init__(self, model, cfg: RolloutConfig, net, window: int, unit: str = "frames"):
        self.model, self.cfg = model, apply_model_defaults(cfg, model)
        model.eval()  # dropout would make the rollout random (and the cache inexact)
        self.unet = net
        self.window = window
        if self.window < 2:
            raise V2WError(f"--window must be >= 2 {unit}. Got {self.window}")
        if cfg.slide > self.window - 1:
            raise V2WError(f"--slide must be at most window - 1 = {self.window - 1} {unit} (a window keeps >= 1 "
                           f"history frame). Got {cfg.slide}")
        self.timing: list[float] = []
        self.frame_passes = 0  # frames pushed through the network (x batch): the compute, machine-independent

    def _generators(self, batch: int):
        """One generator for the batch, or one per row (``row_seeds``)."""
        if self.row_seeds is None:
            return torch.Generator().manual_seed(self.cfg.seed)
        if len(self.row_seeds) != batch:
            raise V2WError(f"{len(self.row_seeds)} row seeds for a batch of {batch}")
        return [torch.Generator().manual_seed(int(s)) for s in self.row_seeds]

    def _guided(self, acts) -> bool:
        return acts is not None and self.cfg.guidance != 1.0


class Roller(RollerBase):
    """Rolls a (DynamiCrafter-family) WorldModel forward: DDIM, the exact cache, causal action guidance."""

    def __init__(self, model, cfg: RolloutConfig):
        c = model.unet.config
        super().__init__(model, cfg, model.unet, cfg.window or c.temporal_length)
        cfg = self.cfg
        exact = c.causal and c.per_frame_norm
        if cfg.cache is None:
            cfg.cache = exact and cfg.mode == "autoregressive"
        if cfg.cache and not exact:
            raise V2WError(
                "--cache needs a causal model with per-frame temporal norms: with pooled norms every new frame "
                "changes the history's activations, so nothing can be reused. Use --no-cache"
            )
        # the "no action" of guidance: a masked action embedding for models trained that way (the
        # vid2world injection, as the official action_mask), else a zero action input
        self.mask_null = bool(c.action_dim) and c.action_injection == "vid2world"
        self.profile = cfg.profile or (model.meta.get("sampling") or {}).get("profile", "v2w")
        self.official = self.profile == "vid2world"
        self.ddim = DDIM(model.meta.get("schedule"), cfg.steps, cfg.eta, official=self.official)
        if cfg.history_noise is not None:
            self.history_noise = cfg.history_noise
        elif self.official:  # the official sampler's iterator[-2]: the second-smallest DDIM timestep
            self.history_noise = self.ddim.timesteps[-2] if len(self.ddim.timesteps) > 1 else self.ddim.timesteps[-1]
        else:
            self.history_noise = DEFAULT_HISTORY_NOISE
        cfg.profile, cfg.history_noise = self.profile, self.history_noise  # resolved, as rollout.json records them
        self.fs = cfg.fs if cfg.fs is not None else int(model.meta.get("fps", c.default_fs))

    # ------------------------------------------------------------------ pieces

    def renoise(self, z: torch.Tensor, generator) -> torch.Tensor:
        """History frame (B, 4, 1, h, w) clean latent -> its fixed noised input at t_h."""
        return self.ddim.renoise(z, self.history_noise, randn(z.shape, generator).to(z))

    def _unet(self, x, ts, concat, ctx, actions, start: int, n: int, mask=None, window_len: int | None = None):
        """U-Net on frames [start, start + n) of the window: x (B, 4, n, h, w). ``mask`` (B, n): the
        action-embedding mask (vid2world); ``window_len``: frames in the whole window (vid2world's rule
        for the image context: split per frame only when the window holds the Resampler's frame count)."""
        b = x.shape[0]
        self.frame_passes += b * n
        tokens = self.unet.config.image_tokens_per_frame
        if self.official and window_len is not None and TEXT_TOKENS + window_len * tokens != ctx.shape[1]:
            ctx_n = ctx  # every frame attends to all image tokens, as the official U-Net does then
        else:
            ctx_n = torch.cat([ctx[:, :TEXT_TOKENS], ctx[:, TEXT_TOKENS + start * tokens : TEXT_TOKENS + (start + n) * tokens]], dim=1)
        inp = torch.cat([x, concat.expand(-1, -1, n, -1, -1)], dim=1)
        fs = torch.full((b,), self.fs, dtype=torch.long, device=x.device)
        with autocast(x.device, self.cfg.precision):
            return self.unet(inp, ts, context=ctx_n, fs=fs, actions=actions, action_mask=mask).to(x.dtype)

    def image_context(self, frame0: torch.Tensor, frames: int) -> torch.Tensor:
        """The model's CLIP + Resampler context, under the rollout's precision (vid2world: all of the
        Resampler's tokens, laid out as the official model received them)."""
        with autocast(frame0.device, self.cfg.precision):
            return self.model.image_context(frame0, frames, layout="vid2world" if self.official else "per-frame")

    def uncond_image_context(self, frame0: torch.Tensor, frames: int, ctx: torch.Tensor) -> torch.Tensor:
        """The unconditional pass's context: the same (v2w), or the CLIP tokens of the conditioning
        frame's VAE round trip (vid2world: the official sampler's ``uc`` is built from ``xrec``)."""
        if not self.official:
            return ctx
        recon = self.model.decode_latents(self.model.encode_frames(frame0[:, :, None]))[:, :, 0]
        return self.image_context(recon, frames)

    # ------------------------------------------------------------------ the loop

    @torch.no_grad()
    def rollout(
        self,
        context_latents: torch.Tensor,
        context_pixels: torch.Tensor,
        actions: torch.Tensor | None,
        horizon: int,
        on_frame=None,
    ) -> torch.Tensor:
        """context_latents (B, 4, C, h, w); context_pixels (B, 3, C, H, W) in [-1, 1];
        actions (B, C + horizon, A) per-frame *inputs* (frame j's entry is a_{j-1}; already
        normalised, or one-hot) or None. Returns predicted latents (B, 4, horizon, h, w)."""
        n_ctx = context_latents.shape[2]
        if actions is not None and actions.shape[1] < n_ctx + horizon:
            raise V2WError(f"need {n_ctx + horizon} per-frame actions, got {actions.shape[1]}")
        if self.cfg.mode == "full":
            return self._rollout_full(context_latents, context_pixels, actions, horizon)
        stream = self.stream(context_latents, context_pixels, actions[:, :n_ctx] if actions is not None else None)
        preds = []
        for k in range(horizon):
            t0 = time.perf_counter()
            preds.append(stream.step(actions[:, n_ctx + k] if actions is not None else None))
            self.timing.append(time.perf_counter() - t0)
            if on_frame:
                on_frame(k, self.timing[-1], horizon)
        return torch.cat(preds, dim=2)

    def decode(self, pred: torch.Tensor) -> torch.Tensor:
        """Predicted latents -> pixels (B, 3, H, h, w) in [-1, 1] (this family's VAE decodes frame by frame)."""
        return self.model.decode_latents(pred)

    def stream(self, context_latents, context_pixels, context_actions=None) -> "RolloutStream":
        """An autoregressive rollout advanced one frame at a time (``v2w play``); ``rollout`` uses it too."""
        if self.cfg.mode != "autoregressive":
            raise V2WError("frame-by-frame rollout needs --mode autoregressive")
        return RolloutStream(self, context_latents, context_pixels, context_actions)

    def _pair(self, x, ts, concat, ctx, acts, new_index, ctx_uncond=None):
        """Duplicate inputs for the conditional and unconditional passes (batched together); unguided
        (guidance 1 or no actions) the inputs as they are: the unconditional half would be unused.
        new_index: which frame's action the unconditional pass drops (None: none): its input zeroed
        (v2w) or its embedding masked (vid2world). Returns (x, ts, concat, ctx, actions, mask)."""
        if not self._guided(acts):
            return x, ts, concat, ctx, acts, None
        x2, ts2 = torch.cat([x, x]), torch.cat([ts, ts])
        concat2, ctx2 = torch.cat([concat, concat]), torch.cat([ctx, ctx if ctx_uncond is None else ctx_uncond])
        mask = None
        if self.mask_null:  # the action_mask of the official sampler: embedding of the newest frame off
            acts2 = torch.cat([acts, acts])
            mask = torch.ones(acts2.shape[:2], device=acts.device)
            if new_index is not None:
                mask[acts.shape[0]:, new_index] = 0
        else:
            uncond = acts.clone()
            if new_index is not None:
                uncond[:, new_index] = 0
            acts2 = torch.cat([acts, uncond])
        return x2, ts2, concat2, ctx2, acts2, mask

    def _predict_new(self, x_new, t, hist_noised, concat, ctx, acts, cache, hist, ctx_uncond=None, hist_out=None,
                     joining: int = 0) -> torch.Tensor:
        """Guided v for the newest frame (B, 4, 1, h, w). With the cache, ``joining`` history frames (the
        newest ones, not cached yet) join it in this same network call: causal attention and convs keep
        them from seeing the new frame, so this is the separate append pass and the read pass in one.
        ``hist_out``: a list of both guidance halves' outputs at the cached history frames (B2, 4, n, h, w),
        extended here (vid2world guides the whole window)."""
        b = x_new.shape[0]
        dev = x_new.device
        guided = self._guided(acts)
        if cache is not None:
            x = torch.cat([*hist_noised[hist - joining :], x_new], dim=2)
            ts = torch.full((b, joining + 1), self.history_noise, dtype=torch.long, device=dev)
            ts[:, -1] = t
            a_in = acts[:, hist - joining : hist + 1] if acts is not None else None
            x2, ts2, c2, ctx2, a2, m2 = self._pair(x, ts, concat, ctx, a_in, joining, ctx_uncond)
            with activation_cache(self.unet, cache, "append" if joining else "read", keep=joining):
                out = self._unet(x2, ts2, c2, ctx2, a2, hist - joining, joining + 1, m2, hist + 1)
            if joining and hist_out is not None:
                hist_out.append(out[:, :, :joining])
            out = out[:, :, joining:]
            if self.official and guided and hist_out:  # the whole window, as uncached
                out = torch.cat([*hist_out, out], dim=2)
                return guide(out[:b], out[b:], self.cfg.guidance, self.cfg.guidance_rescale)[:, :, -1:]
        else:
            x = torch.cat([*hist_noised, x_new], dim=2)
            ts = torch.full((b, hist + 1), self.history_noise, dtype=torch.long, device=dev)
            ts[:, -1] = t
            x2, ts2, c2, ctx2, a2, m2 = self._pair(x, ts, concat, ctx, acts, hist, ctx_uncond)
            out = self._unet(x2, ts2, c2, ctx2, a2, 0, hist + 1, m2, hist + 1)
            if self.official and guided:  # the official sampler guides (and rescales) the whole window
                return guide(out[:b], out[b:], self.cfg.guidance, self.cfg.guidance_rescale)[:, :, -1:]
            out = out[:, :, -1:]
        v = guide(out[:b], out[b:], self.cfg.guidance, self.cfg.guidance_rescale) if guided else out
        if self.cfg.history_guidance > 0 and hist > 0:
            v = self._history_guided(v, x_new, t, concat, ctx, acts, hist)
        return v

    def _history_guided(self, v, x_new, t, concat, ctx, acts, hist):
        """Guide against a pass that sees no history (the new frame alone): an anti-drift option."""
        b = x_new.shape[0]
        ts = torch.full((b, 1), t, dtype=torch.long, device=x_new.device)
        a_new = acts[:, hist : hist + 1] if acts is not None else None
        v_nohist = self._unet(x_new, ts, concat, ctx, a_new, hist, 1)
        return v + self.cfg.history_guidance * (v - v_nohist)

    def _rollout_full(self, context_latents, context_pixels, actions, horizon):
        """All new frames denoised jointly with the context frames held at t_h (baseline)."""
        cfg = self.cfg
        b, _, n_ctx, _, _ = context_latents.shape
        total = n_ctx + horizon
        if total > self.window:
            raise V2WError(f"--mode full needs context + horizon <= window ({n_ctx} + {horizon} > {self.window})")
        g = self._generators(b)
        hist = torch.cat([self.renoise(context_latents[:, :, i : i + 1], g) for i in range(n_ctx)], dim=2)
        concat, ctx = context_latents[:, :, :1], self.image_context(context_pixels[:, :, 0], total)
        x = randn((b, 4, horizon, *context_latents.shape[3:]), g).to(context_latents)
        acts = actions[:, :total] if actions is not None else None

        def predict(x_t, t):
            ts = torch.full((b, total), self.history_noise, dtype=torch.long, device=x_t.device)
            ts[:, n_ctx:] = t
            inp = torch.cat([hist, x_t], dim=2)
            if acts is None or cfg.guidance == 1.0:
                return self._unet(inp, ts, concat, ctx, acts, 0, total, window_len=total)[:, :, n_ctx:]
            mask = None
            if self.mask_null:  # every new frame's action embedding off
                uncond = acts
                mask = torch.ones(2 * b, total, device=acts.device)
                mask[b:, n_ctx:] = 0
            else:
                uncond = acts.clone()
                uncond[:, n_ctx:] = 0
            out = self._unet(torch.cat([inp, inp]), torch.cat([ts, ts]), torch.cat([concat, concat]),
                             torch.cat([ctx, ctx]), torch.cat([acts, uncond]), 0, total, mask, total)[:, :, n_ctx:]
            return guide(out[:b], out[b:], cfg.guidance, cfg.guidance_rescale)

        t0 = time.perf_counter()
        x = self.ddim.denoise(x, predict, g)
        self.timing += [(time.perf_counter() - t0) / horizon] * horizon
        return x


def window_start(n: int, window: int, slide: int = 1) -> int:
    """The first frame of the window that predicts frame n: the newest ``window`` frames with slide 1;
    with slide K > 1 the start moves K frames at a time (a multiple of K), so the window holds
    window - K + 1 .. window frames and the history cache is rebuilt once every K frames."""
    over = n - (window - 1)
    return 0 if over <= 0 else -(-over // slide) * slide


class RolloutStream:
    """One autoregressive rollout's state: every frame's clean latent, its fixed re-noised history
    input, its per-frame action input, the pixels known so far and the activation cache.
    ``step(action)`` predicts the next frame; the same calls in the same order draw the same noise,
    so a stream fed the actions of a file reproduces ``Roller.rollout`` of that file exactly."""

    def __init__(self, roller: Roller, context_latents, context_pixels, context_actions=None):
        self.roller = r = roller
        b, _, n_ctx = context_latents.shape[:3]
        self.g = r._generators(b)
        self.clean = [context_latents[:, :, i : i + 1] for i in range(n_ctx)]  # clean latents of every frame
        self.noised = [r.renoise(z, self.g) for z in self.clean]
        self.pixels = {i: context_pixels[:, :, i] for i in range(n_ctx)}  # frames whose pixels are known
        uses_actions = context_actions is not None
        self.actions = [context_actions[:, i] for i in range(n_ctx)] if uses_actions else None
        self.cache, self.cache_start, self.cached = ActivationCache(), None, 0
        self.hist_out: list[torch.Tensor] = []  # the cached history frames' outputs, both halves (vid2world guidance)
        # seconds in the cache's prefill passes, and in the part of them that rebuilt a slid window
        self.prefill_seconds = self.rebuild_seconds = 0.0
        self.window_ctx, self.window_ctx_u, self.ctx_start = None, None, None

    frames_per_step = 1  # video frames one prediction makes
    buffered = 0  # frames decoded ahead (none: one frame per prediction)

    @property
    def frames(self) -> int:
        return len(self.clean)

    @torch.no_grad()
    def next_frame(self, action: torch.Tensor | None = None) -> torch.Tensor:
        """The next frame decoded (B, 3, 1, H, W) (``v2w play``); its pixels are kept for when it starts the window."""
        pixels = self.roller.model.decode_latents(self.step(action))
        self.pixels[self.frames - 1] = pixels[:, :, 0]  # decoded once: the window start reuses it
        return pixels

    @torch.no_grad()
    def step(self, action: torch.Tensor | None = None) -> torch.Tensor:
        """The next frame's latent (B, 4, 1, h, w) given its action input (B, A) (a_{n-1} for frame n)."""
        r, cfg = self.roller, self.roller.cfg
        if (action is None) != (self.actions is None):
            raise V2WError("pass an action for every frame when the context had actions, and none otherwise")
        tokens = r.unet.config.image_tokens_per_frame
        # 1. the window: the new frame and up to window - 1 frames before it
        n = len(self.clean)  # index of the new frame
        start = window_start(n, r.window, cfg.slide)  # first frame in the window
        hist = n - start
        if start not in self.pixels:
            self.pixels[start] = r.model.decode_latents(self.clean[start])[:, :, 0]
        if self.ctx_start != start:  # CLIP + Resampler once per conditioning frame, not once per new frame
            self.window_ctx, self.ctx_start = r.image_context(self.pixels[start], r.window), start
            self.window_ctx_u = r.uncond_image_context(self.pixels[start], r.window, self.window_ctx)
        concat = self.clean[start]
        if r.official:  # the official context: all tokens, whatever the window's length
            ctx, ctx_u = self.window_ctx, self.window_ctx_u
        else:
            ctx = ctx_u = self.window_ctx[:, : TEXT_TOKENS + (hist + 1) * tokens]
        acts = None
        if self.actions is not None:
            self.actions.append(action)
            acts = torch.stack(self.actions[start : n + 1], dim=1)
        # 2. the cache: history frames that entered the window since it was built join it in the new
        # frame's first denoising pass (all of them when the window slid: a rebuild)
        joining = 0
        if cfg.cache:
            if self.cache_start != start:  # the window slid: every history activation changes
                self.cache.clear()
                self.cache_start, self.cached, self.hist_out = start, 0, []
            joining = hist - self.cached
        rebuilding = joining > 0 and self.cached == 0 and start > 0
        # 3. denoise the new frame from pure noise
        x = randn(self.clean[0].shape, self.g).to(self.clean[0])
        hist_noised = self.noised[start:n]
        cache = self.cache if cfg.cache else None

        def predict(x_t, t):
            nonlocal joining
            t0 = time.perf_counter()
            v = r._predict_new(x_t, t, hist_noised, concat, ctx, acts, cache, hist, ctx_u, self.hist_out, joining)
            if joining:  # the joining frames' share of this call (the benchmark's rebuild share)
                dt = (time.perf_counter() - t0) * joining / (joining + 1)
                self.prefill_seconds += dt
                self.rebuild_seconds += dt if rebuilding else 0.0
                self.cached, joining = hist, 0
            return v

        x = r.ddim.denoise(x, predict, self.g)
        # 4. it joins the history, re-noised once
        self.clean.append(x)
        self.noised.append(r.renoise(x, self.g))
        return x
