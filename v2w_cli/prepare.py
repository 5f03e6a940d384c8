"""``v2w prepare``: raw video+action logs -> WebDataset shards + manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors, progress_bar

EXAMPLE = """
Examples:

  v2w prepare logs/ --out data/breakout --size 64x64 --num-actions 4

  v2w prepare rt1_npz/ --out data/rt1 --size 320x512 --fps 3 --action-kind delta --clip-len 16

  v2w prepare csgo/*.hdf5 --out data/csgo --size 320x512 --workers 2 --skip-bad
"""


def register(app: typer.Typer) -> None:
    app.command("prepare", help="Turn video+action logs into sharded WebDataset clips and a manifest.\n" + EXAMPLE)(
        prepare
    )


@handle_errors
def prepare(
    sources: list[Path] = typer.Argument(..., help="Files or folders of raw episodes.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="DATA folder to write (replaced only on success)."),
    format: str = typer.Option(None, "--format", help="Force a reader: videos|npz|hdf5|recon|lerobot."),
    size: str = typer.Option(None, "--size", help="HxW output frames, e.g. 320x512 (see --resize)."),
    resize: str = typer.Option("crop", "--resize", help="crop: keep aspect, center crop; stretch: scale each axis."),
    fps: float = typer.Option(None, "--fps", help="Resample to this frame rate (actions aggregated)."),
    clip_len: int = typer.Option(16, "--clip-len", help="Frames per clip."),
    stride: int = typer.Option(None, "--stride", help="Frames between clip starts [default: clip-len]."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Fraction of episodes held out for val."),
    seed: int = typer.Option(0, "--seed", help="Seed of the episode split and order."),
    shard_size: int = typer.Option(256, "--shard-size", help="Clips per shard."),
    num_actions: int = typer.Option(None, "--num-actions", help="Actions are integer ids in [0, K): store one-hot."),
    action_kind: str = typer.Option(
        None, "--action-kind", help="delta|absolute|discrete: how --fps aggregates actions (sum or last)."
    ),
    store: str = typer.Option("mp4", "--store", help="mp4 (H.264 4:4:4, PSNR recorded) or npy (exact)."),
    crf: int = typer.Option(10, "--crf", help="x264 quality for mp4 (0 = lossless)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Parallel decoding processes."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable episodes (listed in the manifest)."),
    image_key: str = typer.Option(None, "--image-key", help="npz: name of the image array."),
    action_key: str = typer.Option(None, "--action-key", help="npz: action array name(s), comma-separated."),
    camera: str = typer.Option(None, "--camera", help="lerobot: video feature, e.g. observation.images.top."),
    src_fps: float = typer.Option(None, "--src-fps", help="Frame rate of the source when it has none."),
    encode_latents: Path = typer.Option(None, "--encode-latents", help="MODEL whose VAE pre-encodes every clip."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON on stdout."),
) -> None:
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.video import parse_size

    cfg = PrepareConfig(
        sources=[str(s) for s in sources],
        out=str(out),
        format=format,
        size=parse_size(size),
        resize=resize,
        fps=fps,
        clip_len=clip_len,
        stride=stride,
        val_fraction=val_fraction,
        seed=seed,
        shard_size=shard_size,
        num_actions=num_actions,
        action_kind=action_kind,
        store=store,
        crf=crf,
        workers=workers,
        skip_bad=skip_bad,
        image_key=image_key,
        action_keys=tuple(k.strip() for k in action_key.split(",")) if action_key else None,
        camera=camera,
        src_fps=src_fps,
    )
    result = run_with_progress(cfg, quiet or json_out)
    if encode_latents is not None:
        from v2w_cli.encode import run_encode

        result.manifest = run_encode(result.out, encode_latents, "cpu", quiet or json_out)
    if json_out:
        emit_json(summary(result))
    elif not quiet:
        print_summary(result)


def run_with_progress(cfg, quiet: bool):
    """Run prepare with a rich progress bar (episodes, frames/s, ETA)."""
    import time

    from pipelines.data.prepare import run

    t0 = time.time()
    with progress_bar(quiet) as bar:
        task = bar.add_task("prepare", total=None, rate="")

        def on_progress(p: dict) -> None:
            rate = p["frames_done"] / max(time.time() - t0, 1e-9)
            bar.update(task, total=p["episodes_total"], completed=p["episodes_done"], rate=f"{rate:,.0f} frames/s")

        log = (lambda msg: None) if quiet else (lambda msg: bar.console.print(f"[dim]{msg}[/]"))
        return run(cfg, on_progress=on_progress, log=log)


def summary(result) -> dict:
    m = result.manifest
    return {
        "out": str(result.out),
        "seconds": round(result.seconds, 2),
        "resumed_shards": result.resumed_shards,
        "resolution": m["resolution"],
        "fps": m["fps"],
        "clip_len": m["clip_len"],
        "action_dim": m["action_dim"],
        "splits": {s: {k: v[k] for k in ("episodes", "samples", "frames")} for s, v in m["splits"].items()},
        "roundtrip_psnr_db": m["roundtrip_psnr_db"],
        "skipped": m["skipped"],
        "warnings": m["warnings"],
    }


def print_summary(result) -> None:
    from rich.table import Table

    m = result.manifest
    table = Table(title=f"{result.out}  ({result.seconds:.1f} s)", title_justify="left")
    for col in ("split", "episodes", "clips", "frames", "shards"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, s in m["splits"].items():
        table.add_row(split, str(s["episodes"]), str(s["samples"]), str(s["frames"]), str(len(s["shards"])))
    console.print(table)
    h, w = m["resolution"]
    psnr = m["roundtrip_psnr_db"]
    console.print(
        f"{h}x{w} @ {m['fps']} fps, clips of {m['clip_len']}, {m['action_dim']}-d {m['action_type']} actions"
        + (f", mp4 round trip {psnr['mean']:.1f} dB (min {psnr['min']:.1f})" if psnr else "")
    )
    if result.resumed_shards:
        console.print(f"resumed: {result.resumed_shards} shard(s) kept from an interrupted run")
    for s in m["skipped"]:
        console.print(f"[yellow]skipped[/] {s['file']}: {s['reason']}")
    for w_ in m["warnings"]:
        console.print(f"[yellow]warning:[/] {w_}")
