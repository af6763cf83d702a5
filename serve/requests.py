"""Submissions: uploads decoded safely within the configured limits, parameters checked and resolved.

Every refusal is a `RequestError` whose message starts with the field's name. Nothing is unpickled: motions
go through `motion_from_npz_bytes`/`motion_from_json_text`, images through PIL with the pixel count checked
from the header before any pixel is decoded, pose videos through PyAV one frame at a time, from memory, as one of
the containers `pipelines.io.video.open_video` accepts (never a playlist, concat list or URL).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import secrets
import zipfile
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import PIL.Image
from pydantic import ValidationError

from models.backbones import VariantSpec, sampling_defaults
from models.motion import Motion, MotionError
from pipelines.generation.frames import pose_video_pixels
from pipelines.generation.long_video import plan_windows
from pipelines.generation.photo import PhotoOptions, fit_mask, photo_options, prepare_photo
from pipelines.generation.photo_retarget import RetargetSummary, retarget_to_photo
from pipelines.io.motion import motion_from_json_text, motion_from_npz_bytes
from pipelines.io.video import open_video
from serve.config import BackboneEntry, Limits, ServeConfig
from serve.jobs import Deployment, GenerationParams
from serve.retargeting import Retargeter

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0


class RequestError(ValueError):
    """A refused request: the message names the field; `status_code` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class BackboneInfo:
    """What the ingress needs to know about a backbone without loading it."""

    name: str
    resolution: tuple[int, int]
    window: int
    spec: VariantSpec
    default_steps: int
    default_guidance: float
    default_gamma: float
    articulated_noise: bool  # the config's: whether a request with a motion starts from its articulated noise

    @classmethod
    def load(cls, name: str, entry: BackboneEntry) -> BackboneInfo:
        config = entry.backbone_config()
        spec = config.spec
        resolution = config.resolution or spec.default_resolution
        return cls(name, resolution, config.num_frames or spec.default_num_frames, spec, *sampling_defaults(config),
                   config.articulated_noise)

    def windows(self, num_frames: int, long_video: str) -> int:
        """How many windows the pipeline denoises for `num_frames` (its `plan_windows`, default overlap)."""
        latent = self.spec.latent_num_frames
        overlap = 1 if long_video == "chain" else None
        return len(plan_windows(latent(num_frames), latent(self.window), overlap))


@dataclass
class Upload:
    """A POST /v1/videos as received: raw uploads and form fields (None: not given)."""

    image: bytes
    motion: bytes | None = None
    motion_json: str | None = None
    pose_video: bytes | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    mask: bytes | None = None

    @property
    def has_motion(self) -> bool:
        return self.motion is not None or self.motion_json is not None

    def fingerprint(self) -> str:
        """Identifies the request, so a reused Idempotency-Key with another request can be refused."""
        digest = hashlib.sha256(json.dumps(self.fields, sort_keys=True, default=str).encode())
        for part in (self.image, self.motion, (self.motion_json or "").encode(), self.pose_video, self.mask):
            digest.update(hashlib.sha256(part or b"").digest())
        return digest.hexdigest()


@dataclass
class Submission:
    """A checked request: resolved parameters, the deployment that runs it and its input files."""

    params: GenerationParams
    deployment: Deployment
    inputs: dict[str, bytes]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _too_many_pixels(size: str, limits: Limits, name: str = "image") -> RequestError:
    return RequestError(f"{name}: {size} pixels; at most {limits.max_image_pixels} are accepted", 413)


def decode_image(data: bytes, limits: Limits, name: str = "image") -> PIL.Image.Image:
    """An uploaded image (the reference photo, or the upload `name`), decoded once its pixel count is checked."""
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except PIL.Image.DecompressionBombError as err:  # PIL's own, larger limit, checked from the header too
        count = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_many_pixels(count.group(1) if count else "more than PIL's limit of", limits, name) from None
    except (PIL.UnidentifiedImageError, OSError):
        raise RequestError(f"{name}: not a {', '.join(IMAGE_FORMATS)} image PIL can read") from None
    with image:
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise _too_many_pixels(f"{width}x{height} is {width * height}", limits, name)
        try:
            image.load()
        except (OSError, ValueError) as err:
            raise RequestError(f"{name}: could not be decoded: {err}") from None
        return image.copy()


def _check_npz_size(data: bytes, limit: int) -> None:
    """Refuse an archive that would inflate past `limit` bytes (a zip bomb) before anything is read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        return  # not a zip: motion_from_npz_bytes says what it is
    if inflated > limit:
        raise RequestError(f"motion: the archive inflates to {inflated} bytes; at most {limit} are accepted", 413)


def decode_motion(npz: bytes | None, json_text: str | None, limits: Limits) -> Motion | None:
    """The motion from an .npz upload or a JSON field (not both), or None."""
    if npz is not None and json_text is not None:
        raise RequestError("motion/motion_json: give the motion once, as an .npz file or as JSON")
    try:
        if npz is not None:
            _check_npz_size(npz, limits.max_motion_bytes)
            motion = motion_from_npz_bytes(npz)
        elif json_text is not None:
            motion = motion_from_json_text(json_text)
        else:
            return None
    except MotionError as err:
        raise RequestError(f"{'motion' if npz is not None else 'motion_json'}: {err}") from None
    if motion.num_frames > limits.max_motion_frames:
        raise RequestError(f"motion: {motion.num_frames} frames; at most {limits.max_motion_frames} are accepted")
    return motion


def decode_pose_video(data: bytes, limits: Limits, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A pose video's frames at `size` (at most `limits.max_frames` of them) and its frame rate."""
    frames = []
    try:
        with open_video(io.BytesIO(data), "pose_video", "the upload") as container:
            if not container.streams.video:
                raise RequestError("pose_video: the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            for frame in container.decode(stream):
                if frame.width * frame.height > limits.max_image_pixels:
                    raise RequestError(
                        f"pose_video: frames of {frame.width}x{frame.height} pixels; at most "
                        f"{limits.max_image_pixels} pixels are accepted", 413,
                    )
                if len(frames) == limits.max_frames:
                    raise RequestError(f"pose_video: more than {limits.max_frames} frames; trim it to the video wanted")
                frames.append(pose_video_pixels(frame.to_ndarray(format="rgb24")[None], size)[0])
    except av.error.FFmpegError as err:
        raise RequestError(f"pose_video: could not be decoded as a video: {err}") from None
    if not frames:
        raise RequestError("pose_video: holds no frames")
    return np.stack(frames), fps


def _first(*values: Any) -> Any:
    """The first value that is not None: a request's own, the config's, the backbone family's."""
    return next(value for value in values if value is not None)


def _number(fields: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = fields.get(name)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name}: must be a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name}: must be in [{low:g}, {high:g}], got {value!r}")
    return value


def _num_frames(requested: int | None, available: int, backbone: BackboneInfo, limits: Limits) -> int:
    """The requested frame count, checked; by default the longest valid one the driving input covers."""

    def problem(count: int) -> str | None:
        if count > limits.max_frames:
            return f"{count} frames requested; at most {limits.max_frames} are accepted"
        if count > available:
            return f"{count} frames requested but the driving input has only {available}"
        try:
            backbone.spec.check_num_frames(count)
        except ValueError as err:
            return str(err)
        return None

    if requested is None:
        candidates = range(min(available, limits.max_frames), 0, -1)
        found = next((count for count in candidates if problem(count) is None), None)
        if found is None:
            raise RequestError(
                f"num_frames: the driving input's {available} frames are too few for {backbone.spec.name}"
            )
        return found
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise RequestError(f"num_frames: must be a positive integer, got {requested!r}")
    reason = problem(requested)
    if reason is not None:
        raise RequestError(f"num_frames: {reason}")
    return requested


def _photo_options(fields: dict[str, Any], config: ServeConfig) -> PhotoOptions:
    """The config's photo options with the request's `fit` and `background`."""
    try:
        return photo_options({key: fields.get(key) for key in ("fit", "background")}, config.photo)
    except ValidationError as err:
        problem = err.errors()[0]
        raise RequestError(f"{problem['loc'][0]}: {problem['msg']}") from None


def _lead_in(fields: dict[str, Any], config: ServeConfig, retargeter: Retargeter | None, upload: Upload) -> int | None:
    """The lead-in of a request whose motion is to be retargeted, None when it is driven as it is: its `retarget`
    (default: the config's `defaults.retarget`) and `lead_in` (default: `defaults.lead_in`), checked."""
    defaults = config.defaults
    retarget, lead_in = fields.get("retarget"), fields.get("lead_in")
    if retarget is not None and not isinstance(retarget, bool):
        raise RequestError(f"retarget: must be true or false, got {retarget!r}")
    if not (defaults.retarget if retarget is None else retarget) or not upload.has_motion:
        if lead_in is not None:
            raise RequestError("lead_in: blends into a retargeted motion; leave it out, or give a motion and "
                               "retarget=true")
        return None
    if retargeter is None:
        raise RequestError("retarget: this server runs no keypoint estimator (its defaults.retarget is false and "
                           "photo.detector is unset); send retarget=false or leave it out")
    lead_in = defaults.lead_in if lead_in is None else lead_in
    limit = config.limits.max_frames
    if isinstance(lead_in, bool) or not isinstance(lead_in, int) or not 0 <= lead_in <= limit:
        raise RequestError(f"lead_in: must be an integer in [0, {limit}] (frames), got {lead_in!r}")
    if lead_in and upload.pose_video is not None:
        raise RequestError("lead_in: a pose video has no lead-in frames to match; use lead_in=0 with one")
    return lead_in


def parse_submission(
    upload: Upload, backbones: dict[str, BackboneInfo], config: ServeConfig, retargeter: Retargeter | None = None
) -> Submission:
    """Check and resolve a request, retargeting its motion onto the photo's person (with `retargeter`, the
    ingress's estimator and body) unless it or the config says not to; RequestError says what is wrong."""
    fields, limits, defaults = upload.fields, config.limits, config.defaults
    name = fields.get("backbone") or config.default_backbone
    if name not in backbones:
        raise RequestError(f"backbone: {name!r} is not served; choose one of {sorted(backbones)}")
    backbone = backbones[name]
    prompts = {key: fields.get(key) or "" for key in ("prompt", "negative_prompt")}
    for key, text in prompts.items():
        if len(text) > limits.max_prompt_chars:
            raise RequestError(f"{key}: {len(text)} characters; at most {limits.max_prompt_chars} are accepted")
    steps = _first(fields.get("steps"), defaults.steps, backbone.default_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limits.max_steps:
        raise RequestError(f"steps: must be an integer in [1, {limits.max_steps}], got {steps!r}")
    seed = fields.get("seed")
    seed = secrets.randbelow(MAX_SEED) if seed is None else int(_number(fields, "seed", 0, 0, MAX_SEED))
    lead_in = _lead_in(fields, config, retargeter, upload)
    retarget = RetargetSummary.skipped(
        "no motion (a pose video is used as it is)" if not upload.has_motion
        else "the server's defaults.retarget is false" if fields.get("retarget") is None else "retarget=false"
    )
    try:
        photo = prepare_photo(decode_image(upload.image, limits), backbone.resolution, _photo_options(fields, config),
                              None if retargeter is None else retargeter.estimator, detect=lead_in is not None)
        mask = None if upload.mask is None else fit_mask(
            decode_image(upload.mask, limits, "mask"), photo.intake, backbone.resolution
        )
        motion = decode_motion(upload.motion, upload.motion_json, limits)
        pose_video, video_fps = (None, None) if upload.pose_video is None else decode_pose_video(
            upload.pose_video, limits, backbone.resolution
        )
        if lead_in is not None:  # last: the photo fit is the costliest check
            motion, retarget = retarget_to_photo(photo, motion, retargeter.body, lead_in)
    except RequestError:
        raise
    except ValueError as err:  # the pipeline's and the motion contract's messages name the field
        raise RequestError(str(err)) from None
    if motion is None and pose_video is None:
        raise RequestError("motion/pose_video: give a motion (.npz file or motion_json), a pose video, or both")
    articulated = fields.get("articulated_noise")
    articulated = motion is not None and backbone.articulated_noise if articulated is None else articulated
    if articulated and motion is None:
        raise RequestError("articulated_noise: it is built from a motion; give one or set articulated_noise=false")
    if motion is not None and pose_video is not None and motion.num_frames != len(pose_video):
        raise RequestError(
            f"pose_video: has {len(pose_video)} frames but the motion has {motion.num_frames}; they must match"
        )
    available = motion.num_frames if motion is not None else len(pose_video)
    num_frames = _num_frames(fields.get("num_frames"), available, backbone, limits)

    inputs = {"image.npy": _npy(photo.pixels)}
    if mask is not None:
        inputs["mask.npy"] = _npy(mask)
    if motion is not None:
        inputs["motion.npz"] = _npz(motion.slice(0, num_frames).to_arrays())
    if pose_video is not None:
        inputs["pose_video.npy"] = _npy(pose_video[:num_frames])
    params = GenerationParams(
        backbone=name,
        **prompts,
        num_frames=num_frames,
        resolution=backbone.resolution,
        steps=steps,
        guidance=_number(fields, "guidance", _first(defaults.guidance, backbone.default_guidance), 1.0, MAX_GUIDANCE),
        gamma=_number(fields, "gamma", _first(defaults.gamma, backbone.default_gamma), 0.0, 1.0),
        seed=seed,
        articulated_noise=articulated,
        fps=motion.fps if motion is not None else video_fps or None,
        inputs=sorted(inputs),
        photo=photo.intake,
        retarget=retarget,
        max_run_s=config.jobs.run_limit_s(backbone.windows(num_frames, defaults.long_video), steps),
    )
    return Submission(params, "long_video" if num_frames > backbone.window else "generation", inputs)
