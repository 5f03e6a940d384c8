"""``v2w pretrain``: a small bidirectional video diffusion base (VAE + U-Net) in DynamiCrafter's layout."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

EXAMPLE = """
Trains a VAE, then a bidirectional U-Net (one noise level per clip, as DynamiCrafter), on DATA's
frames (actions ignored), and writes BASE/model.ckpt + BASE/inference.yaml in DynamiCrafter's own
checkpoint layout, so `v2w causalize --ckpt BASE` takes the real checkpoint's code path.

Examples:

  v2w pretrain --data data/atari --out runs/base --vae-steps 3000 --steps 6000 --batch-size 32 --precision bf16

  v2w pretrain --data data/atari --out runs/base --resume           (continue after an interruption)

  v2w pretrain --data data/atari --out runs/base-tiny --arch tiny --vae-steps 50 --steps 50 --device cpu
"""


def register(app: typer.Typer) -> None:
    app.command("pretrain", help="Train a small bidirectional video diffusion base (DynamiCrafter layout) from scratch.\n" + EXAMPLE)(pretrain)


@handle_errors
def pretrain(
    data: Path = typer.Option(..., "--data", "-d", help="DATA folder (v2w prepare); actions are ignored."),
    out: Path = typer.Option(..., "--out", "-o", help="BASE folder: model.ckpt, inference.yaml, pretrain.json, work/."),
    arch: str = typer.Option("small", "--arch", help="small (VAE x4, 64-channel U-Net) | tiny (VAE x8, 32 channels)."),
    vae_steps: int = typer.Option(2000, "--vae-steps", help="VAE optimizer steps."),
    vae_batch_size: int = typer.Option(32, "--vae-batch-size", help="Frames per VAE step."),
    vae_lr: float = typer.Option(5e-4, "--vae-lr"),
    steps: int = typer.Option(2000, "--steps", help="U-Net optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per U-Net step."),
    lr: float = typer.Option(2e-4, "--lr", help="U-Net AdamW learning rate (cosine after warm-up)."),
    warmup: int = typer.Option(100, "--warmup"),
    ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA of the U-Net (0 = off); the base gets the EMA weights."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (U-Net stage)."),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(500, "--save-every", help="U-Net checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue: keep a finished VAE, resume the U-Net from its last checkpoint."),
    resume_if_exists: bool = typer.Option(
        False, "--resume-if-exists", help="Same as --resume, which already starts fresh when there is nothing to continue (as v2w train's flag)."
    ),
    vae_time_limit: float = typer.Option(None, "--vae-time-limit", help="Minutes for the VAE stage; then it moves on."),
    time_limit: float = typer.Option(None, "--time-limit", help="Minutes for the U-Net stage; then it stops and exports."),
    half: bool = typer.Option(False, "--half", help="Store model.ckpt in float16 (half the size; loaders upcast)."),
    vae_shift: int = typer.Option(0, "--vae-shift", help="Translate each VAE training frame by up to N px (wrap-around) so moved/scrolled views round-trip."),
    init: str = typer.Option(None, "--init", help="Start the VAE and U-Net from this BASE folder (or tiny) instead of random: continue pretraining on new data."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print pretrain.json on stdout."),
) -> None:
    from pipelines.pretrain import PretrainConfig, run
    from v2w_cli.common import progress_bar

    cfg = PretrainConfig(
        data=str(data), out=str(out), arch=arch, vae_steps=vae_steps, vae_batch_size=vae_batch_size, vae_lr=vae_lr,
        steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay, precision=precision, seed=seed,
        save_every=save_every, resume=resume or resume_if_exists, device=device, half=half, time_limit=time_limit, vae_time_limit=vae_time_limit,
        vae_shift=vae_shift, init=init,
    )
    quiet = quiet or json_out
    with progress_bar(quiet, unit="steps") as bar:
        tasks = {"vae": bar.add_task("VAE", total=vae_steps, rate=""), "unet": bar.add_task("U-Net", total=steps, rate="")}

        def on_progress(p: dict) -> None:
            bar.update(tasks[p["stage"]], completed=p["step"], rate=f"loss {p['loss']:.4f}")

        log = (lambda msg: None) if quiet else (lambda msg: bar.console.print(f"[dim]{msg}[/]"))
        result = run(cfg, on_progress=on_progress, log=log)
    rep = result.report
    if json_out:
        emit_json(rep)
    elif not quiet:
        console.print(
            f"wrote [bold]{result.out / 'model.ckpt'}[/] ({rep['checkpoint_mb']} MB) in {rep['seconds']} s: VAE round trip "
            f"{rep['vae']['val_round_trip_psnr_db']} dB, U-Net loss {rep['unet']['first_loss']} -> {rep['unet']['last_loss']}. "
            f"Next: v2w causalize --ckpt {result.out} --out MODEL --action-dim A"
        )
