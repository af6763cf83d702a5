"""The motion-folder Ray Data job on a local Ray: rows, failures, no lost item, rows rebuild the noise."""

import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.body_model import load_body_model
from models.noise_warp import WarpOperator
from pipelines.articulated_noise import NoiseConfig, build_motion_operator
from pipelines.demo.motions import make_demo_motion
from pipelines.io.config import RESOLVED_CONFIG_NAME, ConfigError, load_config
from pipelines.io.motion import load_motion, save_motion
from pipelines.preprocess.motion_folder import MotionNoiseJobConfig
from ray_jobs import preprocess

NOISE = {"num_frames": 9, "height": 96, "width": 144, "texture_size": 64, "supersample": 4, "channels": 4}


@pytest.fixture()
def motion_folder(tmp_path):
    folder = tmp_path / "motions"
    folder.mkdir()
    save_motion(folder / "walk.npz", make_demo_motion("walk", 9))
    save_motion(folder / "turn.npz", make_demo_motion("turn", 9))
    bad = make_demo_motion("walk", 9).to_arrays()
    bad["transl"][1, 0] = np.inf
    np.savez(folder / "nan_transl.npz", **bad)
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "sneaky.npz").write_bytes(pickle.dumps({"global_orient": 1}))
    save_motion(folder / "short.npz", make_demo_motion("walk", 5))
    return folder


def test_job_writes_rows_and_failures(ray_local, motion_folder, tmp_path) -> None:
    config = MotionNoiseJobConfig(input_dir=motion_folder, output_dir=tmp_path / "out", noise=NOISE, num_workers=1)
    counts = preprocess.run(config)
    assert counts == {"items": 6, "written": 2, "failed": 4}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == counts
    assert (tmp_path / "out" / RESOLVED_CONFIG_NAME).is_file()

    rows = pq.read_table(tmp_path / "out" / "operators").to_pylist()  # plain pyarrow reads it
    assert sorted(row["item_id"] for row in rows) == ["turn", "walk"]
    failures = {row["item_id"]: row for row in pq.read_table(tmp_path / "out" / "failures").to_pylist()}
    assert set(failures) == {"nan_transl", "corrupt", "sneaky", "short"}
    assert "'transl' contains NaN or inf" in failures["nan_transl"]["error"]
    assert "corrupt" in failures["corrupt"]["error"] or "not an .npz" in failures["corrupt"]["error"]
    assert "pickle" in failures["sneaky"]["error"]
    assert failures["short"]["stage"] == "build_operator" and "num_frames=9" in failures["short"]["error"]

    # an operator rebuilt from its row draws the same noise as one built in memory
    walk = next(row for row in rows if row["item_id"] == "walk")
    assert (tmp_path / "out" / "previews" / "walk.mp4").is_file() and walk["preview_path"].endswith("walk.mp4")
    rebuilt = WarpOperator.from_arrays({key: np.asarray(walk[key]) for key in ("indptr", "indices", "values", "latent_shape", "texture_size", "num_background")})
    in_memory, _ = build_motion_operator(load_motion(motion_folder / "walk.npz"), load_body_model(), NoiseConfig(**NOISE))
    assert torch.equal(rebuilt.sample(torch.Generator().manual_seed(3), 4), in_memory.sample(torch.Generator().manual_seed(3), 4))


def test_empty_folder_and_bad_config(ray_local, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    config = MotionNoiseJobConfig(input_dir=tmp_path / "empty", output_dir=tmp_path / "out", noise=NOISE)
    assert preprocess.run(config) == {"items": 0, "written": 0, "failed": 0}
    (tmp_path / "bad.yaml").write_text("input_dir: x\noutput_dir: y\nnoise:\n  height: 100\n")
    with pytest.raises(ConfigError, match="noise"):
        load_config(MotionNoiseJobConfig, tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="input_dir not found"):
        preprocess.run(MotionNoiseJobConfig(input_dir=tmp_path / "missing", output_dir=tmp_path / "o2"))
