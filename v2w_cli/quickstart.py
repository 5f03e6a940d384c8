"""``v2w quickstart``: every stage end to end on a small real game dataset (CPU, minutes)."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors


def register(app: typer.Typer) -> None:
    app.command(
        "quickstart",
        help="Roll out the shipped world model on fresh Boxing episodes, eval it against copy-last, and "
        "fine-tune the shipped base briefly: every stage, on a CPU, in minutes.\n\n"
        "Examples:\n\n  v2w quickstart --out runs/quickstart\n\n"
        "  v2w quickstart --out runs/mine --model runs/tiny_world_model/run/final   (your own world model)",
    )(quickstart)


@handle_errors
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Folder for everything it writes."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny run (seconds) to check the installation."),
    model: str = typer.Option(None, "--model", "-m", help="World model to roll out [default: the shipped one]."),
    seed: int = typer.Option(2000, "--seed", help="Seed of the fresh episodes (the shipped model's recipe used 0-8 and 1000-1001)."),
    train_steps: int = typer.Option(None, "--train-steps", help="Fine-tune steps [default: 30, smoke 2]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    from pipelines.quickstart import QuickstartConfig, run

    log = (lambda m: None) if (quiet or json_out) else (lambda m: console.print(f"[bold]{m}[/]", highlight=False))
    result = run(QuickstartConfig(out=str(out), smoke=smoke, train_steps=train_steps, model=model, seed=seed), log=log)
    if json_out:
        emit_json(result)
    elif not quiet:
        for name, m in result["metrics"].items():
            console.print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None))
        gap, cf = result.get("action_gap") or {}, result.get("counterfactual_gain") or {}
        if gap.get("psnr") is not None:
            console.print(f"action following: true - shuffled actions PSNR {gap['psnr']:+.3f} dB")
        if cf.get("psnr") is not None:
            console.print(f"counterfactual gain (emulator branches): PSNR {cf['psnr']:+.3f} dB")
        console.print(f"\nDone. Report: [bold]{result['report']}[/] (with {out / 'side_by_side.gif'}, {out / 'report/horizon.png'})")
