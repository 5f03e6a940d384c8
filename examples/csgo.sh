#!/usr/bin/env bash
# Vid2World on CS:GO (game simulation): prepare -> causalize -> train -> rollout -> eval,
# with the paper's settings (docs/design.md §5, §6, §9).
#
# Usage: examples/csgo.sh [--smoke] [OUT]
#   OUT      output root (default: $V2W_OUT, else runs/csgo; runs/csgo-smoke with --smoke). Stages write
#            OUT/data, OUT/model, OUT/run, OUT/pred, OUT/report; a finished stage is skipped on a
#            re-run (delete its folder to redo it) and training resumes from its last checkpoint.
#   --smoke  every stage on a small synthetic stand-in in DIAMOND's hdf5 layout (python -m
#            pipelines.data.synthetic csgo), with --ckpt tiny, tiny sizes and 2 train steps, on the CPU.
# Environment: RAW (folder of .hdf5 episodes, default raw/csgo/full_res), GPUS (training processes,
#   default 4), CKPT (base, default dynamicrafter = DynamiCrafter-512 from the Hugging Face cache, or a
#   path), WEIGHTS (folder with the LPIPS/FID/FVD weights, see README "v2w eval"), LIMIT (val clips to
#   roll out, default all).
#
# Data (download and unpack yourself, once), as DIAMOND and Vid2World use it:
#   the CS:GO deathmatch dataset of Pearce & Zhu, `dataset_dm_scraped_dust2`: download the .tar files
#   of `dataset_dm_scraped_dust2_tars` from the OneDrive link in the dataset repository, see
#   https://github.com/TeaPearce/Counter-Strike_Behavioural_Cloning (DIAMOND's README: 5.5M frames,
#   95 h of play, ~660 GB). Unpack them with DIAMOND's script, run from a checkout of DIAMOND's
#   `csgo` branch (https://github.com/eloialonso/diamond; it reads test_split.txt from there):
#     python src/process_csgo_tar_files.py <folder_with_the_tars> raw/csgo
#   v2w reads raw/csgo/full_res (e.g. 1-200/hdf5_dm_july2021_1.hdf5; per frame `frame_i_x` 150x280
#   BGR and `frame_i_y` the 51-d multi-hot action, 16 Hz); the low_res folder is DIAMOND's own format.
#   v2w's val split is random by episode (--val-fraction 0.09, about DIAMOND's 500 of 5503 episodes),
#   not DIAMOND's test_split.txt.
#
# Paper settings: 320x512 frames, 16-frame clips, 4 context frames; DynamiCrafter-512 made causal
# with the extrapolative weight transfer, a discrete action encoder for the multi-hot actions;
# Diffusion Forcing, AdamW lr 1e-5, effective batch 16 (4 GPUs x 2 clips x 2 accumulation steps),
# 100k steps, bf16 and gradient checkpointing; rollout with DDIM 50 steps and causal action
# guidance 2.5 (rescale 0.7); eval preset csgo (LPIPS with VGG) against the copy-last baseline.
set -euo pipefail
. "$(dirname "$0")/_recipe.sh"
recipe_init csgo "$@"

RAW=${RAW:-raw/csgo/full_res}
GPUS=${GPUS:-4}
CKPT=${CKPT:-dynamicrafter}
SIZE=320x512 CLIP=16 CONTEXT=4 GUIDANCE=2.5
PREPARE=(--val-fraction 0.09 --workers 8 --skip-bad)  # unreadable files are skipped and listed in the manifest
TRAIN=(--steps 100000 --batch-size 2 --grad-accum 2 --lr 1e-5 --precision bf16 --gradient-checkpointing
       --save-every 1000 --keep 3)
ROLLOUT=(--steps 50 --device cuda)
EVAL=(--metrics psnr,ssim,lpips,fid,fvd)
[ -n "${LIMIT:-}" ] && ROLLOUT+=(--limit "$LIMIT")
[ -n "${WEIGHTS:-}" ] && EVAL+=(--weights "$WEIGHTS")

[ "$SMOKE" = 1 ] && smoke_settings csgo 30x56  # synthetic stand-in, --ckpt tiny, CPU, seconds

done_or "$OUT/data" v2w prepare "$RAW" --out "$OUT/data" --format hdf5 --size "$SIZE" --clip-len "$CLIP" "${PREPARE[@]}"
ADIM=$(action_dim "$OUT/data")  # 51: 11 keys, 2 mouse buttons, 23 mouse-x and 15 mouse-y bins

# --norm per-frame is exactly causal and enables the rollout cache; --norm pooled is what the
# official Vid2World checkpoints use (README "v2w causalize")
CAUSALIZE=(--out "$OUT/model" --transfer extrapolative --norm per-frame --action-dim "$ADIM" --action-type discrete)
causalize_train_rollout_eval csgo
