#!/usr/bin/env bash
# Generate a small real Atari dataset (random policy, ale-py ROMs) and prepare it, step by step.
set -euo pipefail
OUT=${1:-runs/sample}
python - "$OUT/raw" <<'PY'
import sys
from pipelines.data.sample import make_atari_episodes
make_atari_episodes(sys.argv[1], game="breakout", episodes=24, frames=160, seed=0)
PY
v2w prepare "$OUT/raw" --out "$OUT/data" --size 64x64 --resize stretch --clip-len 16 --stride 8 --num-actions 4 --val-fraction 0.15
v2w info "$OUT/data"
