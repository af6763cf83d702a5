"""The loss terms: GMCL, the motion decoder with its targets and loss, the diffusion MSE and LossConfig."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from models.body_model import load_body_model
from models.losses import LossConfig, consistency_loss, diffusion_loss, total_loss
from models.motion_decoder import UPSCALE, MotionDecoder, motion_loss, motion_targets
from models.noise_warp import build_warp_operator, degrade, undegrade
from pipelines.articulated_noise import NoiseConfig, build_motion_operator
from pipelines.demo.motions import make_demo_motion

NOISE = NoiseConfig(num_frames=9, height=32, width=32, texture_size=32, supersample=4, channels=16)
GAMMAS = [0.0, 0.5, 1 - 1e-7, 1.0]


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


@pytest.fixture(scope="module")
def walk(body):
    return build_motion_operator(make_demo_motion("walk", 9), body, NOISE)


def absent_body_operator():
    """An operator of a clip where the body is never seen: background units only."""
    return build_warp_operator(
        torch.zeros(3, 16, 16, 2), torch.zeros(3, 16, 16, dtype=torch.bool), torch.arange(3), (3, 4, 4), (32, 32)
    )


def training_noise(operator, gamma, seed=0, dtype=torch.float32):
    """Warped noise, fresh noise and their degraded mix (what training adds), for one row."""
    generator = torch.Generator().manual_seed(seed)
    warped = operator.sample(generator, NOISE.channels).to(dtype)
    fresh = torch.randn(warped.shape, generator=generator).to(dtype)
    return warped, fresh, degrade(warped, fresh, gamma)


def undegraded_gmcl(predicted, warped, fresh, gamma, operator):
    """GMCL as the method states it: undegrade, go to UV space, compare, weight by (1-g)^2/(g^2+(1-g)^2)."""
    predicted_uv, visible = operator.to_uv(undegrade(predicted, fresh, gamma))
    warped_uv, _ = operator.to_uv(warped)
    weight = (1 - gamma) ** 2 / (gamma**2 + (1 - gamma) ** 2)
    return weight * (predicted_uv - warped_uv).square()[:, visible].mean()


# GMCL


@pytest.mark.parametrize("gamma", GAMMAS)
def test_gmcl_is_exactly_zero_at_the_true_noise(walk, gamma):
    operator, _ = walk
    _, _, noise = training_noise(operator, gamma)
    predicted = noise.clone().requires_grad_(True)
    loss = consistency_loss(predicted[None], noise[None], [operator])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(predicted.grad, torch.zeros_like(noise))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_gmcl_is_positive_and_finite_up_to_gamma_one(walk, gamma):
    operator, _ = walk
    _, _, noise = training_noise(operator, gamma)
    predicted = (noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)))
    predicted.requires_grad_(True)
    loss = consistency_loss(predicted[None], noise[None], [operator])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(predicted.grad).all() and predicted.grad.abs().sum() > 0


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9, 1 - 1e-7])
def test_gmcl_equals_the_weighted_undegraded_comparison(walk, gamma):
    operator, _ = walk
    warped, fresh, noise = training_noise(operator, gamma, dtype=torch.float64)
    predicted = noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1), dtype=noise.dtype)
    expected = undegraded_gmcl(predicted, warped, fresh, gamma, operator)
    loss = consistency_loss(predicted[None], noise[None], [operator])
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=0)


def dense_warp(operator):
    """The operator as a dense matrix `[cells, sources]` (cells in `[F_lat, h, w]` order)."""
    sources = torch.eye(operator.num_sources, dtype=torch.float64)
    return operator.apply(sources).permute(0, 2, 3, 1).reshape(operator.num_cells, operator.num_sources)


def paper_gmcl(predicted, fresh, gamma, operator, texture):
    """HumANDiff's Eq. 4-5 written out: undegrade the prediction, unwarp it to UV with the transpose of the
    warp, pool each texel over the latent frames it is visible in, compare with the noise texture there."""
    frames, height, width = operator.latent_shape
    warp = dense_warp(operator)[:, : operator.num_texels]  # texel columns
    cells = undegrade(predicted, fresh, gamma).permute(0, 2, 3, 1).reshape(operator.num_cells, -1)
    seen_in = (warp != 0).reshape(frames, height * width, -1).any(dim=1).sum(dim=0)  # frames per texel
    visible = seen_in > 0
    pooled = (warp.T @ cells)[visible] / seen_in[visible, None]
    return (pooled - texture[visible]).square().mean()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_gmcl_with_the_nearest_rule_is_the_papers_equation_times_its_weight(body, gamma):
    """Nearest rule: each cell is one texel, so the unwarped true noise is the texture itself and GMCL is the
    paper's comparison with the texture, weighted by (1-gamma)^2 / (gamma^2 + (1-gamma)^2)."""
    operator, _ = build_motion_operator(make_demo_motion("walk", 9), body, NOISE.model_copy(update={"rule": "nearest"}))
    generator = torch.Generator().manual_seed(0)
    sources = operator.sample_sources(NOISE.channels, generator).double()
    texture = sources[: operator.num_texels]
    warped = operator.apply(sources)
    fresh = torch.randn(warped.shape, generator=generator, dtype=warped.dtype)
    noise = degrade(warped, fresh, gamma)
    predicted = noise + 0.1 * torch.randn(noise.shape, generator=generator, dtype=noise.dtype)
    weight = (1 - gamma) ** 2 / (gamma**2 + (1 - gamma) ** 2)
    expected = weight * paper_gmcl(predicted, fresh, gamma, operator, texture)
    assert expected > 0
    torch.testing.assert_close(consistency_loss(predicted[None], noise[None], [operator]), expected.float(), rtol=1e-5,
                               atol=0)


def test_gmcl_with_aggregation_compares_pooled_projections_not_the_texture(walk):
    """Aggregation mixes several texels per cell: the unwarped true noise is a pooled projection of the texture,
    not the texture, so GMCL (0 at the true noise) differs from the paper's comparison with the texture."""
    operator, _ = walk
    sources = operator.sample_sources(NOISE.channels, torch.Generator().manual_seed(0)).double()
    noise = operator.apply(sources)
    texture = sources[: operator.num_texels]
    assert consistency_loss(noise[None], noise[None], [operator]).item() == 0.0
    assert paper_gmcl(noise, torch.zeros_like(noise), 0.0, operator, texture) > 0.01


def test_gmcl_row_without_a_body_contributes_zero(walk):
    operator, _ = walk
    absent = absent_body_operator()
    assert not absent.texel_visible_frames().any()
    _, _, noise = training_noise(operator, 0.5)
    predicted = noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    alone = consistency_loss(predicted[None], noise[None], [operator])
    both = consistency_loss(torch.stack([predicted, predicted]), torch.stack([noise, noise]), [operator, absent])
    assert consistency_loss(predicted[None], noise[None], [absent]).item() == 0.0
    assert torch.equal(both, alone / 2)


def test_gmcl_needs_one_operator_per_row(walk):
    operator, _ = walk
    noise = operator.sample(torch.Generator().manual_seed(0), 16)
    with pytest.raises(ValueError, match="operators"):
        consistency_loss(torch.stack([noise, noise]), torch.stack([noise, noise]), [operator])


# Motion decoder


@pytest.mark.parametrize("group_frames", ["centre", "all"])
def test_motion_target_mask_is_the_area_fraction_of_body_pixels(body, group_frames):
    config = NOISE.model_copy(update={"height": 64, "width": 64, "group_frames": group_frames})
    _, render = build_motion_operator(make_demo_motion("walk", 9), body, config)  # 32x32 renders
    targets = motion_targets(render.uv, render.mask, render.latent_frames, 3, (8, 8))
    assert targets.shape == (3, 3, 8, 8)

    per_frame = render.mask.float().reshape(-1, 8, 4, 8, 4).mean(dim=(2, 4))
    expected = torch.stack([per_frame[render.latent_frames == k].mean(0) for k in range(3)])
    assert torch.equal(targets[:, 2], expected)
    assert (targets[:, 2] > 0).any()

    uv, body_fraction = targets[:, :2], targets[:, 2:]
    assert uv.min() >= 0 and uv.max() <= 1
    assert torch.equal(uv * (body_fraction == 0), torch.zeros_like(uv))
    # u, v are the mean over body pixels: times the body fraction they give the pooled masked UV.
    masked_uv = (render.uv * render.mask[..., None]).permute(0, 3, 1, 2).reshape(-1, 2, 8, 4, 8, 4).mean(dim=(3, 5))
    pooled = torch.stack([masked_uv[render.latent_frames == k].mean(0) for k in range(3)])
    torch.testing.assert_close(uv * body_fraction, pooled)


def test_motion_targets_reject_a_size_that_does_not_divide_the_render(walk):
    _, render = walk
    with pytest.raises(ValueError, match="size"):
        motion_targets(render.uv, render.mask, render.latent_frames, 3, (6, 6))
    with pytest.raises(ValueError, match="latent_frames"):
        motion_targets(render.uv, render.mask, render.latent_frames, 2, (8, 8))


def test_motion_decoder_and_loss_send_gradients_to_the_decoder_and_latents_only(walk):
    _, render = walk
    size = (UPSCALE * 4, UPSCALE * 4)
    target = motion_targets(render.uv, render.mask, render.latent_frames, 3, size)
    absent = torch.zeros_like(target)  # a row whose body is never seen
    targets = torch.stack([target, absent]).requires_grad_(True)
    decoder = MotionDecoder(16)
    latents = torch.randn(2, 3, 16, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    maps = decoder(latents)
    assert maps.shape == (2, 3, 3, *size)
    loss = motion_loss(maps, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())
    assert all(p.grad.abs().sum() > 0 for p in decoder.parameters())
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert targets.grad is None


def test_motion_loss_is_lower_for_the_right_maps(walk):
    _, render = walk
    target = motion_targets(render.uv, render.mask, render.latent_frames, 3, (16, 16))[None]
    logits = torch.logit(target[:, :, 2:].clamp(1e-4, 1 - 1e-4))
    right = torch.cat([target[:, :, :2], logits], dim=2)
    wrong = torch.cat([1 - target[:, :, :2], -logits], dim=2)
    assert motion_loss(right, target) < motion_loss(wrong, target)


# Diffusion MSE, total, config


def test_diffusion_loss_leaves_the_target_alone():
    prediction = torch.randn(1, 3, 16, 4, 4, requires_grad=True)
    target = torch.randn(1, 3, 16, 4, 4, requires_grad=True)
    diffusion_loss(prediction, target).backward()
    assert prediction.grad is not None and target.grad is None


def test_total_loss_weighs_the_terms_and_logs_them_unweighted():
    config = LossConfig(diffusion_weight=2.0, motion_weight=0.5, consistency_weight=3.0)
    terms = [torch.tensor(value, requires_grad=True) for value in (1.0, 4.0, 0.25)]
    output = total_loss(config, *terms)
    assert output.total.item() == 2.0 + 2.0 + 0.75
    assert (output.diffusion, output.motion, output.consistency) == (1.0, 4.0, 0.25)
    assert output.metrics() == {"loss": 4.75, "diffusion": 1.0, "motion": 4.0, "consistency": 0.25}
    output.total.backward()
    assert [t.grad.item() for t in terms] == [2.0, 0.5, 3.0]


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"motion_weight": -1.0}, "motion_weight"),
        ({"diffusion_weight": "heavy"}, "diffusion_weight"),
        ({"gamma_range": (0.8, 0.2)}, "gamma_range"),
        ({"gamma_range": (0.0, 1.5)}, "gamma_range"),
        ({"articulated_noise": "sometimes"}, "articulated_noise"),
        ({"consistency": 1.0}, "consistency"),
    ],
)
def test_loss_config_validation_names_the_field(settings, field):
    with pytest.raises(ValidationError) as error:
        LossConfig(**settings)
    assert error.value.errors()[0]["loc"][0] == field
    assert field in str(error.value)
