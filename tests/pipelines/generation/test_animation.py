"""The animation pipeline and `humanim generate` on tiny random-weight backbones at 32x32."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import CONFIGS

from models.body_model import load_body_model
from models.motion import Motion, MotionError
from models.padaln import PadaLN
from models.pose_video import render_pose_video
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.frames import to_uint8
from pipelines.io.motion import save_motion
from pipelines.io.video import read_video, write_video
from ray_jobs.cli import main


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def pipeline(body):
    return AnimationPipeline.from_config(CONFIGS / "tiny-cogvideox.yaml", body=body, noise_options={"texture_size": 64})


@pytest.fixture(scope="module")
def motion() -> Motion:
    return make_demo_motion("walk", 161)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def generate(pipeline, image, motion, **options) -> np.ndarray:
    settings = {"num_frames": 49, "num_inference_steps": 1, "guidance_scale": 2.0, "seed": 0, **options}
    return pipeline(image, "a person walking", motion, **settings).frames


@pytest.mark.parametrize("frames", [49, 81, 161])
def test_output_has_the_requested_frames(pipeline, image, motion, frames):
    progress = []
    video = generate(pipeline, image, motion, num_frames=frames, num_inference_steps=2,
                     callback=lambda done, total: progress.append((done, total)))
    assert video.shape == (frames, 32, 32, 3) and video.dtype == np.uint8
    assert progress == [(1, 2), (2, 2)]


def test_seed_decides_the_video(pipeline, image, motion):
    first = generate(pipeline, image, motion, seed=3)
    assert np.array_equal(first, generate(pipeline, image, motion, seed=3))
    assert not np.array_equal(first, generate(pipeline, image, motion, seed=4))
    generator = torch.Generator().manual_seed(3)
    assert np.array_equal(first, generate(pipeline, image, motion, seed=None, generator=generator))


def test_articulated_noise_changes_the_video(pipeline, image, motion):
    articulated = generate(pipeline, image, motion)
    assert not np.array_equal(articulated, generate(pipeline, image, motion, articulated_noise=False))
    assert not np.array_equal(articulated, generate(pipeline, image, motion, gamma=1.0))


def test_the_noise_defaults_to_what_the_backbone_was_trained_on(pipeline, body, image, motion):
    from models.backbones import load_backbone_config

    assert np.array_equal(generate(pipeline, image, motion), generate(pipeline, image, motion, articulated_noise=True))
    config = load_backbone_config(CONFIGS / "tiny-cogvideox.yaml").model_copy(update={"articulated_noise": False})
    iid = AnimationPipeline.from_config(config, body=body, noise_options={"texture_size": 64})
    assert np.array_equal(generate(iid, image, motion), generate(pipeline, image, motion, articulated_noise=False))


def test_the_articulated_noise_is_built_with_the_backbone_configs_settings(pipeline, body, image, motion):
    """A backbone config's `noise` (texture, render, pooling: what its model was trained on) builds the noise unless
    the caller overrides it; a model sampled with other settings sees noise of other statistics."""
    from models.backbones import load_backbone_config
    from pipelines.articulated_noise import video_noise_operator

    config = load_backbone_config(CONFIGS / "tiny-cogvideox.yaml")
    assert config.noise.texture_size == 32 and config.noise.supersample == 4
    own = AnimationPipeline(pipeline.adapter, None, body)  # no noise options: the config's
    video = generate(own, image, motion, num_frames=9)
    for settings, same in ((config.noise.model_dump(), True), ({"texture_size": 256, "supersample": 8}, False)):
        operator = video_noise_operator(motion, body, config.noise_options(settings), 9, config.resolution)
        assert np.array_equal(generate(own, image, motion, num_frames=9, warp_operator=operator), video) == same


def test_untrained_padaln_gives_the_same_video_and_a_trained_one_follows_the_pose(pipeline, body, image, motion):
    base = generate(pipeline, image, motion, num_frames=17)
    padaln = PadaLN.for_adapter(pipeline.adapter)
    posed = AnimationPipeline(pipeline.adapter, padaln, body, {"texture_size": 64})
    try:
        assert np.array_equal(generate(posed, image, motion, num_frames=17), base)
        pose_video = render_pose_video(motion, (32, 32), body)
        assert np.array_equal(generate(posed, image, motion, pose_video=pose_video, num_frames=17), base)
        generator = torch.Generator().manual_seed(1)
        for param in padaln.parameters():
            param.data.normal_(0.0, 0.2, generator=generator)
        assert not np.array_equal(generate(posed, image, motion, num_frames=17), base)
        assert np.array_equal(generate(posed, image, motion, num_frames=17, use_padaln=False), base)
    finally:
        padaln.detach()


def test_chaining_runs_and_equals_blending_within_one_window(pipeline, image, motion):
    chained = generate(pipeline, image, motion, long_video="chain", num_frames=49)
    assert chained.shape == (49, 32, 32, 3)
    assert not np.array_equal(chained, generate(pipeline, image, motion, num_frames=49))
    assert np.array_equal(generate(pipeline, image, motion, long_video="chain", num_frames=9),
                          generate(pipeline, image, motion, num_frames=9))


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-cogvideox1.5", "tiny-wan"])
def test_later_blended_windows_start_from_the_video_estimate_not_the_reference(body, image, motion, name):
    """Window 0 is conditioned on the reference image; with "estimate", each later window's first-frame condition is
    the clean estimate its predecessor made this step where the window starts; with "reference", the image again."""
    pipeline = AnimationPipeline.from_config(CONFIGS / f"{name}.yaml", body=body, noise_options={"texture_size": 64})
    adapter = pipeline.adapter
    seen, estimates = [], []
    predict, split = adapter.predict, adapter.split_prediction

    def recording_predict(latents, t, conditioning):
        seen.append(conditioning.image_latents.clone())
        return predict(latents, t, conditioning)

    def recording_split(latents, output, t):
        clean, noise = split(latents, output, t)
        estimates.append(clean)
        return clean, noise

    adapter.predict, adapter.split_prediction = recording_predict, recording_split
    try:
        window = adapter.latent_num_frames(adapter.num_frames)
        frames = (2 * window - 2) * adapter.temporal_factor + 1  # two windows sharing one latent frame
        for mode in ("reference", "estimate"):
            seen.clear(), estimates.clear()
            generate(pipeline, image, motion, num_frames=frames, num_inference_steps=1, guidance_scale=1.0,
                     window_overlap=1, window_condition=mode)
            assert len(seen) == 2  # two windows, one step, no guidance
            first, second = seen
            assert torch.equal(first[:, 1:], second[:, 1:])  # only the first frame's condition may change
            if mode == "reference":
                assert torch.equal(first, second)
            else:
                start = window - 1
                expected = adapter.with_first_frame(first, estimates[0][:, start])
                assert not torch.equal(first[:, 0], second[:, 0]) and torch.equal(second, expected)
    finally:
        del adapter.predict, adapter.split_prediction
    with pytest.raises(ValueError, match="window_condition"):
        generate(pipeline, image, motion, window_condition="image")


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_one_window_equals_the_diffusers_pipeline(body, image, name):
    """Within one window our sampling is diffusers' own: DDIM (CogVideoX) and multistep UniPC (Wan), with CFG."""
    pipeline = AnimationPipeline.from_config(CONFIGS / f"{name}.yaml", body=body)
    adapter = pipeline.adapter
    frames = adapter.num_frames
    ours = pipeline(image, "a person", pose_video=np.zeros((frames, 32, 32, 3), np.uint8), articulated_noise=False,
                    num_inference_steps=3, guidance_scale=2.0, seed=5).frames
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(1, *adapter.latent_shape(frames), generator=generator)
    common = dict(image=PIL.Image.fromarray(image), prompt="a person", negative_prompt="", guidance_scale=2.0,
                  num_frames=frames, height=32, width=32, num_inference_steps=3, output_type="latent",
                  generator=generator)
    with torch.no_grad():
        if adapter.family == "wan":
            latents = adapter.pipeline(latents=noise.permute(0, 2, 1, 3, 4), **common).frames.permute(0, 2, 1, 3, 4)
        else:
            latents = adapter.pipeline(latents=noise, max_sequence_length=adapter.max_sequence_length, **common).frames
        theirs = to_uint8(adapter.decode_latents(latents))
    assert np.array_equal(ours, theirs)


def test_wan_long_video_blends_and_chains(body, image, motion):
    pipeline = AnimationPipeline.from_config(CONFIGS / "tiny-wan.yaml", body=body, noise_options={"texture_size": 64})
    for mode in ("blend", "chain"):
        video = generate(pipeline, image, motion, num_frames=21, num_inference_steps=2, long_video=mode)
        assert video.shape == (21, 32, 32, 3)


def test_photos_of_any_size_and_mode_are_fitted(pipeline, image, motion):
    large = np.asarray(PIL.Image.fromarray(image).resize((64, 64)))
    assert generate(pipeline, large, motion, num_frames=9).shape == (9, 32, 32, 3)
    gray = PIL.Image.fromarray(image).convert("L")
    assert generate(pipeline, gray, motion, num_frames=9).shape == (9, 32, 32, 3)
    rgba_portrait = np.zeros((48, 32, 4), np.uint8)
    rgba_portrait[8:40, 8:24] = 255
    assert generate(pipeline, rgba_portrait, motion, num_frames=9).shape == (9, 32, 32, 3)


def nan_motion(motion: Motion) -> Motion:
    transl = motion.transl.copy()
    transl[3, 0] = np.nan
    return Motion(motion.global_orient, motion.body_pose, motion.betas, transl, motion.K, motion.image_size,
                  motion.fps)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"image": np.zeros((32, 32, 3), np.float32)}, "image: expected uint8"),
        ({"image": np.zeros((32, 32, 2), np.uint8)}, "image: expected shape"),
        ({"num_frames": 50}, "num_frames: CogVideoX 1.0 needs"),
        ({"num_frames": 45}, "num_frames: CogVideoX 1.0 needs"),
        ({"num_frames": 321}, "num_frames: 321 requested"),
        ({"pose_video": np.zeros((49, 32, 32, 3), np.uint8)}, "pose_video: has 49 frames but the motion has 161"),
        ({"pose_video": np.zeros((161, 32, 32), np.uint8)}, "pose_video: expected shape"),
        ({"gamma": 1.5}, "gamma: must be a number in"),
        ({"gamma": -0.1}, "gamma: must be a number in"),
        ({"gamma": float("nan")}, "gamma: must be a number in"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"motion": None}, "motion/pose_video: give a motion, a pose video, or both"),
        ({"motion": None, "pose_video": np.zeros((9, 32, 32, 3), np.uint8), "articulated_noise": True},
         "motion: articulated noise"),
        ({"use_padaln": True}, "use_padaln: no PadaLN"),
        ({"resolution": (64, 64)}, "resolution: this backbone's positional embeddings"),
        ({"generator": torch.Generator()}, "seed/generator"),
        ({"long_video": "loop"}, "long_video"),
        ({"window_overlap": 3}, "window_overlap"),
    ],
)
def test_bad_inputs_name_the_field(pipeline, image, motion, change, field):
    inputs = {"image": image, "motion": motion, **change}
    with pytest.raises(ValueError) as err:
        generate(pipeline, inputs.pop("image"), inputs.pop("motion"), **inputs)
    assert field in str(err.value)


def test_nan_in_a_motion_is_refused(pipeline, image, motion):
    with pytest.raises(MotionError, match="'transl' contains NaN"):
        generate(pipeline, image, nan_motion(motion))


def test_generate_command_writes_the_requested_frames(tmp_path, body, image, capsys):
    motion_path = tmp_path / "walk.npz"
    save_motion(motion_path, make_demo_motion("walk", 33))
    PIL.Image.fromarray(image).save(tmp_path / "person.png")
    common = ["generate", "--image", str(tmp_path / "person.png"), "--prompt", "a person walking", "--steps", "1",
              "--no-retarget"]
    # the default backbone: the toy model shipped in weights/ (64x96)
    main([*common, "--motion", str(motion_path), "--frames", "25", "--out", str(tmp_path / "out.mp4")])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames"] == 25
    frames, fps = read_video(tmp_path / "out.mp4")
    assert frames.shape == (25, 64, 96, 3) and fps == 24
    common += ["--backbone", str(CONFIGS / "tiny-cogvideox.yaml")]

    # Pose control from a skeleton video file with PadaLN and LoRA weights, no motion, i.i.d. noise.
    adapter = AnimationPipeline.from_config(CONFIGS / "tiny-cogvideox.yaml").adapter
    PadaLN.for_adapter(adapter).save(tmp_path / "pl")
    adapter.add_lora()
    adapter.save_lora(tmp_path / "lora")
    write_video(tmp_path / "pose.mp4", render_pose_video(make_demo_motion("walk", 17), (32, 32), body), fps=12)
    main([*common, "--pose-video", str(tmp_path / "pose.mp4"), "--padaln", str(tmp_path / "pl"),
          "--lora", str(tmp_path / "lora"), "--no-articulated-noise", "--out", str(tmp_path / "posed.mp4")])
    frames, fps = read_video(tmp_path / "posed.mp4")
    assert frames.shape == (17, 32, 32, 3) and fps == 12

    with pytest.raises(SystemExit):
        main([*common, "--motion", str(motion_path), "--lora", str(tmp_path / "none"),
              "--out", str(tmp_path / "x.mp4")])
    assert "lora: no pytorch_lora_weights.safetensors" in capsys.readouterr().err

    PIL.Image.new("RGBA", (32, 32)).save(tmp_path / "alpha.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--image", str(tmp_path / "alpha.png"), "--motion", str(motion_path), "--no-retarget",
              "--out", str(tmp_path / "x.mp4")])
    assert exit_info.value.code == 2
    assert "image: the photo is fully transparent" in capsys.readouterr().err


@pytest.fixture(scope="module")
def landscape_backbone(tmp_path_factory):
    """The tiny CogVideoX at a landscape 32x48."""
    path = tmp_path_factory.mktemp("backbone") / "tiny-landscape.yaml"
    path.write_text((CONFIGS / "tiny-cogvideox.yaml").read_text().replace("resolution: [32, 32]",
                                                                          "resolution: [32, 48]"))
    return path


def photo_report(capsys, *argv: str) -> dict:
    main(["generate", "--prompt", "a person", "--steps", "1", "--frames", "9", "--no-retarget", *argv])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_generate_command_takes_phone_rgba_and_portrait_photos(tmp_path, landscape_backbone, capsys):
    motion_path = tmp_path / "walk.npz"
    save_motion(motion_path, make_demo_motion("walk", 9))
    common = ["--motion", str(motion_path), "--backbone", str(landscape_backbone)]

    # A phone photo stored on its side with EXIF orientation 6: used upright (portrait), centred without a detector.
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(np.full((60, 90, 3), 90, np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    report = photo_report(capsys, "--image", str(tmp_path / "phone.jpg"), *common, "--out", str(tmp_path / "a.mp4"))
    assert (report["height"], report["width"]) == (32, 48)
    photo = report["photo"]
    assert (photo["orientation"], photo["source_height"], photo["source_width"]) == (6, 90, 60)
    assert (photo["method"], photo["x0"], photo["y0"], photo["width"], photo["height"]) == ("centre", 0, 25, 60, 40)
    assert "no person detector ran" in photo["note"]

    # An RGBA cut-out: flattened onto the background, the box placed by its alpha.
    cut_out = np.zeros((90, 60, 4), np.uint8)
    cut_out[10:50, 30:50] = 255
    PIL.Image.fromarray(cut_out).save(tmp_path / "cut-out.png")
    report = photo_report(capsys, "--image", str(tmp_path / "cut-out.png"), *common, "--background", "0,0,0",
                          "--out", str(tmp_path / "b.mp4"))
    assert report["photo"]["method"] == "alpha" and report["photo"]["flattened"]
    assert (report["photo"]["y0"], report["photo"]["height"]) == (10, 40)

    # A portrait photo letterboxed into the landscape output.
    PIL.Image.fromarray(np.full((90, 60, 3), 200, np.uint8)).save(tmp_path / "portrait.png")
    report = photo_report(capsys, "--image", str(tmp_path / "portrait.png"), *common, "--fit", "pad",
                          "--out", str(tmp_path / "c.mp4"))
    photo = report["photo"]
    assert (photo["fit"], photo["method"], photo["x0"], photo["y0"], photo["width"], photo["height"]) == (
        "pad", "pad", -37, 0, 135, 90)
    frames, _ = read_video(tmp_path / "c.mp4")
    assert frames.shape == (9, 32, 48, 3)

    # A configured detector that cannot run is a clear error, before any video is written.
    for detector, message in ([["--detector", "dwpose"], "needs dwpose_model"],
                              [["--detector", "dwpose", "--dwpose-model", str(tmp_path / "no.onnx")],
                               "DWPose model not found"]):
        with pytest.raises(SystemExit):
            photo_report(capsys, "--image", str(tmp_path / "portrait.png"), *common, *detector,
                         "--out", str(tmp_path / "d.mp4"))
        assert message in capsys.readouterr().err
    assert not (tmp_path / "d.mp4").exists()
