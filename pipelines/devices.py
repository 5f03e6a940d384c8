"""The one device rule of every command (``--device auto|cpu|cuda[:N]``): ``auto`` is the GPU when
torch sees one, else the CPU; asking for a GPU that is not there is a one-line error, never a
late CUDA traceback. And the one precision rule (``--precision fp32|bf16|fp16``): autocast of the
forward passes around fp32 weights."""

from __future__ import annotations

import contextlib
import re

import torch

from pipelines.errors import V2WError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(flag: str | torch.device | None = "auto") -> torch.device:
    """``--device`` -> a torch.device (None means auto)."""
    if isinstance(flag, torch.device):
        flag = str(flag)
    name = (flag or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise V2WError(f"--device must be one of {{{DEVICE_CHOICES}}}. Got {flag!r}")
    if not torch.cuda.is_available():
        raise V2WError(f"--device {flag}: torch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu or auto")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise V2WError(f"--device {flag}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0 .. "
                       f"cuda:{torch.cuda.device_count() - 1}); check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


PRECISIONS = ("fp32", "bf16", "fp16")  # --precision of train, pretrain, rollout and play


def check_precision(flag: str) -> str:
    if flag not in PRECISIONS:
        raise V2WError(f"--precision must be one of {{{', '.join(PRECISIONS)}}}. Got {flag!r}")
    return flag


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The forward passes' mixed precision (weights stay as they are; fp32 = no autocast). The
    sampler's DDIM arithmetic runs outside it, in fp32."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
