"""``v2w info PATH``: print what a v2w artifact is (its manifest/config/metrics JSON) as a table."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

ARTIFACT_FILES = ("manifest.json", "config.json", "metrics.json", "rollout.json", "pretrain.json")


def register(app: typer.Typer) -> None:
    app.command("info", help="Show what a v2w artifact is and how it was made.\n\nExample:\n\n  v2w info data/breakout")(
        info
    )


@handle_errors
def info(
    path: Path = typer.Argument(..., help="A DATA / BASE / MODEL / RUN / REPORT folder or its JSON file."),
    json_out: bool = typer.Option(False, "--json", help="Print the raw JSON on stdout."),
) -> None:
    from pipelines.errors import V2WError
    from pipelines.fileio import read_json

    if path.is_dir():
        found = [path / f for f in ARTIFACT_FILES if (path / f).exists()]
        if not found:
            raise V2WError(f"no v2w artifact here (looked for {', '.join(ARTIFACT_FILES)})", path=path)
        file = found[0]
    elif path.exists():
        file = path
    else:
        raise V2WError("not found", path=path)
    data = read_json(file)
    if json_out:
        emit_json(data)
        return
    from rich.table import Table

    table = Table(title=str(file), title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        table.add_row(key, _short(key, value))
    console.print(table)
    if data.get("kind") == "v2w-rollout" and data.get("mode") == "action-sweep":  # v2w rollout --action-sweep
        shown = [f"{k}: {file.parent / f}" for k, f in (data.get("files") or {}).items() if (file.parent / f).exists()]
        if shown:
            console.print("action sweep: " + ", ".join(shown))


def _short(key: str, value) -> str:
    """Compact rendering: splits as counts, long lists abbreviated, floats rounded."""
    if key == "splits" and isinstance(value, dict):
        return "\n".join(
            f"{s}: {v.get('episodes')} episodes, {v.get('samples')} clips, {len(v.get('shards', []))} shards"
            for s, v in value.items()
        )
    if key == "labels" and isinstance(value, list):  # rollout --action-sweep rows: all of them
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_short(k, v)}" for k, v in value.items())
    if isinstance(value, list):
        if value and all(isinstance(v, float) for v in value):
            shown = ", ".join(f"{v:.4g}" for v in value[:8])
            return f"[{shown}{', ...' if len(value) > 8 else ''}]"
        if len(value) > 8:
            return json.dumps(value[:8], default=str)[:-1] + f", ... ({len(value)} items)]"
        return json.dumps(value, default=str)
    return str(value)
