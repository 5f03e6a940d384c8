"""Causalization as explicit weight surgery (docs/design.md §3): bidirectional VideoUNet -> causal VideoUNet.

``causalize(unet, transfer, norm, action_dim)`` builds the causal architecture from the same
config (causal temporal convs, lower-triangular temporal attention, per-frame or pooled temporal
GroupNorms, optional ActionEncoder), then fills it key by key from the base:

* matched:     copied unchanged (everything spatial, attention weights, norms, embeddings)
* transformed: temporal conv kernels mapped by ``transfer_temporal_kernel`` (shift / masked /
               extrapolative of ``order``)
* new:         action encoder (last layer zero: the model starts as the base) and, per
               ``action_injection``, the ResBlocks' ``action_mod`` (scale-shift) or the
               cross-attentions' ``to_k_action/to_v_action`` (tokens); every new key has
               "action" in its name
* dropped:     none for a DynamiCrafter base (an unexpected key is an error)

Per-frame noise levels need no new weights: the time-embedding MLP is applied per frame.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pipelines.errors import V2WError
from pipelines.models.action import ActionEncoder, is_action_parameter
from pipelines.models.attention import TEXT_TOKENS, SpatialTransformer
from pipelines.models.causal import TRANSFERS, CausalTemporalConv3d, FrameGroupNorm, transfer_temporal_kernel
from pipelines.models.probe import layered_causality_probe
from pipelines.models.unet import ResBlock, TemporalConvBlock, TemporalTransformer, VideoUNet


def causalize(
    unet: VideoUNet,
    transfer: str = "extrapolative",
    norm: str = "per-frame",
    action_dim: int = 0,
    action_type: str = "continuous",
    order: int = 1,
    return_report: bool = False,
    share_weights: bool = False,
    action_injection: str = "time",
    action_tokens: int = 4,
    action_init_std: float = 0.0,
):
    """A new causal VideoUNet carrying ``unet``'s weights.

    ``unet`` is left as it was; with ``share_weights`` the unchanged tensors are shared with it
    instead of copied (half the memory for a 1.4B model whose base is discarded afterwards).
    ``action_injection``/``action_tokens``: how actions enter (pipelines/models/action.py);
    ``action_init_std``: the action encoder's last layer ~ N(0, std^2) instead of zero.
    """
    if transfer not in TRANSFERS:
        raise V2WError(f"--transfer must be one of {{{', '.join(TRANSFERS)}}}. Got {transfer!r}")
    if unet.config.causal:
        raise V2WError("the model is causal already; causalize a bidirectional base")
    cfg = replace(
        unet.config, causal=True, temporal_norm=norm, action_dim=action_dim, action_type=action_type,
        action_injection=action_injection, action_tokens=action_tokens,
    )
    device = next(unet.parameters()).device
    with torch.device("meta"):
        causal = VideoUNet(cfg)
    if action_dim:  # new layers get their real initialisation (zero last layer)

        causal.action_encoder = ActionEncoder(
            action_dim, causal.action_embed_dim, cfg.model_channels, action_type, init_std=action_init_std,
            embed_then_mlp=action_injection == "vid2world",
        ).to(device)
        g = torch.Generator().manual_seed(0)  # the injection's projections: seeded, like every fresh layer here
        slots = [(m, a) for m in causal.modules() for a in ("action_mod", "to_k_action", "to_v_action") if hasattr(m, a)]
        for module, attr in slots:
            setattr(module, attr, _materialized(getattr(module, attr), g, device))

    base_sd = unet.state_dict()
    temporal_conv_keys = {
        f"{name}.weight" for name, m in causal.named_modules() if isinstance(m, CausalTemporalConv3d)
    }
    new_sd, report = {}, {"matched": 0, "transformed": [], "new": [], "dropped": []}
    for key, target in causal.state_dict().items():
        if is_action_parameter(key):
            report["new"].append(key)
            continue
        if key not in base_sd:
            raise V2WError(f"base model has no key {key!r} for the causal model")
        if key in temporal_conv_keys:
            new_sd[key] = transfer_temporal_kernel(base_sd[key], transfer, order)
            report["transformed"].append(key)
        else:
            new_sd[key] = base_sd[key] if share_weights else base_sd[key].clone()
            report["matched"] += 1
    report["dropped"] = sorted(set(base_sd) - set(causal.state_dict()))
    if report["dropped"]:
        raise V2WError(f"base keys with no place in the causal model: {report['dropped'][:5]}")
    missing, unexpected = causal.load_state_dict(new_sd, strict=False, assign=True)
    assert not unexpected and set(missing) == set(report["new"]), (missing, unexpected)
    causal.train(unet.training)
    report.update(
        transfer=transfer,
        order=order,
        norm=norm,
        temporal_convs=len(report["transformed"]),
        temporal_attentions_masked=sum(isinstance(m, TemporalTransformer) and m.causal for m in causal.modules()),
        temporal_norms_per_frame=sum(isinstance(m, FrameGroupNorm) and m.per_frame for m in causal.modules()),
    )
    return (causal, report) if return_report else causal


def _materialized(module: torch.nn.Module, generator: torch.Generator, device) -> torch.nn.Module:
    """A meta-device Linear (or SiLU + Linear) rebuilt on ``device`` with PyTorch's default init
    drawn from ``generator``; biases of the scale-shift projection stay zero (identity at start)."""
    import math

    import torch.nn as nn

    out = []
    for layer in module if isinstance(module, nn.Sequential) else [module]:
        if isinstance(layer, nn.Linear):
            new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=device)
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) as nn.Linear does
            with torch.no_grad():
                new.weight.copy_((torch.rand(new.weight.shape, generator=generator) * 2 - 1) * bound)
                if new.bias is not None:
                    new.bias.zero_()
            layer = new
        out.append(layer)
    return nn.Sequential(*out) if isinstance(module, nn.Sequential) else out[0]


def probe_inputs(unet: VideoUNet, frames: int | None = None, size: int | None = None, seed: int = 0) -> dict:
    """Random inputs of the right shapes for a causality probe (per-frame timesteps, actions)."""
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    t = frames or min(c.temporal_length, 6)
    s = size or 2 ** (len(c.channel_mult) - 1) * 2
    p = next(unet.parameters())
    kw = {"device": p.device, "dtype": p.dtype}
    inputs = {
        "x": torch.randn(1, c.in_channels, t, s, s, generator=g).to(**kw),
        "timesteps": torch.randint(0, 1000, (1, t), generator=g).to(p.device),
        "context": torch.randn(1, TEXT_TOKENS + t * c.image_tokens_per_frame, c.context_dim, generator=g).to(**kw)
        if c.context_dim else None,
    }
    if c.action_dim:
        inputs["actions"] = (
            torch.randn(1, t, c.action_dim, generator=g).to(**kw) if c.action_type == "continuous"
            else torch.randint(0, c.action_dim, (1, t), generator=g).to(p.device)
        )
    return inputs


def check_causality(unet: VideoUNet, k: int | None = None, frames: int | None = None, tolerance: float = 1e-5) -> dict:
    """Perturb frames >= k of the input; outputs (and each temporal layer) at frames < k must not move.

    Returns {"k", "frames", "max_leak", "future_change", "per_layer": {type: leak}, "causal": bool}.
    Runs in eval mode (dropout would read as a leak) and restores the training flag.
    """
    inputs = probe_inputs(unet, frames)
    t = inputs["x"].shape[2]
    k = k if k is not None else t // 2
    if not 0 < k < t:
        raise V2WError(f"probe frame k must be in [1, {t - 1}]. Got {k}")
    was_training = unet.training
    unet.eval()
    try:
        def fn(x: torch.Tensor) -> torch.Tensor:
            return unet(x, inputs["timesteps"], context=inputs["context"], actions=inputs.get("actions"))

        types = {
            "temporal conv": TemporalConvBlock,
            "temporal attention": TemporalTransformer,
            "ResBlock": ResBlock,
            "spatial transformer": SpatialTransformer,
        }
        present = {name: tp for name, tp in types.items() if any(isinstance(m, tp) for m in unet.modules())}
        whole = layered_causality_probe(unet, fn, inputs["x"], k, present)  # one clean + one perturbed run
    finally:
        unet.train(was_training)
    return {
        "k": k,
        "frames": t,
        "max_leak": whole["max_leak"],
        "future_change": whole["future_change"],
        "per_layer": whole["per_type"],
        "tolerance": tolerance,
        "causal": whole["max_leak"] <= tolerance,
    }
