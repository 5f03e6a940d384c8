# Shared plumbing of examples/rt1.sh, csgo.sh and recon.sh (sourced by them, not run on its own).
# The recipes keep their v2w commands in plain sight; this file only parses the arguments, sets
# up the --smoke scratch folder and starts training on one or several processes.
#
# recipe_init NAME "$@"  sets SMOKE (0|1) and OUT (the output root) and exports nothing.

say() { printf '\n== %s\n' "$*" >&2; }
run() {  # print the command, run it, then print how long it took
  local t0=${EPOCHREALTIME//[.,]/} rc=0 dt
  say "$*"
  "$@" || rc=$?
  if [ -n "$t0" ]; then
    dt=$(( ${EPOCHREALTIME//[.,]/} - t0 ))
    printf '   (%d.%d s)\n' $((dt / 1000000)) $((dt / 100000 % 10)) >&2
  fi
  return $rc
}
die() { echo "error: $*" >&2; exit 1; }

recipe_init() {
  local name=$1 arg
  shift
  SMOKE=0
  OUT=${V2W_OUT:-}
  for arg in "$@"; do
    case $arg in
      --smoke) SMOKE=1 ;;
      -h | --help)  # the script's header comment is its help
        sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
        exit 0 ;;
      -*) echo "error: unknown option $arg (usage: $0 [--smoke] [OUT])" >&2; exit 2 ;;
      *) OUT=$arg ;;
    esac
  done
  command -v v2w >/dev/null || die "v2w is not on PATH (activate the venv where v2w is installed: . .venv/bin/activate)"
  if [ "$SMOKE" = 1 ]; then
    OUT=${OUT:-runs/$name-smoke}
    # a fresh run each time, but never wipe a folder this script did not make
    if [ -d "$OUT" ] && [ ! -e "$OUT/.v2w-smoke" ] && [ -n "$(ls -A "$OUT")" ]; then
      die "$OUT is not empty and was not made by --smoke; choose another output folder"
    fi
    rm -rf "$OUT"/{raw,data,model,run,pred,report}
    mkdir -p "$OUT"
    touch "$OUT/.v2w-smoke"
  else
    OUT=${OUT:-runs/$name}
    mkdir -p "$OUT"
  fi
}

# done_or PATH CMD...: run CMD unless PATH exists (a finished stage; delete its folder to redo it)
done_or() {
  local path=$1
  shift
  if [ -e "$path" ]; then say "skip: $path exists (delete it to redo this stage)"; else run "$@"; fi
}

# action_dim DATA: the action width `v2w prepare` measured (what --action-dim must be)
action_dim() {
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["action_dim"])' "$1/manifest.json"
}

# causalize_tiny ARGS...: `v2w causalize --ckpt tiny ARGS` (the base shipped in pipelines/assets/tiny-base);
# SMOKE_CKPT=NAME|PATH picks another small base instead (e.g. tiny-random: random weights, same layout).
causalize_tiny() {
  run v2w causalize --ckpt "${SMOKE_CKPT:-tiny}" "$@"
}

# train ARGS...: `v2w train ARGS` on GPUS processes (default 1). With GPUS > 1 this is
#   accelerate launch --multi_gpu --num_processes $GPUS -m v2w_cli train ARGS
# which is what `v2w train ARGS --num-processes $GPUS` runs too. Each process reads its own shards
# (DATA needs >= GPUS train shards); resume with the same GPUS. Resumes when RUN has checkpoints.
train() {
  local run_dir="" prev="" a
  for a in "$@"; do
    [ "$prev" = "--out" ] && run_dir=$a
    prev=$a
  done
  if [ -n "$run_dir" ] && compgen -G "$run_dir/checkpoints/step-*/state.json" >/dev/null; then  # a complete checkpoint
    set -- "$@" --resume
  fi
  if [ "${GPUS:-1}" -gt 1 ]; then
    run accelerate launch --multi_gpu --num_processes "$GPUS" -m v2w_cli train "$@"
  else
    run v2w train "$@"
  fi
}

# smoke_settings FORMAT HxW [PREPARE flags...]: --smoke replaces the paper's settings with seconds-sized
# ones: a synthetic stand-in in FORMAT's real layout (raw frames HxW), one CPU process, 32x32 clips of 6.
smoke_settings() {
  local format=$1 size=$2
  shift 2
  run python -m pipelines.data.synthetic "$format" "$OUT/raw" --episodes 4 --frames "${SMOKE_FRAMES:-12}" --size "$size"
  RAW=$OUT/raw GPUS=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a tiny model runs faster on one thread than on contended cores
  SIZE=32x32 CLIP=6
  PREPARE=(--val-fraction 0.25 "$@" --store npy --quiet)
  TRAIN=(--steps 2 --batch-size 1 --lr 1e-4 --ema-decay 0 --save-every 1000 --device cpu --quiet)
  ROLLOUT=(--steps 2 --limit 2 --horizon 2 --device cpu --quiet)
  EVAL=(--metrics psnr,ssim)
}

# causalize_train_rollout_eval PRESET: the last four stages, from CAUSALIZE, TRAIN, ROLLOUT, EVAL,
# CONTEXT, GUIDANCE and CKPT as the recipe set them.
causalize_train_rollout_eval() {
  local preset=$1
  if [ "$SMOKE" = 1 ]; then
    causalize_tiny "${CAUSALIZE[@]}" --quiet
  else
    done_or "$OUT/model" v2w causalize --ckpt "$CKPT" "${CAUSALIZE[@]}"
  fi
  # GPUS=4: accelerate launch --multi_gpu --num_processes 4 -m v2w_cli train ... (= v2w train ... --num-processes 4)
  train --model "$OUT/model" --data "$OUT/data" --out "$OUT/run" "${TRAIN[@]}"
  done_or "$OUT/pred/rollout.json" v2w rollout --model "$OUT/run/final" --data "$OUT/data" --split val --out "$OUT/pred" \
    --context-frames "$CONTEXT" --guidance "$GUIDANCE" --guidance-rescale 0.7 --history-noise 20 --shuffle-actions "${ROLLOUT[@]}"
  run v2w eval --pred "$OUT/pred" --out "$OUT/report" --preset "$preset" --baseline copy-last "${EVAL[@]}"
  say "report: $OUT/report/metrics.md"
}
