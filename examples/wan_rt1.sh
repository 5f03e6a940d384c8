#!/usr/bin/env bash
# Vid2World's recipe on a video DiT: Wan 2.1 text-to-video 1.3B made block-causal, on RT-1
# (robot manipulation): prepare -> causalize --family wan -> train -> rollout -> eval.
#
# Usage: examples/wan_rt1.sh [--smoke] [OUT]
#   OUT      output root (default: $V2W_OUT, else runs/wan_rt1; runs/wan_rt1-smoke with --smoke); a finished
#            stage is skipped on a re-run and training resumes from its last checkpoint (as examples/rt1.sh).
#   --smoke  every stage on a synthetic stand-in in RT-1's npz layout with --ckpt tiny-wan (a seeded
#            random Wan at a tiny config), 9-frame clips, 2 train steps, on the CPU, in seconds.
# Environment: RAW (the npz folder, default raw/rt1; see examples/rt1.sh for the download), GPUS
#   (default 4), CKPT (default Wan-AI/Wan2.1-T2V-1.3B-Diffusers from the Hugging Face cache, or a
#   diffusers folder), WEIGHTS (LPIPS/FID/FVD weights), LIMIT (val clips to roll out).
#
# Settings: 320x512 frames (Wan's VAE x8 and patch 2 need multiples of 16; 40x64 latents, 640 tokens
# per latent frame), 17-frame clips (1 + 4k: 5 latent frames), 1 context frame then 16 predicted
# (4 latent frames); Diffusion Forcing for flow matching with the base's shift, AdamW lr 1e-5,
# effective batch 16 (4 GPUs x 2 x 2 accumulation), 100k steps, bf16 and gradient checkpointing;
# rollout 50 Euler steps, guidance 2.5 (rescale 0.7), bf16; eval preset rt1 vs copy-last.
# Memory per GPU (estimate, not measured: no GPU lent yet): 1.42B trainable parameters in fp32 with
# AdamW and EMA ~28 GB (weights 5.7, gradients 5.7, moments 11.4, EMA 5.7) + activations with
# checkpointing and the frozen VAE's encoding of 2 x 17 frames, ~4-8 GB: an 80 GB GPU, or a 40 GB one
# with --ema-decay 0 (-5.7 GB) or FSDP (README "v2w train").
set -euo pipefail
. "$(dirname "$0")/_recipe.sh"
recipe_init wan_rt1 "$@"

RAW=${RAW:-raw/rt1}
GPUS=${GPUS:-4}
CKPT=${CKPT:-Wan-AI/Wan2.1-T2V-1.3B-Diffusers}
SIZE=320x512 CLIP=17 CONTEXT=1 GUIDANCE=2.5
PREPARE=(--val-fraction 0.05 --src-fps 3 --workers 8)
TRAIN=(--steps 100000 --batch-size 2 --grad-accum 2 --lr 1e-5 --precision bf16 --gradient-checkpointing
       --save-every 1000 --keep 3)
ROLLOUT=(--steps 50 --device cuda --precision bf16)
EVAL=(--metrics psnr,ssim,lpips,fid,fvd)
[ -n "${ACTION_KEY:-}" ] && PREPARE+=(--action-key "$ACTION_KEY")
[ -n "${LIMIT:-}" ] && ROLLOUT+=(--limit "$LIMIT")
[ -n "${WEIGHTS:-}" ] && EVAL+=(--weights "$WEIGHTS")

if [ "$SMOKE" = 1 ]; then
  SMOKE_FRAMES=24 smoke_settings rt1 32x40 --src-fps 3           # 24-frame episodes: 2 clips of 9 each
  CLIP=9 SMOKE_CKPT=tiny-wan                                     # 1 + 4k frames: 3 latent frames
  ROLLOUT=(--steps 2 --limit 2 --horizon 8 --device cpu --quiet)  # 8 frames = 2 latent frames
fi

done_or "$OUT/data" v2w prepare "$RAW" --out "$OUT/data" --format npz --size "$SIZE" --clip-len "$CLIP" "${PREPARE[@]}"
ADIM=$(action_dim "$OUT/data")

CAUSALIZE=(--family wan --out "$OUT/model" --action-dim "$ADIM")
causalize_train_rollout_eval rt1
