"""Models: DynamiCrafter-compatible video U-Net, causal layers, action encoder, VAE/CLIP loaders.

::

    from pipelines.models import VideoUNet, causalize, load_model
    unet = VideoUNet.from_dynamicrafter("model.ckpt", config="inference_512_v1.0.yaml")
    empty = VideoUNet.from_config("dynamicrafter-512")        # random init; works under torch.device("meta")
    out = unet(x, timesteps, context=context, fs=fs)          # x (B, C, T, H, W); timesteps (B,) or (B, T)
    causal = causalize(unet, transfer="extrapolative", norm="per-frame", action_dim=7)
    model = load_model("runs/rt1/final")                      # anything causalize / train wrote
    wan = WanWorldTransformer(WanTransformer3DModel.from_pretrained(..., subfolder="transformer"),
                              WanWorldConfig(action_dim=7))    # a Wan 2.1 DiT, block-causal
    v = wan(x, timesteps, context, actions=group_actions(per_frame_actions))  # timesteps (B, F) per latent frame

Names resolve lazily (importing this package does not build anything).
"""

import importlib

_EXPORTS = {
    "VideoUNet": "pipelines.models.unet",
    "UNetConfig": "pipelines.models.unet",
    "causalize": "pipelines.models.surgery",
    "check_causality": "pipelines.models.surgery",
    "load_model": "pipelines.models.world_model",
    "WorldModel": "pipelines.models.world_model",
    "ActionEncoder": "pipelines.models.action",
    "Resampler": "pipelines.models.resampler",
    "CausalTemporalConv3d": "pipelines.models.causal",
    "FrameGroupNorm": "pipelines.models.causal",
    "transfer_temporal_kernel": "pipelines.models.causal",
    "WanWorldTransformer": "pipelines.models.wan",
    "WanWorldConfig": "pipelines.models.wan",
    "WanWorldModel": "pipelines.models.wan_model",
    "group_actions": "pipelines.models.latent_frames",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
