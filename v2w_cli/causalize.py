"""``v2w causalize``: pretrained bidirectional checkpoint -> causal, action-conditioned MODEL."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

EXAMPLE = """
Examples:

  v2w causalize --ckpt dynamicrafter --out models/rt1-causal --action-dim 7

  v2w causalize --ckpt /data/DynamiCrafter_512/model.ckpt --out models/csgo --action-dim 51 --action-type discrete

  v2w causalize --ckpt tiny --out models/tiny --transfer masked --norm pooled

  v2w causalize --ckpt runs/base --out models/boxing --action-dim 18 --action-type discrete   (a v2w pretrain BASE)

  v2w causalize --ckpt tiny --out models/boxing-ss --action-dim 18 --action-type discrete --action-injection scale-shift

  v2w causalize --ckpt thuml/Vid2World-CSGO --out models/v2w-csgo     (an official checkpoint: keys mapped, nothing retrained)

  v2w causalize --ckpt thuml/Vid2World-RT1 --out models/v2w-rt1-exact --norm per-frame   (exactly causal: cacheable)

  v2w causalize --ckpt dynamicrafter --check       (probe only: is the causalized model causal?)

  v2w causalize --ckpt runs/rt1/final --check      (probe a MODEL folder; exit 1 if it leaks)

  v2w causalize --ckpt ms-unet3d/ --family unet3d --out models/ms-causal
  v2w causalize --family wan --ckpt Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out models/wan-causal --action-dim 7
"""


def register(app: typer.Typer) -> None:
    app.command("causalize", help="Make a pretrained video diffusion model causal and action-conditioned.\n" + EXAMPLE)(
        causalize
    )


@handle_errors
def causalize(
    ckpt: str = typer.Option(..., "--ckpt", help="dynamicrafter | dynamicrafter-256 | dynamicrafter-1024 | tiny (shipped base) | tiny-random | thuml/Vid2World-RT1|-CSGO|-RECON|... (an official world model: imported, not re-causalized) | PATH (.ckpt/.safetensors, or a v2w pretrain BASE folder)."),
    out: Path = typer.Option(None, "--out", "-o", help="MODEL folder to write."),
    base_config: str = typer.Option(None, "--base-config", help="DynamiCrafter inference YAML (non-default configs)."),
    family: str = typer.Option("dynamicrafter", "--family", help="dynamicrafter | unet3d (diffusers UNet3DConditionModel) | wan (Wan 2.1 DiT, diffusers layout; --ckpt Wan-AI/Wan2.1-T2V-1.3B-Diffusers, a folder, or tiny-wan)."),
    transfer: str = typer.Option("extrapolative", "--transfer", help="Temporal conv weight transfer: shift|masked|extrapolative."),
    extrapolation_order: int = typer.Option(1, "--extrapolation-order", help="Polynomial order of the extrapolative transfer."),
    norm: str = typer.Option(None, "--norm", help="Temporal GroupNorm: per-frame (exactly causal; the default for a base) | pooled (what the official Vid2World checkpoints were trained with; their default)."),
    action_dim: int = typer.Option(0, "--action-dim", help="Action size A (0: no action conditioning)."),
    action_type: str = typer.Option("continuous", "--action-type", help="continuous (MLP) | discrete (embedding)."),
    action_injection: str = typer.Option("time", "--action-injection", help="How actions enter the U-Net: time (added to the time embedding; the paper's) | scale-shift (AdaGN in every ResBlock) | tokens (per-frame cross-attention tokens)."),
    action_tokens: int = typer.Option(4, "--action-tokens", help="Tokens per frame for --action-injection tokens."),
    action_init_std: float = typer.Option(0.0, "--action-init-std", help="Std of the action encoder's last layer at init (0: zero, the paper's; the model starts as the base)."),
    fs: int = typer.Option(None, "--fs", "--fps", help="fps / frame-stride conditioning to train with (paper: 3); train's --fs."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Re-initialise the U-Net + Resampler (keep VAE, CLIP): the no-pretraining control."),
    check: bool = typer.Option(False, "--check", help="Print the causality probe table; without --out only probe."),
    unsafe_pickle: bool = typer.Option(False, "--unsafe-pickle", help="Allow pickled objects in a trusted .ckpt."),
    device: str = typer.Option("auto", "--device", help="Where the causality probe runs: auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    from pipelines.causalize import CausalizeConfig, run

    cfg = CausalizeConfig(
        ckpt=ckpt, out=str(out) if out else None, base_config=base_config, family=family, transfer=transfer,
        order=extrapolation_order, norm=norm, action_dim=action_dim, action_type=action_type,
        action_injection=action_injection, action_tokens=action_tokens, action_init_std=action_init_std,
        check_only=check and out is None, unsafe_pickle=unsafe_pickle, fs=fs, from_scratch=from_scratch, device=device,
    )
    log = (lambda msg: None) if (quiet or json_out) else (lambda msg: console.print(f"[dim]{msg}[/]"))
    with console.status("causalizing", spinner="dots") if not (quiet or json_out) else contextlib.nullcontext():
        result = run(cfg, log=log)
    if json_out:
        emit_json(
            {
                "out": str(result.out) if result.out else None,
                "report": {k: (len(v) if isinstance(v, list) else v) for k, v in result.report.items()},
                "check": result.check,
                "base_check": result.base_check,
                "seconds": round(result.seconds, 2),
                "peak_memory_mb": result.peak_memory_mb,
            }
        )
        return
    if quiet:
        return
    print_check(result, result.report.get("norm", cfg.norm) if result.report else cfg.norm)
    if result.out:
        console.print(f"wrote [bold]{result.out}[/] in {result.seconds:.1f} s; inspect it with: v2w info {result.out}")


def print_check(result, norm: str) -> None:
    from rich.table import Table

    rep = result.report
    if rep and "transfer" not in rep:  # the Wan family: attention made block-causal, nothing transferred
        console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rep.items()))
    elif rep:
        console.print(
            f"transfer {rep.get('transfer')} (order {rep.get('order')}), norm {rep.get('norm')}: "
            + ", ".join(f"{k} {len(v) if isinstance(v, list) else v}" for k, v in rep.items()
                        if k in ("matched", "transformed", "new", "dropped", "temporal_attentions_masked", "temporal_norms_per_frame", "counts"))
        )
    chk = result.check
    table = Table(title=f"causality probe: frame {chk['k']} of {chk['frames']} perturbed", title_justify="left")
    table.add_column("layer type")
    table.add_column("max change at frames < k", justify="right")
    if result.base_check:
        table.add_column("base model", justify="right")
    for name, leak in chk["per_layer"].items():
        row = [name, f"{leak:.3g}"]
        if result.base_check:
            row.append(f"{result.base_check['per_layer'].get(name, float('nan')):.3g}")
        table.add_row(*row)
    row = ["[bold]model output[/]", f"[bold]{chk['max_leak']:.3g}[/]"]
    if result.base_check:
        row.append(f"{result.base_check['max_leak']:.3g}")
    table.add_row(*row)
    console.print(table)
    if chk["causal"]:
        console.print(f"[green]causal[/]: past outputs unchanged within {chk['tolerance']}")
    elif norm == "pooled":
        console.print(f"[yellow]pooled temporal GroupNorm leaks {chk['max_leak']:.3g} into the past[/] (use --norm per-frame for exact causality)")
