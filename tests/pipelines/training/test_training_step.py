"""The training step on tiny CogVideoX 1.0/1.5 and Wan backbones with articulated noise, JAML and GMCL."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, tiny

from models.body_model import load_body_model
from models.losses import LossConfig
from models.motion_decoder import MotionDecoder
from models.noise_warp import degrade
from models.padaln import PadaLN
from pipelines.articulated_noise import NoiseConfig, build_motion_operator
from pipelines.demo.motions import make_demo_motion
from pipelines.training.step import draw_noise, make_training_batch, training_step

MOTIONS = ["walk", "turn"]


@pytest.fixture(scope="module")
def motions():
    """`build_motion_operator` results per (frame count, demo motion) on the tiny backbones' 32x32 grid."""
    body = load_body_model(detail=12)
    return {
        (frames, name): build_motion_operator(
            make_demo_motion(name, frames),
            body,
            NoiseConfig(num_frames=frames, height=32, width=32, texture_size=32, supersample=4, channels=16),
        )
        for frames in (9, 17)
        for name in MOTIONS
    }


def trainable_adapter(name: str):
    """A tiny adapter with a frozen transformer carrying a fresh LoRA."""
    adapter = tiny(name)
    adapter.transformer.requires_grad_(False)
    adapter.add_lora()
    return adapter


def batch_for(adapter, motions, seed: int = 0, pose: bool = False):
    generator = torch.Generator().manual_seed(seed)
    frames = adapter.num_frames
    video = torch.rand(len(MOTIONS), frames, 3, 32, 32, generator=generator) * 2 - 1
    pose_video = torch.rand(video.shape, generator=generator) * 2 - 1 if pose else None
    rows = [motions[frames, name] for name in MOTIONS]
    return make_training_batch(adapter, video, ["a person walking", "a person turning"], rows, pose_video, generator)


def lora_parameters(adapter):
    return [p for n, p in adapter.transformer.named_parameters() if "lora" in n]


class Untouchable:
    """Stands in for an operator that must not be used."""

    def __getattr__(self, name):
        raise AssertionError(f"the operator was used ({name})")


@pytest.mark.parametrize("name", TINY)
def test_losses_are_finite_and_gradients_reach_only_the_trained_parts(name, motions):
    adapter = trainable_adapter(name)
    padaln = PadaLN.for_adapter(adapter, mlp_dim=16).attach(adapter)
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    batch = batch_for(adapter, motions, pose=True)
    batch.motion_targets.requires_grad_(True)

    output = training_step(adapter, decoder, batch, LossConfig(), torch.Generator().manual_seed(1), padaln)
    assert all(torch.isfinite(torch.tensor(value)) for value in output.metrics().values())
    assert output.consistency > 0 and output.motion > 0 and output.diffusion > 0
    output.total.backward()

    for trained in (lora_parameters(adapter), list(padaln.parameters()), list(decoder.parameters())):
        assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        assert any(p.grad.abs().sum() > 0 for p in trained)
    frozen = [p for n, p in adapter.transformer.named_parameters() if "lora" not in n]
    for component in ("vae", "text_encoder", "image_encoder"):
        module = getattr(adapter.pipeline, component, None)
        frozen += list(module.parameters()) if module is not None else []
    assert frozen and all(p.grad is None for p in frozen)
    assert batch.motion_targets.grad is None
    assert all(operator.values.grad is None and not operator.values.requires_grad for operator in batch.operators)


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
@pytest.mark.parametrize("term", ["motion", "consistency"])
def test_each_auxiliary_loss_reaches_the_transformer(name, term, motions):
    adapter = trainable_adapter(name)
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    weights = {"diffusion_weight": 0.0, "motion_weight": 0.0, "consistency_weight": 0.0, f"{term}_weight": 1.0}
    output = training_step(
        adapter, decoder, batch_for(adapter, motions), LossConfig(**weights), torch.Generator().manual_seed(1)
    )
    output.total.backward()
    assert any(p.grad.abs().sum() > 0 for p in lora_parameters(adapter))
    assert any(p.grad.abs().sum() > 0 for p in decoder.parameters()) == (term == "motion")


def test_iid_noise_ignores_the_operators():
    latents = torch.zeros(2, 3, 16, 4, 4)
    config = LossConfig(articulated_noise=False)
    noise = draw_noise(latents, [Untouchable(), Untouchable()], config, torch.Generator().manual_seed(0))
    assert torch.equal(noise, torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)))


def test_articulated_noise_is_the_degraded_operator_sample(motions):
    operators = [motions[9, name][0] for name in MOTIONS]
    latents = torch.zeros(2, 3, 16, 4, 4)
    config = LossConfig(gamma_range=(0.2, 0.7))
    noise = draw_noise(latents, operators, config, torch.Generator().manual_seed(0))

    generator = torch.Generator().manual_seed(0)
    warped = torch.stack([operator.sample(generator, 16) for operator in operators])
    fresh = torch.randn(warped.shape, generator=generator)
    gamma = 0.2 + 0.5 * torch.rand(2, generator=generator)
    assert torch.equal(noise, degrade(warped, fresh, gamma))
    assert not torch.equal(noise, warped)

    undegraded = draw_noise(latents, operators, LossConfig(gamma_range=(0.0, 0.0)), torch.Generator().manual_seed(0))
    assert torch.equal(undegraded, warped)


@pytest.mark.parametrize("articulated", [True, False])
def test_the_step_trains_on_the_drawn_noise(articulated, motions):
    adapter = trainable_adapter("tiny-wan")
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    batch = batch_for(adapter, motions)
    config = LossConfig(articulated_noise=articulated)
    used = []

    def recording(original):
        def call(latents, noise, timesteps):
            used.append(noise)
            return original(latents, noise, timesteps)

        return call

    adapter.add_noise = recording(adapter.add_noise)
    adapter.target = recording(adapter.target)
    output = training_step(adapter, decoder, batch, config, torch.Generator().manual_seed(3))
    expected = draw_noise(batch.latents, batch.operators, config, torch.Generator().manual_seed(3))
    assert len(used) == 2 and all(torch.equal(noise, expected) for noise in used)
    assert (output.consistency > 0) == articulated


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
@pytest.mark.parametrize("gamma", [1 - 1e-7, 1.0])
def test_the_step_is_finite_at_gamma_one(name, gamma, motions):
    adapter = trainable_adapter(name)
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    config = LossConfig(gamma_range=(gamma, gamma))
    output = training_step(adapter, decoder, batch_for(adapter, motions), config, torch.Generator().manual_seed(1))
    assert all(torch.isfinite(torch.tensor(value)) for value in output.metrics().values())
    output.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in lora_parameters(adapter))


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_a_few_adam_steps_on_one_batch_lower_the_loss(name, motions):
    adapter = trainable_adapter(name)
    padaln = PadaLN.for_adapter(adapter, mlp_dim=16).attach(adapter)
    decoder = MotionDecoder(adapter.latent_channels, hidden_channels=16)
    batch = batch_for(adapter, motions, pose=True)
    parameters = lora_parameters(adapter) + list(padaln.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    losses = []
    for _ in range(30):
        # The same seed every step: fixed noise, gamma and timesteps.
        output = training_step(adapter, decoder, batch, LossConfig(), torch.Generator().manual_seed(0), padaln)
        optimizer.zero_grad()
        output.total.backward()
        optimizer.step()
        losses.append(output.metrics())
    first, last = losses[0], losses[-1]
    assert last["loss"] < 0.7 * first["loss"], losses
    assert last["diffusion"] < 0.8 * first["diffusion"], losses


def test_batch_and_step_errors_name_the_field(motions):
    adapter = trainable_adapter("tiny-cogvideox")
    batch = batch_for(adapter, motions)
    with pytest.raises(ValueError, match=r"operators\[0\]"):
        type(batch)(batch.latents, batch.conditioning, [motions[17, "walk"][0]] * 2, batch.motion_targets)
    with pytest.raises(ValueError, match="motion_targets"):
        type(batch)(batch.latents, batch.conditioning, batch.operators, batch.motion_targets[:, :2])
    padaln = PadaLN.for_adapter(adapter, mlp_dim=16).attach(adapter)
    decoder = MotionDecoder(adapter.latent_channels)
    with pytest.raises(ValueError, match="pose_latents"):
        training_step(adapter, decoder, batch, LossConfig(), torch.Generator().manual_seed(0), padaln)
