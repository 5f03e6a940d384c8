"""How video frames, latent frames and actions line up under a causal VAE that compresses time 4x
(Wan's): video frames 1 + 4k -> latent frames 1 + k. Latent frame 0 is video frame 0 alone; latent
frame j >= 1 covers video frames 4j-3 .. 4j. Pure functions, no model import (docs/design.md §12)."""

from __future__ import annotations

import torch

from pipelines.errors import V2WError

TEMPORAL_COMPRESSION = 4


def video_to_latent_frames(video_frames: int) -> int:
    """1 + 4k video frames -> 1 + k latent frames (anything else is an error naming the rule)."""
    if video_frames < 1 or (video_frames - 1) % TEMPORAL_COMPRESSION:
        raise V2WError(f"Wan models take 1 + {TEMPORAL_COMPRESSION}k video frames (1, 5, 9, ...). Got {video_frames}")
    return 1 + (video_frames - 1) // TEMPORAL_COMPRESSION


def group_actions(frame_inputs: torch.Tensor) -> torch.Tensor:
    """Per-video-frame action inputs (B, 1 + 4k, A) (frame t's row is a_{t-1}, frame 0's is zeros) ->
    per-latent-frame inputs (B, 1 + k, 4A): latent frame j >= 1 concatenates the rows of video frames
    4j-3 .. 4j in order (a sum would lose which step did what); latent frame 0 gets zeros."""
    b, t, a = frame_inputs.shape
    k = video_to_latent_frames(t) - 1
    rest = frame_inputs[:, 1:].reshape(b, k, TEMPORAL_COMPRESSION * a)
    return torch.cat([rest.new_zeros(b, 1, TEMPORAL_COMPRESSION * a), rest], dim=1)
