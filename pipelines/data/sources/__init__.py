"""Source readers, one module per raw format, and format auto-detection.

Each module follows the interface in ``pipelines/data/episode.py``. Detection tries the most
specific layouts first (a LeRobot folder also contains mp4 files, a RECON folder also images).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from pipelines.errors import V2WError

# name -> module, in detection order (most specific first)
FORMATS = {
    "lerobot": "pipelines.data.sources.lerobot",
    "recon": "pipelines.data.sources.recon",
    "hdf5": "pipelines.data.sources.csgo_hdf5",
    "npz": "pipelines.data.sources.npz",
    "videos": "pipelines.data.sources.videos",
}


def reader(name: str) -> ModuleType:
    if name not in FORMATS:
        raise V2WError(f"--format must be one of {{{', '.join(FORMATS)}}}. Got {name!r}")
    return importlib.import_module(FORMATS[name])


def detect_format(path: Path) -> str:
    """Name of the first format whose ``detect`` accepts ``path``."""
    if not path.exists():
        raise V2WError("source not found", path=path)
    for name in FORMATS:
        if reader(name).detect(path):
            return name
    reader("videos").check_actions_files(path)  # videos, but none with its actions: name the first
    raise V2WError(
        "no known dataset layout found (videos with same-named .npy actions, .npz episodes, "
        "DIAMOND-style .hdf5, RECON trajectory folders, LeRobot v3 folder); pass --format to force one",
        path=path,
    )
