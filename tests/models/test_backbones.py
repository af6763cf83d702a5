"""Backbone adapters on tiny random-weight models: the same code that loads the released weights."""

from __future__ import annotations

import shutil

import PIL.Image
import pytest
import torch
from helpers import CONFIGS, TINY, tiny
from pydantic import ValidationError

from models.backbones import BackboneConfig, CogVideoXAdapter, WanAdapter, build_adapter, load_backbone_config
from models.backbones.config import VARIANTS
from models.paths import PROJECT_ROOT


def reference_image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """An 8-bit image mapped to [-1, 1] the way diffusers maps a PIL image."""
    pixels = torch.randint(0, 256, (batch, 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    return 2.0 * (pixels.float() / 255.0) - 1.0


def inputs(adapter, num_frames: int, batch: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    conditioning = adapter.encode_conditioning(
        reference_image(batch, seed), ["a person dancing"] * batch, num_frames, generator=generator
    )
    latents = torch.randn(batch, *adapter.latent_shape(num_frames), generator=generator)
    timesteps = adapter.sample_timesteps(batch, generator)
    return latents, timesteps, conditioning


def predict(adapter, latents, timesteps, conditioning) -> torch.Tensor:
    with torch.no_grad():
        return adapter.predict(latents, timesteps, conditioning)


@pytest.mark.parametrize(
    "name, frames",
    [
        ("tiny-cogvideox", [9, 17, 49]),
        ("tiny-cogvideox1.5", [17, 33, 81]),
        ("tiny-wan", [5, 9, 81]),
    ],
)
def test_predict_returns_canonical_shape(name, frames):
    adapter = tiny(name)
    for num_frames in frames:
        latents, timesteps, conditioning = inputs(adapter, num_frames, batch=2)
        output = predict(adapter, latents, timesteps, conditioning)
        assert output.shape == latents.shape == (2, *adapter.latent_shape(num_frames))
        assert torch.isfinite(output).all()
        video = torch.zeros(1, num_frames, 3, 32, 32)
        assert adapter.encode_video(video).shape == (1, *adapter.latent_shape(num_frames))


def test_adapter_classes_and_factors():
    assert isinstance(tiny("tiny-cogvideox"), CogVideoXAdapter)
    wan = tiny("tiny-wan")
    assert isinstance(wan, WanAdapter)
    assert (wan.spatial_factor, wan.temporal_factor) == (8, 4)
    assert wan.prediction_type == "flow_prediction"
    assert tiny("tiny-cogvideox1.5").prediction_type == "v_prediction"


@pytest.mark.parametrize(
    "family, variant, valid, latents, invalid, message",
    [
        ("cogvideox", "1.0", [49, 9, 17], [13, 3, 5], 50,
         "CogVideoX 1.0 needs num_frames = 4k+1 with (num_frames-1)//4+1 odd, e.g. 49; got 50"),
        ("cogvideox", "1.0", [], [], 45, "(num_frames-1)//4+1 odd"),
        ("cogvideox", "1.5", [81, 17, 49], [21, 5, 13], 41, "CogVideoX 1.5 needs num_frames = 16N+1, e.g. 81; got 41"),
        ("wan", "2.1", [81, 5, 9], [21, 2, 3], 80, "Wan 2.1 needs num_frames = 4k+1, e.g. 81; got 80"),
    ],
)
def test_frame_rules(family, variant, valid, latents, invalid, message):
    spec = VARIANTS[family][variant]
    for num_frames in valid:
        spec.check_num_frames(num_frames)
    with pytest.raises(ValueError) as err:
        spec.check_num_frames(invalid)
    assert message in str(err.value)

    name = {"1.0": "tiny-cogvideox", "1.5": "tiny-cogvideox1.5", "2.1": "tiny-wan"}[variant]
    adapter = tiny(name)
    assert [adapter.latent_num_frames(n) for n in valid] == latents
    with pytest.raises(ValueError, match="needs num_frames"):
        adapter.latent_num_frames(invalid)


def test_defaults_of_released_variants():
    assert [VARIANTS["cogvideox"]["1.0"].default_num_frames, VARIANTS["cogvideox"]["1.5"].default_num_frames,
            VARIANTS["wan"]["2.1"].default_num_frames] == [49, 81, 81]
    assert VARIANTS["cogvideox"]["1.0"].default_resolution == (480, 720)


@pytest.mark.parametrize("name", TINY)
def test_predict_matches_the_diffusers_pipeline(name):
    """One deterministic denoising step through the adapter equals the pipeline's own step."""
    adapter = tiny(name)
    num_frames = adapter.num_frames
    image = reference_image()
    pil = PIL.Image.fromarray(((image[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    latents = torch.randn(1, *adapter.latent_shape(), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(7)
    conditioning = adapter.encode_conditioning(image, "a person", num_frames, generator=generator)
    adapter.scheduler.set_timesteps(1)
    t = adapter.scheduler.timesteps[0]
    with torch.no_grad():
        output = adapter.predict(latents, t, conditioning).float()
        ours = adapter.scheduler.step(output, t, latents, return_dict=False)[0]
        adapter.scheduler.set_timesteps(1)
        common = dict(
            image=pil, prompt_embeds=conditioning.prompt_embeds, guidance_scale=1.0, num_frames=num_frames,
            height=32, width=32, num_inference_steps=1, output_type="latent",
            generator=torch.Generator().manual_seed(7),
        )
        if adapter.family == "wan":
            theirs = adapter.pipeline(latents=latents.permute(0, 2, 1, 3, 4), **common).frames.permute(0, 2, 1, 3, 4)
        else:
            # CogVideoX 1.5 denoises extra leading latent frames to fill its temporal patches; ours repeat frame 0.
            padding = -latents.shape[1] % (adapter.transformer.config.patch_size_t or 1)
            padded = torch.cat([latents[:, :1]] * padding + [latents], dim=1)
            common["max_sequence_length"] = adapter.max_sequence_length
            theirs = adapter.pipeline(latents=padded, **common).frames[:, padding:]
    assert torch.equal(ours, theirs)


def test_missing_folder_lists_everything(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        CogVideoXAdapter.from_pretrained(tmp_path / "CogVideoX-5b-I2V", "1.0")
    message = str(err.value)
    assert "does not exist" in message and "THUDM/CogVideoX-5b-I2V" in message
    for required in ["transformer/config.json", "transformer/*.safetensors", "vae/config.json",
                     "text_encoder/config.json", "tokenizer/spiece.model or tokenizer/tokenizer.json",
                     "scheduler/scheduler_config.json"]:
        assert required in message


@pytest.mark.parametrize(
    "name, removed, listed",
    [
        ("tiny-cogvideox", "vae", ["vae/config.json", "vae/*.safetensors"]),
        ("tiny-wan", "image_encoder", ["image_encoder/config.json", "image_encoder/*.safetensors"]),
        ("tiny-wan", "transformer/config.json", ["transformer/config.json"]),
    ],
)
def test_missing_subfolder_lists_what_is_missing(tmp_path, name, removed, listed):
    adapter = tiny(name)
    adapter.save_pretrained(tmp_path)
    target = tmp_path / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError) as err:
        type(adapter).from_pretrained(tmp_path, adapter.config.variant, dtype=torch.float32)
    message = str(err.value)
    assert "is incomplete" in message
    listed_lines = [line.split()[0] for line in message.splitlines() if line.startswith("  ")]
    assert listed_lines == listed


@pytest.mark.parametrize("name", TINY)
def test_from_pretrained_loads_a_saved_folder_identically(tmp_path, name):
    adapter = tiny(name)
    adapter.save_pretrained(tmp_path)
    loaded = type(adapter).from_pretrained(
        tmp_path, adapter.config.variant, dtype=torch.float32,
        resolution=adapter.resolution, num_frames=adapter.num_frames,
    )
    num_frames = adapter.num_frames
    first, second = inputs(adapter, num_frames), inputs(loaded, num_frames)
    for a, b in zip(first[:2], second[:2]):
        assert torch.equal(a, b)
    for field in ("image_latents", "prompt_embeds", "image_embeds"):
        a, b = getattr(first[2], field), getattr(second[2], field)
        assert (a is None and b is None) or torch.equal(a, b)
    loaded_parameters = dict(loaded.transformer.named_parameters())
    for key, value in adapter.transformer.named_parameters():
        assert torch.equal(value, loaded_parameters[key]), key
    # diffusers recomputes CogVideoX's sin-cos table (a buffer, not a saved weight) on load by another float path
    # (differences of ~3e-8 with diffusers 0.42.1), so the outputs agree to float32 rounding, not bit for bit.
    torch.testing.assert_close(predict(adapter, *first), predict(loaded, *second), rtol=0, atol=1e-5)


def test_learned_positional_embeddings_fix_the_resolution(tmp_path):
    tiny("tiny-cogvideox").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="resolution"):
        CogVideoXAdapter.from_pretrained(tmp_path, "1.0", dtype=torch.float32, resolution=(64, 64))
    assert CogVideoXAdapter.from_pretrained(tmp_path, "1.0", dtype=torch.float32).resolution == (32, 32)


def test_variant_must_match_the_transformer(tmp_path):
    tiny("tiny-cogvideox1.5").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="variant: the transformer has patch_size_t=2"):
        CogVideoXAdapter.from_pretrained(tmp_path, "1.0", dtype=torch.float32)


@pytest.mark.parametrize("name", TINY)
def test_training_targets_invert(name):
    adapter = tiny(name)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(3, *adapter.latent_shape(), generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = adapter.sample_timesteps(3, generator)
    noisy = adapter.add_noise(clean, noise, timesteps)
    target = adapter.target(clean, noise, timesteps)
    recovered_clean, recovered_noise = adapter.split_prediction(noisy, target, timesteps)
    torch.testing.assert_close(recovered_clean, clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recovered_noise, noise, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_lora_roundtrip_through_the_pipeline_loader(tmp_path, name):
    adapter = tiny(name)
    latents, timesteps, conditioning = inputs(adapter, adapter.num_frames)
    base = predict(adapter, latents, timesteps, conditioning)

    adapter.add_lora()
    peft_config = adapter.transformer.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha) == (adapter.config.lora.rank, adapter.config.lora.alpha)
    assert set(peft_config.target_modules) == set(adapter.default_lora_targets)
    assert torch.equal(predict(adapter, latents, timesteps, conditioning), base)  # B starts at zero

    generator = torch.Generator().manual_seed(1)
    for param_name, param in adapter.transformer.named_parameters():
        if "lora_B" in param_name:
            param.data.normal_(generator=generator)
    tuned = predict(adapter, latents, timesteps, conditioning)
    assert not torch.equal(tuned, base)

    adapter.save_lora(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    fresh = tiny(name)
    fresh.load_lora(tmp_path)
    assert torch.equal(predict(fresh, latents, timesteps, conditioning), tuned)


def test_lora_targets_come_from_the_config():
    settings = load_backbone_config(CONFIGS / "tiny-wan.yaml").model_dump()
    config = BackboneConfig.model_validate({**settings, "lora": {"rank": 2, "targets": ["to_q", "to_v"]}})
    adapter = build_adapter(config)
    adapter.add_lora()
    wrapped = {name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1]
               for name, _ in adapter.transformer.named_parameters() if "lora_A" in name}
    assert wrapped == {"to_q", "to_v"}
    assert adapter.transformer.peft_config["default"].lora_alpha == 2


def test_all_backbone_configs_validate():
    names = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    assert names == ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "tiny-cogvideox", "tiny-cogvideox1.5", "tiny-wan",
                     "toy-cogvideox", "toy-cogvideox-init", "toy-cogvideox-large", "toy-cogvideox-large-init",
                     "wan2.1-i2v-14b"]
    toy = load_backbone_config(CONFIGS / "toy-cogvideox-init.yaml")
    assert toy.tiny is not None and (toy.resolution, toy.num_frames) == ((64, 96), 25)
    large_init = load_backbone_config(CONFIGS / "toy-cogvideox-large-init.yaml")
    large = load_backbone_config(CONFIGS / "toy-cogvideox-large.yaml")  # the toy's folder, the larger transformer
    assert large_init.tiny.transformer["num_layers"] > toy.tiny.transformer["num_layers"]
    assert (large.path, large.transformer) == (PROJECT_ROOT / "weights/toy-cogvideox",
                                               PROJECT_ROOT / "out/toy-large-init/transformer")
    assert (large.resolution, large.num_frames) == (large_init.resolution, large_init.num_frames) == ((64, 96), 25)
    real = load_backbone_config(CONFIGS / "cogvideox1.5-5b-i2v.yaml")
    assert (real.path, real.num_frames, real.resolution) == (PROJECT_ROOT / "weights/CogVideoX1.5-5B-I2V", 81, (768, 1360))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"variant": "2.1"}, "variant"),
        ({"scheduler": "unipc"}, "scheduler"),
        ({"resolution": [30, 32]}, "resolution"),
        ({"num_frames": 50}, "num_frames"),
        ({"path": "weights/x"}, "path/tiny"),
        ({"tiny": None}, "path/tiny"),
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"dtype": "float64"}, "dtype"),
        ({"windows": 3}, "windows"),
        ({"tiny": {"image_encoder": {"hidden_size": 8}}}, "tiny.image_encoder"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    settings = {"family": "cogvideox", "variant": "1.0", "tiny": {}, **overrides}
    with pytest.raises(ValidationError) as err:
        BackboneConfig.model_validate(settings)
    assert field in str(err.value)


def test_num_frames_error_states_the_rule():
    with pytest.raises(ValidationError, match=r"num_frames = 16N\+1"):
        BackboneConfig(family="cogvideox", variant="1.5", tiny={}, num_frames=41)


def test_negative_conditioning_for_guidance():
    adapter = tiny("tiny-wan")
    conditioning = adapter.encode_conditioning(reference_image(), "a person", 9, negative_prompt="")
    empty, _ = adapter.encode_prompt("")
    assert torch.equal(conditioning.negative().prompt_embeds, empty)
    assert torch.equal(conditioning.negative().image_latents, conditioning.image_latents)
    with pytest.raises(ValueError, match="negative_prompt"):
        adapter.encode_conditioning(reference_image(), "a person", 9).negative()


def test_a_transformer_folder_replaces_the_backbones_own(tmp_path):
    """Variants share one VAE and text encoder: `transformer:` swaps in another trained transformer."""
    adapter = tiny("tiny-cogvideox")
    adapter.save_pretrained(tmp_path / "backbone")
    with torch.no_grad():
        for parameter in adapter.transformer.parameters():
            parameter.mul_(0.5)
    adapter.transformer.save_pretrained(tmp_path / "variant")
    settings = dict(dtype=torch.float32, resolution=adapter.resolution, num_frames=adapter.num_frames)
    swapped = CogVideoXAdapter.from_pretrained(tmp_path / "backbone", "1.0", transformer=tmp_path / "variant",
                                               **settings)
    own = CogVideoXAdapter.from_pretrained(tmp_path / "backbone", "1.0", **settings)
    pairs = zip(swapped.transformer.parameters(), own.transformer.parameters(), adapter.transformer.parameters())
    for variant, original, halved in pairs:
        assert torch.equal(variant, halved) and torch.equal(variant * 2, original)
    assert torch.equal(swapped.vae.decoder.conv_out.conv.weight, own.vae.decoder.conv_out.conv.weight)
    with pytest.raises(FileNotFoundError, match="transformer: .*config.json"):
        CogVideoXAdapter.from_pretrained(tmp_path / "backbone", "1.0", transformer=tmp_path, **settings)
    # the folder's own transformer weights are not needed then (a larger variant trained beside the toy's VAE)
    for weights in (tmp_path / "backbone" / "transformer").glob("*.safetensors"):
        weights.unlink()
    alone = CogVideoXAdapter.from_pretrained(tmp_path / "backbone", "1.0", transformer=tmp_path / "variant", **settings)
    assert all(torch.equal(a, b) for a, b in zip(alone.transformer.parameters(), swapped.transformer.parameters()))
    with pytest.raises(FileNotFoundError, match=r"transformer/\*.safetensors"):
        CogVideoXAdapter.from_pretrained(tmp_path / "backbone", "1.0", **settings)


def test_the_spatial_factor_is_read_from_the_vae_config_without_building_it(tmp_path) -> None:
    """CPU stages size articulated-noise grids from it before any model loads; the toy's 3-block VAE is 4x."""
    toy = load_backbone_config(CONFIGS / "toy-cogvideox-init.yaml")
    toy = toy.model_copy(update={"tiny": toy.tiny.model_copy(update={"tokenizer_corpus": None})})  # no data/ in CI
    assert toy.spatial_factor == 4
    for name in TINY:
        config = load_backbone_config(CONFIGS / f"{name}.yaml")
        assert config.spatial_factor == build_adapter(config).spatial_factor == 8
    adapter = build_adapter(toy)
    adapter.save_pretrained(tmp_path / "toy")
    folder = toy.model_copy(update={"tiny": None, "path": tmp_path / "toy"})
    assert folder.spatial_factor == build_adapter(folder).spatial_factor == adapter.spatial_factor == 4
    assert adapter.latent_shape(25, (64, 96))[2:] == (16, 24)
