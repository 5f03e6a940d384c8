"""``v2w rollout``: predict frames autoregressively from context frames and actions."""

from __future__ import annotations

from pathlib import Path

import typer

from v2w_cli.common import console, emit_json, handle_errors, progress_bar

EXAMPLE = """
Examples:

  v2w rollout --model runs/rt1/final --context start.png --actions acts.npy --out out/rt1

  v2w rollout --model runs/csgo/final --context clip.mp4 --context-frames 4 --actions acts.npy --out out/csgo --guidance 2.5

  v2w rollout --model runs/rt1/final --data data/rt1 --split val --out preds/rt1 --limit 64 --shuffle-actions

  v2w rollout --model runs/atari/final --context start.png --action-sweep --horizon 6 --out out/sweep
"""


def register(app: typer.Typer) -> None:
    app.command("rollout", help="Roll a world model out: one new frame at a time, guided by the actions.\n" + EXAMPLE)(
        rollout
    )


@handle_errors
def rollout(
    model: Path = typer.Option(..., "--model", "-m", help="MODEL folder (RUN/final or v2w causalize output)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    context: str = typer.Option(None, "--context", help="Image, video or .npy of context frames."),
    actions: str = typer.Option(None, "--actions", help="acts.npy: (H, A) actions, or (H,) ids for discrete models."),
    reference: str = typer.Option(None, "--reference", help="True future frames to show side by side."),
    context_frames: int = typer.Option(None, "--context-frames", help="Context frames [default: the model's, else 1]."),
    size: str = typer.Option(None, "--size", help="Resize the context to HxW [default: the training resolution]."),
    data: Path = typer.Option(None, "--data", help="Batch mode: DATA folder."),
    split: str = typer.Option("val", "--split", help="Batch mode: split to roll out."),
    limit: int = typer.Option(None, "--limit", help="Batch mode: at most N clips."),
    horizon: int = typer.Option(
        None, "--horizon", help="Frames to predict [default: all actions / rest of the clip / 6 with --action-sweep]."
    ),
    shuffle_actions: bool = typer.Option(False, "--shuffle-actions", help="Batch mode: also roll out with actions permuted across clips."),
    batch_size: int = typer.Option(
        4, "--batch-size", help="Clips (batch mode) or sweep rows (--action-sweep) per forward."
    ),
    action_sweep: bool = typer.Option(
        False, "--action-sweep",
        help="Roll --context out once per action (discrete: each id held; continuous: each dimension at mean -/+ std) "
        "-> OUT/sweep.png, sweep.mp4, sweep.npz [--horizon default 6; 8 for Wan models].",
    ),
    sweep_actions: str = typer.Option(
        None, "--sweep-actions", help="With --action-sweep: only these ids / dimensions, e.g. 0,3,4."
    ),
    steps: int = typer.Option(None, "--steps", help="DDIM steps per frame [default: the model's (a distilled student's count), else 50]."),
    eta: float = typer.Option(None, "--eta", help="DDIM stochasticity, 0 (deterministic) .. 1 [default: the model's, else 1]."),
    guidance: float = typer.Option(None, "--guidance", help="Causal action guidance scale (1 = off) [default: the model's; 2.5]."),
    guidance_rescale: float = typer.Option(0.7, "--guidance-rescale"),
    history_noise: int = typer.Option(None, "--history-noise", help="Noise level history frames are fed at [default: 20; the vid2world profile: the second-smallest DDIM step]."),
    profile: str = typer.Option(None, "--profile", help="Sampler details: v2w | vid2world (the official Vid2World sampler's, for its checkpoints) [default: the model's]."),
    history_guidance: float = typer.Option(0.0, "--history-guidance", help="Guide against a history-free pass (anti-drift; beyond the paper)."),
    window: int = typer.Option(None, "--window", help="Frames the model sees at once [default: training length]."),
    slide: int = typer.Option(1, "--slide", help="Once the window is full it moves this many frames at a time: the history cache is rebuilt once per move (K=1: every frame)."),
    cache: bool = typer.Option(None, "--cache/--no-cache", help="Exact activation cache [default: on for per-frame-norm models]."),
    mode: str = typer.Option("autoregressive", "--mode", help="autoregressive | full (all frames jointly; baseline)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16: autocast of the network passes (bf16 on GPUs: ~2x faster)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    json_out: bool = typer.Option(False, "--json", help="Print rollout.json on stdout."),
) -> None:
    from pipelines.data.video import parse_size
    from pipelines.devices import resolve_device
    from pipelines.errors import V2WError
    from pipelines.rollout import RolloutJob, run_batch, run_interactive, run_sweep
    from pipelines.sampler import RolloutConfig

    cfg = RolloutConfig(
        steps=steps, eta=eta, guidance=guidance, guidance_rescale=guidance_rescale, history_noise=history_noise,
        history_guidance=history_guidance, window=window, cache=cache, mode=mode, seed=seed, precision=precision,
        profile=profile, slide=slide,
    )
    job = RolloutJob(
        model=str(model), out=str(out), context=context, actions=actions, reference=reference,
        context_frames=context_frames, size=parse_size(size), data=str(data) if data else None, split=split, limit=limit, horizon=horizon,
        shuffle_actions=shuffle_actions, batch_size=batch_size, device=str(resolve_device(device)),
        action_sweep=action_sweep, sweep_actions=_parse_ids(sweep_actions),
    )
    quiet = quiet or json_out
    if action_sweep:
        _check_sweep_flags(context, actions, data, reference)
    elif sweep_actions is not None:
        raise V2WError("--sweep-actions needs --action-sweep")
    if data is None and context is None:
        raise V2WError("give --context and --actions (interactive) or --data (batch mode)")
    with progress_bar(quiet, unit="frames" if data is None else "clips") as bar:
        task = bar.add_task("rollout", total=None, rate="")
        if data is None:
            def on_frame(k: int, seconds: float, total: int) -> None:
                bar.update(task, total=total, completed=k + 1, rate=f"{seconds:.2f} s/frame")

            run = run_sweep if action_sweep else run_interactive
            info = run(job, cfg, on_frame=on_frame)
        else:
            def on_clip(name: str, done: int, total: int) -> None:
                bar.update(task, total=total, completed=done, description=f"rollout ({name})", rate="")

            info = run_batch(job, cfg, on_clip=on_clip)
    if json_out:
        emit_json(info)
    elif not quiet:
        spf = info.get("mean_seconds_per_frame")
        console.print(f"wrote {out} ({spf:.2f} s/frame)" if spf else f"wrote {out}")
        if info.get("mode") == "action-sweep":
            spread = info.get("spread")
            note = ""
            if spread:
                note = f"; spread {spread['psnr_db']:.2f} dB PSNR between rows (lower: actions matter more)"
            console.print(f"{info['rows']} rows: {out / 'sweep.png'}{note}")


def _parse_ids(text: str | None) -> list[int] | None:
    from pipelines.errors import V2WError

    if text is None:
        return None
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        ids = []
    if not ids:
        raise V2WError(f"--sweep-actions must look like 0,3,4 (action ids or dimensions). Got {text!r}")
    return ids


def _check_sweep_flags(context, actions, data, reference) -> None:
    from pipelines.errors import V2WError

    if actions is not None:
        raise V2WError("--action-sweep and --actions are mutually exclusive: the sweep makes one row per action itself")
    if data is not None:
        raise V2WError("--action-sweep rolls out one --context, not a --data folder")
    if reference is not None:
        raise V2WError("--reference is for interactive rollouts, not --action-sweep")
    if context is None:
        raise V2WError("--action-sweep needs --context: the image, video or .npy of frames every row starts from")
