"""Frame-level action conditioning (Vid2World): an embedding added to each frame's time embedding."""

from __future__ import annotations

import torch
import torch.nn as nn

from pipelines.errors import V2WError

ACTION_TYPES = ("continuous", "discrete")


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

    Initialisation: the last layer (or the embedding matrix) is zero, so a freshly added encoder
    contributes nothing and the causalized model starts as the base model; gradients still reach
    the zero layer, so it learns from the first step.
    """

    def __init__(self, action_dim: int, embed_dim: int, hidden_dim: int = 320, action_type: str = "continuous"):
        super().__init__()
        if action_type not in ACTION_TYPES:
            raise V2WError(f"action_type must be one of {{{', '.join(ACTION_TYPES)}}}. Got {action_type!r}")
        self.action_dim, self.action_type = action_dim, action_type
        if action_type == "continuous":
            self.mlp = nn.Sequential(
                nn.Linear(action_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embed_dim), nn.SiLU(),
                nn.Linear(embed_dim, embed_dim),
            )
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            self.embedding = nn.Parameter(torch.zeros(action_dim, embed_dim))

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        if self.action_type == "continuous":
            if actions.shape[-1] != self.action_dim or actions.ndim != 3:
                raise V2WError(f"actions must be (B, T, {self.action_dim}). Got {tuple(actions.shape)}")
            return self.mlp(actions.to(self.mlp[0].weight.dtype))
        if actions.ndim == 2 and not actions.is_floating_point():
            if actions.numel() and (actions.min() < 0 or actions.max() >= self.action_dim):
                raise V2WError(f"action ids must be in [0, {self.action_dim}). Got {actions.min()}..{actions.max()}")
            return self.embedding[actions]
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            raise V2WError(f"discrete actions must be (B, T) ids or (B, T, {self.action_dim}) one-hot. Got {tuple(actions.shape)}")
        return actions.to(self.embedding.dtype) @ self.embedding
