"""``v2w distill``: a world model -> a few-step student with guidance baked in (pipelines/distill.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors

EXAMPLE = """
Examples:

  v2w distill --model runs/boxing/final --data data/boxing --out runs/boxing-2step --student-steps 2 --steps 2000

  v2w distill --model runs/boxing/final --data data/boxing --out runs/boxing-2step --resume   (continue)

  v2w distill --model thuml/Vid2World-CSGO --data data/csgo --out runs/csgo-4step --student-steps 4 --teacher-steps 48 --device cuda

  v2w rollout --model runs/boxing-2step/final --data data/test --out preds/2step   (2 steps, guidance 1, eta 0: its defaults)
"""


def register(app: typer.Typer) -> None:
    app.command("distill", help="Distil a world model into a few-step student (guided teacher baked in).\n" + EXAMPLE)(distill)


@handle_errors
def distill(
    model: Path = typer.Option(..., "--model", "-m", help="The teacher MODEL (a RUN/final); the student starts from it."),
    data: Path = typer.Option(..., "--data", "-d", help="DATA folder (v2w prepare): the clips the student learns on."),
    out: Path = typer.Option(..., "--out", "-o", help="RUN folder: checkpoints/, metrics.jsonl, final/ (the student MODEL)."),
    student_steps: int = typer.Option(4, "--student-steps", help="DDIM steps the student samples with (1, 2, 4, ...)."),
    teacher_steps: int = typer.Option(16, "--teacher-steps", help="The teacher's steps over the whole noise range (a multiple of --student-steps)."),
    guidance: float = typer.Option(None, "--guidance", help="The teacher's causal action guidance, baked into the student (it samples at 1) [default: the teacher's: 2.5; 1 for a -NAG import]."),
    guidance_rescale: float = typer.Option(0.7, "--guidance-rescale"),
    history_noise: int = typer.Option(None, "--history-noise", help="Noise level of history frames [default: the teacher's sampler's: 20; an official import's at 50 steps]; the student samples with it."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(2, "--batch-size"),
    lr: float = typer.Option(1e-5, "--lr"),
    ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA of the student's weights (0: off)."),
    save_every: int = typer.Option(250, "--save-every"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    time_limit: float = typer.Option(None, "--time-limit", help="Minutes; then save and write final/."),
    device: str = typer.Option(None, "--device", help="auto (the GPU when there is one) | cpu | cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    from pipelines.distill import DistillConfig, run
    from pipelines.train import TrainConfig
    from v2w_cli.common import progress_bar

    dcfg = DistillConfig(student_steps=student_steps, teacher_steps=teacher_steps, guidance=guidance,
                         guidance_rescale=guidance_rescale, history_noise=history_noise)
    cfg = TrainConfig(model=str(model), data=str(data), out=str(out), steps=steps, batch_size=batch_size, lr=lr,
                      ema_decay=ema_decay, save_every=save_every, seed=seed, resume="latest" if resume else None,
                      time_limit=time_limit, device=device, precision=precision, action_dropout=0.0, cond_dropout=0.0)
    quiet = quiet or json_out
    with progress_bar(quiet, unit="steps") as bar:
        task = bar.add_task("distill", total=steps, rate="")

        def on_progress(p: dict) -> None:
            bar.update(task, completed=p["step"], rate=f"loss {p['loss']:.4f}")

        log = (lambda msg: None) if quiet else (lambda msg: bar.console.print(f"[dim]{msg}[/]"))
        result = run(cfg, dcfg, on_progress=on_progress, log=log)
    final = result.out / "final"
    summary = {"out": str(result.out), "steps": result.steps, "resumed_from": result.resumed_from,
               "first_loss": result.losses[0] if result.losses else None, "last_loss": result.losses[-1] if result.losses else None,
               "seconds": round(result.seconds, 2), "final": str(final) if final.exists() else None}
    if json_out:
        emit_json(summary)
    elif not quiet:
        console.print(f"distilled to step {result.steps} in {result.seconds:.1f} s; student: {summary['final']} "
                      f"({student_steps} steps, guidance 1); log: {result.out / 'metrics.jsonl'}")
