#!/usr/bin/env bash
# Does a pretrained video base transfer? The Vid2World thesis at this scale, as one table at equal
# fine-tuning steps on the target game:
#   base          BASE causalized with the extrapolative transfer (the paper's choice)
#   from scratch  the same architecture, U-Net + Resampler re-initialised (VAE and CLIP kept)
#   shift, masked BASE with the other two temporal-conv weight transfers
#   old base      OLD_BASE (default: the shipped tiny base) causalized like "base"
# Each arm: `v2w causalize` (ACTIONS discrete actions, --action-injection INJECTION), `v2w train`
# STEPS steps on TRAIN_DATA, `v2w rollout` on TEST_DATA (true, shuffled and branch actions), `v2w eval`;
# then `python -m pipelines.study` prints the table (OUT/table.md). Re-runs skip finished arms, and
# an interrupted training resumes from its last checkpoint.
#
# Usage: examples/transfer_study.sh BASE TRAIN_DATA TEST_DATA [OUT] [--smoke]
# Settings from the environment: STEPS=1000 BATCH=4 LR=2e-4 NEW_LR=3e-3 LIMIT=16 DDIM_STEPS=10
#   ACTIONS=18 INJECTION=scale-shift OLD_BASE=tiny ARMS="base scratch shift masked old" THREADS=1
#   DEVICE=(cuda if there is one, else cpu) METRICS=psnr,ssim,lpips,fid,fvd
# --smoke: 2 steps, 2 clips, 2 DDIM steps (checks the script itself; tests do).
set -euo pipefail
POS=()
SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) POS+=("$a") ;;
  esac
done
if [ "${#POS[@]}" -lt 3 ]; then sed -n '13,17p' "$0" >&2; exit 2; fi
BASE=${POS[0]} TRAIN=${POS[1]} TEST=${POS[2]} OUT=${POS[3]:-runs/transfer_study}
if [ "$SMOKE" = 1 ]; then
  : "${STEPS:=2}" "${LIMIT:=2}" "${DDIM_STEPS:=2}" "${BATCH:=2}" "${DEVICE:=cpu}" "${METRICS:=psnr,lpips}"
fi
: "${STEPS:=1000}" "${BATCH:=4}" "${LR:=2e-4}" "${NEW_LR:=3e-3}" "${LIMIT:=16}" "${DDIM_STEPS:=10}"
: "${ACTIONS:=18}" "${INJECTION:=scale-shift}" "${OLD_BASE:=tiny}" "${ARMS:=base scratch shift masked old}"
: "${THREADS:=1}" "${METRICS:=psnr,ssim,lpips,fid,fvd}"
: "${DEVICE:=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}"
export OMP_NUM_THREADS=$THREADS

main() {
mkdir -p "$OUT"
declare -A NAME=([base]="base (extrapolative)" [scratch]="from scratch" [shift]="base, shift transfer"
                 [masked]="base, masked transfer" [old]="old base ($OLD_BASE)")
ROWS=()
for arm in $ARMS; do
  case "$arm" in
    base) flags=(--ckpt "$BASE" --transfer extrapolative) ;;
    scratch) flags=(--ckpt "$BASE" --from-scratch) ;;
    shift|masked) flags=(--ckpt "$BASE" --transfer "$arm") ;;
    old) flags=(--ckpt "$OLD_BASE" --transfer extrapolative) ;;
    *) echo "unknown arm $arm (base scratch shift masked old)" >&2; exit 2 ;;
  esac
  echo "== $arm: ${NAME[$arm]}"
  [ -e "$OUT/$arm/model/config.json" ] || v2w causalize "${flags[@]}" --out "$OUT/$arm/model" --action-dim "$ACTIONS" \
    --action-type discrete --action-injection "$INJECTION" --quiet
  if [ ! -e "$OUT/$arm/run/final/config.json" ]; then
    # shellcheck disable=SC2046
    v2w train --model "$OUT/$arm/model" --data "$TRAIN" --out "$OUT/$arm/run" --steps "$STEPS" --batch-size "$BATCH" \
      --lr "$LR" --new-layers-lr "$NEW_LR" --warmup 50 --lr-schedule cosine --ema-decay 0.999 --action-dropout 0.2 \
      --save-every 250 --device "$DEVICE" --quiet \
      $(compgen -G "$OUT/$arm/run/checkpoints/step-*/state.json" >/dev/null && echo --resume)
  fi
  if [ ! -e "$OUT/$arm/report/metrics.json" ]; then
    rm -rf "$OUT/$arm/pred"
    v2w rollout --model "$OUT/$arm/run/final" --data "$TEST" --split train --out "$OUT/$arm/pred" --limit "$LIMIT" \
      --context-frames 2 --shuffle-actions --steps "$DDIM_STEPS" --batch-size 16 --device "$DEVICE" --quiet
    v2w eval --pred "$OUT/$arm/pred" --out "$OUT/$arm/report" --metrics "$METRICS" --force --baseline copy-last \
      --device "$DEVICE" --quiet
  fi
  ROWS+=("${NAME[$arm]}=$OUT/$arm/report")
done
python -m pipelines.study "${ROWS[@]}" --steps "$STEPS" | tee "$OUT/table.md"
}

main  # (the whole file is read before anything runs, so editing it during a run is safe)
