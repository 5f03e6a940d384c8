"""``v2w eval``: FVD / FID / LPIPS / SSIM / PSNR of rollouts, per-horizon curves, baselines, reports."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

EXAMPLE = """
Examples:

  v2w eval --pred preds/rt1 --out reports/rt1 --preset rt1 --baseline copy-last --weights ~/v2w-weights

  v2w eval --pred preds/csgo --out reports/csgo --metrics psnr,ssim,lpips --require

  v2w eval --pred preds/boxing-100 --out reports/long --windows 1-10,41-50,91-100   (does a 100-frame rollout hold?)
"""


def register(app: typer.Typer) -> None:
    app.command("eval", help="Score rollouts: FVD, FID, LPIPS, SSIM, PSNR, per-horizon curves, action following, counterfactual actions.\n" + EXAMPLE)(
        evaluate
    )


@handle_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", "-p", help="PRED folder from `v2w rollout --data`."),
    out: Path = typer.Option(..., "--out", "-o", help="REPORT folder: metrics.json, metrics.md, horizon.png."),
    ref: Path = typer.Option(None, "--ref", help="DATA folder, when the predictions carry no reference frames."),
    metrics: str = typer.Option("psnr,ssim,lpips,fid,fvd", "--metrics", help="Comma-separated: fvd,fid,lpips,ssim,psnr,dreamsim."),
    preset: str = typer.Option(None, "--preset", help="rt1 | csgo | recon: LPIPS network and the paper's numbers."),
    baseline: str = typer.Option("copy-last", "--baseline", help="copy-last (repeat the last context frame) or none."),
    weights: Path = typer.Option(None, "--weights", help="Folder with metric weights (else $V2W_WEIGHTS, packages, torch hub cache)."),
    require: bool = typer.Option(False, "--require", help="A metric without weights is an error, not skipped."),
    force: bool = typer.Option(False, "--force", help="Compute FID/FVD below the sample guard (marked biased)."),
    lpips_net: str = typer.Option(None, "--lpips-net", help="vgg | alex [default: the preset's, else vgg]."),
    device: str = typer.Option("auto", "--device", help="Where LPIPS / FID / FVD networks run: auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    windows: str = typer.Option(None, "--windows", help="Horizon windows of predicted frames to score apart, e.g. 1-10,41-50,91-100 (PSNR, SSIM, LPIPS, FID, collapse probes) [default: first, middle and last 10 for horizons >= 30]."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json on stdout."),
) -> None:
    from pipelines.devices import resolve_device
    from pipelines.evaluate import EvalConfig, run
    from pipelines.metrics.windows import parse_windows

    cfg = EvalConfig(
        pred=str(pred), out=str(out), ref=str(ref) if ref else None,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), preset=preset,
        baseline=None if baseline in ("none", "") else baseline, weights=str(weights) if weights else None,
        require=require, force=force, lpips_net=lpips_net, device=str(resolve_device(device)), windows=parse_windows(windows),
    )
    log = (lambda m: None) if (quiet or json_out) else (lambda m: console.print(f"[dim]{m}[/]"))
    with console.status("scoring", spinner="dots") if not (quiet or json_out) else contextlib.nullcontext():
        report = run(cfg, log=log)
    if json_out:
        emit_json(report)
        return
    if quiet:
        return
    print_table(report)
    console.print(f"report: {out / 'metrics.md'}, {out / 'metrics.json'}, {out / 'horizon.png'}")


def print_table(report: dict) -> None:
    from rich.table import Table

    cols = ["fvd", "fid", "ssim", "lpips", "psnr"]
    table = Table(title=f"{report['pred']}", title_justify="left")
    table.add_column("set")
    for c in cols:
        table.add_column(c.upper(), justify="right")
    for name, res in report["sets"].items():
        table.add_row(name, *[("n/a" if res.get(c) is None else f"{res[c]:.4g}") for c in cols])
    if report.get("paper"):
        table.add_row("paper", *[("" if report["paper"].get(c) is None else f"{report['paper'][c]:.4g}") for c in cols])
    console.print(table)
    if report.get("action_following"):
        a = report["action_following"]
        console.print("action following (true - shuffled): " + ", ".join(f"{m} {a[m]:+.3f}" for m in ("psnr", "lpips", "ssim") if m in a))
    cf = report.get("counterfactual")
    if cf and cf.get("n_branches"):
        console.print(
            f"counterfactual actions ({cf['n_branches']} branches): PSNR model {cf['model']['psnr']:.2f}, "
            f"factual pred {cf['factual_pred_vs_alt_ref']['psnr']:.2f}, gain {cf['gain']['psnr']:+.2f} dB "
            f"(emulator gap {cf['emulator_gap']['psnr']:.2f} dB; > 0 gain = follows the new actions)"
        )
    elif cf:
        console.print(f"[yellow]counterfactual not scored:[/] {cf.get('skipped')}")
    for m, why in (report.get("skipped") or {}).items():
        console.print(f"[yellow]{m} skipped:[/] {why}")
