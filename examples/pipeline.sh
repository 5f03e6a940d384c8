#!/usr/bin/env bash
# The whole Vid2World pipeline as one shell script (RT-1-like robot data at 320x512).
# Each stage reads and writes files; see README for every flag.
set -euo pipefail
RAW=${RAW:-rt1_npz/}
v2w prepare "$RAW" --out data/rt1 --size 320x512 --clip-len 16 --val-fraction 0.05 --workers 8
v2w causalize --ckpt dynamicrafter --out models/rt1-causal --transfer extrapolative --norm per-frame --action-dim 7
v2w train --model models/rt1-causal --data data/rt1 --out runs/rt1 --steps 100000 --batch-size 16 --lr 1e-5
v2w rollout --model runs/rt1/final --data data/rt1 --split val --out preds/rt1 --shuffle-actions
v2w eval --pred preds/rt1 --out reports/rt1 --preset rt1 --baseline copy-last
