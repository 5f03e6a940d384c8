"""Causality probes for video networks (docs/design.md §3, "Check"): perturb the future, watch the past.

* ``causality_probe(fn, x, k)``: ``fn`` maps a video x (B, C, T, H, W) to an output with the same
  frames on the same axis. Frames >= k of x get Gaussian noise; ``max_leak`` is the largest
  absolute change of the output at frames < k. A causal network gives 0 (float tolerance).
* ``module_leaks`` / ``per_module_leaks``: the same experiment, but forward hooks record the
  outputs of chosen modules inside ``model`` while ``fn`` runs, so a leak can be traced to the
  layer that first lets the future in.

Frame axis of a hooked output. Video networks carry frames in one of a few layouts, and a hook
only sees a tensor, so each type name gets a *frame-axis spec* (``frame_axes[name]``):

* an int ``a``: frames are on axis ``a`` (e.g. 2 for (B, C, T, H, W); 1 for the (B*H*W, T, C)
  tokens inside a temporal attention);
* ``"bt"``: axis 0 is batch and frames flattened batch-major, (B*T, ...), frame = row % T
  (diffusers' UNet3D and DynamiCrafter's spatial layers);
* ``"auto"`` (the default): 5-D with size T on axis 2 -> 2; otherwise leading size B*T -> "bt";
  anything else is an error asking for an explicit spec. "auto" is meant for video-level
  feature maps (block outputs); give token-level tensors an explicit int, since e.g. B*H*W can
  equal B*T by coincidence.

B and T are read from the probe input x (``x.shape[0]``, ``x.shape[dim]``). A hooked output that
is a tuple/list (or has a ``.sample``) is reduced to its first tensor. A module called several
times in one forward is compared call by call. Put the model in ``eval()`` first: dropout or any
other randomness shows up as a leak (loudly, not silently).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FrameAxis = int | str
# a module type, a tuple of types, or a predicate (name, module) -> bool
ModuleSelector = type | tuple[type, ...] | Callable[[str, nn.Module], bool]


def perturb_future(x: torch.Tensor, k: int, dim: int = 2, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A copy of x whose frames >= k (along ``dim``) get N(0, scale^2) noise added."""
    t = x.shape[dim]
    if not 1 <= k < t:
        raise ValueError(f"k must be in [1, {t - 1}] for {t} frames. Got {k}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = [slice(None)] * x.ndim
    idx[dim] = slice(k, None)
    noise = torch.randn(x[tuple(idx)].shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
    out = x.clone()
    out[tuple(idx)] += scale * noise
    return out


def _past(y: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    return y.narrow(axis, 0, k)


def _future(y: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    return y.narrow(axis, k, y.shape[axis] - k)


@torch.no_grad()
def causality_probe(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    dim: int = 2,
    scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """Perturb frames >= k of x and measure how much fn's output changes at frames < k.

    Returns {"max_leak": float, "k": k, "future_change": float}; ``future_change`` (largest change
    at frames >= k) shows that the perturbation reached the output at all, i.e. the probe was not
    vacuous.
    """
    y0 = fn(x)
    y1 = fn(perturb_future(x, k, dim, scale, seed))
    return _whole_leak(y0, y1, x, k, dim)


def _whole_leak(y0: torch.Tensor, y1: torch.Tensor, x: torch.Tensor, k: int, dim: int) -> dict:
    if y0.shape[dim] != x.shape[dim]:
        raise ValueError(
            f"fn must keep the frame axis {dim}: input has {x.shape[dim]} frames, output shape {tuple(y0.shape)}"
        )
    diff = (y1.float() - y0.float()).abs()
    return {"max_leak": _past(diff, k, dim).max().item(), "k": k, "future_change": _future(diff, k, dim).max().item()}


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    sample = getattr(out, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def _leak(y0: torch.Tensor, y1: torch.Tensor, k: int, spec: FrameAxis, b: int, t: int, where: str) -> float:
    if y0.shape != y1.shape:
        raise ValueError(f"{where}: output shape changed between the two runs ({tuple(y0.shape)} vs {tuple(y1.shape)})")
    if spec == "auto":
        if y0.ndim == 5 and y0.shape[2] == t:
            spec = 2
        elif y0.shape[0] == b * t:
            spec = "bt"
        else:
            raise ValueError(
                f"{where}: cannot tell the frame axis of an output of shape {tuple(y0.shape)} (B={b}, T={t}). "
                "Give frame_axes[name] = an axis index or 'bt'."
            )
    diff = (y1.float() - y0.float()).abs()
    if spec == "bt":
        if y0.shape[0] != b * t:
            raise ValueError(f"{where}: 'bt' layout needs a leading size B*T = {b * t}. Got {tuple(y0.shape)}")
        diff = diff.reshape(b, t, *diff.shape[1:])
        axis = 1
    elif isinstance(spec, int):
        axis = spec % diff.ndim
        if diff.shape[axis] != t:
            raise ValueError(f"{where}: axis {spec} of {tuple(y0.shape)} does not have T = {t} frames")
    else:
        raise ValueError(f"{where}: frame axis spec must be an int, 'bt' or 'auto'. Got {spec!r}")
    return _past(diff, k, axis).max().item()


def _matches(sel: ModuleSelector, name: str, module: nn.Module) -> bool:
    return isinstance(module, sel) if isinstance(sel, (type, tuple)) else bool(sel(name, module))


def _describe(sel: ModuleSelector) -> str:
    if isinstance(sel, type):
        return sel.__name__
    if isinstance(sel, tuple):
        return ", ".join(c.__name__ for c in sel)
    return getattr(sel, "__name__", "predicate")


@torch.no_grad()
def module_leaks(
    model: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    module_types: dict[str, ModuleSelector],
    dim: int = 2,
    frame_axes: dict[str, FrameAxis] | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, dict]:
    """Leak at frames < k of every module of ``model`` selected by ``module_types``.

    ``module_types`` maps a type name to a type, a tuple of types, or a predicate
    ``(module name, module) -> bool`` (e.g. only the attentions inside temporal transformers).

    ``fn`` runs ``model`` (e.g. ``lambda v: model(v, t, ctx)``). Returns
    {module name: {"type": type name, "max_leak": float}} (max over the module's calls). A type
    name matching no module, or a matching module never called, is an error: a silent empty
    probe would look causal.
    """
    return _probe(model, fn, x, k, module_types, dim, frame_axes, scale, seed)[0]


def _probe(
    model: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    module_types: dict[str, ModuleSelector],
    dim: int = 2,
    frame_axes: dict[str, FrameAxis] | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[dict[str, dict], torch.Tensor, torch.Tensor]:
    """module_leaks' work; also returns fn's clean and perturbed outputs (one pair of runs)."""
    frame_axes = frame_axes or {}
    b, t = x.shape[0], x.shape[dim]
    targets: dict[str, tuple[str, nn.Module]] = {}
    for type_name, types in module_types.items():
        found = [(n, m) for n, m in model.named_modules() if _matches(types, n, m)]
        if not found:
            raise ValueError(f"no module of type {type_name!r} ({_describe(types)}) in the model")
        for n, m in found:
            targets.setdefault(n, (type_name, m))  # first type name listed wins for a module
        if not any(tn == type_name for tn, _ in targets.values()):
            raise ValueError(f"every module of type {type_name!r} is already probed under an earlier type name")

    records: dict[str, list[torch.Tensor]] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            y = _first_tensor(output)
            if y is not None:
                records.setdefault(name, []).append(y.detach().clone())

        return hook

    try:
        for name, (_, m) in targets.items():
            handles.append(m.register_forward_hook(hook_for(name)))
        y0 = fn(x)
        clean, records = records, {}
        y1 = fn(perturb_future(x, k, dim, scale, seed))
        pert = records
    finally:
        for h in handles:
            h.remove()

    result = {}
    for name, (type_name, _) in targets.items():
        c, p = clean.get(name, []), pert.get(name, [])
        if not c:
            raise ValueError(f"module {name!r} ({type_name}) was never called with a tensor output by fn")
        if len(c) != len(p):
            raise ValueError(
                f"module {name!r} was called {len(c)} times in the clean run but {len(p)} in the perturbed one"
            )
        spec = frame_axes.get(type_name, "auto")
        leak = max(_leak(a, b_, k, spec, b, t, f"{name} ({type_name})") for a, b_ in zip(c, p))
        result[name] = {"type": type_name, "max_leak": leak}
    return result, y0, y1


def per_module_leaks(
    model: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    module_types: dict[str, ModuleSelector],
    dim: int = 2,
    frame_axes: dict[str, FrameAxis] | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """{type name: max leak at frames < k over all modules of that type}; see ``module_leaks``."""
    per = module_leaks(model, fn, x, k, module_types, dim=dim, frame_axes=frame_axes, scale=scale, seed=seed)
    return _by_type(per, module_types)


def _by_type(per: dict[str, dict], module_types: dict) -> dict[str, float]:
    out = {name: 0.0 for name in module_types}
    for r in per.values():
        out[r["type"]] = max(out[r["type"]], r["max_leak"])
    return out


@torch.no_grad()
def layered_causality_probe(
    model: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    module_types: dict[str, ModuleSelector],
    dim: int = 2,
    frame_axes: dict[str, FrameAxis] | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """``causality_probe`` and ``per_module_leaks`` from one clean + one perturbed run:
    {"max_leak", "k", "future_change", "per_type": {type name: leak}}."""
    per, y0, y1 = _probe(model, fn, x, k, module_types, dim, frame_axes, scale, seed)
    return {**_whole_leak(y0, y1, x, k, dim), "per_type": _by_type(per, module_types)}
