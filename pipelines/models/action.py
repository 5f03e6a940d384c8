"""Frame-level action conditioning: the action encoder and the ways its output enters the U-Net.

Injection modes (``UNetConfig.action_injection``, chosen at causalize time):

* ``time``: the embedding is added to each frame's time embedding (Vid2World's pathway). It
  reaches each ResBlock only as a per-channel bias and never reaches attention.
* ``scale-shift``: each ResBlock maps the embedding to a per-channel scale and shift applied
  after its second GroupNorm (AdaGN, as DIAMOND conditions on actions): a multiplicative lever
  at every resolution. The time embedding is left to the noise level.
* ``tokens``: the embedding becomes ``action_tokens`` tokens in each frame's spatial
  cross-attention, attended by their own key/value projections and added to the text and image
  attentions (GameNGen feeds actions as cross-attention tokens): attention can route the action
  to where it matters in the frame.
* ``vid2world``: the official Vid2World checkpoints' pathway (docs/design.md §14): added to the
  time embedding as ``time``, but a discrete (multi-hot) action first goes through an embedding
  into ``model_channels`` and then an MLP (CS:GO's ``action_emb_preprocess`` + ``action_emb_proj``),
  and the "no action" of dropout and guidance is a zero *embedding* (the official ``action_mask``),
  not a zero input: the MLP's biases make those differ.

Every mode is zero at initialisation (the encoder's last layer is zero; the new projections
multiply its output), so a causalized model starts exactly as its base, and all are per frame,
so causality and the rollout cache are untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipelines.errors import V2WError

ACTION_TYPES = ("continuous", "discrete")
ACTION_INJECTIONS = ("time", "scale-shift", "tokens", "vid2world")


def is_action_parameter(name: str) -> bool:
    """Parameters (U-Net state-dict keys) of the layers that carry actions: the encoder and each
    injection mode's projections. No base model has them; ``causalize`` adds them."""
    return name.startswith("action_encoder.") or any(f".{n}." in name for n in ("action_mod", "to_k_action", "to_v_action"))


def shift_actions(actions: torch.Tensor) -> torch.Tensor:
    """(B, T, A) actions taken after each frame -> per-frame inputs: frame t is conditioned on
    a_{t-1}, the action that led to it; frame 0 gets zeros (training and rollout alike)."""
    return torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)


class ActionEncoder(nn.Module):
    """actions -> (B, T, time_embed_dim).

    continuous: MLP A -> 320 -> 1280 -> 1280 with SiLU between (for the 512 U-Net; in general
        A -> model_channels -> 4*model_channels -> 4*model_channels).
    discrete: an embedding matrix; (B, T) integer ids index it, (B, T, K) one-/multi-hot vectors
        sum its rows (``prepare`` stores ids one-hot, so both work).

    ``embed_then_mlp`` (the ``vid2world`` layout, discrete only): the embedding maps into
    ``hidden_dim`` and an MLP hidden -> embed -> embed (SiLU between) follows, as the official
    CS:GO model's ``action_emb_preprocess`` (an nn.Embedding used as ``a @ weight``) and
    ``action_emb_proj``.

    Initialisation: the last layer (or the embedding matrix) is zero, so a freshly added encoder
    contributes nothing and the causalized model starts as the base model; gradients still reach
    the zero layer, so it learns from the first step. ``init_std`` > 0 draws that layer from
    N(0, init_std^2) instead (a small head start: Adam moves a zero layer by ~lr per step).
    """

    def __init__(
        self, action_dim: int, embed_dim: int, hidden_dim: int = 320, action_type: str = "continuous", init_std: float = 0.0,
        embed_then_mlp: bool = False,
    ):
        super().__init__()
        if action_type not in ACTION_TYPES:
            raise V2WError(f"action_type must be one of {{{', '.join(ACTION_TYPES)}}}. Got {action_type!r}")
        self.action_dim, self.action_type = action_dim, action_type
        self.embed_then_mlp = embed_then_mlp and action_type == "discrete"
        if self.embed_then_mlp:
            self.embedding = nn.Parameter(torch.randn(action_dim, hidden_dim))  # nn.Embedding's N(0, 1), as the official
            self.mlp = nn.Sequential(nn.Linear(hidden_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
            nn.init.normal_(self.mlp[-1].weight, std=init_std) if init_std else nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        elif action_type == "continuous":
            self.mlp = nn.Sequential(
                nn.Linear(action_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embed_dim), nn.SiLU(),
                nn.Linear(embed_dim, embed_dim),
            )
            nn.init.normal_(self.mlp[-1].weight, std=init_std) if init_std else nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            w = torch.randn(action_dim, embed_dim) * init_std if init_std else torch.zeros(action_dim, embed_dim)
            self.embedding = nn.Parameter(w)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        if self.action_type == "continuous":
            if actions.shape[-1] != self.action_dim or actions.ndim != 3:
                raise V2WError(f"actions must be (B, T, {self.action_dim}). Got {tuple(actions.shape)}")
            return self.mlp(actions.to(self.mlp[0].weight.dtype))
        if actions.ndim == 2 and not actions.is_floating_point():
            if actions.numel() and (actions.min() < 0 or actions.max() >= self.action_dim):
                raise V2WError(f"action ids must be in [0, {self.action_dim}). Got {actions.min()}..{actions.max()}")
            emb = self.embedding[actions]
        elif actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            raise V2WError(f"discrete actions must be (B, T) ids or (B, T, {self.action_dim}) one-hot. Got {tuple(actions.shape)}")
        else:
            emb = actions.to(self.embedding.dtype) @ self.embedding
        return self.mlp(emb) if self.embed_then_mlp else emb
