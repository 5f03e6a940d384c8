"""Builders for small raw datasets in the source formats, shared by the tests.

The writers live in ``pipelines.data.synthetic`` (the recipes' ``--smoke`` data uses them too);
they are re-exported here for ``from conftest import write_npz``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.data.synthetic import episode_actions, episode_frames, write_npz, write_videos

__all__ = ["episode_actions", "episode_frames", "write_npz", "write_videos"]


@pytest.fixture
def videos_src(tmp_path) -> Path:
    return write_videos(tmp_path / "videos")


@pytest.fixture
def npz_src(tmp_path) -> Path:
    return write_npz(tmp_path / "npz")
