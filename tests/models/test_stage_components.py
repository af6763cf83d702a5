"""Stages load only the backbone components they use, and VAE tiling/slicing follow the backbone config (issue 13)."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIGS, TINY, tiny

from models.backbones import (
    ENCODING_COMPONENTS,
    BackboneConfig,
    ComponentNotLoadedError,
    build_adapter,
    load_backbone_config,
)


def saved_config(name: str, folder, **settings) -> BackboneConfig:
    """The tiny backbone `name` written to `folder` as a diffusers folder, and a config loading it by `path`."""
    adapter = tiny(name)
    adapter.save_pretrained(folder)
    config = adapter.config.model_dump(exclude={"tiny"})
    return BackboneConfig.model_validate({**config, "path": folder, **settings})


def conditioning(adapter):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return adapter.encode_conditioning(image, ["a person"], adapter.num_frames,
                                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TINY)
def test_the_encoding_adapter_never_loads_the_transformer(tmp_path, name):
    config = saved_config(name, tmp_path)
    for weights in (tmp_path / "transformer").glob("*.safetensors"):
        weights.unlink()  # an encode-only node does not even need them
    encoder = build_adapter(config, components=ENCODING_COMPONENTS)
    assert encoder.pipeline.transformer is None
    assert "transformer" not in encoder.loaded_components
    full = tiny(name)
    assert encoder.latent_shape() == full.latent_shape()
    ours, theirs = conditioning(encoder), conditioning(full)
    for field in ("image_latents", "prompt_embeds", "image_embeds"):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    video = torch.zeros(1, full.num_frames, 3, 32, 32)
    generators = [torch.Generator().manual_seed(1) for _ in range(2)]
    assert torch.equal(encoder.encode_video(video, generators[0]), full.encode_video(video, generators[1]))
    latents = torch.zeros(1, *full.latent_shape())
    with pytest.raises(ComponentNotLoadedError, match="transformer: predict needs it.*built with components"):
        encoder.predict(latents, torch.tensor([10]), ours)


@pytest.mark.parametrize("name", TINY)
def test_tiny_components_keep_their_seeded_weights(name):
    config = load_backbone_config(CONFIGS / f"{name}.yaml")
    without = build_adapter(config, components={"transformer", "vae"})
    assert without.pipeline.text_encoder is None
    full = tiny(name)
    for key, value in full.vae.state_dict().items():
        assert torch.equal(value, without.vae.state_dict()[key]), key
    with pytest.raises(ComponentNotLoadedError, match="text_encoder: encode_prompt needs it"):
        without.encode_prompt(["a person"])


def test_unknown_components_are_refused():
    with pytest.raises(ValueError, match=r"components: unknown \['unet'\]"):
        build_adapter(load_backbone_config(CONFIGS / "tiny-cogvideox.yaml"), components={"vae", "unet"})


@pytest.mark.parametrize("name", TINY)
def test_drop_text_encoder_keeps_only_the_prompts_asked_for(name):
    full, dropped = tiny(name), tiny(name)
    dropped.drop_text_encoder(keep_prompts=[""], reason="the rows carry text embeddings")
    assert dropped.pipeline.text_encoder is None
    positive, negative = dropped.encode_prompt("", negative_prompt="")
    expected, _ = full.encode_prompt([""])
    assert torch.equal(positive, expected) and torch.equal(negative, expected)
    with pytest.raises(ComponentNotLoadedError, match="dropped: the rows carry text embeddings"):
        dropped.encode_prompt(["a person"])


def test_vae_tiling_and_slicing_default_on_for_model_folders_only(tmp_path):
    tiny_adapter = tiny("tiny-cogvideox")
    assert not tiny_adapter.vae.use_tiling and not tiny_adapter.vae.use_slicing
    loaded = build_adapter(saved_config("tiny-cogvideox", tmp_path))
    assert loaded.vae.use_tiling and loaded.vae.use_slicing
    off = build_adapter(saved_config("tiny-cogvideox", tmp_path, vae_tiling=False, vae_slicing=False))
    assert not off.vae.use_tiling and not off.vae.use_slicing
    # Below the VAE's tile size (CogVideoX: half its 480x720 sample size) tiling changes nothing, bit for bit;
    # slicing decodes a batch one sample at a time, the same up to float rounding of batched convolutions.
    latents = torch.randn(2, *tiny_adapter.latent_shape(), generator=torch.Generator().manual_seed(0))
    tiled_only = build_adapter(saved_config("tiny-cogvideox", tmp_path, vae_tiling=True, vae_slicing=False))
    assert torch.equal(tiled_only.decode_latents(latents), tiny_adapter.decode_latents(latents))
    torch.testing.assert_close(loaded.decode_latents(latents), tiny_adapter.decode_latents(latents), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, resolution, vae, atol_mean",
    [
        # Tiles of 48x40 pixels (half the VAE's sample size), sized like the released 240x360 tiles so that diffusers'
        # tile strides and crops line up. Random weights with GroupNorm: every tile normalizes with its own statistics.
        ("tiny-cogvideox1.5", (96, 80), {"sample_height": 96, "sample_width": 80}, 0.1),
        # Wan's tiles are 256x256 with a stride of 192 whatever the model; its norms are per pixel (RMS over channels).
        ("tiny-wan", (288, 288), {}, 0.02),
    ],
)
def test_tiled_decode_matches_untiled_within_tolerance(name, resolution, vae, atol_mean):
    settings = load_backbone_config(CONFIGS / f"{name}.yaml").model_dump()
    config = BackboneConfig.model_validate({**settings, "tiny": {**settings["tiny"], "vae": vae},
                                            "resolution": resolution, "num_frames": 17 if "1.5" in name else 5})
    untiled = build_adapter(config)
    tiled = build_adapter(config.model_copy(update={"vae_tiling": True}))
    assert tiled.vae.use_tiling and not untiled.vae.use_tiling
    latents = torch.randn(1, *untiled.latent_shape(), generator=torch.Generator().manual_seed(0))
    ours, theirs = tiled.decode_latents(latents), untiled.decode_latents(latents)
    assert ours.shape == theirs.shape == (1, config.num_frames, 3, *resolution)
    difference = (ours - theirs).abs()
    assert difference.mean() < atol_mean, (difference.mean(), theirs.std())
