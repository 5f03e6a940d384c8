#!/usr/bin/env bash
# Vid2World on RT-1 (robot manipulation): prepare -> causalize -> train -> rollout -> eval,
# with the paper's settings (docs/design.md §5, §6, §9).
#
# Usage: examples/rt1.sh [--smoke] [OUT]
#   OUT      output root (default: $V2W_OUT, else runs/rt1; runs/rt1-smoke with --smoke). Stages write
#            OUT/data, OUT/model, OUT/run, OUT/pred, OUT/report; a finished stage is skipped on a
#            re-run (delete its folder to redo it) and training resumes from its last checkpoint.
#   --smoke  every stage on a small synthetic stand-in in RT-1's npz layout (python -m
#            pipelines.data.synthetic rt1), with --ckpt tiny, tiny sizes and 2 train steps, on the CPU.
# Environment: RAW (the npz folder, default raw/rt1), GPUS (training processes, default 4),
#   CKPT (base, default dynamicrafter = DynamiCrafter-512 from the Hugging Face cache, or a path),
#   WEIGHTS (folder with the LPIPS/FID/FVD weights, see README "v2w eval"), LIMIT (val clips to roll
#   out, default all), ACTION_KEY (npz action arrays to concatenate, default the `action` array).
#
# Data (download and convert yourself, once):
#   RT-1 is `fractal20220817_data` in Open X-Embodiment (RLDS episodes, read with
#   tensorflow-datasets); see https://github.com/google-deepmind/open_x_embodiment. Copy it with
#     gsutil -m cp -r gs://gresearch/robotics/fractal20220817_data ~/tensorflow_datasets/
#   and write one .npz per episode with Vid2World's converter (see the Vid2World repository,
#   README section "Vid2World for Robot Manipulation"):
#     python lvdm/data/oxe_data_converter.py --dataset_name fractal20220817_data \
#         --input_path ~/tensorflow_datasets --output_path raw/rt1
#   Each file holds `image` (T, 256, 320, 3) uint8 and `action` (T, A): the RLDS action fields
#   concatenated. Your own conversion works as well, e.g. `image` plus the arrays `world_vector`,
#   `rotation_delta`, `gripper_closedness_action` (RT-1's 7-d action) with
#   ACTION_KEY=world_vector,rotation_delta,gripper_closedness_action.
#
# Paper settings: 320x512 frames, 16-frame clips, 1 context frame; DynamiCrafter-512 made causal
# with the extrapolative weight transfer; Diffusion Forcing, AdamW lr 1e-5, effective batch 16
# (4 GPUs x 2 clips x 2 accumulation steps), 100k steps, bf16 and gradient checkpointing;
# rollout with DDIM 50 steps and causal action guidance 2.5 (rescale 0.7); eval preset rt1
# (LPIPS with VGG) against the copy-last baseline.
set -euo pipefail
. "$(dirname "$0")/_recipe.sh"
recipe_init rt1 "$@"

RAW=${RAW:-raw/rt1}
GPUS=${GPUS:-4}
CKPT=${CKPT:-dynamicrafter}
SIZE=320x512 CLIP=16 CONTEXT=1 GUIDANCE=2.5
PREPARE=(--val-fraction 0.05 --src-fps 3 --workers 8)  # RT-1 is recorded at 3 Hz
TRAIN=(--steps 100000 --batch-size 2 --grad-accum 2 --lr 1e-5 --precision bf16 --gradient-checkpointing
       --save-every 1000 --keep 3)
ROLLOUT=(--steps 50 --device cuda)
EVAL=(--metrics psnr,ssim,lpips,fid,fvd)
[ -n "${ACTION_KEY:-}" ] && PREPARE+=(--action-key "$ACTION_KEY")
[ -n "${LIMIT:-}" ] && ROLLOUT+=(--limit "$LIMIT")
[ -n "${WEIGHTS:-}" ] && EVAL+=(--weights "$WEIGHTS")

[ "$SMOKE" = 1 ] && smoke_settings rt1 32x40 --src-fps 3  # synthetic stand-in, --ckpt tiny, CPU, seconds

done_or "$OUT/data" v2w prepare "$RAW" --out "$OUT/data" --format npz --size "$SIZE" --clip-len "$CLIP" "${PREPARE[@]}"
ADIM=$(action_dim "$OUT/data")  # 13 with Vid2World's converter, 7 with the three ACTION_KEY arrays

# --norm per-frame is exactly causal and enables the rollout cache; --norm pooled is what the
# official Vid2World checkpoints use (README "v2w causalize")
CAUSALIZE=(--out "$OUT/model" --transfer extrapolative --norm per-frame --action-dim "$ADIM")
causalize_train_rollout_eval rt1
