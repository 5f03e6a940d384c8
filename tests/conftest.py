"""Builders for small raw datasets in the source formats, and fixtures shared by the tests.

The writers live in ``pipelines.data.synthetic`` (the recipes' ``--smoke`` data uses them too);
they are re-exported here for ``from conftest import write_npz``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.data.synthetic import episode_actions, episode_frames, write_npz, write_videos
from pipelines.models.world_model import load_model

__all__ = ["episode_actions", "episode_frames", "write_npz", "write_videos"]


@pytest.fixture
def videos_src(tmp_path) -> Path:
    return write_videos(tmp_path / "videos")


@pytest.fixture
def npz_src(tmp_path) -> Path:
    return write_npz(tmp_path / "npz")


@pytest.fixture(scope="session")
def rollout_env(tmp_path_factory):
    """MODELs from tiny-random (actions made to matter; a pooled-norm one) and a small Atari DATA."""
    root = tmp_path_factory.mktemp("rollout")
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "fresh"), action_dim=4, action_type="discrete"))
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "pooled"), action_dim=4, action_type="discrete", norm="pooled"))
    model = load_model(root / "fresh")
    torch.manual_seed(0)
    model.unet.action_encoder.embedding.data.normal_(0, 5.0)  # make actions matter
    model.save_pretrained(root / "model")
    make_atari_episodes(root / "raw", episodes=4, frames=24, seed=2)
    prepare_run(PrepareConfig(sources=[str(root / "raw")], out=str(root / "data"), size=(32, 32), resize="stretch",
                              clip_len=6, stride=6, num_actions=4, val_fraction=0.5, store="npy"))
    return root
