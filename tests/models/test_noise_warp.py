"""The warp operator on synthetic UV maps: norms, statistics, adjoint, degradation, serialisation."""

import pytest
import torch
from noise_reference import reference_warp_operator

from models.noise_warp import WarpOperator, build_warp_operator, degrade, latent_frame_of, latent_num_frames, undegrade

LATENT = (3, 6, 8)  # F_lat, h, w
FACTOR = 4


def moving_square(num_frames: int = LATENT[0], shift: float = 3.0, size: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured square translating right by `shift` render pixels per frame; UV spans the square."""
    height, width = LATENT[1] * FACTOR, LATENT[2] * FACTOR
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    uvs, masks = [], []
    for frame in range(num_frames):
        u = (xs - 5 - shift * frame) / size
        v = 1 - (ys - 5) / size
        mask = (u >= 0) & (u < 1) & (v > 0) & (v <= 1)
        uvs.append(torch.stack([u.clamp(0, 1), v.clamp(0, 1)], -1))
        masks.append(mask)
    return torch.stack(uvs), torch.stack(masks)


def build(rule: str = "aggregate", background: str = "static", mask_fn=None, texture: int = 16) -> WarpOperator:
    uv, mask = moving_square()
    if mask_fn is not None:
        mask = mask_fn(mask)
    return build_warp_operator(uv, mask, torch.arange(LATENT[0]), LATENT, (texture, texture), rule, background)


def row_norms(operator: WarpOperator) -> torch.Tensor:
    rows = torch.repeat_interleave(torch.arange(operator.num_cells), operator.indptr.diff())
    return torch.zeros(operator.num_cells).index_add_(0, rows, operator.values.square()).sqrt()


@pytest.mark.parametrize("rule", ["aggregate", "nearest"])
@pytest.mark.parametrize("background", ["static", "per_frame"])
def test_rows_have_unit_norm(rule: str, background: str) -> None:
    operator = build(rule, background)
    torch.testing.assert_close(row_norms(operator), torch.ones(operator.num_cells))
    assert operator.indices.max() < operator.num_sources


def test_nearest_rule_has_one_source_per_cell() -> None:
    assert torch.equal(build("nearest").indptr.diff(), torch.ones(build("nearest").num_cells, dtype=torch.int64))


def test_aggregate_cells_mix_several_texels() -> None:
    operator = build("aggregate")
    assert operator.indptr.diff().max() > 4  # a 4x4 cell over a square of 14 px on a 16-texel texture


def test_every_cell_is_standard_normal() -> None:
    operator = build()
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([operator.sample(generator, channels=4) for _ in range(300)])  # [N, F, C, h, w]
    per_cell_var = draws.var(dim=0)
    assert abs(draws.mean().item()) < 0.02
    assert abs(draws.std().item() - 1) < 0.02
    assert per_cell_var.min() > 0.7 and per_cell_var.max() < 1.4  # 1200 samples per cell


def test_adjoint_is_exact_transpose() -> None:
    operator = build()
    generator = torch.Generator().manual_seed(1)
    sources = torch.randn(operator.num_sources, 3, generator=generator, dtype=torch.float64)
    latent = torch.randn(LATENT[0], 3, *LATENT[1:], generator=generator, dtype=torch.float64)
    lhs = (operator.apply(sources) * latent).sum()
    rhs = (sources * operator.adjoint(latent)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_static_background_repeats_over_time_and_per_frame_does_not() -> None:
    empty = lambda mask: torch.zeros_like(mask)  # noqa: E731
    static = build(mask_fn=empty).sample(torch.Generator().manual_seed(2), 2)
    fresh = build(background="per_frame", mask_fn=empty).sample(torch.Generator().manual_seed(2), 2)
    assert torch.equal(static[0], static[1]) and torch.equal(static[1], static[2])
    assert not torch.allclose(fresh[0], fresh[1])


@pytest.mark.parametrize("mask_fn", [lambda m: torch.zeros_like(m), lambda m: m & (torch.rand(m.shape, generator=torch.Generator().manual_seed(3)) < 0.01)])
def test_absent_or_tiny_body_gives_background_noise(mask_fn) -> None:
    operator = build(mask_fn=mask_fn)
    noise = operator.sample(torch.Generator().manual_seed(4), 2)
    assert torch.isfinite(noise).all()
    torch.testing.assert_close(row_norms(operator), torch.ones(operator.num_cells))


def test_body_leaving_the_frame() -> None:
    uv, mask = moving_square(num_frames=3, shift=20.0)  # gone by the last frame
    assert not mask[-1].any()
    operator = build_warp_operator(uv, mask, torch.arange(3), LATENT, (16, 16))
    last = operator.indices[operator.indptr[2 * 48] :]
    assert (last >= operator.num_texels).all()  # the last latent frame draws on background only


def test_body_noise_follows_the_surface() -> None:
    """A texel pattern moving by a whole cell gives the same noise one cell to the right."""
    uv, mask = moving_square(num_frames=2, shift=FACTOR)
    operator = build_warp_operator(uv, mask, torch.arange(2), (2, *LATENT[1:]), (16, 16))
    noise = operator.sample(torch.Generator().manual_seed(5), 1)
    inside = mask[0, FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR] & mask[1, FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR].roll(-1, 1)
    inside[:, -1] = False
    interior = inside & inside.roll(1, 0) & inside.roll(-1, 0) & inside.roll(1, 1) & inside.roll(-1, 1)
    torch.testing.assert_close(noise[1, 0].roll(-1, 1)[interior], noise[0, 0][interior])


def test_longer_clip_reuses_the_texture() -> None:
    """The first latent frames of a longer operator draw the same noise from the same sources."""
    uv, mask = moving_square(num_frames=3)
    short = build_warp_operator(uv[:2], mask[:2], torch.arange(2), (2, *LATENT[1:]), (16, 16))
    long = build_warp_operator(uv, mask, torch.arange(3), LATENT, (16, 16))
    sources = long.sample_sources(4, torch.Generator().manual_seed(6))
    torch.testing.assert_close(long.apply(sources)[:2], short.apply(sources))


def test_several_rendered_frames_can_share_a_latent_frame() -> None:
    uv, mask = moving_square(num_frames=5, shift=1.0)
    operator = build_warp_operator(uv, mask, latent_frame_of(torch.arange(5)), (2, *LATENT[1:]), (16, 16))
    torch.testing.assert_close(row_norms(operator), torch.ones(operator.num_cells))
    # latent frame 1 pools frames 1-4, so its body cells see more texels than frame 0's
    per_row = operator.indptr.diff().reshape(2, -1)
    assert per_row[1].sum() > per_row[0].sum()


def test_to_uv_recovers_texels_seen_by_one_cell() -> None:
    """With one texel per cell, the UV-space transpose of a sample returns the texture itself."""
    h, w = LATENT[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    uv = torch.stack([(xs + 0.5) / w, 1 - (ys + 0.5) / h], -1)[None]
    operator = build_warp_operator(uv, torch.ones(1, h, w, dtype=torch.bool), torch.zeros(1, dtype=torch.long), (1, h, w), (h, w), "nearest")
    sources = operator.sample_sources(2, torch.Generator().manual_seed(7))
    texture, visible = operator.to_uv(operator.apply(sources))
    assert visible.all()
    torch.testing.assert_close(texture, sources[: h * w].T.reshape(2, h, w))


def test_to_uv_averages_over_visible_frames() -> None:
    operator = build()
    texture, visible = operator.to_uv(torch.ones(LATENT[0], 1, *LATENT[1:]))
    counts = operator.texel_visible_frames()
    assert torch.equal(visible, counts > 0)
    assert (texture[0][~visible] == 0).all() and (texture[0][visible] > 0).all()


def test_serialisation_round_trip_gives_the_same_noise() -> None:
    operator = build()
    rebuilt = WarpOperator.from_arrays(operator.to_arrays())
    a = operator.sample(torch.Generator().manual_seed(8), 16)
    b = rebuilt.sample(torch.Generator().manual_seed(8), 16)
    assert torch.equal(a, b)


def test_corrupt_arrays_are_rejected() -> None:
    arrays = build().to_arrays()
    arrays["indices"] = arrays["indices"] + 10**6
    with pytest.raises(ValueError, match="out of range"):
        WarpOperator.from_arrays(arrays)
    arrays = build().to_arrays()
    arrays["indptr"] = arrays["indptr"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        WarpOperator.from_arrays(arrays)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.99, torch.tensor([0.1, 0.5, 0.9])])
def test_degrade_then_undegrade_returns_the_input(gamma) -> None:
    generator = torch.Generator().manual_seed(9)
    warped = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    fresh = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    noisy = degrade(warped, fresh, gamma)
    torch.testing.assert_close(undegrade(noisy, fresh, gamma), warped)


def test_degrade_keeps_unit_variance() -> None:
    generator = torch.Generator().manual_seed(10)
    noisy = degrade(torch.randn(200_000, generator=generator), torch.randn(200_000, generator=generator), 0.5)
    assert abs(noisy.std().item() - 1) < 0.01


def test_gamma_is_checked() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="gamma"):
        degrade(x, x, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        degrade(x, x, float("nan"))
    with pytest.raises(ValueError, match="gamma = 1"):
        undegrade(x, x, 1.0)


def test_frame_rule() -> None:
    assert latent_num_frames(49) == 13 and latent_num_frames(81) == 21 and latent_num_frames(1) == 1
    assert latent_frame_of(torch.arange(9)).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="4k\\+1"):
        latent_num_frames(50)


def random_body(num_frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UV maps with random coordinates (texture edges included) on random cells (5-60% of them), 70% of whose
    pixels are body: cells with no body, some body and only body pixels."""
    generator = torch.Generator().manual_seed(seed)
    height, width = LATENT[1] * FACTOR, LATENT[2] * FACTOR
    uv = torch.rand(num_frames, height, width, 2, generator=generator)
    uv[:, ::7, ::5] = torch.tensor([0.0, 1.0])  # texture corners, where the clamps act
    uv[:, 3::11, 2::9] = torch.tensor([1.0, 0.0])
    density = torch.rand(num_frames, 1, 1, generator=generator) * 0.55 + 0.05
    cells = torch.rand(num_frames, LATENT[1], LATENT[2], generator=generator) < density
    mask = cells.repeat_interleave(FACTOR, 1).repeat_interleave(FACTOR, 2)
    mask &= torch.rand(mask.shape, generator=generator) < 0.7
    return uv * mask[..., None], mask


@pytest.mark.parametrize("rule", ["aggregate", "nearest"])
@pytest.mark.parametrize("background", ["static", "per_frame"])
@pytest.mark.parametrize("frames", [torch.arange(3), latent_frame_of(torch.arange(9)), torch.tensor([2, 0, 1, 1])])
def test_build_matches_the_reference_bitwise(rule: str, background: str, frames: torch.Tensor) -> None:
    """Same CSR arrays and the same noise as the pre-issue-14 build: counts are small integers, so the float32
    weights, norms (sums of squared counts < 2^24, exact in any order) and values come out identical."""
    num_latent = int(frames.max()) + 1
    latent_shape = (num_latent, *LATENT[1:])
    inputs = [moving_square(len(frames)), random_body(len(frames), seed=len(frames))]
    inputs.append((inputs[1][0], torch.zeros_like(inputs[1][1])))  # no body at all
    inputs.append((inputs[1][0] * 0 + 0.5, torch.ones_like(inputs[1][1])))  # body everywhere
    for uv, mask in inputs:
        new = build_warp_operator(uv, mask, frames, latent_shape, (16, 16), rule, background)
        old = reference_warp_operator(uv, mask, frames, latent_shape, (16, 16), rule, background)
        for name in ("indptr", "indices", "values"):
            assert torch.equal(getattr(new, name), getattr(old, name)), name
        assert new.num_background == old.num_background
        new_noise, old_noise = (op.sample(torch.Generator().manual_seed(11), 4) for op in (new, old))
        assert torch.equal(new_noise, old_noise)


def test_latent_frames_are_checked() -> None:
    uv, mask = moving_square(num_frames=2)
    with pytest.raises(ValueError, match="no rendered frame"):
        build_warp_operator(uv, mask, torch.tensor([0, 0]), (2, *LATENT[1:]), (16, 16))
    with pytest.raises(ValueError, match="latent_frames must lie in"):
        build_warp_operator(uv, mask, torch.tensor([0, 2]), (2, *LATENT[1:]), (16, 16))
