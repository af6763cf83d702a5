"""The render job on a local Ray with the tiny backbone at 32x32: broken rows recorded, reruns resume, MP4s decode."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import CONFIGS, hostile_files

from models.body_model import load_body_model
from models.pose_video import render_pose_video
from pipelines.articulated_noise import video_noise_operator
from pipelines.demo.manifest import write_demo_manifest
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.render_manifest import RenderJobConfig, read_render_manifest
from pipelines.generation.render_stages import EncodeStage, GenerateStage, PrepareStage, input_items, items_from_table
from pipelines.generation.render_store import METADATA_NAME, METADATA_SCHEMA
from pipelines.io.config import RESOLVED_CONFIG_NAME
from pipelines.io.filesystem import resolve_uri
from pipelines.io.manifest import ManifestError
from pipelines.io.motion import load_motion, save_motion
from pipelines.io.video import read_video, write_video
from ray_jobs import render
from ray_jobs.cli import main

RESOURCES = {
    "prepare": {"workers": 1, "num_cpus": 0.25},
    "generate": {"workers": 1, "num_cpus": 0.5},
    "encode": {"workers": 1, "num_cpus": 0.25},
}


@pytest.fixture()
def manifest(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    person = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    PIL.Image.fromarray(person).save(inputs / "person.png")
    walk = make_demo_motion("walk", 17)
    save_motion(inputs / "walk.npz", walk)
    save_motion(inputs / "turn.npz", make_demo_motion("turn", 17))
    broken = make_demo_motion("walk", 17).to_arrays()
    broken["transl"][3, 1] = np.nan
    np.savez(inputs / "nan.npz", **broken)
    write_video(inputs / "walk_pose.mp4", render_pose_video(walk, (32, 32), load_body_model()), walk.fps)
    rows = [
        {"id": "walk", "image": "person.png", "motion": "walk.npz", "prompt": "a person walking", "num_frames": 9},
        {"id": "turn", "image": "person.png", "motion": "turn.npz", "num_frames": 17, "gamma": 0.2, "seed": 3},
        {"id": "posed", "image": "person.png", "motion": "walk.npz", "pose_video": "walk_pose.mp4"},
        {"id": "no_image", "image": "missing.png", "motion": "walk.npz"},
        {"id": "nan_motion", "image": "person.png", "motion": "nan.npz"},
        {"id": "bad_frames", "image": "person.png", "motion": "walk.npz", "num_frames": 10},
    ]
    path = inputs / "manifest.parquet"
    columns = list(dict.fromkeys(key for row in rows for key in row))  # from_pylist reads keys off row 0 only
    # missing cells are nulls: the defaults apply
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows]), path)
    return path


def job_config(manifest, output_dir) -> RenderJobConfig:
    return RenderJobConfig(
        manifest=manifest, output_dir=output_dir, backbone=CONFIGS / "tiny-cogvideox.yaml",
        noise={"texture_size": 32, "supersample": 2}, defaults={"steps": 1, "guidance": 1.0, "retarget": False}, resources=RESOURCES,
    )


def test_broken_rows_are_recorded_and_a_rerun_resumes(ray_local, manifest, tmp_path) -> None:
    out = tmp_path / "out"
    counts = render.run(job_config(manifest, out))
    assert counts == {"items": 6, "written": 3, "failed": 3, "skipped": 0}
    assert json.loads((out / "summary.json").read_text()) == counts
    assert (out / RESOLVED_CONFIG_NAME).is_file() and not (out / "metadata.parts").exists()

    rows = {row["id"]: row for row in pq.read_table(out / METADATA_NAME).to_pylist()}
    assert list(rows) == ["walk", "turn", "posed", "no_image", "nan_motion", "bad_frames"]  # manifest order
    assert {row["stage"] for row in rows.values() if row["status"] == "failed"} == {"prepare"}
    assert "image: file not found" in rows["no_image"]["error"]
    assert "'transl' contains NaN or inf" in rows["nan_motion"]["error"]
    assert "num_frames: CogVideoX 1.0 needs" in rows["bad_frames"]["error"]
    # default num_frames: the longest count the 17-frame motion allows (8m+1 for CogVideoX 1.0)
    for item_id, frames in {"walk": 9, "turn": 17, "posed": 17}.items():
        row = rows[item_id]
        video, fps = read_video(row["output_path"])
        assert row["status"] == "ok" and row["frames"] == frames and video.shape == (frames, 32, 32, 3)
        assert row["seconds"] == pytest.approx(frames / row["fps"]) and fps == pytest.approx(row["fps"])
        assert row["generation_seconds"] > 0

    # rerun through the CLI: done rows are skipped (their MP4s untouched), failed rows retried
    written = {item_id: (out / "videos" / f"{item_id}.mp4").stat().st_mtime_ns for item_id in ("walk", "turn", "posed")}
    PIL.Image.new("RGB", (32, 32), (90, 120, 30)).save(manifest.parent / "missing.png")
    config_file = tmp_path / "render.yaml"
    config_file.write_text(json.dumps(job_config(manifest, out).model_dump(mode="json")))  # JSON is YAML
    main(["render", "--config", str(config_file)])
    assert json.loads((out / "summary.json").read_text()) == {"items": 6, "written": 1, "failed": 2, "skipped": 3}
    assert {item_id: (out / "videos" / f"{item_id}.mp4").stat().st_mtime_ns for item_id in written} == written
    rows = {row["id"]: row for row in pq.read_table(out / METADATA_NAME).to_pylist()}
    assert rows["no_image"]["status"] == "ok" and rows["walk"]["status"] == "ok" and len(rows) == 6


def test_an_output_dir_uri_holds_videos_metadata_and_resume(ray_local, manifest, tmp_path, monkeypatch) -> None:
    """output_dir as a pyarrow filesystem URI (what s3:// or a shared file system is on a cluster): the encoders
    write, and the driver reads back, through it; output_path is a URI any node reads; nothing lands in the cwd."""
    rows = [{"id": "walk", "image": "person.png", "motion": "walk.npz", "num_frames": 9},
            {"id": "no_image", "image": "missing.png", "motion": "walk.npz"}]
    small = manifest.parent / "small.jsonl"
    small.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"file://{tmp_path}/out"
    config = job_config(small, uri)
    assert render.run(config) == {"items": 2, "written": 1, "failed": 1, "skipped": 0}
    out = tmp_path / "out"
    metadata = {row["id"]: row for row in pq.read_table(out / METADATA_NAME).to_pylist()}
    assert metadata["walk"]["output_path"] == f"{uri}/videos/walk.mp4"
    filesystem, path = resolve_uri(metadata["walk"]["output_path"])
    assert read_video(path, "walk", filesystem)[0].shape == (9, 32, 32, 3)
    assert "image: file not found" in metadata["no_image"]["error"]
    assert yaml.safe_load((out / RESOLVED_CONFIG_NAME).read_text())["output_dir"] == uri
    assert json.loads((out / "summary.json").read_text())["written"] == 1
    assert render.run(config) == {"items": 2, "written": 0, "failed": 1, "skipped": 1}  # resumed through the URI
    assert list(elsewhere.iterdir()) == []


def test_manifest_errors_and_formats(tmp_path) -> None:
    rows = [{"id": "a", "image": "a.png", "motion": "m/a.npz", "steps": 2},
            {"id": "b", "image": "/abs/b.png", "steps": None}]
    pyarrow.csv.write_csv(pa.Table.from_pylist(rows), tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("m.csv", "m.jsonl"):
        parsed = read_render_manifest(tmp_path / name)
        assert parsed[0]["motion"] == str(tmp_path / "m" / "a.npz") and parsed[1]["image"] == "/abs/b.png"
        assert parsed[0]["steps"] == 2 and "steps" not in parsed[1] and "motion" not in parsed[1]
    bad = {
        "dup.jsonl": ([{"id": "a", "image": "x"}, {"id": "a", "image": "y"}], "more than one row"),
        "cols.jsonl": ([{"id": "a", "image": "x", "colour": "red"}], "colour"),
        "noimage.jsonl": ([{"id": "a", "motion": "x"}], "'id' and 'image'"),
        "badid.jsonl": ([{"id": "../a", "image": "x"}], "file stems"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in content))
        with pytest.raises(ManifestError, match=message):
            read_render_manifest(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_render_manifest(tmp_path / "none.jsonl")


@pytest.mark.parametrize("name", ["ffconcat", "hls", "file_url"])
def test_prepare_refuses_a_pose_video_that_names_other_files(manifest, tmp_path, name) -> None:
    """A manifest's pose_video that is a playlist or concat list fails its row, naming the field; nothing else is read."""
    hostile = manifest.parent / f"{name}.mp4"
    hostile.write_bytes(hostile_files(manifest.parent)[name])
    (tmp_path / "m.jsonl").write_text(json.dumps(
        {"id": "evil", "image": str(manifest.parent / "person.png"), "motion": str(manifest.parent / "walk.npz"),
         "pose_video": str(hostile)}) + "\n")
    row = read_render_manifest(tmp_path / "m.jsonl")[0]
    item = items_from_table(PrepareStage(job_config(manifest, tmp_path / "out"))(pa.concat_tables(input_items([row]))))[0]
    assert item.status == "failed" and item.stage == "prepare", item
    assert "Error: pose_video: " in item.error and "No such file" not in item.error


def test_demo_manifest(tmp_path) -> None:
    path = write_demo_manifest(tmp_path / "demo" / "manifest.jsonl", (32, 48), 9)
    rows = read_render_manifest(path)
    assert [row["id"] for row in rows] == ["arm_swings", "turn", "walk"]
    for row in rows:
        assert PIL.Image.open(row["image"]).size == (48, 32) and row["num_frames"] == 9
        truth, _ = read_video(tmp_path / "demo" / "reference" / f"{row['id']}.mp4")
        assert truth.shape == (9, 32, 48, 3)


def test_operator_built_in_prepare_gives_the_pipelines_own_video(manifest, tmp_path) -> None:
    """The render job builds the warp operator on its CPU stage; the video equals the unsplit pipeline's."""
    config = job_config(manifest, tmp_path / "out")
    row = next(row for row in read_render_manifest(manifest) if row["id"] == "turn")
    prepared = PrepareStage(config)(pa.concat_tables(input_items([row])))
    item = items_from_table(prepared)[0]
    assert item.status == "ok", item.error
    assert item.state["operator.latent_shape"].tolist() == [5, 4, 4]  # 17 frames at 32x32
    generate = GenerateStage(config, "cpu")
    rendered = items_from_table(generate(prepared))[0]
    assert rendered.status == "ok", rendered.error
    direct = generate.pipeline(
        np.asarray(PIL.Image.open(row["image"])), "", load_motion(row["motion"]), num_frames=17,
        num_inference_steps=1, guidance_scale=1.0, gamma=0.2, seed=3,
    )
    np.testing.assert_array_equal(rendered.state["frames"], direct.frames)

    # an operator built for another frame count is refused, naming the field
    operator = video_noise_operator(load_motion(row["motion"]), generate.pipeline.body, config.noise, 9, (32, 32))
    with pytest.raises(ValueError, match="warp_operator: built for the latent grid"):
        generate.pipeline(
            np.asarray(PIL.Image.open(row["image"])), "", load_motion(row["motion"]), num_frames=17,
            num_inference_steps=1, guidance_scale=1.0, warp_operator=operator,
        )


def test_photos_are_fitted_in_prepare_and_their_box_is_in_the_metadata(manifest, tmp_path) -> None:
    """Phone (EXIF 6), RGBA and portrait photos at a landscape output, through prepare, generate and encode."""
    inputs = manifest.parent
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored 90 wide, 60 high: upright 60 wide, 90 high
    PIL.Image.fromarray(np.full((60, 90, 3), 90, np.uint8)).save(inputs / "phone.jpg", exif=exif)
    cut_out = np.zeros((90, 60, 4), np.uint8)
    cut_out[10:50, 30:50] = 255
    PIL.Image.fromarray(cut_out).save(inputs / "cut-out.png")
    PIL.Image.fromarray(np.full((90, 60, 3), 200, np.uint8)).save(inputs / "portrait.png")
    PIL.Image.new("RGBA", (8, 8)).save(inputs / "clear.png")
    common = {"motion": "walk.npz", "num_frames": 9}
    rows = [
        {"id": "phone", "image": "phone.jpg", **common},
        {"id": "cut_out", "image": "cut-out.png", "background": "0,0,0", **common},
        {"id": "portrait", "image": "portrait.png", "fit": "pad", "background": "#0000ff", **common},
        {"id": "clear", "image": "clear.png", **common},
    ]
    (inputs / "photos.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    backbone = tmp_path / "tiny-landscape.yaml"
    backbone.write_text((CONFIGS / "tiny-cogvideox.yaml").read_text().replace("resolution: [32, 32]",
                                                                             "resolution: [32, 48]"))
    config = job_config(inputs / "photos.jsonl", tmp_path / "out").model_copy(update={"backbone": backbone})
    prepared = PrepareStage(config)(pa.concat_tables(input_items(read_render_manifest(config.manifest))))
    table = EncodeStage(config)(GenerateStage(config, "cpu")(prepared))
    assert table.schema == METADATA_SCHEMA
    metadata = {row["id"]: row for row in table.to_pylist()}
    boxes = {item_id: tuple(metadata[item_id][f"photo_{key}"] for key in ("method", "x0", "y0", "width", "height"))
             for item_id in ("phone", "cut_out", "portrait")}
    assert boxes == {"phone": ("centre", 0, 25, 60, 40), "cut_out": ("alpha", 0, 10, 60, 40),
                     "portrait": ("pad", -37, 0, 135, 90)}
    assert metadata["phone"]["photo_orientation"] == 6 and "no person detector ran" in metadata["phone"]["photo_note"]
    assert metadata["cut_out"]["photo_flattened"] and metadata["portrait"]["photo_fit"] == "pad"
    video, _ = read_video(metadata["portrait"]["output_path"])
    assert video.shape == (9, 32, 48, 3)
    assert metadata["clear"]["status"] == "failed" and metadata["clear"]["stage"] == "prepare"
    assert "image: the photo is fully transparent" in metadata["clear"]["error"]
