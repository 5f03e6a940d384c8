"""What every source reader produces: lightweight episode references and loaded episodes.

A reader module in ``pipelines/data/sources/`` exposes three functions:

``detect(path) -> bool``
    True when ``path`` (a file or folder given on the command line) looks like this format.
``list_episodes(path, options) -> list[EpisodeRef]``
    Cheap listing (no decoding). Refs are picklable, so workers can load them in parallel.
``load_episode(ref, options) -> Episode``
    Decode one episode: RGB uint8 frames and its actions. Raise ``V2WError(msg, path=...)``
    naming the file and the problem for anything unreadable or inconsistent.

Action convention (docs/design.md §7): row t is the action taken *after* frame t. A reader returns the
rows the source has (T or T-1 of them); ``prepare`` pads and validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTION_KINDS = ("delta", "absolute", "discrete")


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives. ``key`` selects it inside a multi-episode file (LeRobot).

    ``branch`` marks a counterfactual branch of another episode (``videos`` folders with a
    ``branches.json``, written by ``pipelines.data.sample --branches``): ``parent`` (that
    episode's id, in the same id space as ``episode_id``), ``start`` (the parent frame the branch
    clip starts at), ``shared_frames`` (C: frames equal to the parent's), ``clip_len``, ``label``,
    ``fps`` (of the recording) and ``file`` (the branches.json, named in errors). prepare keeps a
    branch in its parent's split and links its clip to the parent's clip at ``start``.
    """

    format: str  # reader name, e.g. "videos"
    path: str  # file or folder holding the episode (named in errors and in meta.json)
    episode_id: str  # unique within one source; prepare sanitises and prefixes it
    key: str | int | None = None  # extra address inside `path`, reader-specific
    branch: dict | None = field(default=None, compare=False)  # counterfactual branch info, see above


@dataclass
class Episode:
    """One decoded episode.

    frames:  (T, H, W, 3) uint8 RGB.
    actions: (T, A) or (T-1, A) numeric, or (T,) / (T-1,) integer ids of discrete actions.
    fps:     frames per second of the source, None when the source does not say.
    action_kind: how to aggregate when resampling fps: "delta" (summed), "absolute" (last
        value), "discrete" (last value; one-hot/multi-hot or ids); None = use ``--action-kind``.
    action_names: one name per action dimension when the source has them.
    """

    frames: np.ndarray
    actions: np.ndarray
    fps: float | None = None
    action_kind: str | None = None
    action_names: list[str] | None = None
    actions_path: str | None = None  # file the actions came from, when not ref.path (named in errors)
    extra_meta: dict = field(default_factory=dict)


@dataclass
class SourceOptions:
    """Reader options from the command line (only the fields a format uses matter to it)."""

    image_key: str | None = None  # npz: image array name (None = try the RT-1 style defaults)
    action_keys: tuple[str, ...] | None = None  # npz: action array name(s), concatenated in order
    camera: str | None = None  # lerobot: which video feature, e.g. "observation.images.top"
    src_fps: float | None = None  # override the source frame rate
