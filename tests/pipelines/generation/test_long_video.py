"""Window planning over latent frames and blended denoising with one scheduler for the whole video."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, UniPCMultistepScheduler

from models.backbones.config import VARIANTS
from pipelines.generation.long_video import Window, default_overlap, denoise_windows, plan_windows

TEMPORAL = 4
# (variant, window in video frames): the released windows and the tiny configs'.
WINDOWS = [("cogvideox", "1.0", 49), ("cogvideox", "1.5", 81), ("wan", "2.1", 81),
           ("cogvideox", "1.0", 9), ("cogvideox", "1.5", 17), ("wan", "2.1", 9)]


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL + 1


@pytest.mark.parametrize("family, variant, window_frames", WINDOWS)
@pytest.mark.parametrize("frames", [9, 49, 81, 161, 321, 1281])
def test_windows_cover_every_latent_frame_with_valid_aligned_clips(family, variant, window_frames, frames):
    spec = VARIANTS[family][variant]
    window = latent_frames(window_frames)
    total = latent_frames(frames)
    windows = plan_windows(total, window)
    assert windows[0].start == 0 and windows[-1].stop == total
    coverage = torch.zeros(total, dtype=torch.float64)
    for previous, current in zip(windows, windows[1:]):
        assert previous.start < current.start and previous.stop - current.start >= default_overlap(window)
    for item in windows:
        assert item.num_latent_frames == min(window, total)
        clip = item.frames(TEMPORAL)
        assert clip.start % TEMPORAL == 0 and clip.stop - clip.start == (item.num_latent_frames - 1) * TEMPORAL + 1
        if frames % 16 == 1 or family != "cogvideox" or variant == "1.0":
            spec.check_num_frames(clip.stop - clip.start)  # a clip the backbone takes
        assert ((item.weights > 0) & (item.weights <= 1)).all()
        coverage[item.start : item.stop] += item.weights.double()
    torch.testing.assert_close(coverage, torch.ones(total, dtype=torch.float64), atol=1e-6, rtol=0)


def test_weights_ramp_linearly_across_an_overlap():
    windows = plan_windows(9, 5, overlap=1)  # starts 0, 4: one shared latent frame
    assert [(w.start, w.stop) for w in windows] == [(0, 5), (4, 9)]
    assert windows[0].weights.tolist() == [1, 1, 1, 1, 0.5] and windows[1].weights.tolist() == [0.5, 1, 1, 1, 1]
    ramp = plan_windows(8, 5, overlap=2)  # starts 0, 3: ramps over the 2 shared frames
    torch.testing.assert_close(ramp[1].weights[:2], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(ramp[0].weights[3:], torch.tensor([2 / 3, 1 / 3]))


def test_a_video_no_longer_than_the_window_is_one_window_of_weight_one():
    for total in (1, 3, 13):
        (window,) = plan_windows(total, 13)
        assert (window.start, window.stop) == (0, total) and torch.equal(window.weights, torch.ones(total))


def test_bad_overlap_names_the_field():
    with pytest.raises(ValueError, match=r"window_overlap: must be in \[0, 4\]"):
        plan_windows(20, 5, overlap=5)


def toy_model(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Acts on each latent element alone, so windowing cannot change its output."""
    return torch.tanh(latents) * (t.float() / 1000) + 0.1 * latents


def plain_sampling(scheduler, latents: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        latents = scheduler.step(toy_model(latents, t), t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("scheduler_class", [CogVideoXDDIMScheduler, UniPCMultistepScheduler])
def test_one_window_is_exactly_plain_sampling(scheduler_class):
    latents = torch.randn(1, 13, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    steps = []
    blended = denoise_windows(
        latents, plan_windows(13, 13), scheduler_class(), 5, lambda index, x, t: toy_model(x, t),
        lambda: steps.append(1),
    )
    assert torch.equal(blended, plain_sampling(scheduler_class(), latents, 5))
    assert len(steps) == 5


@pytest.mark.parametrize("scheduler_class", [CogVideoXDDIMScheduler, UniPCMultistepScheduler])
def test_blending_windows_of_a_frame_local_model_matches_plain_sampling(scheduler_class):
    """With a multistep solver too: one scheduler steps the full tensor, so its stored outputs stay consistent."""
    latents = torch.randn(1, 41, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    seen = []

    def predict(index: int, window: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(window.shape[1])
        return toy_model(window, t)

    windows = plan_windows(41, 13)
    blended = denoise_windows(latents, windows, scheduler_class(), 4, predict)
    assert len(windows) > 3 and set(seen) == {13} and len(seen) == 4 * len(windows)
    torch.testing.assert_close(blended, plain_sampling(scheduler_class(), latents, 4), atol=1e-5, rtol=1e-5)


def test_window_frames_are_the_clip_its_latents_encode():
    window = Window(3, 8, torch.ones(5))
    assert window.frames(4) == slice(12, 29) and window.num_latent_frames == 5
