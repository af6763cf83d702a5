"""CogVideoX-5B-I2V (1.0) and CogVideoX1.5-5B-I2V (1.5): v-prediction, image latent as the first latent frame."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
)
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from .base import BackboneAdapter, Conditioning, model_files, transformer_folder
from .config import BackboneConfig
from .registry import register_adapter
from .tokenizer import tiny_tokenizer

_SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}

# The released I2V checkpoints' scheduler config.
_SCHEDULER_CONFIG = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 1.0,
    "timestep_spacing": "trailing",
}

_TINY_TRANSFORMER = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "time_embed_dim": 32,
    "num_layers": 2,
    "max_text_seq_length": 16,
    "use_rotary_positional_embeddings": True,
}
_TINY_TRANSFORMER_VARIANT = {
    "1.0": {"use_learned_positional_embeddings": True},
    "1.5": {"patch_size_t": 2, "ofs_embed_dim": 32, "patch_bias": False},
}
# Four blocks keep the real 8x spatial / 4x temporal compression.
_TINY_VAE = {
    "block_out_channels": (8, 8, 8, 8),
    "latent_channels": 16,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "temporal_compression_ratio": 4,
    "scaling_factor": 0.7,
}
_TINY_VAE_VARIANT = {"1.0": {}, "1.5": {"invert_scale_latents": True}}
_TINY_TEXT_ENCODER = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 2}


@register_adapter("cogvideox")
class CogVideoXAdapter(BackboneAdapter):
    """CogVideoX image-to-video; latents are natively `[B, F_lat, C, h, w]`."""

    family = "cogvideox"
    pipeline_class = CogVideoXImageToVideoPipeline
    prediction_type = "v_prediction"
    default_num_inference_steps = 50  # CogVideoXImageToVideoPipeline.__call__
    default_guidance_scale = 6.0
    required_files = {
        **model_files("transformer", "CogVideoXTransformer3DModel"),
        **model_files("vae", "AutoencoderKLCogVideoX"),
        **model_files("text_encoder", "T5EncoderModel"),
        "tokenizer/spiece.model|tokenizer/tokenizer.json": "the T5 tokenizer",
        "scheduler/scheduler_config.json": "the scheduler config",
    }
    transformer_class = CogVideoXTransformer3DModel

    def __init__(
        self,
        pipeline: CogVideoXImageToVideoPipeline,
        config: BackboneConfig,
        device: str | torch.device = "cpu",
        transformer_config: Any = None,
    ):
        super().__init__(pipeline, config, device, transformer_config)
        patch_size_t = self.transformer_config.patch_size_t
        if (patch_size_t is None) != (config.variant == "1.0"):
            raise ValueError(
                f"variant: the transformer has patch_size_t={patch_size_t}, which is CogVideoX "
                f"{'1.0' if patch_size_t is None else '1.5'}, not {config.variant}"
            )
        self.train_scheduler = CogVideoXDDIMScheduler.from_config(self.scheduler.config)

    @classmethod
    def _load_components(cls, folder: Path, config: BackboneConfig, wanted: Collection[str]) -> dict[str, Any]:
        dtype = config.torch_dtype
        scheduler_config = CogVideoXDDIMScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)
        loaders = {
            "transformer": lambda: CogVideoXTransformer3DModel.from_pretrained(
                folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True
            ),
            "vae": lambda: AutoencoderKLCogVideoX.from_pretrained(
                folder, subfolder="vae", torch_dtype=dtype, local_files_only=True
            ),
            "text_encoder": lambda: T5EncoderModel.from_pretrained(
                folder / "text_encoder", dtype=dtype, local_files_only=True
            ),
        }
        return {
            **{name: load() for name, load in loaders.items() if name in wanted},
            "tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
            "scheduler": _SCHEDULERS[config.scheduler or "ddim"].from_config(scheduler_config),
        }

    @classmethod
    def _tiny_components(cls, config: BackboneConfig) -> dict[str, Any]:
        tiny, variant = config.tiny, config.variant
        height, width = config.resolution or config.spec.default_resolution
        tokenizer = tiny_tokenizer(tiny.tokenizer_corpus)
        text_encoder = T5EncoderModel(
            T5Config(**{**_TINY_TEXT_ENCODER, **tiny.text_encoder, "vocab_size": len(tokenizer)})
        )
        vae_settings = {**_TINY_VAE, **_TINY_VAE_VARIANT[variant], **tiny.vae}
        blocks = len(vae_settings["block_out_channels"])  # one block per resolution: 2**(blocks-1) spatial factor
        vae = AutoencoderKLCogVideoX(**{"down_block_types": ("CogVideoXDownBlock3D",) * blocks,
                                        "up_block_types": ("CogVideoXUpBlock3D",) * blocks, **vae_settings})
        latent_channels = vae.config.latent_channels
        spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        transformer = CogVideoXTransformer3DModel(
            **{
                **cls._tiny_transformer_settings(config),
                "in_channels": 2 * latent_channels,
                "out_channels": latent_channels,
                "text_embed_dim": text_encoder.config.d_model,
                "sample_height": height // spatial,
                "sample_width": width // spatial,
            }
        )
        scheduler = _SCHEDULERS[config.scheduler or "ddim"].from_config(_SCHEDULER_CONFIG)
        return {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "vae": vae,
            "transformer": transformer,
            "scheduler": scheduler,
        }

    @staticmethod
    def _tiny_transformer_settings(config: BackboneConfig) -> dict[str, Any]:
        """The tiny transformer's settings that do not depend on the other components."""
        settings = {**_TINY_TRANSFORMER, **_TINY_TRANSFORMER_VARIANT[config.variant], **config.tiny.transformer}
        if settings.get("ofs_embed_dim"):
            settings["ofs_embed_dim"] = settings["time_embed_dim"]  # the ofs embedding is added to the time embedding
        return {**settings, "sample_frames": config.num_frames or config.spec.default_num_frames}

    @staticmethod
    def _learned_num_frames(transformer_config: Mapping[str, Any]) -> int | None:
        """diffusers' `CogVideoXPatchEmbed` adds its learned positional table only at `sample_frames` pixel frames;
        at any other count it silently swaps in sin-cos embeddings the released weights never saw."""
        if not transformer_config.get("use_learned_positional_embeddings"):
            return None
        return int(transformer_config.get("sample_frames", 49))

    @property
    def fixed_num_frames(self) -> int | None:
        return self._learned_num_frames(self.transformer_config)

    @classmethod
    def config_fixed_num_frames(cls, config: BackboneConfig) -> int | None:
        if config.tiny is not None:
            return cls._learned_num_frames(cls._tiny_transformer_settings(config))
        cls.check_config_folder(config)
        transformer = CogVideoXTransformer3DModel.load_config(transformer_folder(config), local_files_only=True)
        return cls._learned_num_frames(transformer)

    @property
    def fixed_resolution(self) -> tuple[int, int] | None:
        cfg = self.transformer_config
        if not cfg.use_learned_positional_embeddings:
            return None
        return cfg.sample_height * self.spatial_factor, cfg.sample_width * self.spatial_factor

    @property
    def max_sequence_length(self) -> int:
        return self.transformer_config.max_text_seq_length

    # Encoding

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        video = frames.to(self.vae.device, self.vae.dtype).permute(0, 2, 1, 3, 4)
        latents = self.vae.encode(video).latent_dist.sample(generator) * self.vae.config.scaling_factor
        return latents.permute(0, 2, 1, 3, 4).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipeline.decode_latents(latents.to(self.vae.dtype)).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode_image(
        self, image: torch.Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        latent_frames = self.latent_num_frames(num_frames)
        posterior = self.vae.encode(image.to(self.vae.device, self.vae.dtype).unsqueeze(2)).latent_dist
        latents = posterior.sample(generator).permute(0, 2, 1, 3, 4)
        scale = self.vae.config.scaling_factor
        # CogVideoX 1.5 was trained with image latents divided by the scaling factor (`invert_scale_latents`).
        latents = latents * (1 / scale) if self.vae.config.invert_scale_latents else latents * scale
        padding = latents.new_zeros(latents.shape[0], latent_frames - 1, *latents.shape[2:])
        return torch.cat([latents, padding], dim=1).to(self.dtype)

    def with_first_frame(self, image_latents: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        scale = self.vae.config.scaling_factor
        # Denoised latents are the VAE's times the scaling factor; 1.5's image latents are the VAE's divided by it.
        latent = latent / scale**2 if self.vae.config.invert_scale_latents else latent
        conditioned = image_latents.clone()
        conditioned[:, 0] = latent.to(conditioned.dtype)
        return conditioned

    # Denoising

    def _frame_padding(self, latent_frames: int) -> int:
        patch_size_t = self.transformer_config.patch_size_t
        return (-latent_frames) % patch_size_t if patch_size_t else 0

    def _pad_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Prepend frames so 1.5's temporal patches tile the clip, as diffusers' pipeline does.

        The pipeline pads with extra noise and discards its prediction; repeating the first frame instead keeps
        `predict` deterministic and the canonical frame count unchanged.
        """
        padding = self._frame_padding(latents.shape[1])
        if not padding:
            return latents
        return torch.cat([latents[:, :1].repeat(1, padding, 1, 1, 1), latents], dim=1)

    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
        **transformer_kwargs: Any,
    ) -> torch.Tensor:
        transformer = self.component("transformer", "predict")
        padding = self._frame_padding(noisy_latents.shape[1])
        image_latents = conditioning.image_latents
        if padding:
            # Like the pipeline, keep the image latent on the first transformer frame (the padding frame).
            zeros = image_latents.new_zeros(image_latents.shape[0], padding, *image_latents.shape[2:])
            image_latents = torch.cat([image_latents, zeros], dim=1)
        hidden_states = torch.cat([self._pad_frames(noisy_latents), image_latents], dim=2).to(self.dtype)
        batch, frames, _, height, width = hidden_states.shape
        cfg = self.transformer_config
        rotary = None
        if cfg.use_rotary_positional_embeddings:
            rotary = self.pipeline._prepare_rotary_positional_embeddings(
                height * self.spatial_factor, width * self.spatial_factor, frames, self.device
            )
        output = transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=conditioning.prompt_embeds.to(self.dtype),
            timestep=torch.as_tensor(timesteps, device=self.device).reshape(-1).expand(batch),
            ofs=hidden_states.new_full((1,), 2.0) if cfg.ofs_embed_dim else None,
            image_rotary_emb=rotary,
            return_dict=False,
            **transformer_kwargs,
        )[0]
        return output[:, padding:]

    # Training

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        steps = self.train_scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (batch_size,), generator=generator).to(self.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.train_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.train_scheduler.get_velocity(latents, noise, timesteps)

    def split_prediction(
        self, noisy_latents: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alphas_cumprod = self.train_scheduler.alphas_cumprod.to(noisy_latents.device)
        alpha_bar = alphas_cumprod[timesteps.long()].to(noisy_latents.dtype).view(-1, 1, 1, 1, 1)
        signal, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        return signal * noisy_latents - sigma * prediction, sigma * noisy_latents + signal * prediction

    # What PadaLN hooks into

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.transformer_blocks

    @property
    def time_embedding_dim(self) -> int:
        return self.transformer_config.time_embed_dim

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.transformer_config
        # The patch embedding embeds text and video together; a full-length text placeholder keeps the video
        # tokens on the positional embeddings the transformer gives them.
        video = self._pad_frames(latents).to(self.dtype)
        text = video.new_zeros(video.shape[0], cfg.max_text_seq_length, cfg.text_embed_dim)
        return self.transformer.patch_embed(text, video)[:, cfg.max_text_seq_length :]

    def watch_time_embedding(self, callback: Callable[[torch.Tensor], None]) -> RemovableHandle:
        return self.transformer.time_embedding.register_forward_hook(lambda module, args, output: callback(output))
