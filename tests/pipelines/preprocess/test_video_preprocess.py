"""The video preprocessing job: clip sampling, person crops, input listing, and the Ray Data job end to end on
synthetic MP4s of the template body (good videos, a corrupt file, an empty file, a video without a pose source
and one whose motion sidecar has the wrong frame count)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import VIDEO_SIZE, render_body, scaled_motion

from models.backbones import build_adapter
from models.body_model import load_body_model
from models.losses import LossConfig
from models.motion import Motion, motion_from_arrays
from models.motion_decoder import MotionDecoder
from models.padaln import PadaLN
from pipelines.articulated_noise import build_motion_operator
from pipelines.demo.motions import make_demo_motion
from pipelines.io.config import RESOLVED_CONFIG_NAME, load_config
from pipelines.io.manifest import ManifestError, list_videos
from pipelines.io.motion import save_motion
from pipelines.io.operator_columns import row_operator
from pipelines.io.training_rows import training_batch
from pipelines.io.video import write_video
from pipelines.preprocess.clips import (
    ClipConfig,
    CropBox,
    VideoError,
    VideoInfo,
    centre_box,
    crop_frames,
    crop_motion,
    person_box,
    sample_clips,
)
from pipelines.preprocess.config import VideoJobConfig
from pipelines.preprocess.stages import DecodeStage, EncodeStage, PoseStage, ProbeStage, RenderStage, WriteStage
from pipelines.training.step import training_step
from ray_jobs import preprocess

CONFIG = "configs/preprocess/videos-tiny.yaml"


def select_frames(motion: Motion, indices: np.ndarray) -> Motion:
    arrays = motion.to_arrays()
    for key in ("global_orient", "body_pose", "betas", "transl", "K"):
        arrays[key] = arrays[key][indices]
    return motion_from_arrays(arrays)


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def video_body():
    """A coarse template renders the synthetic videos quickly; the job poses the full one."""
    return load_body_model(detail=12)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory, video_body):
    """walk (18 frames at 12 fps: two clips, caption sidecar), turn (17 frames at 24 fps: one clip at 12 fps, mask
    sidecar), and the bad ones: corrupt bytes, an empty file, a video without any pose source, and a video of 17
    frames whose motion has 30."""
    folder = tmp_path_factory.mktemp("videos")
    walk = scaled_motion("walk", 18, fps=12.0)
    frames, _ = render_body(walk, video_body, VIDEO_SIZE)
    write_video(folder / "walk.mp4", frames, walk.fps)
    save_motion(folder / "walk.npz", walk)
    (folder / "walk.txt").write_text("a person walking to the right\n")

    turn = scaled_motion("turn", 17)
    frames, masks = render_body(turn, video_body, VIDEO_SIZE)
    write_video(folder / "turn.mp4", frames, turn.fps)
    save_motion(folder / "turn.npz", turn)
    np.save(folder / "turn.mask.npy", masks)

    write_video(folder / "noperson.mp4", frames, turn.fps)
    write_video(folder / "mismatch.mp4", frames, turn.fps)
    save_motion(folder / "mismatch.npz", scaled_motion("turn", 30))
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 8)
    (folder / "empty.mp4").write_bytes(b"")
    return folder


# Clip sampling and crops


def test_sample_clips_resamples_fps_by_frame_index() -> None:
    info = VideoInfo(num_frames=36, fps=24.0, height=120, width=180)
    clips = sample_clips(info, 9, ClipConfig(fps=12))
    assert [clip.tolist() for clip in clips] == [list(range(0, 18, 2)), list(range(18, 36, 2))]
    assert len(sample_clips(info, 9, ClipConfig(fps=12, stride=4, max_clips_per_video=3))) == 3
    native = sample_clips(VideoInfo(30, 30.0, 8, 8), 9, ClipConfig())
    assert [clip[0] for clip in native] == [0, 9, 18]
    upsampled = sample_clips(VideoInfo(10, 10.0, 8, 8), 9, ClipConfig(fps=20))
    assert upsampled[0].tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(VideoError, match="too short"):
        sample_clips(VideoInfo(20, 24.0, 8, 8), 9, ClipConfig(fps=8))


def test_crop_boxes_have_the_output_aspect_and_stay_inside() -> None:
    assert centre_box((120, 180), (32, 32)) == CropBox(30, 0, 120, 120)
    box = person_box((100.0, 20.0, 130.0, 100.0), (120, 180), (32, 32), margin=0.1)
    assert box.width == box.height == 96 and 0 <= box.y0 and box.y0 + box.height <= 120
    assert box.x0 <= 100 and box.x0 + box.width >= 131
    wide = person_box((0.0, 0.0, 179.0, 119.0), (120, 180), (32, 64), margin=0.5)
    assert (wide.width, wide.height) == (180, 90) and wide.x0 == 0


@pytest.mark.parametrize(
    ("box", "size"),
    [(CropBox(0, 0, 180, 120), (64, 96)), (CropBox(0, 0, 60, 120), (64, 32)), (CropBox(5, 20, 50, 80), (64, 40))],
)
def test_cropped_motion_renders_onto_the_cropped_frames(video_body, box, size) -> None:
    """The body rendered with the cropped motion lands on the crop of the body rendered at the video size."""
    motion = scaled_motion("walk", 3)  # the body lies within x 3..46, y 1..94 of the 180x120 frames
    _, masks = render_body(motion, video_body, VIDEO_SIZE)
    cropped_masks = crop_frames(np.repeat(masks[..., None] * np.uint8(255), 3, -1), box, size)[..., 0] > 127
    _, rendered = render_body(crop_motion(motion, box, size, VIDEO_SIZE), video_body, size)
    iou = (cropped_masks & rendered).sum() / (cropped_masks | rendered).sum()
    assert iou > 0.9


def test_crop_motion_rescales_a_motion_of_another_image_size(body) -> None:
    motion = make_demo_motion("walk", 2)  # intrinsics of 480x720, video 120x180
    box = CropBox(30, 0, 120, 120)
    direct = crop_motion(scaled_motion("walk", 2), box, (32, 32), VIDEO_SIZE)
    np.testing.assert_allclose(crop_motion(motion, box, (32, 32), VIDEO_SIZE).K, direct.K, atol=1e-4)
    with pytest.raises(ValueError, match="aspect ratio"):
        crop_motion(motion, box, (32, 32), (120, 120))


# Input listing


def test_folder_listing_finds_sidecars(video_folder) -> None:
    items = {item.video_id: item for item in list_videos(video_folder)}
    assert set(items) == {"walk", "turn", "noperson", "mismatch", "corrupt", "empty"}
    assert items["walk"].motion.endswith("walk.npz") and items["walk"].caption == "a person walking to the right"
    assert items["turn"].mask.endswith("turn.mask.npy") and items["turn"].caption is None
    assert items["noperson"].motion is None and items["noperson"].keypoints is None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_manifests(tmp_path, suffix) -> None:
    rows = [
        {"id": "a", "video": "clips/a.mp4", "motion": "a.npz", "caption": "a person", "keypoints": None, "mask": None},
        {"id": "b", "video": "/abs/b.mp4", "motion": None, "caption": "", "keypoints": "b.keypoints.npy", "mask": None},
    ]
    table = pa.Table.from_pylist(rows)
    path = tmp_path / f"manifest{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".csv":
        table.to_pandas().to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    a, b = list_videos(path)
    assert (a.video_id, a.video, a.caption) == ("a", str(tmp_path / "clips/a.mp4"), "a person")
    assert a.motion == str(tmp_path / "a.npz")
    assert (b.video, b.motion, b.caption, b.keypoints) == ("/abs/b.mp4", None, None, str(tmp_path / "b.keypoints.npy"))


def test_bad_manifests_and_configs_are_clear_errors(tmp_path) -> None:
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "captoin": "x"}\n')
    with pytest.raises(ManifestError, match="captoin"):
        list_videos(tmp_path / "m.jsonl")
    (tmp_path / "d.jsonl").write_text('{"video": "x/a.mp4"}\n{"video": "y/a.mp4"}\n')
    with pytest.raises(ManifestError, match="'a' is used by both"):
        list_videos(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError, match="videos not found"):
        list_videos(tmp_path / "missing")
    overrides = {"videos": tmp_path, "output_dir": str(tmp_path / "out")}
    with pytest.raises(ValueError, match="captioning model folder .*missing"):
        load_config(VideoJobConfig, CONFIG, {**overrides, "captions": {"model_path": str(tmp_path / "vlm")}})
    with pytest.raises(ValueError, match="differ from the backbone"):
        load_config(VideoJobConfig, CONFIG, {**overrides, "noise": {"num_frames": 17}})
    # rows are made with the noise the backbone config's model samples at generation, and with no other
    backbone = load_config(VideoJobConfig, CONFIG, overrides).backbone_config()
    rows = load_config(VideoJobConfig, CONFIG, overrides).noise
    assert (rows.texture_size, rows.supersample) == (backbone.noise.texture_size, backbone.noise.supersample) == (32, 4)
    with pytest.raises(ValueError, match="'texture_size': 64.*backbone config's `noise:`"):
        load_config(VideoJobConfig, CONFIG, {**overrides, "noise": {"texture_size": 64}})


# The job on a local Ray


def test_video_job_rows_failures_and_rerun(ray_local, video_folder, tmp_path, body) -> None:
    output = tmp_path / "out"
    config = load_config(VideoJobConfig, CONFIG, {"videos": video_folder, "output_dir": output.as_uri()})
    summary = preprocess.run_videos(config)
    assert {k: summary[k] for k in ("videos", "clips_planned", "clips_written", "clips_failed", "clips_skipped")} == {
        "videos": 6, "clips_planned": 7, "clips_written": 3, "clips_failed": 4, "clips_skipped": 0,
    }  # fmt: skip
    assert json.loads((output / "summary.json").read_text())["clips_written"] == 3
    assert (output / RESOLVED_CONFIG_NAME).is_file()

    failures = {row["clip_id"]: row for row in pq.read_table(output / "failures").to_pylist()}
    assert set(failures) == {"corrupt_000000", "empty_000000", "noperson_000000", "mismatch_000000"}
    assert failures["corrupt_000000"]["stage"] == "probe" and "cannot be decoded" in failures["corrupt_000000"]["error"]
    assert failures["empty_000000"]["stage"] == "probe" and "empty" in failures["empty_000000"]["error"]
    assert failures["noperson_000000"]["stage"] == "pose" and "no pose source" in failures["noperson_000000"]["error"]
    assert failures["mismatch_000000"]["stage"] == "pose" and "30" in failures["mismatch_000000"]["error"]

    # plain pyarrow and pandas read the rows
    table = pq.read_table(output / "rows").sort_by("clip_id")
    assert table.column("clip_id").to_pylist() == ["turn_000000", "walk_000000", "walk_000009"]
    frame = pd.read_parquet(output / "rows")
    assert len(frame) == 3 and frame["video_latents"].iloc[0].shape == (3 * 16 * 4 * 4,)
    rows = table.to_pylist()
    assert rows[0]["frame_indices"] == list(range(0, 17, 2))  # 24 fps resampled to 12
    assert rows[1]["frame_indices"] == list(range(9)) and rows[2]["frame_indices"] == list(range(9, 18))
    assert rows[1]["caption"] == "a person walking to the right" and rows[0]["caption"] == "a person moving"
    assert (rows[0]["crop_source"], rows[1]["crop_source"]) == ("mask", "keypoints")
    shapes = {"video_latents": [3, 16, 4, 4], "pose_latents": [3, 16, 4, 4], "motion_targets": [3, 3, 16, 16]}
    for name, shape in shapes.items():
        assert all(row[f"{name}_shape"] == shape for row in rows)

    # the operator rebuilt from a row draws the same noise as one built in memory from the cropped motion
    walk = select_frames(scaled_motion("walk", 18, fps=12.0), np.array(rows[1]["frame_indices"]))
    cropped = crop_motion(walk, CropBox(*rows[1]["crop_box"]), config.size, VIDEO_SIZE)
    in_memory, _ = build_motion_operator(cropped, body, config.noise)
    rebuilt = row_operator(table, 1)
    expected = in_memory.sample(torch.Generator().manual_seed(3), 16)
    assert torch.equal(rebuilt.sample(torch.Generator().manual_seed(3), 16), expected)

    # the rows are a training batch the training step accepts
    adapter = build_adapter(config.backbone_config())
    padaln = PadaLN.for_adapter(adapter, mlp_dim=16).attach(adapter)
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    batch = training_batch(table)
    output_loss = training_step(adapter, decoder, batch, LossConfig(), torch.Generator().manual_seed(0), padaln)
    assert all(np.isfinite(value) for value in output_loss.metrics().values())

    # a rerun (same folder, plain path this time) writes nothing new and retries only what failed
    files = sorted(path.name for path in (output / "rows").iterdir())
    rerun = preprocess.run_videos(config.model_copy(update={"output_dir": str(output)}))
    counts = [rerun[f"clips_{key}"] for key in ("planned", "written", "failed", "skipped")]
    assert counts == [7, 0, 4, 3]
    assert sorted(path.name for path in (output / "rows").iterdir()) == files
    assert len(pq.read_table(output / "failures")) == 4


def test_stages_in_process_with_captions_embedded_on_the_fly(video_folder, tmp_path) -> None:
    """The stages run without Ray too; with `text: caption` the rows keep captions and the batch embeds them."""
    config = load_config(
        VideoJobConfig, CONFIG, {"videos": video_folder, "output_dir": str(tmp_path / "out"), "text": "caption"}
    )
    items = pa.Table.from_pylist([item.as_dict() for item in list_videos(video_folder) if item.video_id == "turn"])
    batch = ProbeStage(config)(items)
    for stage in (PoseStage, DecodeStage, RenderStage, EncodeStage, WriteStage):
        batch = stage(config)(batch)
    assert batch.column("status").to_pylist() == ["ok"]
    table = pq.read_table(tmp_path / "out" / "rows")
    assert "text_embeds" not in table.column_names and table.column("caption").to_pylist() == ["a person moving"]
    with pytest.raises(ValueError, match="pass the backbone adapter"):
        training_batch(table)
    adapter = build_adapter(config.backbone_config())
    assert training_batch(table, adapter).conditioning.prompt_embeds.shape[0] == 1
