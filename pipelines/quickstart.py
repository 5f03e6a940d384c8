"""The embedded default run: every stage, chained as a shell script would, on a CPU in minutes.

  1. play Breakout with a random policy that holds each action 1-6 steps (ale-py ships the ROM)
     and write the logs as videos + actions;
  2. ``prepare`` them (64x64, Atari-style stretch, clips of 8 frames);
  3. ``causalize`` the tiny base (``--ckpt tiny``: DynamiCrafter's checkpoint layout, seeded
     random weights) with 4 discrete actions;
  4. a short ``train``; 5. ``rollout`` the val clips with true and shuffled actions;
  6. ``eval`` with the copy-last baseline; 7. ``report.md`` with the table, a side-by-side gif
     (reference | prediction) and the horizon plot.

The tiny base has no pretrained video prior and trains for seconds, so its predictions are not
expected to beat copy-last: this run shows the mechanics end to end, not the method's quality.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.fileio import write_bytes_atomic


@dataclass
class QuickstartConfig:
    out: str
    smoke: bool = False
    game: str = "breakout"
    train_steps: int | None = None


def run(cfg: QuickstartConfig, log=print) -> dict:
    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize
    from pipelines.data.prepare import PrepareConfig
    from pipelines.data.prepare import run as prepare
    from pipelines.data.sample import make_atari_episodes
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import run as evaluate
    from pipelines.rollout import RolloutConfig, RolloutJob, run_batch
    from pipelines.train import TrainConfig
    from pipelines.train import run as train

    out = Path(cfg.out)
    episodes, frames = (4, 40) if cfg.smoke else (24, 160)
    steps = cfg.train_steps or (3 if cfg.smoke else 60)
    times = {}

    def stage(name, fn):
        t0 = time.time()
        log(f"[{len(times) + 1}/7] {name}")
        result = fn()
        times[name] = round(time.time() - t0, 1)
        return result

    raw = out / "raw"
    stage(f"play {episodes} episodes of {cfg.game} ({frames} frames, random held actions) -> {raw}",
          lambda: make_atari_episodes(raw, game=cfg.game, episodes=episodes, frames=frames, seed=0))
    names = json.loads((raw / "actions.json").read_text())["actions"]
    data = stage(f"v2w prepare {raw} --out {out / 'data'} --size 64x64 --resize stretch --clip-len 8 --stride 4 --num-actions {len(names)}",
                 lambda: prepare(PrepareConfig(sources=[str(raw)], out=str(out / "data"), size=(64, 64), resize="stretch",
                                               clip_len=8, stride=4, val_fraction=0.15, num_actions=len(names), shard_size=64)))
    stage(f"v2w causalize --ckpt tiny-random --out {out / 'model'} --action-dim {len(names)} --action-type discrete",
          lambda: causalize(CausalizeConfig(ckpt="tiny-random", out=str(out / "model"), action_dim=len(names), action_type="discrete")))
    trained = stage(f"v2w train --model {out / 'model'} --data {out / 'data'} --out {out / 'run'} --steps {steps}",
                    lambda: train(TrainConfig(model=str(out / "model"), data=str(out / "data"), out=str(out / "run"),
                                              steps=steps, batch_size=2, lr=1e-4, save_every=max(steps, 1), log_every=1,
                                              ema_decay=0.0, device="cpu")))
    limit = 4 if cfg.smoke else 8
    stage(f"v2w rollout --model {out / 'run/final'} --data {out / 'data'} --split val --out {out / 'pred'} --limit {limit} --context-frames 2 --shuffle-actions",
          lambda: run_batch(RolloutJob(model=str(out / "run" / "final"), out=str(out / "pred"), data=str(out / "data"),
                                       limit=limit, context_frames=2, shuffle_actions=True, batch_size=4),
                            RolloutConfig(steps=4 if cfg.smoke else 10)))
    report = stage(f"v2w eval --pred {out / 'pred'} --out {out / 'report'} --baseline copy-last",
                   lambda: evaluate(EvalConfig(pred=str(out / "pred"), out=str(out / "report"), metrics=("psnr", "ssim", "lpips"))))
    _write_report(out, report, trained.losses, times, data.manifest)
    return {"out": str(out), "report": str(out / "report.md"), "seconds": times, "losses": trained.losses,
            "metrics": {k: {m: v.get(m) for m in ("psnr", "ssim", "lpips")} for k, v in report["sets"].items()}}


def _write_report(out: Path, report: dict, losses: list[float], times: dict, manifest: dict) -> None:
    from PIL import Image

    clips = sorted((out / "pred" / "clips").glob("*.npz"))
    pics = []
    if clips:
        d = np.load(clips[0])
        ref = np.concatenate([d["context"], d["ref"]])
        pred = np.concatenate([d["context"], d["pred"]])
        for r, p in zip(ref, pred):
            pics.append(Image.fromarray(np.concatenate([r, np.full((r.shape[0], 2, 3), 255, np.uint8), p], axis=1)).resize((260, 128), Image.NEAREST))
        pics[0].save(out / "side_by_side.gif", save_all=True, append_images=pics[1:], duration=250, loop=0)
    md = (out / "report" / "metrics.md").read_text()
    text = f"""# v2w quickstart report

Breakout, random held actions, {manifest['splits']['train']['samples']} train / {manifest['splits']['val']['samples']} val clips
of {manifest['clip_len']} frames at {manifest['resolution'][0]}x{manifest['resolution'][1]}.
Base: `--ckpt tiny` (DynamiCrafter's checkpoint layout, seeded random weights: no video prior,
and its VAE is random too, so decoded frames stay far from the truth, about 6 dB PSNR even for
a perfect latent), causalized with 4 discrete actions and trained for {len(losses)} steps on the
CPU (loss {losses[0]:.4f} -> {losses[-1]:.4f}). Expect it far below copy-last: this run shows the
pipeline's mechanics, not the method's quality.

## Metrics (2 context frames, the rest predicted)

{md}
![per-horizon curves](report/horizon.png)

Side by side (reference | prediction, context frames first): `side_by_side.gif`.

Stage times (s): {json.dumps(times)}
"""
    write_bytes_atomic(out / "report.md", text.encode())
