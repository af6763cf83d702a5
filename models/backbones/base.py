"""The backbone-agnostic adapter interface over a diffusers image-to-video pipeline.

Inside the project latents are `[B, F_lat, C, h, w]` (CogVideoX order) and pixels are in [-1, 1]: videos
`[B, F, 3, H, W]`, images `[B, 3, H, W]`. Adapters convert to their backbone's layout at this boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import VARIANTS, BackboneConfig, generated_num_frames

# The components that hold weights; the tokenizer, scheduler and image processor always come along.
MODEL_COMPONENTS = ("transformer", "vae", "text_encoder", "image_encoder")
# What preprocessing encodes with (videos, images, captions): everything but the transformer.
ENCODING_COMPONENTS = frozenset({"vae", "text_encoder", "image_encoder"})


class ComponentNotLoadedError(RuntimeError):
    """A method needs a pipeline component this adapter was built without (or has dropped)."""


@dataclass
class Conditioning:
    """Everything besides the noisy latents that the transformer is conditioned on, batched."""

    image_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None

    def negative(self) -> Conditioning:
        """The same conditioning with the negative (or empty) prompt, for classifier-free guidance."""
        if self.negative_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds: encode with a negative_prompt ('' for the empty prompt) first")
        return replace(self, prompt_embeds=self.negative_prompt_embeds, negative_prompt_embeds=None)

    def chunk(self, chunks: int) -> list[Conditioning]:
        """The batch split into `chunks` equal parts (e.g. a guidance batch into negative and positive)."""

        def split(tensor: torch.Tensor | None) -> list[torch.Tensor | None]:
            return [None] * chunks if tensor is None else list(tensor.chunk(chunks))

        parts = zip(*(split(getattr(self, name)) for name in ("image_latents", "prompt_embeds",
                                                                "negative_prompt_embeds", "image_embeds")))
        return [Conditioning(*tensors) for tensors in parts]


def model_files(subfolder: str, what: str) -> dict[str, str]:
    """Files a diffusers/transformers model subfolder must hold, as pattern -> description."""
    return {f"{subfolder}/config.json": f"the {what} config", f"{subfolder}/*.safetensors": f"the {what} weights"}


def _load_transformer(model_class: type, config: BackboneConfig) -> nn.Module:
    """The transformer of `config.transformer` (a folder as `save_pretrained` writes it) in place of the backbone's."""
    folder = Path(config.transformer)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"transformer: '{folder}' needs the transformer's config.json and *.safetensors weights (a "
            "`transformer/` folder of a diffusers backbone, or a full fine-tune's export/transformer)"
        )
    return model_class.from_pretrained(folder, torch_dtype=config.torch_dtype, local_files_only=True)


def meta_model(model_class: type, config: dict[str, Any]) -> nn.Module:
    """`model_class` built from a config dict on the meta device: its full config and parameter count, no memory."""
    with torch.device("meta"):
        return model_class.from_config(config)


def components_in_folder(config: BackboneConfig, wanted: Sequence[str]) -> tuple[str, ...]:
    """Which of the `wanted` model components come from the backbone folder: all but the transformer when a
    `transformer:` folder replaces the folder's own (whose weights then need not be there)."""
    return tuple(name for name in wanted if name != "transformer" or config.transformer is None)


def transformer_folder(config: BackboneConfig) -> Path:
    """The folder a `path:` config's transformer loads from: its `transformer:` one, else the backbone folder's."""
    return Path(config.transformer or Path(config.path) / "transformer")


def _wanted_components(family_components: Sequence[str], components: Collection[str] | None) -> tuple[str, ...]:
    """The family's model components among `components` (None: all of them); a name no family has is an error."""
    if components is None:
        return tuple(family_components)
    unknown = sorted(set(components) - set(MODEL_COMPONENTS))
    if unknown:
        raise ValueError(f"components: unknown {unknown}; choose from {list(MODEL_COMPONENTS)}")
    return tuple(name for name in family_components if name in components)


class BackboneAdapter(ABC):
    """One backbone family: its latent layout, frame rule, conditioning, noise schedule and LoRA targets."""

    family: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    prediction_type: ClassVar[str]
    # Pattern (alternatives joined by "|") -> what belongs there, relative to the model folder.
    required_files: ClassVar[dict[str, str]]
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    # Classifier-free guidance as one batch of 2 (diffusers' CogVideoX) or as two passes (diffusers' Wan, which also
    # halves the activations of a 14B model): following the family's own pipeline keeps the numbers identical.
    guidance_in_one_batch: ClassVar[bool] = True
    # Sampling defaults of the family's own diffusers pipeline (`__call__`'s num_inference_steps, guidance_scale):
    # the one source for the pipeline, the CLI, the render job and the HTTP API when a request leaves them out.
    default_num_inference_steps: ClassVar[int]
    default_guidance_scale: ClassVar[float]
    # Components kept in float32 whatever the configured dtype.
    float32_components: ClassVar[tuple[str, ...]] = ()
    # The family's components with weights (of MODEL_COMPONENTS) and its transformer class.
    model_components: ClassVar[tuple[str, ...]] = ("transformer", "vae", "text_encoder")
    transformer_class: ClassVar[type[nn.Module]]

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        config: BackboneConfig,
        device: str | torch.device = "cpu",
        transformer_config: Any = None,
    ):
        """`transformer_config` (the transformer's `.config`) is needed only when the pipeline has no transformer."""
        if config.family != self.family:
            raise ValueError(f"family: {type(self).__name__} builds {self.family!r} backbones, got {config.family!r}")
        self.config = config
        self.spec = config.spec
        self.pipeline = pipeline.to(device)
        for component in pipeline.components.values():
            if isinstance(component, nn.Module):
                component.eval()
        if pipeline.transformer is None and transformer_config is None:
            raise ValueError("transformer_config: a pipeline without its transformer needs the transformer's config")
        self._transformer_config = transformer_config
        loaded = [name for name in self.model_components if getattr(pipeline, name, None) is not None]
        self._absent: dict[str, str] = {
            name: f"this adapter was built with components {loaded}"
            for name in self.model_components if name not in loaded
        }
        self._prompt_cache: dict[str, torch.Tensor] = {}
        if getattr(pipeline, "vae", None) is not None:
            self._configure_vae(pipeline.vae)
        fixed = self.fixed_resolution
        if fixed is not None and config.resolution not in (None, fixed):
            raise ValueError(
                f"resolution: this {self.spec.name} transformer has learned positional embeddings for {fixed}; "
                f"got {config.resolution}"
            )
        self.resolution: tuple[int, int] = config.resolution or fixed or self.spec.default_resolution
        window = self.fixed_num_frames
        if window is not None and config.num_frames not in (None, window):
            raise ValueError(
                f"num_frames: this {self.spec.name} transformer has learned positional embeddings for {window} "
                f"frames; got {config.num_frames}"
            )
        self.num_frames: int = config.num_frames or window or self.spec.default_num_frames

    # Construction

    @classmethod
    def from_config(
        cls,
        config: BackboneConfig,
        device: str | torch.device = "cpu",
        components: Collection[str] | None = None,
    ) -> BackboneAdapter:
        """Load `config.path`, or build the seeded tiny random model when `config.tiny` is set. `components` names
        the model components to load (of `MODEL_COMPONENTS`; None: all): a stage that never runs the transformer
        (preprocessing) or the text encoder (training on stored text embeddings) leaves it out and never holds it."""
        wanted = _wanted_components(cls.model_components, components)
        transformer_config = None
        if config.tiny is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.tiny.seed)
                # All of them: the seeded weights of each must not depend on which others are built.
                built = cls._tiny_components(config)
            built_transformer = built["transformer"]
            built = {name: None if name in cls.model_components and name not in wanted else component
                     for name, component in built.items()}
            for name, component in built.items():
                dtype = torch.float32 if name in cls.float32_components else config.torch_dtype
                if isinstance(component, nn.Module) and component.dtype != dtype:
                    component.to(dtype)
            if "transformer" not in wanted:
                transformer_config = built_transformer.config
        else:
            from_folder = components_in_folder(config, wanted)
            cls.check_folder(config.path, config.variant, from_folder)
            built = cls._load_components(Path(config.path), config, from_folder)
            if "transformer" not in wanted:
                folder = transformer_folder(config)
                transformer_config = meta_model(
                    cls.transformer_class, cls.transformer_class.load_config(folder, local_files_only=True)
                ).config
        if config.transformer is not None:
            if "transformer" in wanted:
                built["transformer"] = _load_transformer(cls.transformer_class, config)
            else:
                transformer_config = meta_model(
                    cls.transformer_class, cls.transformer_class.load_config(config.transformer, local_files_only=True)
                ).config
        built = {name: built.get(name) for name in (*built, *cls.model_components)}
        return cls(cls.pipeline_class(**built), config, device, transformer_config)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        variant: str,
        *,
        dtype: str | torch.dtype = "bfloat16",
        device: str | torch.device = "cpu",
        **settings: Any,
    ) -> BackboneAdapter:
        """Load a local diffusers-format folder (never the hub); `settings` are further `BackboneConfig` fields."""
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        config = BackboneConfig(family=cls.family, variant=variant, path=folder, dtype=dtype, **settings)
        return cls.from_config(config, device=device)

    @classmethod
    def check_folder(cls, folder: str | Path, variant: str, components: Collection[str] | None = None) -> None:
        """Raise FileNotFoundError listing every required file missing from `folder`, and what belongs there; with
        `components`, only the files those model components (and the transformer's config) need."""
        folder = Path(folder)
        skipped = {name for name in cls.model_components if components is not None and name not in components}
        missing = [
            f"  {pattern.replace('|', ' or ')}  ({what})"
            for pattern, what in cls.required_files.items()
            if not (pattern.split("/")[0] in skipped and pattern != "transformer/config.json")
            and not any(any(folder.glob(p)) for p in pattern.split("|"))
        ]
        if not missing:
            return
        source = VARIANTS[cls.family][variant].source
        state = "does not exist" if not folder.is_dir() else "is incomplete"
        raise FileNotFoundError(
            f"Backbone folder '{folder}' {state}; missing:\n" + "\n".join(missing) + "\n"
            f"Put the diffusers-format {source} there (nothing is downloaded at run time)."
        )

    @classmethod
    def check_config_folder(cls, config: BackboneConfig) -> None:
        """`check_folder` for a `path:` config: every component it loads from there (not a swapped-in transformer)."""
        cls.check_folder(config.path, config.variant, components_in_folder(config, cls.model_components))

    @classmethod
    @abstractmethod
    def _load_components(cls, folder: Path, config: BackboneConfig, wanted: Collection[str]) -> dict[str, Any]:
        """The pipeline components, loaded from `folder` with `local_files_only=True`: the model components in
        `wanted` and the ones without weights."""

    @classmethod
    @abstractmethod
    def _tiny_components(cls, config: BackboneConfig) -> dict[str, Any]:
        """Tiny random-weight pipeline components (called under the config's seed)."""

    def save_pretrained(self, folder: str | Path) -> None:
        """Write every component in diffusers format, loadable by `from_pretrained`."""
        self.pipeline.save_pretrained(folder)

    # Components

    def component(self, name: str, needed_by: str | None = None) -> Any:
        """The pipeline's `name` component; a clear error when this adapter was built without it or dropped it."""
        module = getattr(self.pipeline, name, None)
        if module is None:
            use = f" {needed_by} needs it, but" if needed_by else ""
            raise ComponentNotLoadedError(
                f"{name}:{use} this {self.spec.name} adapter has no {name} ({self._absent.get(name, 'not loaded')}); "
                f"build it with `components` including {name!r} (build_adapter(config, device, components=...))"
            )
        return module

    def drop_component(self, name: str, reason: str) -> None:
        """Free a model component this adapter's user will not need; `reason` goes into the error of any later use."""
        self.component(name)
        setattr(self.pipeline, name, None)
        self._absent[name] = f"dropped: {reason}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def drop_text_encoder(self, keep_prompts: Sequence[str] = (), reason: str = "text embeddings are given") -> None:
        """Free the text encoder, first embedding `keep_prompts` (e.g. '' for guidance), which `encode_prompt` still
        answers from then on."""
        for prompt in keep_prompts:
            self._prompt_cache[prompt] = self.encode_prompt([prompt])[0]
        self.drop_component("text_encoder", reason)

    @property
    def loaded_components(self) -> list[str]:
        """The model components this adapter holds."""
        return [name for name in self.model_components if getattr(self.pipeline, name, None) is not None]

    @property
    def transformer(self) -> nn.Module:
        return self.component("transformer")

    @property
    def transformer_config(self) -> Any:
        """The transformer's config, also when the transformer itself is not loaded."""
        transformer = self.pipeline.transformer
        return self._transformer_config if transformer is None else transformer.config

    @property
    def vae(self) -> nn.Module:
        return self.component("vae")

    @property
    def scheduler(self) -> Any:
        """The sampling scheduler."""
        return self.pipeline.scheduler

    @property
    def device(self) -> torch.device:
        """Where the transformer is, else the first loaded component."""
        return next(getattr(self.pipeline, name).device for name in self.loaded_components)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype (the configured one when it is not loaded): what conditioning is cast to."""
        transformer = self.pipeline.transformer
        return self.config.torch_dtype if transformer is None else transformer.dtype

    def _configure_vae(self, vae: nn.Module) -> None:
        """diffusers' tiled and sliced VAE encode/decode, as the config asks (bounded activation memory)."""
        if self.config.use_vae_tiling:
            vae.enable_tiling()
        if self.config.use_vae_slicing:
            vae.enable_slicing()

    # Frames and latents

    @property
    def spatial_factor(self) -> int:
        return self.pipeline.vae_scale_factor_spatial

    @property
    def temporal_factor(self) -> int:
        return self.pipeline.vae_scale_factor_temporal

    @property
    def latent_channels(self) -> int:
        return self.transformer_config.out_channels

    @property
    def fixed_resolution(self) -> tuple[int, int] | None:
        """The only (height, width) the transformer accepts, if it has one."""
        return None

    @property
    def fixed_num_frames(self) -> int | None:
        """The only frame count the transformer's positional embeddings were trained at, if it has one: every
        generation runs whole windows of it (see `generated_num_frames`)."""
        return None

    @classmethod
    def config_fixed_num_frames(cls, config: BackboneConfig) -> int | None:
        """`fixed_num_frames` of the model `config` builds, read without loading any weights."""
        return None

    def generated_num_frames(self, num_frames: int) -> int:
        """Frames to generate for a video of `num_frames`: at least the fixed window, trimmed afterwards."""
        return generated_num_frames(num_frames, self.fixed_num_frames)

    def check_num_frames(self, num_frames: int) -> None:
        """Raise a ValueError naming the valid counts unless `num_frames` fits this variant."""
        self.spec.check_num_frames(num_frames)

    def latent_num_frames(self, num_frames: int) -> int:
        self.check_num_frames(num_frames)
        return (num_frames - 1) // self.temporal_factor + 1

    def latent_shape(
        self, num_frames: int | None = None, resolution: tuple[int, int] | None = None
    ) -> tuple[int, int, int, int]:
        """`(F_lat, C, h, w)` of one clip; defaults to the configured window and resolution."""
        height, width = resolution or self.resolution
        frames = self.latent_num_frames(num_frames or self.num_frames)
        return frames, self.latent_channels, height // self.spatial_factor, width // self.spatial_factor

    # Encoding

    @abstractmethod
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames `[B, F, 3, H, W]` in [-1, 1] -> normalized latents `[B, F_lat, C, h, w]`."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, F_lat, C, h, w]` -> frames `[B, F, 3, H, W]` in about [-1, 1]."""

    @abstractmethod
    def encode_image(
        self, image: torch.Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reference image `[B, 3, H, W]` -> image-conditioning latents `[B, F_lat, C_img, h, w]`."""

    @abstractmethod
    def with_first_frame(self, image_latents: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Image-conditioning latents whose first frame is a clean video latent frame `[B, C, h, w]` (in the
        denoised latents' space) instead of the reference image: a long video's later window, conditioned on
        where the video is at its start."""

    def encode_image_embeds(self, image: torch.Tensor) -> torch.Tensor | None:
        """Reference image -> the image-encoder embedding the transformer attends to (None when it has none)."""
        return None

    @property
    @abstractmethod
    def max_sequence_length(self) -> int:
        """Text tokens per prompt."""

    @torch.no_grad()
    def encode_prompt(
        self, prompt: str | list[str], negative_prompt: str | list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings, and negative ones when `negative_prompt` is given ('' is the empty prompt)."""
        if self.pipeline.text_encoder is None and self._prompt_cache:
            return self._cached_prompt_embeds(prompt), self._cached_prompt_embeds(negative_prompt)
        self.component("text_encoder", "encode_prompt")
        return self.pipeline.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=negative_prompt is not None,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
            dtype=self.dtype,
        )

    def _cached_prompt_embeds(self, prompt: str | list[str] | None) -> torch.Tensor | None:
        """Embeddings kept by `drop_text_encoder`; any other prompt needs the dropped text encoder."""
        if prompt is None:
            return None
        prompts = [prompt] if isinstance(prompt, str) else prompt
        for text in prompts:
            if text not in self._prompt_cache:
                self.component("text_encoder", f"encode_prompt({text!r}) (kept: {sorted(self._prompt_cache)})")
        return torch.cat([self._prompt_cache[text] for text in prompts])

    def encode_conditioning(
        self,
        image: torch.Tensor,
        prompt: str | list[str],
        num_frames: int,
        *,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """Everything `predict` needs besides the noisy latents, from a reference image and a prompt."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompt, negative_prompt)
        return Conditioning(
            image_latents=self.encode_image(image, num_frames, generator),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            image_embeds=self.encode_image_embeds(image),
        )

    # Denoising

    @abstractmethod
    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
        **transformer_kwargs: Any,
    ) -> torch.Tensor:
        """The transformer's raw output (`prediction_type`) for `[B, F_lat, C, h, w]` latents, in that layout."""

    @abstractmethod
    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, one per sample, drawn from the family's training distribution."""

    @abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noisy latents at `timesteps` (forward process)."""

    @abstractmethod
    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What `predict` is trained to output for these clean latents and noise."""

    @abstractmethod
    def split_prediction(
        self, noisy_latents: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(clean latents, noise)` implied by a prediction at `timesteps`."""

    # LoRA

    @property
    def lora_targets(self) -> list[str]:
        return list(self.config.lora.targets or self.default_lora_targets)

    def add_lora(self) -> None:
        """Inject a fresh LoRA (rank, alpha, targets from the config; B starts at zero) into the transformer."""
        lora = self.config.lora
        self.transformer.add_adapter(
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha or lora.rank,
                target_modules=self.lora_targets,
                init_lora_weights=True,
            )
        )

    def save_lora(self, directory: str | Path) -> None:
        """Save the active LoRA as `directory/pytorch_lora_weights.safetensors` with the pipeline class's
        `save_lora_weights`, rank and alpha included; `load_lora` (i.e. `load_lora_weights`) reloads it."""
        (name,) = self.transformer.active_adapters()
        self.pipeline_class.save_lora_weights(
            directory,
            transformer_lora_layers=get_peft_model_state_dict(self.transformer, adapter_name=name),
            transformer_lora_adapter_metadata=self.transformer.peft_config[name].to_dict(),
            weight_name=LORA_WEIGHT_NAME_SAFE,
        )

    def load_lora(self, directory: str | Path) -> None:
        """Load the LoRA that `save_lora` wrote into `directory` with the pipeline's `load_lora_weights`."""
        self.pipeline.load_lora_weights(directory, weight_name=LORA_WEIGHT_NAME_SAFE)

    # What PadaLN hooks into

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The DiT blocks; each takes the video tokens as its first argument, `hidden_states`."""

    @property
    def hidden_size(self) -> int:
        return self.transformer_config.num_attention_heads * self.transformer_config.attention_head_dim

    @property
    @abstractmethod
    def time_embedding_dim(self) -> int:
        """Width of the time embedding that `watch_time_embedding` reports."""

    @property
    def patch_embed_channels(self) -> int:
        """Input channels of the patch embedding (noisy latents plus image conditioning)."""
        return self.transformer_config.in_channels

    @abstractmethod
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, F_lat, patch_embed_channels, h, w]` -> tokens `[B, N, hidden_size]` through the transformer's own
        patch embedding, aligned with the video tokens its blocks see."""

    @abstractmethod
    def watch_time_embedding(self, callback: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call `callback` with the `[B, time_embedding_dim]` time embedding on every transformer forward."""
