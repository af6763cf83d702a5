"""Offline dataset rendering, per item: a manifest row -> checked inputs -> generated frames -> MP4 + metadata.

No Ray here: ray_jobs/render.py runs each stage as a Ray Data step on pyarrow batches. The manifest and config
are in `render_manifest`, the output folder in `render_store`.

    prepare   (CPU)  the row's settings checked and merged with the config's defaults, the reference photo
                     fitted to the output (pipelines/generation/photo.py; its intake record goes to the metadata),
                     the motion loaded, validated and retargeted onto the photo's person (photo_retarget.py; what
                     was done goes to the metadata), the pose video decoded, the frame count checked against the
                     backbone's rule and the driving input; for articulated noise, the motion's warp operator (body
                     rendering and rasterization stay off the GPU workers)
    generate  (GPU)  the animation pipeline, built once per worker, samples the noise, denoises and decodes
    encode    (CPU)  the frames as videos/<id>.mp4 in the output folder (a local path or a pyarrow filesystem URI),
                     written under a temporary name, then moved into place

diffusers (models.backbones, pipelines.generation.animation) is imported only where a stage needs it, so the
encode actors start without it (it takes seconds to import).
"""


from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from models.body_model import load_body_model
from models.motion import motion_from_arrays
from models.noise_warp import WarpOperator
from pipelines.articulated_noise import video_noise_operator
from pipelines.generation.frames import pose_video_pixels
from pipelines.generation.photo import Photo, PhotoIntake, fit_mask, photo_options, prepare_photo, read_image
from pipelines.generation.photo_retarget import RetargetSummary, job_estimator, retarget_to_photo
from pipelines.generation.render_manifest import RenderJobConfig, RenderRow
from pipelines.generation.render_store import RenderStore, metadata_table
from pipelines.generation.retarget import RetargetError
from pipelines.io.arrow_arrays import pack_state, unpack_state
from pipelines.io.config import validate_config
from pipelines.io.failures import describe_error
from pipelines.io.motion import load_motion
from pipelines.io.video import read_video

STREAM_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("stage", pa.string()),  # where a failed item failed
        ("error", pa.string()),
        ("settings", pa.string()),  # JSON: the row's resolved generation settings
        ("state", pa.large_binary()),  # .npz of the arrays the stages so far produced (never a pickle)
        ("generation_seconds", pa.float64()),
    ]
)


# Items between stages


@dataclass
class RenderItem:
    """One row between stages: its id, status, resolved settings and state (numpy arrays by name)."""

    id: str
    status: str = "ok"
    stage: str | None = None
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    generation_seconds: float | None = None

    def fail(self, stage: str, error: BaseException) -> None:
        self.status, self.stage, self.error, self.state = "failed", stage, describe_error(error), {}


def items_to_table(items: list[RenderItem]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "id": [item.id for item in items],
            "status": [item.status for item in items],
            "stage": [item.stage for item in items],
            "error": [item.error for item in items],
            "settings": [json.dumps(item.settings) for item in items],
            "state": [pack_state(item.state) if item.status == "ok" else None for item in items],
            "generation_seconds": [item.generation_seconds for item in items],
        },
        schema=STREAM_SCHEMA,
    )


def items_from_table(table: pa.Table) -> list[RenderItem]:
    items = []
    for row in table.to_pylist():
        payload = row.pop("state")
        settings = json.loads(row.pop("settings"))
        items.append(RenderItem(**row, settings=settings, state={} if payload is None else unpack_state(payload)))
    return items


def input_items(rows: list[dict[str, Any]]) -> list[pa.Table]:
    """Manifest rows as the job's input, one single-row table each: `settings` holds the raw row until `prepare`
    checks it."""
    return [items_to_table([RenderItem(id=row["id"], settings=row)]) for row in rows]


def prefixed(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays stored under `prefix` in an item's state, by their own names."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


class _Stage:
    """A stage that updates each "ok" item in place; an error fails that item alone."""

    name: str

    def process(self, item: RenderItem) -> None:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = items_from_table(batch)
        for item in items:
            if item.status == "ok":
                try:
                    self.process(item)
                except Exception as err:  # noqa: BLE001 - a failure row, never a lost item or a stopped job
                    item.fail(self.name, err)
        return items_to_table(items)


# Stages


SKIP_RETARGET = ("or set a row's retarget (or the config's defaults.retarget) to false to drive its motion as it is; "
                 "photo.detector picks the estimator, resources.prepare.runtime_env installs it")


class PrepareStage(_Stage):
    """CPU: the row checked and merged with the defaults; image, motion and pose video decoded at the output size."""

    name = "prepare"

    def __init__(self, config: RenderJobConfig) -> None:
        from models.backbones import (  # imports diffusers: prepare actors only
            adapter_class,
            generated_num_frames,
            sampling_defaults,
        )

        self.config = config
        backbone = config.backbone_config()
        self.spec = backbone.spec
        self.sampling_defaults = sampling_defaults(backbone)
        self.articulated_noise = backbone.articulated_noise
        fixed = adapter_class(backbone.family).config_fixed_num_frames(backbone)
        self.generated_num_frames = functools.partial(generated_num_frames, fixed_num_frames=fixed)
        self.size = config.resolution()
        self.noise_options = backbone.noise_options(config.noise)
        self.body = load_body_model(config.body.model_path, config.body.uv_path)
        # built once: a missing backend stops the stage at start
        self.detector = job_estimator(config.photo, config.defaults.retarget, SKIP_RETARGET)

    def photo(self, row: RenderRow, retarget: bool) -> Photo:
        """The row's photo at the output size, its intake record and (to retarget) the person's keypoints."""
        options = photo_options({"fit": row.fit, "background": row.background}, self.config.photo)
        if retarget and self.detector is None:
            raise RetargetError(f"retarget: this job has no keypoint estimator (defaults.retarget is false); {SKIP_RETARGET}")
        return prepare_photo(read_image(row.image), self.size, options, self.detector, detect=retarget)

    def settings(self, row: RenderRow) -> dict[str, Any]:
        defaults = self.config.defaults
        if row.motion is None and row.pose_video is None:
            raise ValueError("motion/pose_video: give a motion file, a pose video, or both")
        if row.motion is None and self.config.padaln is None:
            raise ValueError(
                "pose_video: without a motion the pose video drives the video only through PadaLN; "
                "set padaln in the config or give the row a motion"
            )
        num_frames = row.num_frames if row.num_frames is not None else defaults.num_frames
        if num_frames is not None:
            try:
                self.spec.check_num_frames(num_frames)
            except ValueError as err:
                raise ValueError(f"num_frames: {err}") from None

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return {
            "prompt": row.prompt,
            "negative_prompt": pick(row.negative_prompt, defaults.negative_prompt),
            "num_frames": num_frames,
            "steps": pick(row.steps, pick(defaults.steps, self.sampling_defaults.steps)),
            "guidance": pick(row.guidance, pick(defaults.guidance, self.sampling_defaults.guidance)),
            "gamma": pick(row.gamma, pick(defaults.gamma, self.sampling_defaults.gamma)),
            "seed": pick(row.seed, defaults.seed),
            "articulated_noise": pick(defaults.articulated_noise, self.articulated_noise) and row.motion is not None,
        }

    def process(self, item: RenderItem) -> None:
        row = validate_config(RenderRow, item.settings, source=f"manifest row {item.id!r}")
        settings = self.settings(row)
        defaults = self.config.defaults
        retarget = (defaults.retarget if row.retarget is None else row.retarget) and row.motion is not None
        summary = RetargetSummary.skipped("retarget is false" if row.motion is not None else
                                          "no motion (a pose video is used as it is)")
        photo = self.photo(row, retarget)
        image, intake = photo.pixels, photo.intake
        settings["photo"] = intake.model_dump()
        state = {"image": image}
        if row.mask is not None:
            state["mask"] = fit_mask(row.mask, intake, self.size)
        available = []
        motion = None
        if row.motion is not None:
            motion = load_motion(row.motion)
            if retarget:
                lead_in = defaults.lead_in if row.lead_in is None else row.lead_in
                motion, summary = retarget_to_photo(photo, motion, self.body, lead_in)
            state.update({f"motion.{key}": value for key, value in motion.to_arrays().items()})
            available.append(motion.num_frames)
            settings["fps"] = motion.fps
        settings["retarget"] = summary.model_dump()
        if row.pose_video is not None:
            frames, fps = read_video(row.pose_video, "pose_video")
            state["pose_video"] = pose_video_pixels(frames, self.size)
            available.append(len(frames))
            settings.setdefault("fps", fps or None)
        if settings["num_frames"] is None:
            settings["num_frames"] = self.spec.longest_num_frames(min(available))
        elif settings["num_frames"] > min(available):
            raise ValueError(
                f"num_frames: {settings['num_frames']} requested but the driving input has only {min(available)} frames"
            )
        if settings["articulated_noise"]:
            # The pipeline's own frame rule: a model with learned positional embeddings generates whole windows.
            generated = self.generated_num_frames(settings["num_frames"])
            operator = video_noise_operator(motion.held(generated), self.body, self.noise_options, generated, self.size)
            state.update({f"operator.{key}": value for key, value in operator.to_arrays().items()})
        item.settings, item.state = settings, state


class GenerateStage(_Stage):
    """GPU (or CPU): the animation pipeline, built once per worker, turns prepared inputs into frames."""

    name = "generate"

    def __init__(self, config: RenderJobConfig, device: str) -> None:
        from pipelines.generation.animation import AnimationPipeline

        self.config = config
        body = load_body_model(config.body.model_path, config.body.uv_path)
        self.pipeline = AnimationPipeline.from_config(
            config.backbone_config(), lora=config.lora, padaln=config.padaln, device=device, body=body,
            noise_options=config.noise,
        )

    def process(self, item: RenderItem) -> None:
        settings, state = item.settings, item.state
        motion_arrays = prefixed(state, "motion.")
        operator_arrays = prefixed(state, "operator.")
        defaults = self.config.defaults
        started = time.perf_counter()
        output = self.pipeline(
            state["image"],
            settings["prompt"],
            motion=motion_from_arrays(motion_arrays) if motion_arrays else None,
            pose_video=state.get("pose_video"),
            negative_prompt=settings["negative_prompt"],
            num_frames=settings["num_frames"],
            num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance"],
            gamma=settings["gamma"],
            seed=settings["seed"],
            articulated_noise=settings["articulated_noise"],
            long_video=defaults.long_video,
            window_overlap=defaults.window_overlap,
            fps=settings.get("fps"),
            warp_operator=WarpOperator.from_arrays(operator_arrays) if operator_arrays else None,
            mask=state.get("mask"),
        )
        item.generation_seconds = time.perf_counter() - started
        item.settings["fps"] = output.fps
        item.state = {"frames": output.frames}


class EncodeStage:
    """CPU: each generated item's frames as videos/<id>.mp4; returns the batch's metadata rows."""

    name = "encode"

    def __init__(self, config: RenderJobConfig) -> None:
        self.store = RenderStore(config.output_dir)

    def metadata(self, item: RenderItem) -> dict[str, Any]:
        row = {"id": item.id, "status": item.status, "stage": item.stage, "error": item.error}
        if item.status != "ok":
            return row
        try:
            frames, fps = item.state["frames"], float(item.settings["fps"])
            uri = self.store.write_video(item.id, frames, fps)
        except Exception as err:  # noqa: BLE001 - a failure row, never a lost item
            return {**row, "status": "failed", "stage": self.name, "error": describe_error(err)}
        count, height, width = (int(side) for side in frames.shape[:3])
        return {
            **row,
            "output_path": uri,
            "frames": count,
            "height": height,
            "width": width,
            "fps": fps,
            "seconds": count / fps,
            "generation_seconds": item.generation_seconds,
            **PhotoIntake.model_validate(item.settings["photo"]).columns(),
            **RetargetSummary.model_validate(item.settings["retarget"]).columns(),
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        return metadata_table([self.metadata(item) for item in items_from_table(batch)])
