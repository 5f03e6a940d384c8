"""What makes a folder a v2w MODEL, whatever its family (docs/design.md §8): the ``kind`` and
``format_version`` in its config.json. Both families write this header and read through
:func:`read_model_config`, which turns a missing, corrupt or foreign config.json into one error."""

from __future__ import annotations

import os

from pipelines import __version__
from pipelines.fileio import read_artifact

MODEL_KIND = "v2w-model"
FORMAT_VERSION = 1


def model_header(family: str) -> dict:
    """The first keys of every MODEL's config.json."""
    return {"kind": MODEL_KIND, "format_version": FORMAT_VERSION, "v2w_version": __version__, "family": family}


def read_model_config(path: str | os.PathLike) -> dict:
    return read_artifact(path, "config.json", MODEL_KIND, FORMAT_VERSION, "`v2w causalize` or `v2w train`")
