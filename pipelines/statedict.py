"""Strict state-dict loading with one readable error, shared by models and metric networks."""

from __future__ import annotations

import torch

from pipelines.errors import V2WError


def load_strict(
    module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, source: str, against: str = "the model", hint: str = ""
) -> None:
    """Load ``sd`` into ``module`` with zero missing, unexpected or re-shaped keys; otherwise raise
    one V2WError listing the first offending keys of each kind (and ``hint``, the likely fix).
    A module built under ``torch.device("meta")`` adopts the tensors instead of copying them."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
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
    module.load_state_dict(sd, strict=True, assign=meta)


def to_float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Half-precision tensors (a checkpoint stored in fp16/bf16 to be small) -> float32; others as is."""
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in sd.items()}
