"""The preprocessing encode stage never builds the backbone's transformer (issue 13)."""

from __future__ import annotations

from helpers import VIDEOS_TINY

from pipelines.io.config import load_config
from pipelines.preprocess.config import VideoJobConfig
from pipelines.preprocess.stages import EncodeStage


def test_the_encode_stage_loads_the_encoders_only(tmp_path):
    config = load_config(VideoJobConfig, VIDEOS_TINY, {"videos": tmp_path, "output_dir": str(tmp_path / "rows")})
    assert EncodeStage(config).adapter.loaded_components == ["vae", "text_encoder"]
    captions = config.model_copy(update={"text": "caption"})
    assert EncodeStage(captions).adapter.loaded_components == ["vae"]
