"""``v2w play``: drive a world model from the keyboard in the browser."""

from __future__ import annotations

import typer

from v2w_cli.common import console, handle_errors

EXAMPLE = """
Examples:

  v2w play --model tiny                          (the shipped Boxing model, a fresh emulator start)

  v2w play --model runs/atari/final --data data/boxing --clip episode_003-000040

  v2w play --model runs/atari/final --context start.png --steps 2 --port 9000
"""


def register(app: typer.Typer) -> None:
    app.command("play", help="Play a world model live: keys -> actions -> the next frame, in the browser.\n" + EXAMPLE)(play)


@handle_errors
def play(
    model: str = typer.Option(..., "--model", "-m", help="MODEL folder, 'tiny' for the shipped Boxing world model, or an official one: thuml/Vid2World-CSGO (imported on first use)."),
    context: str = typer.Option(None, "--context", help="Image, video or .npy of context frames."),
    data: str = typer.Option(None, "--data", help="DATA folder: start from one of its clips instead."),
    clip: str = typer.Option(None, "--clip", help="With --data: the clip key [default: the first val clip]."),
    context_frames: int = typer.Option(None, "--context-frames", help="Context frames [default: the model's, else 1]."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface, with a warning)."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    steps: int = typer.Option(None, "--steps", help="DDIM steps per frame [default: a distilled student's own, else 1] (more: slower, a little sharper; see the README's table)."),
    guidance: float = typer.Option(1.0, "--guidance", help="Causal action guidance (1 = off, half the compute)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (reset replays it)."),
    slide: int = typer.Option(None, "--slide", help="Once the window is full it moves this many frames at a time: one cache rebuild per move instead of per frame [default: min(4, window / 2); 1: the newest frames always]."),
    tick: int = typer.Option(None, "--tick", help="Real-time mode: ms between frames at most [default: the model's frame rate, 67 ms at 15 frames/s; 125 if unrecorded]."),
    max_sessions: int = typer.Option(2, "--max-sessions", help="Browser tabs served at once."),
    record_dir: str = typer.Option("play-recordings", "--record-dir", help="Where the record button writes."),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 degrades gracefully when the browser is busy)."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16: autocast of the network passes."),
) -> None:
    import torch

    from pipelines.devices import resolve_device
    from pipelines.errors import V2WError
    from pipelines.models.checkpoint import shipped_world_model
    from pipelines.official import open_model
    from pipelines.play import KeyBindings, PlaySettings, load_context
    from pipelines.play_server import ServerConfig, make_app, serve

    if max_sessions < 1 or (steps is not None and steps < 1) or (tick is not None and tick < 1) or threads < 1:
        raise V2WError("--max-sessions, --steps, --tick and --threads must be >= 1")
    torch.set_num_threads(threads)
    device = str(resolve_device(device))
    path = str(shipped_world_model()) if model == "tiny" else model
    m = open_model(path, device)
    KeyBindings.for_model(m)  # a MODEL without actions: refused now, not when a tab connects
    if context is None and data is None and model == "tiny":
        context = _fresh_boxing_start(context_frames or 2)
        context_frames = context_frames or 2
    frames, what = load_context(m, context, data, clip, context_frames)
    settings = PlaySettings(steps=steps, guidance=guidance, seed=seed, precision=precision, slide=slide)
    settings.rollout_config()  # validates the sampling flags now, not when a tab connects
    server = ServerConfig(host=host, port=port, max_sessions=max_sessions, tick_ms=tick, record_dir=record_dir)
    app = make_app(m, frames, settings, server, model_name=path, device=device, context_name=what)
    serve(app, server, log=lambda msg: console.print(msg))


def _fresh_boxing_start(n: int) -> str:
    """The first frames of a fresh Boxing episode (ale-py), as an .npy in a temp folder."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from pipelines.data.sample import make_atari_episodes
    from pipelines.data.video import decode_video

    tmp = Path(tempfile.mkdtemp(prefix="v2w-play-"))
    make_atari_episodes(tmp / "raw", episodes=1, frames=max(n, 8), seed=4242, game="boxing")
    video = sorted((tmp / "raw").glob("*.mp4"))[0]
    frames, _ = decode_video(video)
    np.save(tmp / "context.npy", np.ascontiguousarray(frames[:n]), allow_pickle=False)
    return str(tmp / "context.npy")
