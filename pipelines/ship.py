"""Package a finished ``examples/tiny_world_model.sh`` run as the models shipped inside v2w.

``python -m pipelines.ship RUN DEST`` writes
  DEST/tiny-base/          model.ckpt + inference.yaml + pretrain.json (``--ckpt tiny``)
  DEST/tiny-world-model/   the trained world model (MODEL folder, float16 weights) + recipe.json:
                           the recipe's settings and every number it measured (world model,
                           from-scratch control, copy-last, shuffled actions, per horizon)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipelines.evaluate import horizon_table
from pipelines.fileio import read_json, write_json_atomic
from pipelines.models.world_model import load_model
from pipelines.train import loss_curve

METRICS = ("psnr", "ssim", "lpips")


def _scores(report: dict, name: str) -> dict:
    s = report["sets"].get(name) or {}
    return {k: s[k] for k in s if (k.split("_per_")[0] in METRICS and not k.endswith("_per_clip")) or k == "n_clips"}


def _report(folder: Path) -> dict:
    r = read_json(folder / "metrics.json")
    return {**{name: _scores(r, name) for name in r["sets"]}, "action_following": r.get("action_following")}


def _trained(run: Path) -> dict:
    meta = read_json(run / "final" / "config.json")["trained"]
    return {"steps": meta["steps"], "planned_steps": meta.get("planned_steps"), "loss_curve": loss_curve(run)}


def summary_markdown(res: dict) -> str:
    wm, scratch = res["eval"]["world_model"], res["eval"]["from_scratch"]
    rows = {"world model": wm["model"], "from scratch": scratch["model"], "copy-last": wm["copy-last"],
            "world model, shuffled actions": wm["shuffled-actions"]}
    gap = wm.get("action_following") or {}
    b, w = res["base"], res["world_model"]
    text = horizon_table(rows, mean=True) + "\n"
    text += ("Action following (true minus shuffled actions): " + ", ".join(f"{k.upper()} {v:+.1e}" for k, v in gap.items() if k in METRICS)
             + f" over {gap.get('n_clips')} clips.\n\n")
    curves = {name: dict(map(tuple, res[key]["loss_curve"])) for name, key in (("world model", "world_model"), ("from scratch", "from_scratch"))}
    steps = sorted(set(curves["world model"]) & set(curves["from scratch"]))
    shown = [st for st in steps if st in (50, 150, 300, 500)] + steps[-1:]
    if shown:
        text += ("Train loss (mean of the 50 steps before), world model vs from scratch: "
                 + ", ".join(f"step {st}: {curves['world model'][st]:.3f} vs {curves['from scratch'][st]:.3f}" for st in shown) + ".\n\n")
    text += (f"Base: `v2w pretrain` VAE {b['vae']['steps']} steps (val round trip {b['vae']['val_round_trip_psnr_db']} dB PSNR), "
             f"U-Net {b['unet']['steps']} steps (loss {b['unet']['first_loss']:.3f} -> {b['unet']['last_loss']:.3f}). "
             f"World model and from-scratch control: {w['steps']} and {res['from_scratch']['steps']} train steps. "
             f"Evaluated on {wm['model']['n_clips']} clips of fresh Boxing episodes (seeds the training never saw), "
             f"2 context frames, {res['settings'].get('DDIM_STEPS', '?')} DDIM steps.\n")
    return text


def ship(run: str | Path, dest: str | Path) -> dict:
    run, dest = Path(run), Path(dest)
    base = dest / "tiny-base"
    base.mkdir(parents=True, exist_ok=True)
    for name in ("model.ckpt", "inference.yaml", "pretrain.json"):
        shutil.copyfile(run / "base" / name, base / name)
    res = {
        "made_by": "examples/tiny_world_model.sh",
        "settings": read_json(run / "settings.json") if (run / "settings.json").exists() else {},
        "base": {k: v for k, v in read_json(run / "base" / "pretrain.json").items() if k in ("vae", "unet", "seconds", "data")},
        "world_model": _trained(run / "run"),
        "from_scratch": _trained(run / "run-scratch"),
        "eval": {"world_model": _report(run / "report-run"), "from_scratch": _report(run / "report-run-scratch")},
    }
    res["summary_md"] = summary_markdown(res)
    wm = dest / "tiny-world-model"
    load_model(run / "run" / "final").save_pretrained(wm, half=True)
    write_json_atomic(wm / "recipe.json", res)
    return res


def ship_world_model(run: str | Path | None, report: str | Path, dest: str | Path, commands: list[str], note: str = "",
                     model: str | Path | None = None, extra: dict | None = None) -> dict:
    """Ship only a world model with its eval REPORT: DEST/tiny-world-model/ (float16 MODEL) +
    recipe.json (the commands that made it, its numbers). The model is RUN/final (a ``v2w train``
    RUN on the shipped base) or ``model`` (e.g. a ``v2w pretrain --decoder-only`` MODEL, with
    ``run=None``); ``extra`` entries are added to recipe.json as they are (e.g. earlier numbers)."""
    report, dest = Path(report), Path(dest)
    r = _report(report)
    res = {"made_by": "the commands below (the base is the shipped tiny-base)", "commands": commands,
           "world_model": _trained(Path(run)) if run is not None else None, "eval": {"world_model": r}, "note": note,
           **(extra or {})}
    rows = {"world model": r["model"], "copy-last": r["copy-last"], "world model, shuffled actions": r["shuffled-actions"]}
    cf = read_json(report / "metrics.json").get("counterfactual")
    text = horizon_table(rows, mean=True) + "\n"
    gap = r.get("action_following") or {}
    text += ("Action following (true minus shuffled actions): "
             + ", ".join(f"{k.upper()} {v:+.3f}" for k, v in gap.items() if k in METRICS) + f" over {gap.get('n_clips')} clips.\n")
    if cf:
        res["eval"]["counterfactual"] = {k: cf[k] for k in ("model", "copy-last", "factual_pred_vs_alt_ref", "gain", "emulator_gap")
                                         if k in cf}
        text += (f"Counterfactual gain over {cf['n_branches']} emulator branches: PSNR {cf['gain']['psnr']:+.3f} dB"
                 + (f", LPIPS {cf['gain']['lpips']:+.4f}" if "lpips" in cf["gain"] else "") + ".\n")
    text += f"\n{note}\n" if note else ""
    res["summary_md"] = text
    wm = dest / "tiny-world-model"
    load_model(model if model is not None else Path(run) / "final").save_pretrained(wm, half=True)
    write_json_atomic(wm / "recipe.json", res)
    return res


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m pipelines.ship RUN DEST   (RUN: examples/tiny_world_model.sh's output folder)")
    print(ship(sys.argv[1], sys.argv[2])["summary_md"])
