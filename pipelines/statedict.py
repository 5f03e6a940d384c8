"""Strict state-dict loading with one readable error, and the tensor-file readers (safetensors,
torch.load) that turn a truncated or corrupt file into one; shared by models and metric networks."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from pipelines.errors import V2WError
from pipelines.fileio import read_checked


def load_strict(
    module: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    what: str,
    source: str | os.PathLike | None = None,
    against: str = "the model",
    hint: str = "",
    *,
    prefix: str = "",
    unused: Iterable[str] = (),
    origin: Mapping[str, str] | None = None,
) -> None:
    """Load ``sd`` into ``module`` with zero missing, unexpected or re-shaped keys; otherwise raise
    one V2WError naming ``source`` (the file, when there is one) and listing the first offending
    keys of each kind (and ``hint``, the likely fix).
    A module built under ``torch.device("meta")`` adopts the tensors instead of copying them.

    For a checkpoint whose keys were cut or converted on the way, the listing shows the
    checkpoint's own names: ``prefix`` (stripped before the call) is put back, ``unused`` are
    further checkpoint keys (prefix stripped) that found no place in ``sd``, and ``origin`` maps a
    converted key of ``sd`` to the checkpoint key it came from."""
    own = module.state_dict()

    def name(k: str) -> str:
        if origin is None:
            return prefix + k
        return f"{prefix}{origin[k]} (-> {k})" if k in origin and origin[k] != k else prefix + origin.get(k, k)

    # a missing key is named as the checkpoint would have it when ``origin`` knows (it may map every key)
    missing = [(name(k) if k in origin else k) if origin is not None else prefix + k for k in own if k not in sd]
    unexpected = [prefix + k for k in unused] + [name(k) for k in sd if k not in own]
    shapes = [
        f"{name(k)} is {tuple(sd[k].shape)}, {against} needs {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:2])})")
        raise V2WError(f"{what} keys do not match {against}: {'; '.join(parts)}" + (f". {hint}" if hint else ""), path=source)
    meta = bool(own) and next(iter(own.values())).device.type == "meta"
    module.load_state_dict(dict(sd), strict=True, assign=meta)


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file, on ``device``. A missing, truncated or corrupt file
    (e.g. a half-copied download) is one V2WError naming it, not safetensors' traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = torch.device(device)
    device = "cpu" if device.type == "cpu" else str(device)  # safetensors refuses "cpu:0"
    return read_checked(path, lambda p: load_file(str(p), device=device), "safetensors file", (SafetensorError,))


def read_torch(path: str | os.PathLike, unsafe_pickle: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` of a ``.pt``/``.ckpt`` onto the CPU, tensors and plain containers only
    (``weights_only``) unless ``unsafe_pickle``; ``mmap`` falls back to a plain read for the legacy
    (non-zip) format. A missing, truncated or corrupt file is one V2WError naming it; a file that
    pickles more than tensors says so and names --unsafe-pickle."""

    def load(p: Path) -> Any:
        try:
            return torch.load(p, map_location="cpu", weights_only=not unsafe_pickle, mmap=mmap)
        except RuntimeError as e:
            if mmap and "mmap can only be used" in str(e):  # legacy format (or not a zip at all)
                return torch.load(p, map_location="cpu", weights_only=not unsafe_pickle)
            raise
        except pickle.UnpicklingError as e:
            if "weights_only" in str(e) or "Unsupported global" in str(e):
                raise V2WError(
                    "the file pickles more than tensors, and v2w does not unpickle untrusted code; "
                    "if you trust the file, pass --unsafe-pickle",
                    path=p,
                ) from None
            raise

    errors = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, UnicodeDecodeError)
    return read_checked(path, load, "checkpoint", errors)


def to_float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Half-precision tensors (a checkpoint stored in fp16/bf16 to be small) -> float32; others as is."""
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in sd.items()}
