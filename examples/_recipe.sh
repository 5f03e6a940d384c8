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

# causalize_tiny ARGS...: `v2w causalize --ckpt tiny ARGS`; an install without the shipped tiny base
# (pipelines/assets/tiny-base) falls back to `--ckpt tiny-random`, the same layout with random weights.
# SMOKE_CKPT=NAME|PATH picks another small base instead.
causalize_tiny() {
  local err
  if [ -n "${SMOKE_CKPT:-}" ]; then
    run v2w causalize --ckpt "$SMOKE_CKPT" "$@"
    return
  fi
  err=$(mktemp)
  say "v2w causalize --ckpt tiny $*"
  if v2w causalize --ckpt tiny "$@" 2>"$err"; then
    cat "$err" >&2
  elif grep -q -- "tiny-random" "$err"; then
    echo "note: this install has no shipped tiny base; using --ckpt tiny-random" >&2
    run v2w causalize --ckpt tiny-random "$@"
  else
    cat "$err" >&2
    rm -f "$err"
    return 1
  fi
  rm -f "$err"
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
