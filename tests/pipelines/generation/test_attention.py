"""The attention implementation of a generation (backbone config `attention`), on the tiny random CogVideoX and Wan."""

from __future__ import annotations

import importlib.util
from functools import partial

import numpy as np
import pytest
import torch
from helpers import CONFIGS, generate_walk
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.backbones import BackboneConfig, build_adapter, load_backbone_config
from models.body_model import load_body_model
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.attention import attention_context
from pipelines.io.config import ConfigError, validate_config


@pytest.fixture(scope="module")
def body():
    return load_body_model()


def pipeline_with(name: str, body, attention: str = "sdpa") -> AnimationPipeline:
    config = load_backbone_config(CONFIGS / f"{name}.yaml").with_options(attention=attention)
    return AnimationPipeline(build_adapter(config), body=body, noise_options={"texture_size": 32})


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_cpu_kernels_give_the_default_output_and_the_choice_reaches_the_attention(body, name) -> None:
    reference = generate_walk(pipeline_with(name, body))
    for attention in ("sdpa_math", "sdpa_flash"):  # torch's CPU kernels
        video = generate_walk(pipeline_with(name, body, attention))
        assert np.abs(video.astype(int) - reference).max() <= 1, attention
    # Held to a kernel torch has no CPU version of, the transformer's attention fails: the choice reaches it.
    pipeline = pipeline_with(name, body)
    pipeline._attention = partial(sdpa_kernel, [SDPBackend.EFFICIENT_ATTENTION])
    with pytest.raises(RuntimeError, match="No viable backend"):
        generate_walk(pipeline)


@pytest.mark.parametrize(("family", "attention", "message"), [
    ("cogvideox", "paged", "attention: Input should be"),
    ("wan", "flash_hub", "attention: .*downloads its kernel from the Hugging Face Hub"),
    ("wan", "sage_hub", "attention: .*downloads its kernel"),
    ("cogvideox", "sage", "attention: 'sage' goes through diffusers' attention dispatcher"),
    ("cogvideox", "flash", "attention: 'flash' goes through"),
])
def test_bad_attention_settings_name_the_field(family, attention, message) -> None:
    variant = {"cogvideox": "1.0", "wan": "2.1"}[family]
    with pytest.raises(ConfigError, match=message):
        validate_config(BackboneConfig, {"family": family, "variant": variant, "tiny": {}, "attention": attention})


@pytest.mark.parametrize(("attention", "package"), [
    ("flash", "flash-attn"), ("flash_3", "Flash Attention 3"), ("sage", "sageattention"), ("xformers", "xformers")
])
def test_a_missing_attention_library_names_the_field_and_what_to_install(attention, package) -> None:
    module = {"flash": "flash_attn", "flash_3": "flash_attn_interface", "sage": "sageattention", "xformers": "xformers"}
    if importlib.util.find_spec(module[attention]) is not None:
        pytest.skip(f"{module[attention]} is installed")
    with pytest.raises(ValueError, match=f"attention: '{attention}' is not usable here: .*{package}"):
        attention_context(attention, "cuda")


@pytest.mark.parametrize("attention", ["sdpa_efficient", "sdpa_cudnn", "flash", "sage"])
def test_cuda_only_attention_on_the_cpu_names_the_field(body, attention) -> None:
    config = load_backbone_config(CONFIGS / "tiny-wan.yaml").with_options(attention=attention)
    with pytest.raises(ValueError, match=f"attention: '{attention}' runs on CUDA only"):
        AnimationPipeline(build_adapter(config), body=body)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_cuda_kernels_give_the_default_output(name) -> None:
    backbone = load_backbone_config(CONFIGS / f"{name}.yaml")
    # torch's flash and cuDNN kernels take head sizes that are multiples of 8 (the tiny Wan's is 12).
    tiny = backbone.tiny.model_copy(update={"transformer": {**backbone.tiny.transformer, "attention_head_dim": 16}})

    def predict(attention: str) -> torch.Tensor:
        config = backbone.with_options(attention=attention, dtype="bfloat16", tiny=tiny)
        pipeline = AnimationPipeline(build_adapter(config, "cuda"))
        adapter = pipeline.adapter
        generator = torch.Generator("cuda").manual_seed(0)
        latents = torch.randn((1, *adapter.latent_shape(9, (32, 32))), generator=generator, device="cuda")
        image = torch.zeros(1, 3, 32, 32, device="cuda")
        with torch.no_grad():
            conditioning = adapter.encode_conditioning(image, "a person", 9, generator=generator)
            return pipeline._predict(latents, torch.tensor([500]), conditioning, 1.0, None)

    reference = predict("sdpa")
    choices = ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math"]
    if name == "tiny-wan":
        choices += [name for name, module in (("flash", "flash_attn"), ("sage", "sageattention"))
                    if importlib.util.find_spec(module) is not None]
    for attention in choices:
        torch.testing.assert_close(predict(attention), reference, atol=0.05, rtol=0.05, msg=attention)
