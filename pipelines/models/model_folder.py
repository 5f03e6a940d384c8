"""What makes a folder a v2w MODEL, whatever its family (docs/design.md §8): the ``kind`` and
``format_version`` in its config.json. Both families write this header and read through
:func:`read_model_config`, which turns a missing, corrupt or foreign config.json into one error."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines import __version__
from pipelines.errors import V2WError
from pipelines.fileio import atomic_dir, read_artifact, write_json_atomic
from pipelines.statedict import read_safetensors, to_float32

MODEL_KIND = "v2w-model"
FORMAT_VERSION = 1


def model_header(family: str) -> dict:
    """The first keys of every MODEL's config.json."""
    return {"kind": MODEL_KIND, "format_version": FORMAT_VERSION, "v2w_version": __version__, "family": family}


def read_model_config(path: str | os.PathLike) -> dict:
    return read_artifact(path, "config.json", MODEL_KIND, FORMAT_VERSION, "`v2w causalize` or `v2w train`")


def write_model_folder(path: str | os.PathLike, config: dict, parts: dict, tensors: dict | None = None,
                       half: bool = False) -> Path:
    """Write a MODEL atomically (a temp sibling folder renamed at the end): each module of ``parts`` as
    ``NAME.safetensors`` (None: skipped), each tensor of ``tensors`` in ``NAME.safetensors`` under its
    own name, then config.json. ``half``: module weights stored in float16 (:func:`read_part` upcasts)."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        for name, module in parts.items():
            if module is not None:
                sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
                if half:
                    sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
                save_file(sd, str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
        for name, tensor in (tensors or {}).items():
            save_file({name: tensor.detach().contiguous().cpu()}, str(tmp / f"{name}.safetensors"))
        write_json_atomic(tmp / "config.json", config)
    return Path(path)


def read_part(path: str | os.PathLike, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``MODEL/NAME.safetensors`` as float32 tensors on ``device`` (shipped models may be stored in fp16);
    a missing file is one error naming it."""
    file = Path(path) / f"{name}.safetensors"
    if not file.exists():
        raise V2WError(f"missing {file.name}; the model folder is incomplete", path=path)
    device = torch.device(device)
    return to_float32(read_safetensors(file, "cpu" if device.type == "cpu" else device))  # safetensors refuses "cpu:0"
