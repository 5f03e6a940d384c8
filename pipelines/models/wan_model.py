"""A Wan 2.1 base (diffusers folder layout) in, a Wan world MODEL out (docs/design.md §12).

The base is the folder diffusers' ``WanPipeline`` reads, from the Hugging Face cache
(``--ckpt Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` or ``wan2.1-t2v-1.3b``) or a local path:

    model_index.json
    transformer/config.json + diffusion_pytorch_model.safetensors (or shards + .index.json)
    vae/config.json + diffusion_pytorch_model.safetensors
    text_encoder/config.json + model.safetensors (UMT5; read once, for the empty prompt)
    tokenizer/ (optional: the empty prompt is the end-of-text token alone)
    scheduler/scheduler_config.json (recorded in MODEL)

Weights are read without unpickling and loaded strictly (zero missing or unexpected keys). The text
encoder is needed only here: the empty prompt's context (512 x text_dim, the end token's encoding
then zeros, as ``WanPipeline`` pads it) is stored in MODEL. ``--ckpt tiny-wan`` is a seeded random
stand-in at a tiny config in the same layout (:data:`~pipelines.models.wan.TINY_WAN_TRANSFORMER`).

MODEL (``family: "wan"``): config.json, ``transformer.safetensors`` (the world transformer: the Wan
weights under ``transformer.`` and the action encoder under ``action_encoder.``), ``vae.safetensors``,
``empty_text.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from pipelines.errors import V2WError
from pipelines.models.checkpoint import hub_reachable
from pipelines.models.latent_frames import video_to_latent_frames
from pipelines.models.model_folder import model_header, read_model_config, read_part, write_model_folder
from pipelines.models.wan import (
    TEXT_TOKENS,
    TINY_WAN_TRANSFORMER,
    TINY_WAN_VAE,
    WAN_HUB,
    WanWorldConfig,
    WanWorldTransformer,
    rebuild_rope,
    tiny_wan_transformer,
)
from pipelines.statedict import load_strict, read_safetensors

BASE_PARTS = ("model_index.json", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*")
# Wan 2.1's own sampler settings (scheduler/scheduler_config.json of the 1.3B): flow matching, shift 3
DEFAULT_WAN_SCHEDULE = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                        "use_flow_sigmas": True, "flow_shift": 3.0, "num_train_timesteps": 1000}


@dataclass
class WanBase:
    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    empty_text: torch.Tensor  # (1, 512, text_dim)
    schedule: dict
    source: str


# ---------------------------------------------------------------- finding and reading the base


def resolve_wan_base(ckpt: str) -> Path:
    """A local diffusers folder, or a hub repo (``Org/Name`` or a :data:`WAN_HUB` short name) from the
    Hugging Face cache; offline without it: one error naming the repo and the ``--ckpt PATH`` way out."""
    path = Path(ckpt).expanduser()
    if path.exists():
        return path
    repo = WAN_HUB.get(ckpt.lower(), ckpt)
    if repo.count("/") != 1:
        raise V2WError(f"Wan base not found (a diffusers folder, a hub repo id, or one of: {', '.join(WAN_HUB)}, tiny-wan)", path=ckpt)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:  # the cache first: no network when the files are there
            return Path(snapshot_download(repo, allow_patterns=list(BASE_PARTS), local_files_only=True))
        except LocalEntryNotFoundError:
            if os.environ.get("HF_HUB_OFFLINE") or not hub_reachable():
                raise
            return Path(snapshot_download(repo, allow_patterns=list(BASE_PARTS), etag_timeout=10))
    except Exception as e:  # offline, gated, ...: one line with the way out
        raise V2WError(
            f"cannot get the Hugging Face repo {repo} ({type(e).__name__}): it needs model_index.json, transformer/, "
            f"vae/, text_encoder/ and scheduler/. Download it where you have internet (huggingface-cli download {repo}) "
            f"and copy it into the HF cache here, or pass the folder: --ckpt /path/to/{repo.split('/')[-1]}"
        ) from None


def _config(folder: Path, part: str) -> dict:
    file = folder / part / "config.json"
    if not file.exists():
        raise V2WError(f"missing {part}/config.json: not a diffusers Wan folder (pass --ckpt the folder with "
                       "model_index.json, transformer/, vae/, text_encoder/)", path=folder)
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise V2WError(f"{part}/config.json is not valid JSON ({e})", path=file) from None


def _weights(folder: Path, part: str, stem: str) -> dict[str, torch.Tensor]:
    """``part/stem.safetensors``, or its shards through ``part/stem.safetensors.index.json``."""
    single, index = folder / part / f"{stem}.safetensors", folder / part / f"{stem}.safetensors.index.json"
    if single.exists():
        return read_safetensors(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(read_safetensors(folder / part / shard))
        return sd
    raise V2WError(f"missing {part}/{stem}.safetensors (or its .index.json and shards); only safetensors are read "
                   "(no pickles)", path=folder)


def _strict_diffusers(cls, folder: Path, part: str, what: str):
    cfg = {k: v for k, v in _config(folder, part).items() if not k.startswith("_")}
    with torch.device("meta"):
        module = cls(**cfg)
    load_strict(module, _weights(folder, part, "diffusion_pytorch_model"), what, folder / part)
    return rebuild_rope(module) if isinstance(module, WanTransformer3DModel) else module


def empty_prompt_context(folder: Path, log=lambda m: None) -> torch.Tensor:
    """The empty prompt through the base's UMT5 text encoder, as ``WanPipeline`` builds it: the tokens
    of "" (the end token alone), encoded, cut to their length and zero-padded to 512 -> (1, 512, D)."""
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError:
        raise V2WError("the Wan family's text encoder (UMT5) needs transformers: pip install 'transformers>=4.40' "
                       "(it is read once, at causalize time)") from None
    cfg = _config(folder, "text_encoder")
    ids = None
    if (folder / "tokenizer").exists():
        try:
            ids = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))("", add_special_tokens=True)["input_ids"]
        except Exception as e:  # a tokenizer without sentencepiece etc.: the end token is all it would give
            log(f"tokenizer not usable ({type(e).__name__}); the empty prompt is the end token {cfg.get('eos_token_id', 1)}")
    ids = ids or [int(cfg.get("eos_token_id", 1))]
    from transformers import UMT5Config

    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**{k: v for k, v in cfg.items() if not k.startswith("_")}))
    sd = _weights(folder, "text_encoder", "model")
    # tied embeddings: transformers lists encoder.embed_tokens.weight and shared.weight; checkpoints hold one
    if "shared.weight" in sd and "encoder.embed_tokens.weight" not in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    if "encoder.embed_tokens.weight" in sd and "shared.weight" not in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    # kept in its stored dtype (UMT5-XXL is 11 GB in bf16, 23 GB in fp32): it encodes one token, once
    load_strict(encoder, sd, "text encoder", folder / "text_encoder")
    encoder.eval()
    with torch.no_grad():
        tokens = torch.tensor([ids])
        hidden = encoder(tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state
    out = torch.zeros(1, TEXT_TOKENS, hidden.shape[-1])
    out[:, : len(ids)] = hidden[:, : len(ids)].float()
    return out


def load_wan_base(ckpt: str, log=lambda m: None) -> WanBase:
    if ckpt == "tiny-wan":
        log("tiny-wan: a seeded random Wan transformer and VAE at a tiny config")
        transformer = tiny_wan_transformer(0)
        torch.manual_seed(1)
        vae = AutoencoderKLWan(**TINY_WAN_VAE)
        g = torch.Generator().manual_seed(2)
        empty = torch.zeros(1, TEXT_TOKENS, TINY_WAN_TRANSFORMER["text_dim"])
        empty[:, :1] = torch.randn(1, 1, TINY_WAN_TRANSFORMER["text_dim"], generator=g)  # the end token's encoding
        return WanBase(transformer, vae, empty, dict(DEFAULT_WAN_SCHEDULE), "tiny-wan")
    folder = resolve_wan_base(ckpt)
    log(f"reading the Wan base in {folder}")
    transformer = _strict_diffusers(WanTransformer3DModel, folder, "transformer", "Wan transformer")
    vae = _strict_diffusers(AutoencoderKLWan, folder, "vae", "Wan VAE")
    log("encoding the empty prompt with the base's text encoder (once)")
    empty = empty_prompt_context(folder, log)
    sched_file = folder / "scheduler" / "scheduler_config.json"
    schedule = json.loads(sched_file.read_text()) if sched_file.exists() else dict(DEFAULT_WAN_SCHEDULE)
    # weights shipped in bf16 -> float32: v2w trains fp32 weights under autocast
    return WanBase(transformer.float(), vae.float(), empty, schedule, str(ckpt))


# ---------------------------------------------------------------- the MODEL


class CausalVAEDecoder:
    """Wan's VAE decoder one latent frame at a time, its causal cache (the last input frames of every
    causal conv) kept across :meth:`push` calls: the loop of diffusers' ``AutoencoderKLWan._decode``
    with the cache outliving the call, so a rollout decodes each new latent frame once instead of the
    whole clip again. ``push`` of all latents in any split equals ``decode_latents`` of them at once."""

    def __init__(self, model: "WanWorldModel"):
        if model.vae is None:
            raise V2WError("this model has no VAE")
        self.model, self.vae = model, model.vae
        self.feat_map = [None] * self.vae._cached_conv_counts["decoder"]
        self.first = True
        self.frames = 0  # latent frames decoded so far

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, F, h, w) -> their video frames (B, 3, 1 + 4(F-1) or 4F, H, W) in [-1, 1]."""
        mean, std = self.model._latent_stats(latents)
        x = self.vae.post_quant_conv((latents * std + mean).to(next(self.vae.parameters()).dtype))  # 1x1x1: no time
        out = []
        for i in range(x.shape[2]):
            out.append(self.vae.decoder(x[:, :, i : i + 1], feat_cache=self.feat_map, feat_idx=[0], first_chunk=self.first))
            self.first = False
        self.frames += x.shape[2]
        return torch.cat(out, dim=2).clamp(-1, 1).float()


class WanWorldModel(nn.Module):
    """World transformer + Wan VAE + the stored empty-prompt context, saved as one MODEL folder."""

    family = "wan"

    def __init__(self, transformer: WanWorldTransformer, vae: AutoencoderKLWan | None, empty_text: torch.Tensor,
                 meta: dict | None = None):
        super().__init__()
        self.transformer, self.vae = transformer, vae
        self.register_buffer("empty_text", empty_text, persistent=False)
        self.meta = dict(meta or {})

    image_encoder = image_proj = None  # conditioning is the history itself: no image encoder

    @property
    def unet(self) -> WanWorldTransformer:
        """The denoiser, under the name the shared train / rollout code uses for every family."""
        return self.transformer

    @property
    def vae_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial) if self.vae is not None else 8

    @property
    def size_factor(self) -> int:
        """Frame sizes must be multiples of this: VAE x patch."""
        return self.vae_factor * int(self.transformer.transformer.config.patch_size[1])

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.vae.config
        shape = (1, len(c.latents_mean), 1, 1, 1)
        return (torch.tensor(c.latents_mean, dtype=like.dtype, device=like.device).view(shape),
                torch.tensor(c.latents_std, dtype=like.dtype, device=like.device).view(shape))

    def encode_frames(self, frames: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """(B, 3, 1 + 4k, H, W) in [-1, 1] -> normalised latents (B, z, 1 + k, H/f, W/f) (Wan's causal VAE,
        posterior mode unless ``sample``; normalised with the VAE's latents_mean / latents_std as WanPipeline)."""
        if self.vae is None:
            raise V2WError("this model has no VAE")
        video_to_latent_frames(frames.shape[2])
        dist = self.vae.encode(frames.to(next(self.vae.parameters()).dtype)).latent_dist
        z = dist.sample() if sample else dist.mode()
        mean, std = self._latent_stats(z)
        return ((z - mean) / std).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, 1 + k, h, w) -> frames (B, 3, 1 + 4k, H, W) in [-1, 1]."""
        if self.vae is None:
            raise V2WError("this model has no VAE")
        mean, std = self._latent_stats(latents)
        return self.vae.decode((latents * std + mean).to(next(self.vae.parameters()).dtype)).sample.float()

    def decoder_stream(self) -> "CausalVAEDecoder":
        """Decode latent frames as they come, each once (the VAE's causal cache kept between calls)."""
        return CausalVAEDecoder(self)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor | None = None,
                frame_offset: int = 0) -> torch.Tensor:
        """The denoiser with its (empty-prompt) context: one module, so data-parallel training syncs it."""
        ctx = self.empty_text.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.transformer(x, timesteps, ctx, actions, frame_offset)

    def config_dict(self) -> dict:
        return {
            **model_header(self.family),
            "transformer": {k: v for k, v in dict(self.transformer.transformer.config).items() if not k.startswith("_")},
            "world": self.transformer.config.to_dict(),
            "vae": {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")} if self.vae is not None else None,
            "text_tokens": int(self.empty_text.shape[1]),
            **{k: v for k, v in self.meta.items() if k not in ("kind", "format_version", "family")},
        }

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        return write_model_folder(path, self.config_dict(), {"transformer": self.transformer, "vae": self.vae},
                                  {"empty_text": self.empty_text})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "WanWorldModel":
        path = Path(path)
        cfg = read_model_config(path)
        device = torch.device(device)

        def weights(name: str) -> dict:
            return read_part(path, name)

        with torch.device("meta"):
            world = WanWorldTransformer(WanTransformer3DModel(**cfg["transformer"]), WanWorldConfig(**cfg["world"]))
        rebuild_rope(world.transformer)
        load_strict(world, weights("transformer"), "Wan world transformer", path / "transformer.safetensors",
                    against="config.json", hint="the model folder is inconsistent")
        vae = None
        if cfg.get("vae"):
            with torch.device("meta"):
                vae = AutoencoderKLWan(**cfg["vae"])
            load_strict(vae, weights("vae"), "Wan VAE", path / "vae.safetensors", against="config.json")
            vae.requires_grad_(False).eval()
        empty = weights("empty_text")["empty_text"]
        meta = {k: v for k, v in cfg.items() if k not in ("transformer", "world", "vae", "text_tokens", "v2w_version")}
        return cls(world, vae, empty, meta).to(device).eval()
