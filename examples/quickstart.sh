#!/usr/bin/env bash
# The quickstart as a plain shell script: every stage is one command over files.
# (`v2w quickstart` runs the same chain from Python; this shows how the stages compose.)
# MODEL: the world model to roll out [default: the one shipped inside v2w].
set -euo pipefail
OUT=${1:-runs/quickstart-sh}
MODEL=${MODEL:-$(python -c "from pipelines.models.checkpoint import shipped_world_model; print(shipped_world_model())")}
# fresh episodes; every clip also replayed under 2 other actions from the emulator's cloned state (counterfactual branches)
python -m pipelines.data.sample --game boxing --episodes 12 --frames 120 --seed 2000 --branches 2 --clip-len 8 --branch-context 2 "$OUT/raw"
v2w prepare "$OUT/raw" --out "$OUT/data" --size 64x64 --resize stretch --clip-len 8 --stride 8 --num-actions 18 --val-fraction 0.5 --seed 2000 --quiet
v2w rollout --model "$MODEL" --data "$OUT/data" --split val --out "$OUT/pred" --limit 12 --context-frames 2 --steps 10 --shuffle-actions --batch-size 8 --quiet
# one context, each move held (NOOP, UP, RIGHT, LEFT, DOWN): does the prediction follow the action?
python -c "import numpy as np, sys, glob; np.save(sys.argv[1], np.load(sorted(glob.glob(sys.argv[2]))[0])['context'])" "$OUT/context.npy" "$OUT/pred/clips/*.npz"
v2w rollout --model "$MODEL" --context "$OUT/context.npy" --context-frames 2 --action-sweep --sweep-actions 0,2,3,4,5 --horizon 6 --steps 10 --out "$OUT/sweep" --quiet
v2w eval --pred "$OUT/pred" --out "$OUT/report" --metrics psnr,ssim,lpips --baseline copy-last
# training works end to end: the shipped base (DynamiCrafter layout), causalized, fine-tuned briefly
v2w causalize --ckpt tiny --out "$OUT/model" --action-dim 18 --action-type discrete --quiet
v2w train --model "$OUT/model" --data "$OUT/data" --out "$OUT/run" --steps 30 --batch-size 2 --lr 1e-4 --ema-decay 0 --log-every 1 --device cpu --quiet
