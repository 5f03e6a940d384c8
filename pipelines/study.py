"""One table for several arms of a study (``examples/transfer_study.sh``): each arm a ``v2w eval``
REPORT of a world model rolled out on the same clips, e.g. the same architecture from a pretrained
base, from scratch and with each weight transfer, at equal fine-tuning steps.

    python -m pipelines.study "new base=reports/a" "from scratch=reports/b" ... [--steps N]

Columns: PSNR, LPIPS, FVD and FID (n/a with the reason when not computed), true - shuffled actions
(PSNR, dB; needs ``rollout --shuffle-actions``) and the counterfactual gain (PSNR, dB; needs clips
with emulator branches), plus copy-last's PSNR and LPIPS on the first arm's clips for scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.fileio import read_json


def _cell(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _frechet(scores: dict, metric: str) -> str:
    """FID/FVD with a * when computed below the protocol's sample count (``eval --force``)."""
    return _cell(scores.get(metric), ".1f") + ("*" if (scores.get(f"{metric}_info") or {}).get("biased") else "")


def _why(report: dict, metric: str) -> str:
    info = report["sets"]["model"].get(f"{metric}_info") or {}
    why = info.get("skipped") or (report.get("skipped") or {}).get(metric)
    return f" ({why})" if why else ""


def arms_table(arms: dict[str, str | Path], steps: int | None = None) -> str:
    """Markdown: one row per arm (name -> REPORT folder), then copy-last, then the reasons for n/a."""
    lines = ["| arm | PSNR | LPIPS | FVD | FID | true - shuffled (dB) | counterfactual gain (dB) |", "|---|---|---|---|---|---|---|"]
    notes, first = [], None
    for name, folder in arms.items():
        r = read_json(Path(folder) / "metrics.json")
        first = first or r
        m = r["sets"]["model"]
        gap = (r.get("action_following") or {}).get("psnr")
        cf = ((r.get("counterfactual") or {}).get("gain") or {}).get("psnr")
        lines.append(f"| {name} | {_cell(m.get('psnr'), '.2f')} | {_cell(m.get('lpips'))} | {_frechet(m, 'fvd')} | "
                     f"{_frechet(m, 'fid')} | {_cell(gap, '+.2f')} | {_cell(cf, '+.2f')} |")
        for metric in ("fvd", "fid"):
            if m.get(metric) is None and _why(r, metric):
                notes.append(f"- {metric.upper()} ({name}): {_why(r, metric)[2:-1]}")
    base = (first or {}).get("sets", {}).get("copy-last")
    if base:
        lines.append(f"| copy-last | {_cell(base.get('psnr'), '.2f')} | {_cell(base.get('lpips'))} | {_frechet(base, 'fvd')} | "
                     f"{_frechet(base, 'fid')} | | |")
    n = (first or {}).get("sets", {}).get("model", {}).get("n_clips")
    text = "\n".join(lines) + "\n\n" + (f"{n} clips" if n else "") + (f", {steps} fine-tuning steps per arm" if steps else "")
    text += ". * biased: fewer samples than the feature dimension (eval --force).\n"
    if notes:
        text += "\n" + "\n".join(dict.fromkeys(notes)) + "\n"
    return text


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = None
    if "--steps" in argv:
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i : i + 2]
    if not argv or any("=" not in a for a in argv):
        raise SystemExit('usage: python -m pipelines.study "NAME=REPORT" ... [--steps N]')
    print(arms_table(dict(a.split("=", 1) for a in argv), steps), end="")


if __name__ == "__main__":
    main()
