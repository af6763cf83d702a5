"""Every shipped train and video-preprocessing config validates against its job's schema, so a typo in one fails CI
rather than a GPU run; the 16-core toy preprocessing config makes the same rows as the 2-core one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.io.config import load_config
from pipelines.preprocess.config import VideoJobConfig
from pipelines.training.config import TrainJobConfig

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIGS = sorted(path for path in (ROOT / "configs" / "train").glob("*.yaml") if path.stem != "toy-vae")
VIDEO_CONFIGS = [ROOT / "configs" / "preprocess" / name for name in ("toy.yaml", "toy-16cpu.yaml", "videos-tiny.yaml")]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda path: path.stem)
def test_train_configs_validate(path: Path) -> None:
    config = load_config(TrainJobConfig, path)
    assert config.max_steps > 0 and config.backbone_config().family in {"cogvideox", "wan"}


@pytest.mark.parametrize("path", VIDEO_CONFIGS, ids=lambda path: path.stem)
def test_video_preprocess_configs_validate(path: Path) -> None:
    assert load_config(VideoJobConfig, path).output_dir


def test_the_16_core_toy_rows_are_the_toy_rows() -> None:
    """Only the resources differ: the larger variant trains on the rows the ablation's variants were trained on."""
    small, large = (yaml.safe_load((ROOT / "configs" / "preprocess" / name).read_text())
                    for name in ("toy.yaml", "toy-16cpu.yaml"))
    assert {k: v for k, v in small.items() if k != "resources"} == {k: v for k, v in large.items() if k != "resources"}
    assert small["resources"] != large["resources"]
