"""Exact activation cache for autoregressive rollout of a causal, per-frame-normalised U-Net.

In such a model a frame's activations depend only on itself and earlier frames, so once a history
frame's input is fixed (it is re-noised once, when it joins the history) its activations never
change. What later frames need from it, per layer:

* each temporal self-attention (``attn1`` and ``attn2`` of every TemporalTransformer, incl.
  ``init_attn``): its keys and values;
* each causal temporal conv: its last k-1 input frames.

``with activation_cache(unet, cache, "append")``: a forward over new frames (T >= 1) reads the
cache as the past and appends the new frames' keys/values/conv inputs (prefill, or a frame
joining the history). ``"read"``: the same, but the cache is left unchanged (the denoising steps
of the newest frame). ``keep=k`` in append mode: only the first k new frames join the cache and the
rest are read through, so history frames can join in the newest frame's first denoising pass (one
network call instead of two; exact, since a causal frame never sees the frames after it). Everything else in the U-Net works per frame and needs no cache. A model
with a ``cached_layers()`` method (the Wan family: every block's self-attention, whose tokens sit
on dim 1 like the temporal attention's frames) names its layers itself.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
import torch.nn as nn

from pipelines.errors import V2WError
from pipelines.models.attention import CrossAttention, TemporalTransformer
from pipelines.models.causal import CausalTemporalConv3d


class ActivationCache:
    """Per-layer tensors keyed by module; ``frames`` counts the frames cached so far."""

    def __init__(self):
        self.store: dict[int, object] = {}
        self.frames = 0

    def clear(self) -> None:
        self.store.clear()
        self.frames = 0


class LayerCache:
    """The cache as one layer sees it inside an ``activation_cache`` block (``layer.activation_cache``)."""

    def __init__(self, cache: ActivationCache, mode: str, keep: int | None = None):
        self.cache, self.mode, self.keep = cache, mode, keep

    def keys_values(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Prepend the cached past to (k, v) of shape (N, T_new, D); append when in append mode.
        Returns (k_all, v_all, number of past frames)."""
        past = self.cache.store.get(id(module))
        n_past = 0 if past is None else past[0].shape[1]
        if past is not None:
            if past[0].shape[0] != k.shape[0]:
                raise V2WError(f"cached batch {past[0].shape[0]} != new batch {k.shape[0]}; rebuild the cache")
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        if self.mode == "append":
            end = None if self.keep is None else n_past + self.keep
            self.cache.store[id(module)] = (k[:, :end], v[:, :end])
        return k, v, n_past

    def conv_input(self, module: nn.Module, x: torch.Tensor, context_frames: int) -> torch.Tensor:
        """Prepend up to ``context_frames`` cached input frames to x (B, C, T, H, W), zero-padding
        when fewer exist (the causal conv's left padding); append when in append mode."""
        past = self.cache.store.get(id(module))
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], 0, *x.shape[3:])
        full = torch.cat([past, x], dim=2)
        if self.mode == "append":
            kept = full if self.keep is None else full[:, :, : past.shape[2] + self.keep]
            self.cache.store[id(module)] = kept[:, :, -context_frames:].detach() if context_frames else kept[:, :, :0]
        missing = context_frames - past.shape[2]
        if missing > 0:
            full = torch.nn.functional.pad(full, (0, 0, 0, 0, missing, 0))
        else:
            full = full[:, :, past.shape[2] - context_frames :]
        return full


_CACHED_LAYERS: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()  # per U-Net, found once


@contextlib.contextmanager
def activation_cache(unet: nn.Module, cache: ActivationCache, mode: str, keep: int | None = None) -> Iterator[ActivationCache]:
    """Attach ``cache`` to every temporal layer of ``unet`` for the forwards inside the block
    (``keep``: append only the first ``keep`` new entries along the cached dim, frames for the U-Net)."""
    if mode not in ("append", "read"):
        raise ValueError(f"mode must be 'append' or 'read'. Got {mode!r}")
    config = getattr(unet, "config", None)
    if config is not None and (not config.causal or not config.per_frame_norm):
        raise V2WError(
            "the activation cache needs a causal model with per-frame temporal norms (causalize with "
            "--norm per-frame); with pooled norms a new frame changes every history frame's activations"
        )
    layers = _CACHED_LAYERS.get(unet)
    if layers is None and hasattr(unet, "cached_layers"):  # a model that lists its own (the Wan family)
        layers = _CACHED_LAYERS[unet] = list(unet.cached_layers())
    if layers is None:  # found once per model: this runs at every denoising step
        layers = []
        for m in unet.modules():
            if isinstance(m, CausalTemporalConv3d):
                layers.append(m)
            elif isinstance(m, TemporalTransformer):
                layers += [mod for mod in m.modules() if isinstance(mod, CrossAttention)]
        _CACHED_LAYERS[unet] = layers
    bound = LayerCache(cache, mode, keep)
    for m in layers:
        m.activation_cache = bound
    try:
        yield cache
    finally:
        for m in layers:
            m.activation_cache = None
