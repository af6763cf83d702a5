"""PadaLN hooked into tiny CogVideoX 1.0/1.5 and Wan transformers through their adapters."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, tiny

from models.padaln import PADALN_WEIGHTS_NAME, PadaLN, mask_reference


def inputs(adapter, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    conditioning = adapter.encode_conditioning(image, "a person dancing", adapter.num_frames, generator=generator)
    latents = torch.randn(1, *adapter.latent_shape(), generator=generator)
    pose = adapter.encode_video(torch.rand(1, adapter.num_frames, 3, 32, 32, generator=generator) * 2 - 1, generator)
    return latents, adapter.sample_timesteps(1, generator), conditioning, pose


def predict(adapter, latents, timesteps, conditioning) -> torch.Tensor:
    with torch.no_grad():
        return adapter.predict(latents, timesteps, conditioning)


def perturb(padaln: PadaLN, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in padaln.parameters():
        param.data.normal_(0.0, 0.2, generator=generator)


@pytest.mark.parametrize("name", TINY)
def test_untrained_padaln_leaves_the_output_bitwise_unchanged(name):
    adapter = tiny(name)
    latents, timesteps, conditioning, pose = inputs(adapter)
    base = predict(adapter, latents, timesteps, conditioning)
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    with padaln.pose(pose):
        assert torch.equal(predict(adapter, latents, timesteps, conditioning), base)


@pytest.mark.parametrize("name", TINY)
def test_trained_padaln_changes_the_output_and_detach_restores_it(name):
    adapter = tiny(name)
    latents, timesteps, conditioning, pose = inputs(adapter)
    base = predict(adapter, latents, timesteps, conditioning)
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    perturb(padaln)
    with padaln.pose(pose):
        posed = predict(adapter, latents, timesteps, conditioning)
    assert not torch.equal(posed, base)
    with padaln.pose(torch.randn_like(pose)):
        assert not torch.equal(predict(adapter, latents, timesteps, conditioning), posed)
    assert torch.equal(predict(adapter, latents, timesteps, conditioning), base)  # no pose: hooks are inert

    padaln.detach()
    assert torch.equal(predict(adapter, latents, timesteps, conditioning), base)
    assert all(not block._forward_pre_hooks for block in adapter.blocks)
    assert not adapter.transformer._forward_pre_hooks


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_padaln_and_the_pose_path(name):
    adapter = tiny(name)
    latents, timesteps, conditioning, pose = inputs(adapter)
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    # At init only the gates' output layer gets gradient (everything else is multiplied by a zero gate).
    with padaln.pose(pose):
        adapter.predict(latents, timesteps, conditioning).square().mean().backward()
    assert all(m.mlp[-1].weight.grad.abs().sum() > 0 for m in padaln.modulations)

    padaln.zero_grad()
    perturb(padaln)
    pose = pose.clone().requires_grad_(True)
    with padaln.pose(pose):
        adapter.predict(latents, timesteps, conditioning).square().mean().backward()
    for param_name, param in padaln.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    assert pose.grad.abs().sum() > 0  # through the backbone's own patch embedding


def test_classifier_free_guidance_batch_repeats_the_pose():
    adapter = tiny("tiny-cogvideox")
    latents, timesteps, conditioning, pose = inputs(adapter)
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    perturb(padaln)
    doubled = type(conditioning)(
        image_latents=conditioning.image_latents.repeat(2, 1, 1, 1, 1),
        prompt_embeds=conditioning.prompt_embeds.repeat(2, 1, 1),
    )
    with padaln.pose(pose):
        single = predict(adapter, latents, timesteps, conditioning)
        batched = predict(adapter, latents.repeat(2, 1, 1, 1, 1), timesteps, doubled)
    torch.testing.assert_close(batched, single.repeat(2, 1, 1, 1, 1))


def test_mismatched_pose_is_a_clear_error():
    adapter = tiny("tiny-wan")
    latents, timesteps, conditioning, pose = inputs(adapter)
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    with padaln.pose(pose[:, :2]), pytest.raises(ValueError, match="same frames and size"):
        predict(adapter, latents, timesteps, conditioning)
    with pytest.raises(RuntimeError, match="already attached"):
        padaln.attach(adapter)
    with pytest.raises(ValueError, match="cannot attach"):
        PadaLN.for_adapter(tiny("tiny-cogvideox")).attach(adapter)


@pytest.mark.parametrize("name", ["tiny-cogvideox1.5", "tiny-wan"])
def test_save_and_load_next_to_the_lora(tmp_path, name):
    adapter = tiny(name)
    latents, timesteps, conditioning, pose = inputs(adapter)
    adapter.add_lora()
    padaln = PadaLN.for_adapter(adapter).attach(adapter)
    perturb(padaln)
    generator = torch.Generator().manual_seed(2)
    for param_name, param in adapter.transformer.named_parameters():
        if "lora_B" in param_name:
            param.data.normal_(generator=generator)
    with padaln.pose(pose):
        expected = predict(adapter, latents, timesteps, conditioning)

    adapter.save_lora(tmp_path)
    assert padaln.save(tmp_path) == tmp_path / PADALN_WEIGHTS_NAME

    fresh = tiny(name)
    fresh.load_lora(tmp_path)
    loaded = PadaLN.load(tmp_path).attach(fresh)
    assert loaded.settings == padaln.settings
    with loaded.pose(pose):
        assert torch.equal(predict(fresh, latents, timesteps, conditioning), expected)

    with pytest.raises(FileNotFoundError, match="No PadaLN weights"):
        PadaLN.load(tmp_path / "elsewhere")


def test_mask_reference():
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 8, 8)
    mask[:, :4] = 1
    masked = mask_reference(image, mask)
    assert torch.equal(masked[:, :, :4], image[:, :, :4])
    assert (masked[:, :, 4:] == -1).all()
    assert torch.equal(mask_reference(image, mask[0]), masked)
    with pytest.raises(ValueError, match="mask: size"):
        mask_reference(image, torch.ones(8, 4))
    with pytest.raises(ValueError, match=r"mask: values must lie in \[0, 1\]"):
        mask_reference(image, torch.full((8, 8), 2.0))
