"""What every command shares: the console, one-line errors, progress bars, --json output."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import typer
from rich.console import Console

console = Console(stderr=True)  # human output on stderr; stdout stays clean for --json
STATE = {"debug": bool(os.environ.get("V2W_DEBUG"))}


def handle_errors(fn: Callable) -> Callable:
    """User mistakes (V2WError) print one line and exit 1; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipelines.errors import V2WError

        try:
            return fn(*args, **kwargs)
        except V2WError as e:
            if STATE["debug"]:
                raise
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress_bar(quiet: bool, unit: str = "episodes"):
    """A rich progress bar with count, rate and ETA (disabled when quiet)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
