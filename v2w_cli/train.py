"""``v2w train``: Diffusion-Forcing fine-tuning with frame-level actions (runs under accelerate)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

EXAMPLE = """
Examples:

  v2w train --model models/rt1-causal --data data/rt1 --out runs/rt1 --steps 100000 --batch-size 4 --grad-accum 4 --precision bf16 --gradient-checkpointing

  v2w train --model models/rt1-causal --data data/rt1 --out runs/rt1 --resume          (continue from the last checkpoint)

  v2w train --model models/rt1-causal --data data/rt1 --out runs/rt1 --resume-if-exists   (a preemptible job: the same command every time)

  v2w train ... --num-processes 4                       (4 GPUs on this machine; same as accelerate launch)

  accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip HOST --num_processes 16 -m v2w_cli train ...
"""


def register(app: typer.Typer) -> None:
    app.command("train", help="Fine-tune a causalized model with Diffusion Forcing and frame-level actions.\n" + EXAMPLE)(train)


@handle_errors
def train(
    model: Path = typer.Option(..., "--model", "-m", help="MODEL folder (v2w causalize, or a RUN/final)."),
    data: Path = typer.Option(..., "--data", "-d", help="DATA folder (v2w prepare)."),
    out: Path = typer.Option(..., "--out", "-o", help="RUN folder: checkpoints/, metrics.jsonl, final/."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(2, "--batch-size", help="Clips per process per micro-step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step."),
    lr: float = typer.Option(1e-5, "--lr", help="AdamW learning rate."),
    new_layers_lr: float = typer.Option(None, "--new-layers-lr", help="Learning rate of the action layers (encoder + injection), which start at zero [default: --lr]."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    warmup: int = typer.Option(0, "--warmup", help="Linear warm-up steps."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant | cosine (after warm-up)."),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(500, "--save-every", help="Checkpoint every N steps."),
    keep: int = typer.Option(3, "--keep", help="Keep the last K checkpoints."),
    resume: str = typer.Option(
        None, "--resume",
        help="Continue from the last complete checkpoint (--resume) or a given one (--resume step-N).",
        show_default=False,
    ),
    resume_if_exists: bool = typer.Option(
        False, "--resume-if-exists",
        help="Continue from the last complete checkpoint if there is one, else start fresh (preemptible jobs).",
    ),
    action_dropout: float = typer.Option(0.2, "--action-dropout", help="Per-frame action dropout."),
    cond_dropout: float = typer.Option(0.05, "--cond-dropout", help="Per-sample image-conditioning dropout."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16."),
    ema_decay: float = typer.Option(0.9999, "--ema-decay", help="EMA decay (0 = off); final/ holds EMA weights."),
    grad_clip: float = typer.Option(0.5, "--grad-clip"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    train_set: str = typer.Option("all", "--train", help="all | temporal (temporal + new layers) | new (action encoder)."),
    log_every: int = typer.Option(10, "--log-every"),
    preview_every: int = typer.Option(0, "--preview-every", help="Write a preview gif every N steps (0 = off)."),
    fs: int = typer.Option(3, "--fs", help="Frame-stride / fps conditioning value."),
    time_limit: float = typer.Option(None, "--time-limit", help="Minutes: then stop, checkpoint and write final/ (steps reached are recorded)."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda."),
    num_processes: int = typer.Option(1, "--num-processes", help="Data-parallel processes (re-launches under accelerate)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    if num_processes > 1:
        _relaunch(num_processes)
        return
    from pipelines.train import TrainConfig, run

    cfg = TrainConfig(
        model=str(model), data=str(data), out=str(out), steps=steps, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, new_layers_lr=new_layers_lr, weight_decay=weight_decay, warmup=warmup, lr_schedule=lr_schedule, seed=seed, save_every=save_every,
        keep=keep, resume=resume, resume_if_exists=resume_if_exists, action_dropout=action_dropout, cond_dropout=cond_dropout,
        precision=precision, ema_decay=ema_decay, grad_clip=grad_clip, gradient_checkpointing=gradient_checkpointing,
        train=train_set, log_every=log_every, preview_every=preview_every, fs=fs, device=device, time_limit=time_limit,
    )
    quiet = quiet or json_out
    from v2w_cli.common import progress_bar

    with progress_bar(quiet, unit="steps") as bar:
        task = bar.add_task("train", total=steps, rate="")

        def on_progress(p: dict) -> None:
            bar.update(task, completed=p["step"], rate=f"loss {p['loss']:.4f}  lr {p['lr']:.2e}")

        log = (lambda msg: None) if quiet else (lambda msg: bar.console.print(f"[dim]{msg}[/]"))
        result = run(cfg, on_progress=on_progress, log=log)
    summary = {
        "out": str(result.out),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.seconds, 2),
        "final": str(result.out / "final") if (result.out / "final").exists() else None,
    }
    if json_out:
        emit_json(summary)
    elif not quiet:
        console.print(f"trained to step {result.steps} in {result.seconds:.1f} s; model: {summary['final']}; log: {result.out / 'metrics.jsonl'}")


def _relaunch(num_processes: int) -> None:
    """Run this same command under ``accelerate launch`` with N processes (this machine)."""
    import subprocess

    args = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--num-processes":
            skip = True
            continue
        if a.startswith("--num-processes="):
            continue
        args.append(a)
    # --multi_gpu selects torch's distributed launcher; with --device cpu the processes use gloo on the CPU
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "v2w_cli", *args,
    ]
    console.print(f"[dim]launching: {' '.join(cmd)}[/]")
    raise typer.Exit(subprocess.call(cmd))
