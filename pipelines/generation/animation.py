"""The animation (inference) pipeline: reference image + motion and/or pose video + prompt -> video.

Input rules (each broken rule is a ValueError that starts with the field's name):
- `image`: a PIL image or a uint8 array `[H, W, 3]`, `[H, W, 4]` (RGBA) or `[H, W]`, of any size: fitted to the
  output by `pipelines.generation.photo.prepare_photo` with its defaults (EXIF orientation applied, transparency on
  white, the largest box of the output's aspect ratio around the person located from the alpha channel, else
  centred). Callers that want other options or the intake record prepare the photo first and pass its pixels.
- `pose_video`: uint8 frames `[T, H, W, 3]` or a video file; resized to the output (same aspect ratio within 1%).
- `motion`: a `Motion` or a motion file; validated against the motion contract (no NaN or inf).
- `num_frames`: a count the backbone takes (its adapter's `check_num_frames`); by default the longest one
  the driving input covers. Motion and pose video must have the same length when both are given.
  A model whose learned positional embeddings exist only at its window (CogVideoX-5B-I2V: 49 frames) always
  generates whole windows: a shorter video is generated at the window, driven by the motion's next frames or,
  past its end, its last pose held, and trimmed to `num_frames` (`BackboneAdapter.generated_num_frames`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE

from models.backbones import (
    BackboneAdapter,
    BackboneConfig,
    Conditioning,
    build_adapter,
    load_backbone_config,
    sampling_defaults,
)
from models.backbones.config import RESOLUTION_MULTIPLE
from models.body_model import BodyModel, load_body_model
from models.motion import Motion, motion_from_arrays
from models.noise_warp import WarpOperator, degrade
from models.padaln import PadaLN, backbone_padaln, mask_reference
from models.pose_video import render_pose_video
from pipelines.articulated_noise import video_noise_operator
from pipelines.generation.attention import attention_context
from pipelines.generation.compiled_blocks import compile_blocks
from pipelines.generation.frames import held_frames, pose_video_pixels, to_model_pixels, to_uint8
from pipelines.generation.long_video import Window, denoise_windows, plan_windows
from pipelines.generation.photo import fit_mask, prepare_photo
from pipelines.generation.step_cache import call_site, enable_step_cache, reset_step_cache
from pipelines.io.motion import load_motion
from pipelines.io.video import read_video, write_video

LongVideoMode = Literal["blend", "chain"]
WindowCondition = Literal["reference", "estimate"]
ProgressCallback = Callable[[int, int], None]
DEFAULT_FPS = 16.0


@dataclass
class AnimationOutput:
    """The generated video: uint8 frames `[T, H, W, 3]` and their frame rate."""

    frames: np.ndarray
    fps: float


# Inputs


def _number_in(field: str, value: float, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
        raise ValueError(f"{field}: must be a number {bounds}, got {value!r}")
    return float(value)


def sampling_scheduler(adapter: BackboneAdapter) -> Any:
    """A fresh deterministic scheduler for one generation: DDIM in place of CogVideoX's DPM option (which
    adds noise at every step), else the adapter's own (CogVideoX DDIM, Wan UniPC or flow Euler)."""
    scheduler = adapter.scheduler
    kind = CogVideoXDDIMScheduler if isinstance(scheduler, CogVideoXDPMScheduler) else type(scheduler)
    return kind.from_config(scheduler.config)


def guidance_batch(conditioning: Conditioning) -> Conditioning:
    """Negative then positive conditioning as one batch of 2, as diffusers batches classifier-free guidance."""
    negative = conditioning.negative()
    image_embeds = conditioning.image_embeds
    return Conditioning(
        image_latents=torch.cat([negative.image_latents, conditioning.image_latents]),
        prompt_embeds=torch.cat([negative.prompt_embeds, conditioning.prompt_embeds]),
        image_embeds=None if image_embeds is None else torch.cat([image_embeds, image_embeds]),
    )


@dataclass
class _Request:
    """Validated inputs of one generation."""

    image: np.ndarray  # uint8 [H, W, 3]
    motion: Motion | None
    pose_video: np.ndarray | None  # uint8 [T, H, W, 3], num_frames frames
    num_frames: int  # generated: at least the window of a model with learned positional embeddings
    output_frames: int  # asked for: the generated video is trimmed to it
    resolution: tuple[int, int]
    fps: float
    use_padaln: bool
    mask: np.ndarray | None = None  # uint8 [H, W]: region of the reference image kept (DynamiCtrl)


class AnimationPipeline:
    """Human image animation on any backbone adapter, diffusers style: components in, `__call__` out.

    Components: the backbone adapter (LoRA already loaded, if any), an optional PadaLN (attached to the
    adapter here; untrained, it changes nothing) and the body model that articulated noise and pose renders
    use (the generated SMPL template unless given). The adapter's config says how the transformer runs here: its
    attention implementation, compiled blocks and step cache (`attention`, `compile`, `cache`).
    """

    def __init__(
        self,
        adapter: BackboneAdapter,
        padaln: PadaLN | None = None,
        body: BodyModel | None = None,
        noise_options: dict[str, Any] | None = None,
    ):
        """`noise_options` are `NoiseConfig` fields (texture_size, supersample, rule, background, group_frames) over
        the backbone config's `noise`, which the model was trained with: leave them unset unless measured."""
        self.adapter = adapter
        self.padaln = None if padaln is None else padaln.attach(adapter)
        self._attention = attention_context(adapter.config.attention, adapter.device)
        compile_blocks(adapter.blocks, adapter.config.compile)  # before the cache, whose hooks wrap the blocks
        enable_step_cache(adapter.transformer, adapter.config.cache)
        self._body = body
        self.noise_options = dict(noise_options or {})

    @classmethod
    def from_config(
        cls,
        backbone: str | Path | BackboneConfig,
        *,
        lora: str | Path | None = None,
        padaln: str | Path | None = None,
        device: str | torch.device = "cpu",
        body: BodyModel | None = None,
        noise_options: dict[str, Any] | None = None,
    ) -> AnimationPipeline:
        """Build from a backbone YAML (or config), with LoRA and PadaLN weights read from their folders. Without
        `padaln`, a backbone folder's own transformer comes with the PadaLN it was trained with, if it has one."""
        config = backbone if isinstance(backbone, BackboneConfig) else load_backbone_config(backbone)
        if padaln is None and config.path is not None and config.transformer is None:
            padaln = backbone_padaln(config.path)
        adapter = build_adapter(config, device=device)
        if lora is not None:
            # diffusers would look a missing folder up on the hub: refuse it here, nothing is downloaded.
            if not (Path(lora) / LORA_WEIGHT_NAME_SAFE).is_file():
                raise FileNotFoundError(f"lora: no {LORA_WEIGHT_NAME_SAFE} in {lora}; save_lora(directory) writes it")
            adapter.load_lora(lora)
        weights = None if padaln is None else PadaLN.load(padaln).to(adapter.device, adapter.dtype)
        return cls(adapter, weights, body, noise_options)

    @property
    def body(self) -> BodyModel:
        if self._body is None:
            self._body = load_body_model()
        return self._body

    # Validation

    def _resolution(self, resolution: tuple[int, int] | None) -> tuple[int, int]:
        fixed = self.adapter.fixed_resolution
        if resolution is None:
            return self.adapter.resolution
        resolution = tuple(int(side) for side in resolution)
        if len(resolution) != 2 or any(side <= 0 or side % RESOLUTION_MULTIPLE for side in resolution):
            raise ValueError(f"resolution: (height, width) must be positive multiples of {RESOLUTION_MULTIPLE}, "
                             f"got {resolution}")
        if fixed is not None and resolution != fixed:
            raise ValueError(f"resolution: this backbone's positional embeddings fix it to {fixed}, got {resolution}")
        return resolution

    def _num_frames(self, requested: int | None, available: int) -> int:
        if requested is None:
            return self.adapter.spec.longest_num_frames(available)
        if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)):
            raise ValueError(f"num_frames: must be an integer, got {requested!r}")
        try:
            self.adapter.check_num_frames(int(requested))
        except ValueError as err:
            raise ValueError(f"num_frames: {err}") from None
        if requested > available:
            raise ValueError(f"num_frames: {requested} requested but the driving input has only {available} frames")
        return int(requested)

    def _request(
        self,
        image: PIL.Image.Image | np.ndarray,
        motion: Motion | str | Path | None,
        pose_video: np.ndarray | str | Path | None,
        num_frames: int | None,
        resolution: tuple[int, int] | None,
        fps: float | None,
        articulated_noise: bool,
        use_padaln: bool | None,
        mask: PIL.Image.Image | np.ndarray | str | Path | None = None,
    ) -> _Request:
        if motion is None and pose_video is None:
            raise ValueError("motion/pose_video: give a motion, a pose video, or both")
        if articulated_noise and motion is None:
            raise ValueError(
                "motion: articulated noise is built from a motion; give one or set articulated_noise=False"
            )
        use_padaln = self.padaln is not None if use_padaln is None else use_padaln
        if use_padaln and self.padaln is None:
            raise ValueError("use_padaln: no PadaLN was given to this pipeline")
        size = self._resolution(resolution)
        video_fps = None
        if isinstance(pose_video, (str, Path)):
            pose_video, video_fps = read_video(pose_video, "pose_video")
        if pose_video is not None:
            pose_video = pose_video_pixels(pose_video, size)
        if isinstance(motion, (str, Path)):
            motion = load_motion(motion)
        elif motion is not None:
            if not isinstance(motion, Motion):
                raise ValueError(f"motion: expected a Motion or a motion file, got {type(motion).__name__}")
            motion = motion_from_arrays(motion.to_arrays())  # re-check a Motion built by hand (NaN, shapes)
        if motion is not None and pose_video is not None and motion.num_frames != len(pose_video):
            raise ValueError(
                f"pose_video: has {len(pose_video)} frames but the motion has {motion.num_frames}; "
                "they drive the same video and must have the same length"
            )
        count = self._num_frames(num_frames, motion.num_frames if motion is not None else len(pose_video))
        generated = self.adapter.generated_num_frames(count)
        fps = fps or (motion.fps if motion is not None else video_fps) or DEFAULT_FPS
        photo = prepare_photo(image, size)
        return _Request(
            image=photo.pixels,
            motion=None if motion is None else motion.held(generated),
            pose_video=None if pose_video is None else held_frames(pose_video, generated),
            num_frames=generated,
            output_frames=count,
            resolution=size,
            fps=_number_in("fps", fps, 1e-3),
            use_padaln=use_padaln,
            mask=None if mask is None else fit_mask(mask, photo.intake, size),
        )

    # Generation

    def _initial_noise(
        self,
        request: _Request,
        gamma: float,
        articulated: bool,
        generator: torch.Generator | None,
        operator: WarpOperator | None,
    ) -> torch.Tensor:
        """`[1, F_lat, C, h, w]` float32: degraded articulated noise of the whole video, or i.i.d. noise."""
        shape = self.adapter.latent_shape(request.num_frames, request.resolution)
        device = generator.device if generator is not None else self.adapter.device
        if not articulated:
            noise = torch.randn(shape, generator=generator, device=device)
        else:
            if operator is None:
                operator = video_noise_operator(
                    request.motion, self.body, self.adapter.config.noise_options(self.noise_options),
                    request.num_frames, request.resolution, self.adapter.device,
                )
            elif operator.latent_shape != (shape[0], *shape[2:]):
                raise ValueError(
                    f"warp_operator: built for the latent grid {operator.latent_shape}, but this request needs "
                    f"{(shape[0], *shape[2:])} ({request.num_frames} frames at {request.resolution})"
                )
            warped = operator.to(device).sample(generator, shape[1])
            noise = degrade(warped, torch.randn(warped.shape, generator=generator, device=device), gamma)
        return noise[None].to(self.adapter.device, torch.float32)

    def _pose_latents(
        self, request: _Request, windows: list[Window], generator: torch.Generator | None
    ) -> list[torch.Tensor | None]:
        """Each window's VAE-encoded pose video (the motion's rendered skeletons when no video was given)."""
        if not request.use_padaln:
            return [None] * len(windows)
        frames = request.pose_video
        if frames is None:
            frames = render_pose_video(request.motion, request.resolution, self.body, request.num_frames)
        return [
            self.adapter.encode_video(
                to_model_pixels(frames[window.frames(self.adapter.temporal_factor)], self.adapter.device)[None],
                generator,
            )
            for window in windows
        ]

    def _predict(
        self, latents: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, guidance_scale: float,
        pose_latents: torch.Tensor | None, site: str = "window0",
    ) -> torch.Tensor:
        """The model output for one window, with classifier-free guidance when `guidance_scale` > 1. `site` names
        the window for step caching (each window and guidance branch keeps its own cache)."""
        pose = contextlib.nullcontext() if pose_latents is None else self.padaln.pose(pose_latents)
        transformer = self.adapter.transformer
        with pose, self._attention():
            if guidance_scale <= 1:
                with call_site(transformer, site):
                    return self.adapter.predict(latents, t, conditioning).float()
            if self.adapter.guidance_in_one_batch:
                with call_site(transformer, f"{site}/guided"):
                    both = self.adapter.predict(torch.cat([latents, latents]), t, conditioning).float()
                uncond, cond = both.chunk(2)
            else:
                halves = []
                for branch, half in zip(("uncond", "cond"), conditioning.chunk(2)):
                    with call_site(transformer, f"{site}/{branch}"):
                        halves.append(self.adapter.predict(latents, t, half).float())
                uncond, cond = halves
        return uncond + guidance_scale * (cond - uncond)

    def _conditioning(
        self, image: np.ndarray, prompt: str, negative_prompt: str, num_frames: int, guided: bool,
        generator: torch.Generator | None, mask: np.ndarray | None = None,
    ) -> Conditioning:
        pixels = to_model_pixels(image, self.adapter.device)[None]
        if mask is not None:  # DynamiCtrl's region control: the prompt describes what the mask blanks out
            pixels = mask_reference(pixels, torch.from_numpy(mask).to(pixels.device).float() / 255)
        conditioning = self.adapter.encode_conditioning(
            pixels, prompt, num_frames, negative_prompt=negative_prompt if guided else None, generator=generator
        )
        return guidance_batch(conditioning) if guided else conditioning

    def _with_image(
        self, conditioning: Conditioning, image: np.ndarray, num_frames: int, generator: torch.Generator | None
    ) -> Conditioning:
        """The same prompts conditioned on another image (chaining: a previous chunk's frame)."""
        pixels = to_model_pixels(image, self.adapter.device)[None]
        batch = conditioning.prompt_embeds.shape[0]
        image_embeds = self.adapter.encode_image_embeds(pixels)
        return replace(
            conditioning,
            image_latents=self.adapter.encode_image(pixels, num_frames, generator).repeat(batch, 1, 1, 1, 1),
            image_embeds=None if image_embeds is None else image_embeds.repeat(batch, 1, 1),
        )

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray,
        prompt: str = "",
        motion: Motion | str | Path | None = None,
        pose_video: np.ndarray | str | Path | None = None,
        *,
        negative_prompt: str = "",
        num_frames: int | None = None,
        resolution: tuple[int, int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        gamma: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        articulated_noise: bool | None = None,
        use_padaln: bool | None = None,
        long_video: LongVideoMode = "blend",
        window_overlap: int | None = None,
        window_condition: WindowCondition = "estimate",
        fps: float | None = None,
        output_path: str | Path | None = None,
        callback: ProgressCallback | None = None,
        warp_operator: WarpOperator | None = None,
        mask: PIL.Image.Image | np.ndarray | str | Path | None = None,
    ) -> AnimationOutput:
        """Animate `image` following `motion` and/or `pose_video`.

        Args:
            gamma: degradation of the articulated noise in [0, 1] (0: warped noise only, 1: fresh noise only;
                default: the backbone config's `gamma`).
            num_inference_steps: denoising steps (default: the backbone config's, else the family's,
                `adapter.default_num_inference_steps`).
            guidance_scale: classifier-free guidance against `negative_prompt` ('' is the empty prompt);
                1 turns it off (default: the backbone config's, else the family's, `adapter.default_guidance_scale`).
            seed / generator: one or the other (or neither, for torch's global generator); the same seed
                gives the same video. Noise is drawn on the generator's device (CPU for a seed).
            articulated_noise: start from the motion's degraded articulated noise instead of i.i.d. noise
                (default: when a motion is given and the backbone config's `articulated_noise` says so).
            use_padaln: condition on the pose video through PadaLN (default: when a PadaLN was given); without
                a pose video the motion's skeletons are rendered.
            long_video: beyond the backbone's window, "blend" denoises overlapping windows together
                (predictions averaged at every step; see `window_condition`); "chain" generates one window after
                another, each conditioned on the previous chunk's decoded frame where it starts.
            window_overlap: latent frames shared by neighbouring windows ("blend"; "chain" shares 1).
            window_condition: what a blended window after the first takes as its first frame: "estimate", the
                current step's clean estimate of the video where the window starts (from the window before it),
                or "reference", the reference image (which pulls the pose back to the reference at every seam).
            callback: called after every denoising step with (steps done, total steps).
            warp_operator: the motion's articulated-noise operator when built beforehand (e.g. on a CPU worker
                with `video_noise_operator` and this pipeline's noise options); built here when None.
            output_path: also write the video there as an MP4.
            mask: region-level control (DynamiCtrl): the reference image is kept where the mask is white and
                blanked (black) elsewhere before it is encoded, so the prompt decides what the blanked region shows
                (e.g. the clothes). A grayscale/1-bit image, its file, or a uint8/bool array `[H, W]` the size of
                `image`, fitted with the same box (`pipelines.generation.photo.fit_mask`).
        """
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ValueError("prompt/negative_prompt: must be strings")
        defaults = sampling_defaults(self.adapter.config)
        gamma = _number_in("gamma", defaults.gamma if gamma is None else gamma, 0.0, 1.0)
        guidance_scale = defaults.guidance if guidance_scale is None else guidance_scale
        num_inference_steps = defaults.steps if num_inference_steps is None else num_inference_steps
        guidance_scale = _number_in("guidance_scale", guidance_scale, 1.0)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be an integer >= 1, got {num_inference_steps!r}")
        if long_video not in ("blend", "chain"):
            raise ValueError(f"long_video: must be 'blend' or 'chain', got {long_video!r}")
        if window_condition not in ("reference", "estimate"):
            raise ValueError(f"window_condition: must be 'reference' or 'estimate', got {window_condition!r}")
        if seed is not None and generator is not None:
            raise ValueError("seed/generator: give one or the other")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        if articulated_noise is None:
            articulated_noise = motion is not None and self.adapter.config.articulated_noise
        request = self._request(
            image, motion, pose_video, num_frames, resolution, fps, articulated_noise, use_padaln, mask
        )

        temporal = self.adapter.temporal_factor
        window = self.adapter.latent_num_frames(self.adapter.num_frames)
        windows = plan_windows(
            self.adapter.latent_num_frames(request.num_frames), window, 1 if long_video == "chain" else window_overlap
        )
        window_frames = (windows[0].num_latent_frames - 1) * temporal + 1
        guided = guidance_scale > 1
        # Random draws in a fixed order (noise, image, pose), so switching PadaLN on changes no earlier draw.
        noise = self._initial_noise(request, gamma, articulated_noise, generator, warp_operator)
        conditioning = self._conditioning(
            request.image, prompt, negative_prompt, window_frames, guided, generator, request.mask
        )
        pose_latents = self._pose_latents(request, windows, generator)

        total = num_inference_steps * (len(windows) if long_video == "chain" else 1)
        done = 0

        def on_step() -> None:
            nonlocal done
            done += 1
            if callback is not None:
                callback(done, total)

        if long_video == "blend":
            frames = self.denoise(
                noise, windows, conditioning, pose_latents, num_inference_steps, guidance_scale, on_step,
                window_condition,
            )
        else:
            frames = np.zeros((request.num_frames, *request.resolution, 3), dtype=np.uint8)
            written = 0
            for index, chunk in enumerate(windows):
                span = chunk.frames(temporal)
                if index > 0:  # the previous chunk's decoded frame where this one starts
                    conditioning = self._with_image(conditioning, frames[span.start], window_frames, generator)
                decoded = self.denoise(
                    noise[:, chunk.start : chunk.stop], plan_windows(chunk.num_latent_frames, window), conditioning,
                    pose_latents[index : index + 1], num_inference_steps, guidance_scale, on_step,
                )
                frames[written : span.stop] = decoded[written - span.start :]
                written = span.stop
        frames = frames[: request.output_frames]
        if output_path is not None:
            write_video(output_path, frames, request.fps)
        return AnimationOutput(frames=frames, fps=request.fps)

    @torch.no_grad()
    def denoise(
        self,
        noise: torch.Tensor,
        windows: list[Window],
        conditioning: Conditioning,
        pose_latents: list[torch.Tensor | None],
        num_inference_steps: int,
        guidance_scale: float,
        on_step: Callable[[], None] | None = None,
        window_condition: WindowCondition = "estimate",
    ) -> np.ndarray:
        """Denoise initial noise `[1, F_lat, C, h, w]` over `windows` (one pose latent, or None, per window) and
        decode it: uint8 frames `[F, H, W, 3]`. `conditioning` is batched for guidance when `guidance_scale` > 1."""
        # The clean estimate of the whole video, written window by window: windows run in order within a step,
        # so a window's first latent frame was estimated by the window before it (they overlap) this very step.
        tracking = window_condition == "estimate" and len(windows) > 1
        clean = torch.zeros_like(noise) if tracking else None
        estimated = torch.zeros(noise.shape[1], dtype=torch.bool)

        def predict(index: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            window, window_conditioning = windows[index], conditioning
            if tracking and index > 0 and estimated[window.start]:
                first = clean[:, window.start].expand(conditioning.image_latents.shape[0], -1, -1, -1)
                window_conditioning = replace(
                    conditioning, image_latents=self.adapter.with_first_frame(conditioning.image_latents, first)
                )
            output = self._predict(x, t, window_conditioning, guidance_scale, pose_latents[index], f"window{index}")
            if tracking:
                clean[:, window.start : window.stop] = self.adapter.split_prediction(x, output, t)[0]
                estimated[window.start : window.stop] = True
            return output

        reset_step_cache(self.adapter.transformer)  # a cached residual of the last video is no estimate of this one
        latents = denoise_windows(
            noise, windows, sampling_scheduler(self.adapter), num_inference_steps, predict, on_step
        )
        return to_uint8(self.adapter.decode_latents(self._checked(latents)))

    @staticmethod
    def _checked(latents: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(latents).all()):
            raise FloatingPointError("latents: denoising produced NaN or inf (float16 overflow? use bfloat16)")
        return latents
