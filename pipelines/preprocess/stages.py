"""The per-clip stages of the video preprocessing job; the rows they write are pipelines/io/training_rows.py's, their
config pipelines/preprocess/config.py's.

A clip travels between stages as one row of `STREAM_SCHEMA`: its keys, a status ("ok"; "failed" with the stage
and reason; or "skipped" because its row is already written) and its state, an uncompressed .npz (never a
pickle) of the arrays the stages so far produced. A stage works on "ok" clips only and catches every error per
clip, so a broken video costs one failure row and never the run; failed and skipped clips pass through the later
stages untouched. Each stage is a callable class on a pyarrow batch, so Ray Data can run it as an actor pool:

    probe   video items -> clips: decord probe, resample to the target fps, cut (a video that cannot be
            decoded is one failed clip); clips whose rows are already written are marked skipped
    pose    the clip's motion from its sidecars or a keypoint estimator and an SMPL fit (pipelines/preprocess/pose_sources.py)
    decode  frames at native size, person crop (mask, else keypoints/motion, else centre), resize;
            the motion's intrinsics and keypoints follow the crop
    render  warp operator, motion-decoder targets and the 2D skeleton video, from the cropped motion
    encode  VAE latents of the clip, its first frame and the skeleton video; caption embeddings (batched)
    write   training rows -> one Parquet file per batch under <output>/rows/

`Tally` counts the outcomes the write stage returns and keeps the failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute
import torch

from models.body_model import load_body_model
from models.motion import Motion, motion_from_arrays
from models.motion_decoder import UPSCALE, motion_targets
from models.pose_video import motion_keypoints, render_pose_video
from pipelines.articulated_noise import build_motion_operator
from pipelines.generation.frames import to_model_pixels
from pipelines.io.arrow_arrays import pack_state, unpack_state
from pipelines.io.failures import describe_error
from pipelines.io.training_rows import RowStore, rows_table
from pipelines.preprocess.clips import (
    centre_box,
    clip_id,
    crop_frames,
    crop_motion,
    decode_frames,
    keypoint_bounds,
    load_mask,
    mask_bounds,
    person_box,
    probe_video,
    sample_clips,
)
from pipelines.preprocess.config import CaptionConfig, VideoJobConfig
from pipelines.preprocess.pose_sources import clip_motion, keypoint_estimator

STREAM_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source_path", pa.string()),
        ("status", pa.string()),  # ok, failed or skipped
        ("stage", pa.string()),
        ("error", pa.string()),
        ("state", pa.large_binary()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [STREAM_SCHEMA.field(name) for name in ("clip_id", "video_id", "source_path", "stage", "error")]
)



# Clips in flight


@dataclass
class Clip:
    """A clip between stages: its keys, status and state (numpy arrays by name)."""

    clip_id: str
    video_id: str
    source_path: str
    status: str = "ok"
    stage: str | None = None
    error: str | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def fail(self, stage: str, error: BaseException) -> None:
        """Record why the clip failed and drop its state."""
        self.status, self.stage, self.state = "failed", stage, {}
        self.error = describe_error(error)


def clips_to_table(clips: list[Clip]) -> pa.Table:
    columns = {name: [getattr(clip, name) for clip in clips] for name in STREAM_SCHEMA.names[:-1]}
    columns["state"] = [pack_state(clip.state) if clip.status == "ok" else None for clip in clips]
    return pa.Table.from_pydict(columns, schema=STREAM_SCHEMA)


def clips_from_table(table: pa.Table) -> list[Clip]:
    clips = []
    for row in table.to_pylist():
        payload = row.pop("state")
        clips.append(Clip(**row, state={} if payload is None else unpack_state(payload)))
    return clips


def _put_motion(state: dict[str, np.ndarray], motion: Motion) -> None:
    for key in [key for key in state if key.startswith("motion.")]:
        del state[key]
    state.update({f"motion.{key}": value for key, value in motion.to_arrays().items()})


def _get_motion(state: dict[str, np.ndarray]) -> Motion:
    prefix = "motion."
    return motion_from_arrays({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})


def _text(state: dict[str, np.ndarray], key: str) -> str | None:
    return str(state[key]) if key in state else None


class ClipStage:
    """A stage that updates each "ok" clip's state in place; an error fails that clip alone."""

    name: ClassVar[str]

    def __init__(self, config: VideoJobConfig) -> None:
        self.config = config

    def process(self, clip: Clip) -> None:
        raise NotImplementedError

    def run(self, clips: list[Clip]) -> None:
        for clip in clips:
            if clip.status == "ok":
                try:
                    self.process(clip)
                except Exception as err:  # noqa: BLE001 - a failure row, never a lost clip or a stopped job
                    clip.fail(self.name, err)

    def __call__(self, batch: pa.Table) -> pa.Table:
        clips = clips_from_table(batch)
        self.run(clips)
        return clips_to_table(clips)


# Stages


class ProbeStage:
    """Video items (`VideoItem.as_dict()` rows) -> clips; clips already written come out as skipped."""

    name = "probe"

    def __init__(self, config: VideoJobConfig, written: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.written = written

    def clips(self, item: dict[str, Any]) -> list[Clip]:
        try:
            info = probe_video(item["video"])
            indices = sample_clips(info, self.config.num_frames, self.config.clips)
        except Exception as err:  # noqa: BLE001 - the whole video counts as one failed clip
            clip = Clip(clip_id(item["video_id"], 0), item["video_id"], item["video"])
            clip.fail(self.name, err)
            return [clip]
        sidecars = {key: np.array(item[key]) for key in ("motion", "keypoints", "mask", "caption") if item.get(key)}
        clips = []
        for frames in indices:
            clip = Clip(clip_id(item["video_id"], int(frames[0])), item["video_id"], item["video"])
            if clip.clip_id in self.written:
                clip.status = "skipped"
            else:
                clip.state = {
                    **sidecars,
                    "frame_indices": frames,
                    "fps": np.array(self.config.clips.fps or info.fps),
                    "video_frames": np.array(info.num_frames),
                    "video_size": np.array([info.height, info.width]),
                }
            clips.append(clip)
        return clips

    def __call__(self, batch: pa.Table) -> pa.Table:
        return clips_to_table([clip for item in batch.to_pylist() for clip in self.clips(item)])


class PoseStage(ClipStage):
    """The clip's motion, in the video's pixels, from its pose sources."""

    name = "pose"

    def __init__(self, config: VideoJobConfig) -> None:
        super().__init__(config)
        self.body = load_body_model(config.body.model_path, config.body.uv_path)
        self.estimator = keypoint_estimator(config.pose)  # built once: a missing backend stops the stage at start

    def process(self, clip: Clip) -> None:
        state = clip.state
        motion = clip_motion(
            video=clip.source_path,
            frame_indices=state["frame_indices"],
            video_frames=int(state["video_frames"]),
            image_size=tuple(int(v) for v in state["video_size"]),
            fps=float(state["fps"]),
            motion=_text(state, "motion"),
            keypoints=_text(state, "keypoints"),
            body=self.body,
            estimator=self.estimator,
            **self.config.pose.model_dump(),
        )
        _put_motion(state, motion)


class DecodeStage(ClipStage):
    """Decode the clip's frames at native size, crop around the person, resize to the backbone's resolution."""

    name = "decode"

    def __init__(self, config: VideoJobConfig) -> None:
        super().__init__(config)
        self.body = load_body_model(config.body.model_path, config.body.uv_path)

    def crop(self, clip: Clip, motion: Motion, video_size: tuple[int, int]) -> tuple[Any, str]:
        """The crop box and what it came from: the mask sidecar, the motion's keypoints, or the centre."""
        config, state = self.config, clip.state
        if config.clips.crop == "centre":
            return centre_box(video_size, config.size), "centre"
        if "mask" in state:
            masks = load_mask(_text(state, "mask"), state["frame_indices"], video_size, int(state["video_frames"]))
            return person_box(mask_bounds(masks), video_size, config.size, config.clips.margin), "mask"
        keypoints = motion_keypoints(motion, video_size, self.body, motion.num_frames)
        bounds = keypoint_bounds(keypoints, video_size, config.clips.keypoint_threshold)
        return person_box(bounds, video_size, config.size, config.clips.margin), "keypoints"

    def process(self, clip: Clip) -> None:
        state = clip.state
        video_size = tuple(int(v) for v in state["video_size"])
        motion = _get_motion(state)
        box, source = self.crop(clip, motion, video_size)
        frames = decode_frames(clip.source_path, state["frame_indices"])
        state.update(
            frames=crop_frames(frames, box, self.config.size),
            crop_box=np.array(box.as_list()),
            crop_source=np.array(source),
        )
        _put_motion(state, crop_motion(motion, box, self.config.size, video_size))


class RenderStage(ClipStage):
    """Warp operator, motion-decoder targets and skeleton video of the cropped motion."""

    name = "render"

    def __init__(self, config: VideoJobConfig, device: str = "cpu") -> None:
        super().__init__(config)
        self.device = device
        self.body = load_body_model(config.body.model_path, config.body.uv_path).to(device)

    def process(self, clip: Clip) -> None:
        config = self.config
        motion = _get_motion(clip.state)
        operator, render = build_motion_operator(motion, self.body, config.noise, self.device)
        num_latent, height, width = config.noise.latent_shape
        targets = motion_targets(
            render.uv, render.mask, render.latent_frames, num_latent, (UPSCALE * height, UPSCALE * width)
        )
        arrays = operator.to_arrays()
        clip.state.update(
            arrays,
            motion_targets=targets.cpu().numpy().astype(np.float32),
            pose_frames=render_pose_video(motion, config.size, self.body, config.num_frames),
        )


class Captioner:
    """Captions an image with a local transformers image-text-to-text model."""

    def __init__(self, config: CaptionConfig, device: str) -> None:
        from transformers import pipeline

        self.config = config
        self.pipeline = pipeline("image-text-to-text", model=str(config.model_path), device=device)

    def __call__(self, image: np.ndarray) -> str:
        import PIL.Image

        content = [{"type": "image", "image": PIL.Image.fromarray(image)}, {"type": "text", "text": self.config.prompt}]
        messages = [{"role": "user", "content": content}]
        output = self.pipeline(text=messages, max_new_tokens=self.config.max_new_tokens, return_full_text=False)
        return str(output[0]["generated_text"]).strip()


def encoding_components(config: VideoJobConfig) -> frozenset[str]:
    """The backbone components the encode stage loads: its encoders, never the transformer; the text encoder only
    when captions are embedded here (`text: embed`)."""
    from models.backbones import ENCODING_COMPONENTS

    return ENCODING_COMPONENTS if config.text == "embed" else ENCODING_COMPONENTS - {"text_encoder"}


class EncodeStage(ClipStage):
    """VAE latents and caption embeddings of a batch of clips, with the backbone's encoders loaded once."""

    name = "encode"

    def __init__(self, config: VideoJobConfig, device: str = "cpu") -> None:
        from models.backbones import build_adapter

        super().__init__(config)
        self.adapter = build_adapter(config.backbone_config(), device, encoding_components(config))
        self.captioner = Captioner(config.captions, device) if config.captions.model_path else None

    def caption(self, clip: Clip) -> str:
        known = _text(clip.state, "caption")
        if known is not None:
            return known
        if self.captioner is not None:
            return self.captioner(clip.state["frames"][0])
        return self.config.captions.default

    @torch.no_grad()
    def encode(self, clips: list[Clip]) -> None:
        adapter, config = self.adapter, self.config
        generator = torch.Generator(adapter.device).manual_seed(config.seed)
        captions = [self.caption(clip) for clip in clips]
        video = to_model_pixels(np.stack([clip.state["frames"] for clip in clips]), adapter.device)
        skeletons = to_model_pixels(np.stack([clip.state["pose_frames"] for clip in clips]), adapter.device)
        encoded = {
            "video_latents": adapter.encode_video(video, generator),
            "image_latents": adapter.encode_image(video[:, 0], config.num_frames, generator),
            "image_embeds": adapter.encode_image_embeds(video[:, 0]),
            "pose_latents": adapter.encode_video(skeletons, generator),
            "text_embeds": adapter.encode_prompt(captions)[0] if config.text == "embed" else None,
        }
        for index, clip in enumerate(clips):
            for key in ("frames", "pose_frames"):
                del clip.state[key]
            clip.state["caption"] = np.array(captions[index])
            for key, value in encoded.items():
                if value is not None:
                    clip.state[key] = value[index].float().cpu().numpy()

    def run(self, clips: list[Clip]) -> None:
        ready = [clip for clip in clips if clip.status == "ok"]
        if not ready:
            return
        try:
            self.encode(ready)
        except Exception:  # noqa: BLE001 - retry one by one so only the clips at fault fail
            for clip in ready:
                try:
                    self.encode([clip])
                except Exception as err:  # noqa: BLE001
                    clip.fail(self.name, err)


class WriteStage:
    """Writes the batch's "ok" clips as one Parquet file of training rows; returns every clip's outcome (no state)."""

    name = "write"

    def __init__(self, config: VideoJobConfig) -> None:
        self.store = RowStore(config.output_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        clips = clips_from_table(batch)
        ready = [clip for clip in clips if clip.status == "ok"]
        if ready:
            try:
                self.store.write_rows(rows_table(ready))
            except Exception as err:  # noqa: BLE001
                for clip in ready:
                    clip.fail(self.name, err)
        return clips_to_table(clips).drop_columns(["state"])


@dataclass
class Tally:
    """Counts clip outcomes as the write stage reports them, and keeps the failures."""

    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    failures: list[pa.Table] = field(default_factory=list)
    video_ids: set[str] = field(default_factory=set)

    def add(self, outcomes: pa.Table) -> None:
        for status in outcomes.column("status").to_pylist():
            self.counts[status] += 1
        self.video_ids.update(outcomes.column("video_id").to_pylist())
        failed = outcomes.filter(pa.compute.equal(outcomes.column("status"), "failed"))
        if len(failed):
            self.failures.append(failed.select(FAILURE_SCHEMA.names))

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def rate(self) -> float:
        """Clips per second (written or failed) since the start."""
        return (self.counts["ok"] + self.counts["failed"]) / max(time.monotonic() - self.started, 1e-9)

    def failures_table(self) -> pa.Table:
        return pa.concat_tables([FAILURE_SCHEMA.empty_table(), *self.failures]).cast(FAILURE_SCHEMA)

    def summary(self, videos: int) -> dict[str, Any]:
        return {
            "videos": videos,
            "clips_planned": self.done,
            "clips_written": self.counts["ok"],
            "clips_failed": self.counts["failed"],
            "clips_skipped": self.counts["skipped"],
            "seconds": round(time.monotonic() - self.started, 2),
            "clips_per_s": round(self.rate(), 4),
        }

    def progress_line(self) -> str:
        c = self.counts
        outcome = f"{c['ok']} written, {c['failed']} failed, {c['skipped']} skipped"
        return f"{self.done} clips: {outcome}; {self.rate():.2f} clips/s"
