#!/usr/bin/env bash
# Vid2World on RECON (open-world navigation): prepare -> causalize -> train -> rollout -> eval,
# with the paper's settings (docs/design.md §5, §6, §9).
#
# Usage: examples/recon.sh [--smoke] [OUT]
#   OUT      output root (default: $V2W_OUT, else runs/recon; runs/recon-smoke with --smoke). Stages
#            write OUT/data, OUT/model, OUT/run, OUT/pred, OUT/report; a finished stage is skipped on a
#            re-run (delete its folder to redo it) and training resumes from its last checkpoint.
#   --smoke  every stage on a small synthetic stand-in in RECON's layout (python -m
#            pipelines.data.synthetic recon), with --ckpt tiny, tiny sizes and 2 train steps, on the CPU.
# Environment: RAW (folder of trajectory folders, default raw/recon), GPUS (training processes,
#   default 4), CKPT (base, default dynamicrafter = DynamiCrafter-512 from the Hugging Face cache, or a
#   path), WEIGHTS (folder with the LPIPS/FID/FVD weights, see README "v2w eval"), LIMIT (val clips to
#   roll out, default all).
#
# Data (download and convert yourself, once), as NoMaD, NWM and Vid2World do:
#   download RECON's public tarball (recon_dataset.tar.gz) from the dataset page, see
#   https://sites.google.com/view/recon-robot/dataset, and unpack it: a folder `recon_release` of
#   .hdf5 trajectories. Convert them with visualnav-transformer's script (see
#   https://github.com/robodhruv/visualnav-transformer, README "Data-Wrangling"):
#     python train/process_recon.py --input-dir <folder that holds recon_release> --output-dir raw/recon
#   which writes one folder per trajectory: 0.jpg, 1.jpg, ... + traj_data.pkl (`position` (T, 2),
#   `yaw` (T,)). v2w reads it at 4 Hz and turns the poses into ego-frame actions (dx, dy, dyaw).
#   Vid2World's README also changes visualnav-transformer's preprocessing resolution; see there.
#
# Paper settings: 320x512 frames, 20-frame clips, 4 context frames; DynamiCrafter-512 made causal
# with the extrapolative weight transfer; Diffusion Forcing, AdamW lr 1e-5, effective batch 16
# (4 GPUs x 2 clips x 2 accumulation steps), 100k steps, bf16 and gradient checkpointing; rollout
# with DDIM 50 steps and causal action guidance 2.5 (rescale 0.7); eval preset recon (LPIPS with
# AlexNet) against the copy-last baseline.
set -euo pipefail
. "$(dirname "$0")/_recipe.sh"
recipe_init recon "$@"

RAW=${RAW:-raw/recon}
GPUS=${GPUS:-4}
CKPT=${CKPT:-dynamicrafter}
SIZE=320x512 CLIP=20 CONTEXT=4 GUIDANCE=2.5
PREPARE=(--val-fraction 0.1 --workers 8)
TRAIN=(--steps 100000 --batch-size 2 --grad-accum 2 --lr 1e-5 --precision bf16 --gradient-checkpointing
       --save-every 1000 --keep 3)
ROLLOUT=(--steps 50 --device cuda)
EVAL=(--metrics psnr,ssim,lpips,fid,fvd)
[ -n "${LIMIT:-}" ] && ROLLOUT+=(--limit "$LIMIT")
[ -n "${WEIGHTS:-}" ] && EVAL+=(--weights "$WEIGHTS")

[ "$SMOKE" = 1 ] && smoke_settings recon 24x32  # synthetic stand-in, --ckpt tiny, CPU, seconds

done_or "$OUT/data" v2w prepare "$RAW" --out "$OUT/data" --format recon --size "$SIZE" --clip-len "$CLIP" "${PREPARE[@]}"
ADIM=$(action_dim "$OUT/data")  # 3: dx, dy, dyaw

# --norm per-frame is exactly causal and enables the rollout cache; --norm pooled is what the
# official Vid2World checkpoints use (README "v2w causalize")
CAUSALIZE=(--out "$OUT/model" --transfer extrapolative --norm per-frame --action-dim "$ADIM")
causalize_train_rollout_eval recon
