"""``v2w encode``: add VAE latents to a prepared dataset so training never touches video."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors, progress_bar


def register(app: typer.Typer) -> None:
    app.command(
        "encode",
        help="Store each clip's VAE latents beside its frames (resumable, atomic per shard).\n\n"
        "Example:\n\n  v2w encode data/rt1 --model models/rt1-causal",
    )(encode)


@handle_errors
def encode(
    data: Path = typer.Argument(..., help="DATA folder written by v2w prepare."),
    model: Path = typer.Option(..., "--model", "-m", help="MODEL folder whose VAE encodes the frames."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest's latents entry as JSON."),
) -> None:
    manifest = run_encode(data, model, device, quiet or json_out)
    if json_out:
        emit_json(manifest.get("latents"))
    elif not quiet:
        console.print(f"latents added to {data}: {manifest.get('latents')}")


def run_encode(data: Path, model: Path, device: str, quiet: bool) -> dict:
    from pipelines.data.encode import encode_latents
    from pipelines.devices import resolve_device

    device = str(resolve_device(device))
    t0 = time.time()
    with progress_bar(quiet, unit="clips") as bar:
        task = bar.add_task("encode", total=None, rate="")

        def on_progress(p: dict) -> None:
            rate = p["frames_done"] / max(time.time() - t0, 1e-9)
            bar.update(task, total=p["clips_total"], completed=p["clips_done"], rate=f"{rate:,.0f} frames/s")

        return encode_latents(data, model, device=device, on_progress=on_progress)
