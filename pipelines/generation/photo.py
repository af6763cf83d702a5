"""Photo intake: a reference photo of any size, orientation and mode -> uint8 RGB `[H, W, 3]` at the output size,
plus a record of what was done to it. `humanim generate`, the render job and the HTTP API all go through here.

1. EXIF orientation is applied (a phone photo with orientation 6 is turned upright); source pixels below are
   those of the upright photo.
2. Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is flattened onto `background` (white by
   default); the alpha channel is kept to locate the person.
3. The photo is fitted to the output's aspect ratio:
   - `fit: crop` (default): the largest box of the output's aspect ratio around the person (or, with `margin`, the
     preprocessing job's person box: the person's extent plus `margin` times its longer side on each side); a box
     shorter than the person keeps their top (the face, with HEADROOM) rather than their middle. The
     person is located, in order, from a keypoint estimator (`detector`, or one passed in), from the alpha
     channel, else the box is centred and the record notes that no person detector ran. A detector, or an alpha
     channel, that finds no person is an error saying so, never a silent misplacement.
   - `fit: centre`: the largest centred box; nothing is detected.
   - `fit: pad`: the whole photo, letterboxed with `background`.
   The box is then resized (bicubic) to the output size.

`PhotoIntake` records the box as (x0, y0, width, height) in source pixels: the output is that box scaled to the
output size, and with `pad` the box reaches outside the photo (the background bands). The same box maps the
photo's pixels (a keypoint, a pose) to the output's: see `pipelines.preprocess.clips.crop_transform`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import PIL.Image
import PIL.ImageOps
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.preprocess.clips import (
    CropBox,
    VideoError,
    centre_box,
    crop_transform,
    keypoint_bounds,
    largest_box,
    mask_bounds,
    person_box,
)

Fit = Literal["crop", "centre", "pad"]
Method = Literal["keypoints", "alpha", "centre", "pad"]
ORIENTATION_TAG = 0x0112
ALPHA_THRESHOLD = 127  # alpha above this is the person
HEADROOM = 0.1  # above the person's top, times the box height, when the box cannot hold the whole person
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
SKIP_DETECTION = "use fit: pad (letterbox the whole photo) or fit: centre (centre crop) to skip person detection"
RETARGET_OFF = ("turn retargeting off (retarget=false in an API request, retarget: false in a render config or "
                "manifest row, --no-retarget for humanim generate)")
RETARGET_NEEDS_PERSON = f"retargeting looks for the person whatever the fit: {RETARGET_OFF} to use this photo as it is"


class PhotoError(ValueError):
    """A photo that cannot be used; the message starts with `image:` and says why and what to do."""


class KeypointEstimator(Protocol):
    """uint8 RGB frames `[T, H, W, 3]` -> COCO-17 keypoints `[T, 17, 3]` (x, y, confidence)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def parse_background(value: Any) -> tuple[int, int, int]:
    """A colour as (r, g, b) in [0, 255] from a sequence, "r,g,b" or "#rrggbb"."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
            value = [int(text[i : i + 2], 16) for i in (1, 3, 5)]
        else:
            value = [part.strip() for part in text.split(",")]
    try:
        channels = [int(part) for part in value]
    except (TypeError, ValueError):
        channels = []
    if len(channels) != 3 or not all(0 <= c <= 255 for c in channels):
        raise ValueError(f"background: expected [r, g, b] in 0-255, 'r,g,b' or '#rrggbb', got {value!r}")
    return channels[0], channels[1], channels[2]


class PhotoOptions(BaseModel):
    """How a reference photo is fitted to the output (`photo:` in render configs; CLI and API options)."""

    model_config = ConfigDict(extra="forbid")

    fit: Fit = Field("crop", description="crop around the person, centre crop, or pad (letterbox)")
    background: tuple[int, int, int] = Field(
        (255, 255, 255), description="colour under transparent pixels and of the pad bands"
    )
    margin: float | None = Field(
        None, ge=0, le=2,
        description="None: the largest box around the person; a number: the person box of the preprocessing job "
        "(this times the person's longer side added on each side)",
    )
    keypoint_threshold: float = Field(0.3, ge=0, le=1, description="keypoints below this confidence are ignored")
    detector: dict[str, Any] | None = Field(
        None,
        description="keypoint estimator, as the preprocessing config's pose: options (keypoint_backend, dwpose_model, "
        "model_complexity, mediapipe_model); None: none",
    )

    @field_validator("background", mode="before")
    @classmethod
    def _background(cls, value: Any) -> tuple[int, int, int]:
        return parse_background(value)

    @model_validator(mode="after")
    def _detector_is_valid(self) -> PhotoOptions:
        if self.detector is not None:
            _pose_options(self.detector)
        return self


def _pose_options(detector: dict[str, Any]) -> Any:
    from pipelines.io.config import validate_config
    from pipelines.preprocess.pose_sources import PoseOptions

    opts = validate_config(PoseOptions, detector, source="photo detector")
    if opts.keypoint_backend == "dwpose" and opts.dwpose_model is None:
        raise ValueError("detector: keypoint_backend dwpose needs dwpose_model (DWPose's ONNX file)")
    return opts


def photo_detector(options: PhotoOptions) -> KeypointEstimator | None:
    """The keypoint estimator `options.detector` configures (imports its backend, checks its files), or None."""
    if options.detector is None:
        return None
    from pipelines.preprocess.pose_sources import keypoint_estimator

    return keypoint_estimator(_pose_options(options.detector))


class PhotoIntake(BaseModel):
    """What intake did to a photo: the box of source pixels (after EXIF orientation) that became the output."""

    fit: Fit
    method: Method = Field(description="what placed the box: keypoints, alpha, centre (no detector) or pad")
    x0: int
    y0: int
    width: int
    height: int
    source_height: int = Field(description="the upright photo's size")
    source_width: int
    orientation: int = Field(1, description="the EXIF orientation that was applied (1: none)")
    flattened: bool = Field(False, description="transparency was flattened onto the background")
    note: str | None = None

    def box(self) -> CropBox:
        return CropBox(self.x0, self.y0, self.width, self.height)

    def columns(self) -> dict[str, Any]:
        """Flat `photo_*` columns for tables (the render job's metadata)."""
        return {f"photo_{key}": value for key, value in self.model_dump().items()}


@dataclass(frozen=True)
class Photo:
    """The photo at the output size, the record of its intake, and the detector's keypoints `[J, 3]` in output
    pixels (x, y, confidence; None when no detector ran): where the person stands, for retargeting a motion."""

    pixels: np.ndarray
    intake: PhotoIntake
    keypoints: np.ndarray | None = None


# Reading


def read_image(path: str | Path, field: str = "image") -> PIL.Image.Image:
    """An image file for `field` (the reference photo, or its region mask), opened and loaded (orientation and mode
    are handled by `prepare_photo` / `fit_mask`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{field}: file not found: {path}")
    try:
        with PIL.Image.open(path) as opened:
            return opened.copy()
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{field}: {path} is not an image file PIL can read") from None


def upright(image: PIL.Image.Image) -> tuple[PIL.Image.Image, int]:
    """The image with its EXIF orientation applied, and that orientation (1: none)."""
    orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    if orientation == 1:
        return image, 1
    return PIL.ImageOps.exif_transpose(image), orientation


def _has_alpha(image: PIL.Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def flattened(
    image: PIL.Image.Image | np.ndarray, background: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 RGB `[H, W, 3]` with transparency flattened onto `background`, and the alpha `[H, W]` (None: opaque)."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in HIGH_DEPTH_MODES:
            raise PhotoError(f"image: mode {image.mode} (16-bit or float pixels) is not accepted; save it as 8-bit RGB")
        image = np.asarray(image.convert("RGBA" if _has_alpha(image) else "RGB"))
    elif not isinstance(image, np.ndarray):
        raise PhotoError(f"image: expected a PIL image or a uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise PhotoError(f"image: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise PhotoError(f"image: expected shape [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (gray), "
                         f"got {list(image.shape)}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1), None
    if image.shape[-1] == 3:
        return image, None
    alpha = image[..., 3]
    weight = alpha[..., None].astype(np.float32) / 255.0
    blended = image[..., :3] * weight + np.asarray(background, np.float32) * (1.0 - weight)
    return np.round(blended).astype(np.uint8), alpha


# Locating the person


def detect_keypoints(rgb: np.ndarray, estimator: KeypointEstimator) -> np.ndarray:
    """The estimator's keypoints `[J, 3]` of the photo, in its pixels."""
    keypoints = np.asarray(estimator(rgb[None]), dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[0] != 1 or keypoints.shape[-1] != 3:
        raise PhotoError(f"image: the keypoint estimator returned shape {list(keypoints.shape)}, expected [1, J, 3]")
    return keypoints[0]


def _keypoint_bounds(keypoints: np.ndarray, image_size: tuple[int, int], threshold: float, how_to_skip: str
                     ) -> tuple[float, float, float, float]:
    try:
        return keypoint_bounds(keypoints[None], image_size, threshold)
    except VideoError:
        raise PhotoError(
            f"image: the person detector (keypoint estimator) found no person in the photo (no keypoint with "
            f"confidence >= {threshold}); {how_to_skip}"
        ) from None


def _alpha_bounds(alpha: np.ndarray) -> tuple[float, float, float, float] | None:
    """The opaque pixels' extent, or None when the alpha channel says nothing (every pixel opaque)."""
    person = alpha > ALPHA_THRESHOLD
    if person.all():
        return None
    if not person.any():
        raise PhotoError(f"image: the photo is fully transparent, so its alpha channel shows no person; "
                         f"{SKIP_DETECTION}")
    return mask_bounds(person[None])


def _keep_head(box: CropBox, bounds: tuple[float, float, float, float], image_size: tuple[int, int]) -> CropBox:
    """A box shorter than the person keeps the person's top (the face) with some headroom, not their middle."""
    top, bottom = bounds[1], bounds[3]
    if bottom - top <= box.height:
        return box
    y0 = int(np.clip(round(top + 0.5 - HEADROOM * box.height), 0, image_size[0] - box.height))
    return dataclasses.replace(box, y0=y0)


def _cut_note(box: CropBox, bounds: tuple[float, float, float, float]) -> str | None:
    x0, y0, x1, y1 = bounds
    inside = (x0 >= box.x0 - 0.5 and y0 >= box.y0 - 0.5 and x1 <= box.x0 + box.width - 0.5
              and y1 <= box.y0 + box.height - 0.5)
    return None if inside else "the box cuts the person (the output's aspect ratio); fit: pad keeps all of them"


def crop_box(
    rgb: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int], options: PhotoOptions,
    keypoints: np.ndarray | None, how_to_skip: str,
) -> tuple[CropBox, Method, str | None]:
    """The crop box (`fit: crop` or `centre`), what placed it, and a note; keypoints showing no person are an error
    ending with `how_to_skip`."""
    image_size = rgb.shape[:2]
    if options.fit == "centre":
        return centre_box(image_size, size), "centre", "fit: centre: no person detector ran"
    bounds, method = None, "centre"
    if keypoints is not None:
        bounds, method = _keypoint_bounds(keypoints, image_size, options.keypoint_threshold, how_to_skip), "keypoints"
    elif alpha is not None:
        bounds = _alpha_bounds(alpha)
        method = "centre" if bounds is None else "alpha"
    if bounds is None:
        note = "no person detector ran (no keypoint estimator configured, no transparency): centre crop"
        return centre_box(image_size, size), "centre", note
    if options.margin is None:
        box = largest_box(((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2), image_size, size)
    else:
        box = person_box(bounds, image_size, size, options.margin)
    box = _keep_head(box, bounds, image_size)
    return box, method, _cut_note(box, bounds)


def _crop(rgb: np.ndarray, box: CropBox, size: tuple[int, int]) -> np.ndarray:
    region = (box.x0, box.y0, box.x0 + box.width, box.y0 + box.height)
    if region == (0, 0, rgb.shape[1], rgb.shape[0]) and rgb.shape[:2] == tuple(size):
        return rgb
    resized = PIL.Image.fromarray(rgb).resize(size[::-1], PIL.Image.Resampling.BICUBIC, box=region)
    return np.asarray(resized)


def _pad(rgb: np.ndarray, size: tuple[int, int], background: tuple[int, int, int]) -> tuple[np.ndarray, CropBox]:
    """The whole photo scaled into `size` and centred on `background`, and its box in source pixels."""
    (height, width), (out_h, out_w) = rgb.shape[:2], size
    scale = min(out_h / height, out_w / width)
    fitted_h, fitted_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (out_h - fitted_h) // 2, (out_w - fitted_w) // 2
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[:] = background
    canvas[top : top + fitted_h, left : left + fitted_w] = _crop(rgb, CropBox(0, 0, width, height),
                                                                  (fitted_h, fitted_w))
    box = CropBox(-round(left / scale), -round(top / scale), round(out_w / scale), round(out_h / scale))
    return canvas, box


def prepare_photo(
    image: PIL.Image.Image | np.ndarray,
    size: tuple[int, int],
    options: PhotoOptions | None = None,
    estimator: KeypointEstimator | None = None,
    *,
    detect: bool = False,
) -> Photo:
    """The photo at `size` (H, W) by the rules in the module docstring; `estimator` overrides `options.detector`
    (pass one built once with `photo_detector` when many photos go through). The estimator runs for `fit: crop`, and
    with `detect` for every fit (retargeting needs the person's keypoints; they do not move a centre or pad box, and
    a photo without a person is then an error that says how to turn retargeting off)."""
    options = options or PhotoOptions()
    orientation = 1
    if isinstance(image, PIL.Image.Image):
        image, orientation = upright(image)
    rgb, alpha = flattened(image, options.background)
    wanted = detect or options.fit == "crop"
    if estimator is None and wanted:
        estimator = photo_detector(options)
    keypoints = None if estimator is None or not wanted else detect_keypoints(rgb, estimator)
    if options.fit == "pad":
        pixels, box = _pad(rgb, size, options.background)
        placed = "no person detector ran" if keypoints is None else "the detected keypoints do not move the box"
        method, note = "pad", f"fit: pad: the whole photo, letterboxed; {placed}"
    else:
        how_to_skip = RETARGET_NEEDS_PERSON if detect else SKIP_DETECTION
        box, method, note = crop_box(rgb, alpha, size, options, keypoints if options.fit == "crop" else None,
                                     how_to_skip)
        pixels = _crop(rgb, box, size)
    intake = PhotoIntake(
        fit=options.fit, method=method, x0=box.x0, y0=box.y0, width=box.width, height=box.height,
        source_height=rgb.shape[0], source_width=rgb.shape[1], orientation=orientation,
        flattened=alpha is not None, note=note,
    )
    return Photo(pixels, intake, None if keypoints is None else _to_output(keypoints, box, size, rgb.shape[:2]))


def fit_mask(mask: PIL.Image.Image | np.ndarray | str | Path, intake: PhotoIntake, size: tuple[int, int]) -> np.ndarray:
    """A region mask drawn on the photo (255 keeps a pixel, 0 blanks it: a grayscale or 1-bit image, or a uint8/bool
    array `[H, W]`), put through the photo's EXIF orientation and box: uint8 `[H, W]` at `size`. Where the box
    reaches past the photo (`fit: pad`) everything is kept."""
    if isinstance(mask, (str, Path)):
        mask = read_image(mask, "mask")
    if isinstance(mask, PIL.Image.Image):
        mask, _ = upright(mask)
        if mask.mode not in ("L", "1"):
            raise PhotoError(f"mask: mode {mask.mode} is not accepted; pass a grayscale (L) or 1-bit image")
        mask = np.asarray(mask.convert("L"))
    elif not isinstance(mask, np.ndarray):
        raise PhotoError(f"mask: expected an image or a uint8/bool array, got {type(mask).__name__}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise PhotoError(f"mask: expected a uint8 or bool array [H, W], got {mask.dtype} {list(mask.shape)}")
    if mask.shape != (intake.source_height, intake.source_width):
        raise PhotoError(f"mask: size {mask.shape[0]}x{mask.shape[1]} differs from the photo's "
                         f"{intake.source_height}x{intake.source_width} (HxW, upright)")
    box = intake.box()
    # PIL's crop fills what lies outside the photo with 0: crop the inverse, so that outside comes back kept.
    dropped = PIL.Image.fromarray(255 - mask).crop((box.x0, box.y0, box.x0 + box.width, box.y0 + box.height))
    return 255 - np.asarray(dropped.resize(size[::-1], PIL.Image.Resampling.BILINEAR))


def _to_output(keypoints: np.ndarray, box: CropBox, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Keypoints `[J, 3]` from photo pixels to output pixels (the box scaled to the output)."""
    transform = crop_transform(box, size, image_size, image_size)
    points = np.concatenate([keypoints[:, :2], np.ones_like(keypoints[:, :1])], axis=-1) @ transform.T
    return np.concatenate([points[:, :2], keypoints[:, 2:]], axis=-1)


def photo_options(fields: dict[str, Any], base: PhotoOptions | None = None) -> PhotoOptions:
    """`base` (default: the defaults) with the non-None `fields` (fit, background, ...) set, validated."""
    base = base or PhotoOptions()
    given = {key: value for key, value in fields.items() if value is not None}
    return PhotoOptions.model_validate({**base.model_dump(), **given})
