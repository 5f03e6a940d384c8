"""``v2w quickstart``: every stage end to end on a small real game dataset (CPU, minutes)."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors


def register(app: typer.Typer) -> None:
    app.command(
        "quickstart",
        help="Play Breakout, then prepare, causalize, train, rollout and eval on it (CPU, minutes).\n\n"
        "Example:\n\n  v2w quickstart --out runs/quickstart",
    )(quickstart)


@handle_errors
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Folder for everything it writes."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny run (seconds) to check the installation."),
    game: str = typer.Option("breakout", "--game", help="Atari game to play (any ale-py ROM id)."),
    train_steps: int = typer.Option(None, "--train-steps", help="Training steps [default: 60, smoke 3]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    from pipelines.quickstart import QuickstartConfig, run

    log = (lambda m: None) if (quiet or json_out) else (lambda m: console.print(f"[bold]{m}[/]", highlight=False))
    result = run(QuickstartConfig(out=str(out), smoke=smoke, game=game, train_steps=train_steps), log=log)
    if json_out:
        emit_json(result)
    elif not quiet:
        for name, m in result["metrics"].items():
            console.print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None))
        console.print(f"\nDone. Report: [bold]{result['report']}[/] (with {out / 'side_by_side.gif'}, {out / 'report/horizon.png'})")
