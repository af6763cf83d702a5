"""Motion -> body -> render -> operator, the preview, and the `humanim noise` / `motion demo` commands."""

import json

import av
import numpy as np
import pytest
import torch
from noise_reference import reference_uv_map, reference_warp_operator

from models.body_model import load_body_model
from models.motion import MotionError
from models.noise_warp import stack_latent_frames
from pipelines.articulated_noise import (
    NoiseConfig,
    build_motion_operator,
    preview_frames,
    rendered_frames,
    video_noise_operator,
)
from pipelines.demo.motions import make_demo_motion
from pipelines.io.motion import save_motion
from ray_jobs.cli import main as cli

SMALL = NoiseConfig(num_frames=9, height=96, width=144, texture_size=64, supersample=4, channels=4)


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


def moved(motion, offset):
    """The same motion shifted by `offset` metres in the camera frame."""
    arrays = motion.to_arrays()
    arrays["transl"] = arrays["transl"] + np.asarray(offset, dtype=np.float32)
    from models.motion import motion_from_arrays

    return motion_from_arrays(arrays)


def test_operator_from_a_demo_motion(body) -> None:
    operator, render = build_motion_operator(make_demo_motion("walk", 9), body, SMALL)
    assert operator.latent_shape == (3, 12, 18)
    assert render.mask.any(dim=(1, 2)).all()  # the body is visible in every rendered frame
    texel_entries = operator.indices < operator.num_texels
    assert texel_entries.sum() > 50
    noise = operator.sample(torch.Generator().manual_seed(0), 4)
    assert noise.shape == (3, 4, 12, 18) and torch.isfinite(noise).all()


@pytest.mark.parametrize("background", ["static", "per_frame"])
def test_chunked_build_is_the_same_operator(body, background) -> None:
    motion = make_demo_motion("turn", 29)  # 8 latent frames
    options = {**SMALL.model_dump(exclude={"num_frames", "height", "width"}), "background": background}
    whole, _ = build_motion_operator(motion, body, NoiseConfig(**options, num_frames=29, height=96, width=144))
    for chunk in (1, 3, 8):
        chunked = video_noise_operator(motion, body, options, 29, (96, 144), chunk_latent_frames=chunk)
        assert chunked.latent_shape == whole.latent_shape and chunked.num_background == whole.num_background
        for name in ("indptr", "indices", "values"):
            assert torch.equal(getattr(chunked, name), getattr(whole, name)), (chunk, name)
    with pytest.raises(ValueError, match="share the latent grid"):
        small = build_motion_operator(motion, body, NoiseConfig(**options, num_frames=9, height=64, width=96))[0]
        stack_latent_frames([whole, small], background)



@pytest.mark.parametrize("options", [{}, {"rule": "nearest"}, {"background": "per_frame", "group_frames": "all"}])
def test_operator_matches_the_pre_issue_14_build(body, options) -> None:
    """UV maps, masks, operator and a seeded sample bitwise as the build before issue 14 made it fast."""
    config = NoiseConfig(**{**SMALL.model_dump(), "num_frames": 13, "supersample": 8, **options})
    for name in ("walk", "turn"):
        operator, render = build_motion_operator(make_demo_motion(name, 13), body, config)
        uv = reference_uv_map(render.face_id, render.bary, body.uv_coords, body.uv_faces)
        mask = render.face_id >= 0
        assert torch.equal(render.uv, uv) and torch.equal(render.mask, mask)
        reference = reference_warp_operator(
            uv, mask, render.latent_frames, config.latent_shape, (config.texture_size,) * 2, config.rule,
            config.background,
        )
        for field in ("indptr", "indices", "values"):
            assert torch.equal(getattr(operator, field), getattr(reference, field)), (name, field)
        noise, reference_noise = (op.sample(torch.Generator().manual_seed(7), 4) for op in (operator, reference))
        assert torch.equal(noise, reference_noise)

def test_rendered_frames_follow_the_vae_groups() -> None:
    frames, latent = rendered_frames(9, "centre")
    assert frames.tolist() == [0, 2, 6] and latent.tolist() == [0, 1, 2]
    frames, latent = rendered_frames(9, "all")
    assert latent.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "offset",
    [(0.0, 0.0, -10.0), (50.0, 0.0, 0.0), (0.0, 0.0, 400.0)],
    ids=["behind-camera", "off-screen", "tiny"],
)
def test_absent_or_tiny_body_gives_background_noise(body, offset) -> None:
    operator, render = build_motion_operator(moved(make_demo_motion("turn", 9), offset), body, SMALL)
    assert render.mask.sum() <= 4
    body_entries = (operator.indices < operator.num_texels).sum()
    assert body_entries <= render.mask.sum()
    assert torch.isfinite(operator.sample(torch.Generator().manual_seed(1), 2)).all()


def test_short_motion_is_refused(body) -> None:
    with pytest.raises(MotionError, match="motion has 5 frames but num_frames=9"):
        build_motion_operator(make_demo_motion("walk", 5), body, SMALL)


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="height must be a multiple of 8"):
        NoiseConfig(height=100)
    with pytest.raises(ValueError, match="width must be a multiple of 4"):
        NoiseConfig(height=64, width=98, spatial_factor=4)
    assert NoiseConfig(num_frames=25, height=64, width=96, spatial_factor=4).latent_shape == (7, 16, 24)
    with pytest.raises(ValueError, match="4k\\+1"):
        NoiseConfig(num_frames=48)


def test_preview_shows_uv_next_to_noise(body) -> None:
    operator, render = build_motion_operator(make_demo_motion("arm_swings", 9), body, SMALL)
    frames = preview_frames(render, operator.sample(torch.Generator().manual_seed(2), 4), (96, 144))
    assert frames.shape == (3, 96, 288, 3) and frames.dtype == np.uint8
    body_pixels = render.mask.repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()  # render is 48x72
    uv_panel = frames[:, :, :144]
    assert uv_panel[~body_pixels].max() == 0 and (uv_panel[body_pixels][:, 2] == 255).all()
    assert frames[:, :, 144:].std() > 30  # the noise panel is noise


def test_noise_command_writes_npy_and_preview(tmp_path) -> None:
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    cli(
        [
            "noise", "--motion", str(tmp_path / "walk.npz"), "--frames", "9", "--height", "96", "--width", "144",
            "--texture-size", "64", "--out", str(tmp_path / "noise.npy"), "--preview", str(tmp_path / "p.mp4"),
            "--device", "cpu", "--gamma", "0.2",
        ]
    )  # fmt: skip
    noise = np.load(tmp_path / "noise.npy")
    assert noise.shape == (3, 16, 12, 18) and noise.dtype == np.float32
    with av.open(str(tmp_path / "p.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (96, 288, 3)


def test_noise_command_reports_bad_motion(tmp_path, capsys) -> None:
    arrays = make_demo_motion("walk", 9).to_arrays()
    arrays["body_pose"][2, 5] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit) as exit_info:
        cli(["noise", "--motion", str(tmp_path / "bad.npz"), "--frames", "9", "--out", str(tmp_path / "n.npy")])
    assert exit_info.value.code == 2
    assert "'body_pose' contains NaN" in capsys.readouterr().err


def test_motion_demo_command(tmp_path, capsys) -> None:
    cli(["motion", "demo", "--out", str(tmp_path), "--frames", "13"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arm_swings.npz", "turn.npz", "walk.npz"]
    assert json.loads(capsys.readouterr().out)["motions"] == ["arm_swings", "turn", "walk"]


def test_demo_reference_image_shows_the_posed_body(body) -> None:
    from pipelines.demo.reference import BACKGROUND, render_reference_image

    motion = make_demo_motion("arm_swings", 9)
    image = render_reference_image(motion, body, (96, 144))
    _, render = build_motion_operator(motion, body, NoiseConfig(num_frames=1, height=96, width=144, supersample=8, texture_size=64))
    background = np.round(np.array(BACKGROUND) * 255).astype(np.uint8)
    is_background = (image == background).all(-1)
    assert image.shape == (96, 144, 3) and image.dtype == np.uint8
    assert np.array_equal(~is_background, render.mask[0].numpy())  # body exactly where the renderer puts it
