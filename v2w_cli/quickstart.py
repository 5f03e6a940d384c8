"""``v2w quickstart``: the embedded default run on a fresh machine.

For now it plays Breakout with a random policy (ale-py ships the ROM), writes the raw logs as
videos + actions, and prepares them into a DATA folder. Later stages join as they are built.
"""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors


def register(app: typer.Typer) -> None:
    app.command(
        "quickstart",
        help="Generate a small real game dataset and run the pipeline on it (CPU, minutes).\n\n"
        "Example:\n\n  v2w quickstart --out runs/quickstart",
    )(quickstart)


@handle_errors
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Folder for everything it writes."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny run (seconds) to check the installation."),
    game: str = typer.Option("breakout", "--game", help="Atari game to play (any ale-py ROM id)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.sample import make_atari_episodes
    from v2w_cli.prepare import print_summary, run_with_progress, summary

    episodes, frames = (4, 40) if smoke else (24, 160)
    raw = out / "raw"
    if not quiet:
        console.print(f"[bold]1/2[/] playing {episodes} episodes of {game} ({frames} frames each) -> {raw}")
    make_atari_episodes(raw, game=game, episodes=episodes, frames=frames, seed=0)
    cfg = PrepareConfig(
        sources=[str(raw)],
        out=str(out / "data"),
        size=(64, 64),
        resize="stretch",  # Atari-style: a center crop would cut off the paddle at the bottom
        clip_len=16,
        stride=8,
        val_fraction=0.15,
        num_actions=None,
        workers=1,
        shard_size=64,
    )
    import json

    names = json.loads((raw / "actions.json").read_text())["actions"]
    cfg.num_actions = len(names)
    if not quiet:
        console.print(f"[bold]2/2[/] v2w prepare {raw} --out {cfg.out} --size 64x64 --resize stretch --stride 8 --num-actions {len(names)}")
    result = run_with_progress(cfg, quiet or json_out)
    if json_out:
        emit_json({"prepare": summary(result)})
    elif not quiet:
        print_summary(result)
        console.print(f"\nDone. Inspect it with: [bold]v2w info {cfg.out}[/]")
