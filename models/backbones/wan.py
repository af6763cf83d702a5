"""Wan2.1-I2V-14B: flow matching, mask + VAE latents of the reference image, CLIP image tokens.

Wan latents are `[B, C, F, h, w]`; this adapter permutes to and from `[B, F, C, h, w]` at its boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from .base import BackboneAdapter, Conditioning, model_files
from .config import BackboneConfig
from .registry import register_adapter
from .tokenizer import tiny_tokenizer

# diffusers' Wan pipeline module imports transformers' CLIPImageProcessor, which without torchvision (deliberately
# not a dependency, DESIGN.md) falls back to CLIPImageProcessorPil with a warning on every start. This adapter
# builds the PIL processor itself, so the warning tells a user nothing: keep it out of their logs.
_transformers_imports = logging.getLogger("transformers.utils.import_utils")
_level = _transformers_imports.level
_transformers_imports.setLevel(logging.ERROR)
try:
    from diffusers import WanImageToVideoPipeline
finally:
    _transformers_imports.setLevel(_level)

# The released I2V checkpoints' scheduler config (UniPC on flow sigmas).
_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}

_TINY_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
# Four stages keep the real 8x spatial / 4x temporal compression; z_dim matches the built-in latent statistics.
_TINY_VAE = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
_TINY_TEXT_ENCODER = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 2}
_TINY_IMAGE_ENCODER = {
    "hidden_size": 16,
    "projection_dim": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def _scheduler(scheduler_config: dict[str, Any], choice: str | None) -> Any:
    if choice == "flow_euler":
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config, shift=scheduler_config["flow_shift"])
    return UniPCMultistepScheduler.from_config(scheduler_config)


@register_adapter("wan")
class WanAdapter(BackboneAdapter):
    """Wan 2.1 image-to-video."""

    family = "wan"
    pipeline_class = WanImageToVideoPipeline
    prediction_type = "flow_prediction"
    default_num_inference_steps = 50  # WanImageToVideoPipeline.__call__ (Wan2.1's own generate.py: 40 for I2V)
    default_guidance_scale = 5.0
    required_files = {
        **model_files("transformer", "WanTransformer3DModel"),
        **model_files("vae", "AutoencoderKLWan"),
        **model_files("text_encoder", "UMT5EncoderModel"),
        "tokenizer/spiece.model|tokenizer/tokenizer.json": "the UMT5 tokenizer",
        **model_files("image_encoder", "CLIPVisionModel"),
        "image_processor/preprocessor_config.json": "the CLIP image processor config",
        "scheduler/scheduler_config.json": "the scheduler config",
    }
    # attn2's add_k_proj/add_v_proj project the CLIP image tokens; diffusers' Wan loader expects them in I2V LoRAs.
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
    # Wan's reference pipeline runs its VAE and CLIP image encoder in float32.
    float32_components = ("vae", "image_encoder")
    guidance_in_one_batch = False
    model_components = ("transformer", "vae", "text_encoder", "image_encoder")
    transformer_class = WanTransformer3DModel

    def __init__(
        self,
        pipeline: WanImageToVideoPipeline,
        config: BackboneConfig,
        device: str | torch.device = "cpu",
        transformer_config: Any = None,
    ):
        super().__init__(pipeline, config, device, transformer_config)
        cfg = self.scheduler.config
        self.train_scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=cfg.num_train_timesteps, shift=cfg.get("flow_shift", cfg.get("shift", 1.0))
        )

    @classmethod
    def _load_components(cls, folder: Path, config: BackboneConfig, wanted: Collection[str]) -> dict[str, Any]:
        dtype = config.torch_dtype
        scheduler_config = UniPCMultistepScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)
        loaders = {
            "transformer": lambda: WanTransformer3DModel.from_pretrained(
                folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True
            ),
            "vae": lambda: AutoencoderKLWan.from_pretrained(
                folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True
            ),
            "text_encoder": lambda: UMT5EncoderModel.from_pretrained(
                folder / "text_encoder", dtype=dtype, local_files_only=True
            ),
            "image_encoder": lambda: CLIPVisionModel.from_pretrained(
                folder / "image_encoder", dtype=torch.float32, local_files_only=True
            ),
        }
        return {
            **{name: load() for name, load in loaders.items() if name in wanted},
            "tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
            # The PIL backend: the project does not depend on torchvision.
            "image_processor": CLIPImageProcessorPil.from_pretrained(
                folder / "image_processor", local_files_only=True
            ),
            "scheduler": _scheduler(scheduler_config, config.scheduler),
        }

    @classmethod
    def _tiny_components(cls, config: BackboneConfig) -> dict[str, Any]:
        tiny = config.tiny
        tokenizer = tiny_tokenizer(tiny.tokenizer_corpus)
        text_encoder = UMT5EncoderModel(
            UMT5Config(**{**_TINY_TEXT_ENCODER, **tiny.text_encoder, "vocab_size": len(tokenizer)})
        )
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**{**_TINY_IMAGE_ENCODER, **tiny.image_encoder}))
        image_size = image_encoder.config.image_size
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        vae = AutoencoderKLWan(**{**_TINY_VAE, **tiny.vae})
        latent_channels = vae.config.z_dim
        settings = {**_TINY_TRANSFORMER, **tiny.transformer}
        inner_dim = settings["num_attention_heads"] * settings["attention_head_dim"]
        transformer = WanTransformer3DModel(
            **settings,
            # Noisy latents + (temporal-factor mask channels + image latents).
            in_channels=2 * latent_channels + vae.config.scale_factor_temporal,
            out_channels=latent_channels,
            text_dim=text_encoder.config.d_model,
            image_dim=image_encoder.config.hidden_size,
            added_kv_proj_dim=inner_dim,
        )
        return {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "vae": vae,
            "scheduler": _scheduler(_SCHEDULER_CONFIG, config.scheduler),
            "image_processor": image_processor,
            "image_encoder": image_encoder,
            "transformer": transformer,
        }

    @property
    def max_sequence_length(self) -> int:
        # Wan's attention processor splits image from text tokens assuming 512 text tokens.
        return 512

    # Encoding

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=self.vae.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=self.vae.device).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames -> normalized latents; Wan takes the posterior mode, as its pipeline does (`generator` is unused)."""
        video = frames.to(self.vae.device, self.vae.dtype).permute(0, 2, 1, 3, 4)
        latents = self.vae.encode(video).latent_dist.mode()
        mean, std = self._latent_stats()
        latents = (latents - mean) * (1.0 / std)
        return latents.permute(0, 2, 1, 3, 4).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats()
        latents = latents.to(self.vae.device, self.vae.dtype).permute(0, 2, 1, 3, 4) * std + mean
        return self.vae.decode(latents, return_dict=False)[0].permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode_image(
        self, image: torch.Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reference image -> `[B, F_lat, 4 + C, h, w]`: the first-frame mask and the latents of the image followed
        by black frames, built by the pipeline's own `prepare_latents` (deterministic, so `generator` is unused)."""
        self.check_num_frames(num_frames)
        self.component("vae", "encode_image")
        height, width = image.shape[-2:]
        placeholder = image.new_empty(0)  # prepare_latents also returns noise; passing latents skips drawing it
        conditions = [
            self.pipeline.prepare_latents(
                single[None].float(), 1, self.latent_channels, height, width, num_frames,
                torch.float32, self.device, latents=placeholder,
            )[1]
            for single in image
        ]
        return torch.cat(conditions).permute(0, 2, 1, 3, 4).to(self.dtype)

    def with_first_frame(self, image_latents: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        conditioned = image_latents.clone()
        conditioned[:, 0, -latent.shape[1] :] = latent.to(conditioned.dtype)  # after the 4 mask channels
        return conditioned

    @torch.no_grad()
    def encode_image_embeds(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP's penultimate hidden states of the reference image, as the pipeline's `encode_image` takes them."""
        # The PIL-backed processor works on 8-bit images: quantize exactly as for a PIL input.
        pixels = ((image.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        inputs = self.pipeline.image_processor(images=pixels, return_tensors="pt")
        encoder = self.component("image_encoder", "encode_image_embeds")
        output = encoder(pixel_values=inputs.pixel_values.to(encoder.device, encoder.dtype), output_hidden_states=True)
        return output.hidden_states[-2].to(self.dtype)

    # Denoising

    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
        **transformer_kwargs: Any,
    ) -> torch.Tensor:
        transformer = self.component("transformer", "predict")
        hidden_states = torch.cat([noisy_latents, conditioning.image_latents], dim=2).permute(0, 2, 1, 3, 4)
        batch = hidden_states.shape[0]
        image_embeds = conditioning.image_embeds
        output = transformer(
            hidden_states=hidden_states.to(self.dtype),
            timestep=torch.as_tensor(timesteps, device=self.device).reshape(-1).expand(batch),
            encoder_hidden_states=conditioning.prompt_embeds.to(self.dtype),
            encoder_hidden_states_image=None if image_embeds is None else image_embeds.to(self.dtype),
            return_dict=False,
            **transformer_kwargs,
        )[0]
        return output.permute(0, 2, 1, 3, 4)

    # Training: x_t = (1 - sigma) x_0 + sigma * noise with sigma = t / T; the model predicts noise - x_0.

    def _sigmas(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sigmas = timesteps.to(like.device, torch.float32) / self.train_scheduler.config.num_train_timesteps
        return sigmas.to(like.dtype).view(-1, 1, 1, 1, 1)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform over the shifted training schedule's timesteps."""
        schedule = self.train_scheduler.timesteps
        return schedule[torch.randint(0, len(schedule), (batch_size,), generator=generator)].to(self.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = self._sigmas(timesteps, latents)
        return (1 - sigmas) * latents + sigmas * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents

    def split_prediction(
        self, noisy_latents: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigmas = self._sigmas(timesteps, noisy_latents)
        return noisy_latents - sigmas * prediction, noisy_latents + (1 - sigmas) * prediction

    # What PadaLN hooks into

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    @property
    def time_embedding_dim(self) -> int:
        return self.hidden_size

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer.patch_embedding(latents.permute(0, 2, 1, 3, 4).to(self.dtype))
        return tokens.flatten(2).transpose(1, 2)

    def watch_time_embedding(self, callback: Callable[[torch.Tensor], None]) -> RemovableHandle:
        # The condition embedder returns (temb, timestep_proj, text, image); temb is the [B, hidden] embedding.
        return self.transformer.condition_embedder.register_forward_hook(
            lambda module, args, output: callback(output[0])
        )
