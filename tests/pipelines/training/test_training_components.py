"""Training workers load the text and image encoders only when the rows lack their embeddings (issue 13)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import ROOT, write_tiny_rows

from models.backbones import build_adapter
from models.body_model import load_body_model
from pipelines.io.config import load_config
from pipelines.io.filesystem import resolve_uri
from pipelines.io.row_reader import keys_table, read_rows
from pipelines.io.training_rows import training_batch
from pipelines.training.config import TrainJobConfig
from pipelines.training.engine import build_modules, build_training_adapter
from pipelines.training.schedule import plan_rows
from pipelines.training.validation import generate_row

CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> TrainJobConfig:
    folder = tmp_path_factory.mktemp("components")
    rows_dir = write_tiny_rows(folder, load_body_model(detail=12), {"walk": 3})
    return load_config(TrainJobConfig, CONFIG, {"output_dir": folder / "out",
                                                "data": {"rows_dir": str(rows_dir), "validation_rows": 1}})


def guided(config: TrainJobConfig) -> TrainJobConfig:
    return config.model_copy(update={"validation": config.validation.model_copy(update={"guidance_scale": 3.0})})


def test_rows_with_text_embeddings_train_without_the_text_encoder(config):
    plan = plan_rows(config)
    assert {"text_embeds", "video_latents", "image_latents"} <= plan.columns
    adapter = build_training_adapter(config, plan, "cpu")
    assert adapter.loaded_components == ["transformer", "vae"]
    _, modules = build_modules(config, adapter)
    rows = read_rows(resolve_uri(plan.rows_uri)[0], keys_table(list(plan.train[:2])))
    output = modules(training_batch(rows, adapter), torch.Generator().manual_seed(0))
    assert torch.isfinite(output.total)


def test_guided_validation_keeps_the_empty_prompt_and_frees_the_encoder(config):
    config = guided(config)
    plan = plan_rows(config)
    adapter = build_training_adapter(config, plan, "cpu")
    assert adapter.pipeline.text_encoder is None
    expected = build_adapter(config.backbone_config()).encode_prompt([""])[0]
    assert torch.equal(adapter.encode_prompt([""])[0], expected)
    pipeline, _ = build_modules(config, adapter)
    rows = read_rows(resolve_uri(plan.rows_uri)[0], keys_table(list(plan.validation)))
    frames = generate_row(pipeline, training_batch(rows, adapter), 0, config.validation, config.loss)
    assert frames.shape[0] == adapter.num_frames


def test_caption_rows_keep_the_text_encoder(config):
    plan = plan_rows(config)
    captions_only = replace(plan, columns=plan.columns - {"text_embeds"})
    assert "text_encoder" in build_training_adapter(config, captions_only, "cpu").loaded_components
