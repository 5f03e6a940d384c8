"""The embedded default run: the shipped world model on fresh game episodes, plus a short fine-tune,
every stage chained as a shell script would, on a CPU in minutes.

  1. play Boxing with a random policy that holds each action 1-6 steps (ale-py ships the ROM),
     with seeds no stage of the shipped model's recipe saw, and write the logs as videos + actions,
     with every clip also replayed under 2 other actions from the emulator's cloned state
     (counterfactual branches: what those actions really do);
  2. ``prepare`` them (64x64, Atari-style stretch, clips of 8 frames; half the episodes for the
     fine-tune, half for the evaluation);
  3. ``rollout`` the shipped world model (``pipelines/assets/tiny-world-model``, made by
     ``examples/tiny_world_model.sh``) from 2 context frames with the true, shuffled and the
     branches' actions, and an action sweep (one context, each move held);
  4. ``eval`` with the copy-last baseline and the counterfactual scores;
  5. ``causalize`` the shipped base (``--ckpt tiny``, DynamiCrafter's checkpoint layout) and a
     short ``train`` from it, to show training works end to end (its loss curve goes in the report);
  6. ``report.md`` with the table, the recipe's from-scratch comparison, a side-by-side gif
     (reference | prediction) and the horizon plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize
from pipelines.data.prepare import PrepareConfig
from pipelines.data.prepare import run as prepare
from pipelines.data.sample import make_atari_episodes
from pipelines.evaluate import EvalConfig, horizon_table
from pipelines.evaluate import run as evaluate
from pipelines.fileio import write_bytes_atomic
from pipelines.models.checkpoint import shipped_world_model
from pipelines.rollout import RolloutJob, run_batch, run_sweep
from pipelines.sampler import RolloutConfig
from pipelines.train import TrainConfig
from pipelines.train import run as train

NUM_ACTIONS = 18  # Boxing's (and Atari's full) action set
BRANCHES = 2  # counterfactual branches per clip: 1 held action + 1 random sequence
SWEEP_ACTIONS = [0, 2, 3, 4, 5]  # NOOP, UP, RIGHT, LEFT, DOWN (Boxing's ids): the moves, kept short for time


@dataclass
class QuickstartConfig:
    out: str
    smoke: bool = False
    train_steps: int | None = None
    model: str | None = None  # world model to roll out [default: the shipped one]
    seed: int = 2000  # episodes' seed: the recipe used 0-7 (base), 1-8 (train) and 1000-1001 (test)


def run(cfg: QuickstartConfig, log=print) -> dict:
    out = Path(cfg.out)
    model = cfg.model or str(shipped_world_model())
    episodes, frames = (4, 24) if cfg.smoke else (12, 120)
    steps = cfg.train_steps or (2 if cfg.smoke else 30)
    limit = 2 if cfg.smoke else 12
    times = {}

    def stage(name, fn, key=None):
        t0 = time.time()
        log(f"[{len(times) + 1}/8] {name}")
        result = fn()
        times[key or (name.split()[1] if name.startswith("v2w") else name.split()[0])] = round(time.time() - t0, 1)
        return result

    raw = out / "raw"
    stage(f"play {episodes} fresh episodes of Boxing ({frames} frames, random held actions, seed {cfg.seed}, "
          f"{BRANCHES} counterfactual branches per clip) -> {raw}",
          lambda: make_atari_episodes(raw, game="boxing", episodes=episodes, frames=frames, seed=cfg.seed,
                                      branches=BRANCHES, clip_len=8, branch_context=2))
    data = stage(f"v2w prepare {raw} --out {out / 'data'} --size 64x64 --resize stretch --clip-len 8 --stride 8 --num-actions {NUM_ACTIONS} --val-fraction 0.5",
                 lambda: prepare(PrepareConfig(sources=[str(raw)], out=str(out / "data"), size=(64, 64), resize="stretch",
                                               clip_len=8, stride=8, val_fraction=0.5, num_actions=NUM_ACTIONS, shard_size=64,
                                               seed=cfg.seed)))
    ddim = 2 if cfg.smoke else 10
    stage(f"v2w rollout --model {model} --data {out / 'data'} --split val --out {out / 'pred'} --limit {limit} --context-frames 2 --steps {ddim} --shuffle-actions",
          lambda: run_batch(RolloutJob(model=model, out=str(out / "pred"), data=str(out / "data"), limit=limit,
                                       context_frames=2, shuffle_actions=True, batch_size=8),
                            RolloutConfig(steps=ddim)))
    ctx = out / "sweep_context.npy"
    sweep_ids = ",".join(map(str, SWEEP_ACTIONS))
    stage(f"v2w rollout --model {model} --context {ctx} --context-frames 2 --action-sweep --sweep-actions {sweep_ids} "
          f"--horizon 6 --steps {ddim} --out {out / 'sweep'}",
          lambda: _sweep(out, ctx, model, ddim), key="sweep")
    report = stage(f"v2w eval --pred {out / 'pred'} --out {out / 'report'} --metrics psnr,ssim,lpips --baseline copy-last",
                   lambda: evaluate(EvalConfig(pred=str(out / "pred"), out=str(out / "report"), metrics=("psnr", "ssim", "lpips"))))
    stage(f"v2w causalize --ckpt tiny --out {out / 'model'} --action-dim {NUM_ACTIONS} --action-type discrete",
          lambda: causalize(CausalizeConfig(ckpt="tiny", out=str(out / "model"), action_dim=NUM_ACTIONS, action_type="discrete")))
    trained = stage(f"v2w train --model {out / 'model'} --data {out / 'data'} --out {out / 'run'} --steps {steps} --batch-size 2 --lr 1e-4",
                    lambda: train(TrainConfig(model=str(out / "model"), data=str(out / "data"), out=str(out / "run"),
                                              steps=steps, batch_size=2, lr=1e-4, save_every=max(steps, 1), log_every=1,
                                              ema_decay=0.0, device="cpu")))
    stage("report", lambda: _write_report(out, model, report, trained.losses, times, data.manifest))
    return {"out": str(out), "report": str(out / "report.md"), "model": model, "seconds": times, "losses": trained.losses,
            "metrics": {k: {m: v.get(m) for m in ("psnr", "ssim", "lpips")} for k, v in report["sets"].items()},
            "action_gap": report.get("action_following"),
            "counterfactual_gain": {m: (report.get("counterfactual") or {}).get("gain", {}).get(m) for m in ("psnr", "lpips")}}


def _sweep(out: Path, ctx: Path, model: str, ddim: int) -> dict:
    """The action sweep from the first rolled-out clip's context frames."""
    first = sorted((out / "pred" / "clips").glob("*.npz"))[0]
    with open(ctx, "wb") as f:
        np.save(f, np.load(first)["context"], allow_pickle=False)
    job = RolloutJob(model=model, out=str(out / "sweep"), context=str(ctx), context_frames=2, horizon=6,
                     action_sweep=True, sweep_actions=SWEEP_ACTIONS, batch_size=len(SWEEP_ACTIONS))
    return run_sweep(job, RolloutConfig(steps=ddim))


def _recipe_results(model: str) -> dict | None:
    path = Path(model) / "recipe.json"
    return json.loads(path.read_text()) if path.exists() else None


def _gif(out: Path) -> None:
    from PIL import Image

    clips = sorted((out / "pred" / "clips").glob("*.npz"))[:4]
    rows = []
    for c in clips:
        d = np.load(c)
        ref, pred = np.concatenate([d["context"], d["ref"]]), np.concatenate([d["context"], d["pred"]])
        rows.append([np.concatenate([r, np.full((r.shape[0], 2, 3), 255, np.uint8), p], axis=1) for r, p in zip(ref, pred)])
    if not rows:
        return
    frames = [np.concatenate([row[i] for row in rows], axis=0) for i in range(len(rows[0]))]
    pics = [Image.fromarray(f).resize((f.shape[1] * 2, f.shape[0] * 2), Image.NEAREST) for f in frames]
    pics[0].save(out / "side_by_side.gif", save_all=True, append_images=pics[1:], duration=300, loop=0)
    # the same as a still strip: per clip, reference frames on top, predictions below, time left to right
    gap = lambda n: np.full((n, 2, 3), 255, np.uint8)  # noqa: E731
    strips = []
    for c in clips[:2]:
        d = np.load(c)
        ref, pred = np.concatenate([d["context"], d["ref"]]), np.concatenate([d["context"], d["pred"]])
        top = np.concatenate([x for f in ref for x in (f, gap(f.shape[0]))], axis=1)
        bottom = np.concatenate([x for f in pred for x in (f, gap(f.shape[0]))], axis=1)
        strips += [top, bottom, np.full((6, top.shape[1], 3), 255, np.uint8)]
    strip = np.concatenate(strips[:-1], axis=0)
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(out / "side_by_side.png")


def _write_report(out: Path, model: str, report: dict, losses: list[float], times: dict, manifest: dict) -> None:
    _gif(out)
    md = (out / "report" / "metrics.md").read_text()
    recipe = _recipe_results(model)
    recipe_md = ""
    if recipe:
        recipe_md = "\n## How the shipped model was made (examples/tiny_world_model.sh)\n\n" + recipe.get("summary_md", "") + "\n"
    curve = ", ".join(f"{x:.3f}" for x in losses[:: max(1, len(losses) // 10)])
    sweep_info = json.loads((out / "sweep" / "rollout.json").read_text())
    sweep_spread = f"{sweep_info['spread']['psnr_db']:.1f}" if sweep_info.get("spread") else "n/a"
    text = f"""# v2w quickstart report

World model: `{model}`, rolled out on {report['sets']['model']['n_clips']} clips of fresh Boxing
episodes (seed unseen by its recipe), {manifest['clip_len']} frames at
{manifest['resolution'][0]}x{manifest['resolution'][1]}: 2 context frames, the rest predicted from
the logged actions; "shuffled-actions" rolls out the same clips with another clip's actions; the
counterfactual section rolls each clip out again under the actions of its emulator branches and
scores it against what the emulator really showed.

## Metrics

{md}
Per predicted frame:

{horizon_table(report["sets"])}
![per-horizon curves](report/horizon.png)

Side by side (reference | prediction, context frames first, 4 clips): `side_by_side.gif`;
as a still (2 clips; per clip the reference on top, the prediction below, time left to right):

![frame strip](side_by_side.png)

## Action sweep

One context (2 frames, blue border), then 6 frames predicted with each move held (NOOP, UP, RIGHT, LEFT, DOWN)
(`sweep/sweep.png`, `sweep/sweep.mp4`). Rows that look alike mean the model ignores that action;
mean PSNR between rows: {sweep_spread} dB (identical rows: 100).

![action sweep](sweep/sweep.png)
{recipe_md}
## Fine-tune check

`v2w causalize --ckpt tiny` (the shipped bidirectional base) then {len(losses)} steps of
`v2w train` on the other half of the fresh episodes: loss {curve} (one noisy minibatch per step).

Stage times (s): {json.dumps(times)}
"""
    write_bytes_atomic(out / "report.md", text.encode())
