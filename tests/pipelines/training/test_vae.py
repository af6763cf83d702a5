"""Training the toy backbone's VAE: the loss falls, a rerun resumes exactly, the export loads, bad inputs are clear."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from models.body_model import load_body_model
from pipelines.demo.synth import draw_clip, write_clip
from pipelines.training.vae import (
    METRICS_NAME,
    STATE_NAME,
    VAE_DIR,
    VaeTrainConfig,
    load_clips,
    random_crops,
    reconstruction_psnr,
    train_vae,
    vae_loss,
)

TINY_VAE = {"block_out_channels": (8, 8, 8, 8), "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 2,
            "temporal_compression_ratio": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    body = load_body_model(detail=12)
    for index in range(2):
        write_clip(draw_clip(0, "train", index, 9, (32, 48)), body, root / "videos")
    torch.manual_seed(0)
    AutoencoderKLCogVideoX(**TINY_VAE).save_pretrained(root / "init")
    return root


def config(data, out, **changes) -> VaeTrainConfig:
    settings = dict(videos=data / "videos", init=data / "init", output_dir=out, frames=9, crop=(32, 48),
                    batch_size=1, steps=40, lr=2e-3, checkpoint_every=20, log_every=1)
    return VaeTrainConfig(**{**settings, **changes})


def test_loss_falls_and_the_export_loads(data, tmp_path):
    run = config(data, tmp_path / "run")
    before = reconstruction_psnr(AutoencoderKLCogVideoX.from_pretrained(data / "init"), load_clips(run.videos), 9)
    train_vae(run)
    lines = [json.loads(line) for line in (run.output_dir / METRICS_NAME).read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    first, last = sum(x["l1"] for x in lines[:5]) / 5, sum(x["l1"] for x in lines[-5:]) / 5
    assert last < 0.7 * first
    trained = AutoencoderKLCogVideoX.from_pretrained(run.output_dir / VAE_DIR)
    assert reconstruction_psnr(trained, load_clips(run.videos), 9) > before + 3


def test_a_rerun_resumes_where_it_stopped(data, tmp_path):
    straight = config(data, tmp_path / "straight", steps=4, checkpoint_every=2)
    train_vae(straight)
    halves = tmp_path / "halves"
    train_vae(config(data, halves, steps=2, checkpoint_every=2))
    train_vae(config(data, halves, steps=4, checkpoint_every=2))
    a = torch.load(straight.output_dir / STATE_NAME, weights_only=False)["vae"]
    b = torch.load(halves / STATE_NAME, weights_only=False)["vae"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_clear_errors(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="videos: no videos"):
        train_vae(config(data, tmp_path / "a", videos=tmp_path))
    with pytest.raises(ValueError, match="crop"):
        train_vae(config(data, tmp_path / "b", crop=(64, 96)))
    with pytest.raises(ValueError, match="8k\\+1"):
        config(data, tmp_path / "c", frames=5)


def test_resized_clips_carry_their_person_mask(data):
    clips = load_clips(data / "videos", resize=(16, 24), masks=True)
    assert [clip.shape for clip in clips] == [(9, 16, 24, 4)] * 2
    person = np.load(min((data / "videos").glob("*.mask.npy"))).mean() / 255
    assert clips[0][..., 3].mean() / 255 == pytest.approx(person, rel=0.25) and 0 < person < 0.5


def test_foreground_weight_counts_person_pixels_more(data):
    vae = AutoencoderKLCogVideoX.from_pretrained(data / "init")
    batch = next(random_crops(load_clips(data / "videos", masks=True), 9, (32, 48), 1, np.random.default_rng(0)))
    plain = vae_loss(vae, batch, 0.0, torch.Generator().manual_seed(0))[1]
    assert plain == vae_loss(vae, batch[:, :3], 0.0, torch.Generator().manual_seed(0))[1]  # the mask is not a colour
    weighted = vae_loss(vae, batch, 0.0, torch.Generator().manual_seed(0), foreground_weight=8.0)[1]
    with torch.no_grad():
        posterior = vae.encode(batch[:, :3]).latent_dist
        error = (vae.decode(posterior.sample(torch.Generator().manual_seed(0))).sample - batch[:, :3]).abs()
    person = (batch[:, 3:] + 1) / 2
    assert person.mean() > 0.01
    expected = ((1 + 8 * person) * error).mean() / (1 + 8 * person).mean()
    assert weighted["l1"] == pytest.approx(float(expected), rel=1e-4) and weighted["l1"] != pytest.approx(plain["l1"])


def test_foreground_weight_needs_the_masks(data, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for path in (data / "videos").glob("*"):
        if not path.name.endswith(".mask.npy"):
            (videos / path.name).write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="foreground_weight: .*mask.npy is missing"):
        train_vae(config(data, tmp_path / "run", videos=videos, foreground_weight=1.0))
