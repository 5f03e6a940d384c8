#!/usr/bin/env bash
# The quickstart as a plain shell script: every stage is one command over files.
# (`v2w quickstart` runs the same chain from Python; this shows how the stages compose.)
set -euo pipefail
OUT=${1:-runs/quickstart-sh}
python - "$OUT/raw" <<'PY'
import sys
from pipelines.data.sample import make_atari_episodes
make_atari_episodes(sys.argv[1], game="breakout", episodes=24, frames=160, seed=0)
PY
v2w prepare "$OUT/raw" --out "$OUT/data" --size 64x64 --resize stretch --clip-len 8 --stride 4 --num-actions 4 --val-fraction 0.15 --quiet
v2w causalize --ckpt tiny-random --out "$OUT/model" --action-dim 4 --action-type discrete --quiet
v2w train --model "$OUT/model" --data "$OUT/data" --out "$OUT/run" --steps 60 --batch-size 2 --lr 1e-4 --ema-decay 0 --device cpu --quiet
v2w rollout --model "$OUT/run/final" --data "$OUT/data" --split val --out "$OUT/pred" --limit 8 --context-frames 2 --steps 10 --shuffle-actions --quiet
v2w eval --pred "$OUT/pred" --out "$OUT/report" --metrics psnr,ssim,lpips --baseline copy-last
