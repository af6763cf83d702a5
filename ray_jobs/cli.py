"""The `humanim` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.backbones import BackboneConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "preprocess" / "demo.yaml"
DEFAULT_BACKBONE = REPO_ROOT / "configs" / "backbones" / "toy-cogvideox.yaml"  # the toy trained here
SERVE_CONFIG = REPO_ROOT / "configs" / "serve" / "local.yaml"


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_noise(args: argparse.Namespace) -> None:
    """Articulated latent noise `[F_lat, C, h, w]` for a motion file, as float32 .npy (+ preview)."""
    import numpy as np
    import torch

    from models.body_model import load_body_model
    from models.noise_warp import degrade
    from pipelines.articulated_noise import NoiseConfig, build_motion_operator, preview_frames
    from pipelines.io.config import validate_config
    from pipelines.io.motion import load_motion
    from pipelines.io.video import write_video

    config = validate_config(
        NoiseConfig,
        {
            "num_frames": args.frames,
            "height": args.height,
            "width": args.width,
            "channels": args.channels,
            "texture_size": args.texture_size,
            "rule": args.rule,
        },
        source="noise options",
    )
    device = _device(args.device)
    motion = load_motion(args.motion)
    body = load_body_model(args.smpl_model, args.smpl_uv)
    operator, render = build_motion_operator(motion, body, config, device)
    generator = torch.Generator(device).manual_seed(args.seed)
    noise = operator.sample(generator, config.channels)
    if args.gamma > 0:
        noise = degrade(noise, torch.randn(noise.shape, generator=generator, device=device), args.gamma)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, noise.cpu().numpy().astype(np.float32))
    if args.preview:
        write_video(args.preview, preview_frames(render, noise, (config.height, config.width)), motion.fps / 4)
    print(json.dumps({"out": str(args.out), "shape": list(noise.shape), "preview": str(args.preview or "")}))


def cmd_motion_demo(args: argparse.Namespace) -> None:
    """Write the procedural demo motions (walk, arm swings, turn) as .npz motion files."""
    from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
    from pipelines.io.motion import save_motion

    args.out.mkdir(parents=True, exist_ok=True)
    for name in DEMO_MOTIONS:
        save_motion(args.out / f"{name}.npz", make_demo_motion(name, args.frames))
    print(json.dumps({"out": str(args.out), "motions": sorted(DEMO_MOTIONS)}))


def cmd_preprocess(args: argparse.Namespace) -> None:
    """Run the preprocessing job (local Ray unless RAY_ADDRESS names a cluster)."""
    from ray_jobs import preprocess

    argv = ["--config", str(args.config)]
    argv += ["--input-dir", str(args.input)] if args.input else []
    preprocess.main(argv + (["--output-dir", str(args.out)] if args.out else []))


def cmd_train(args: argparse.Namespace) -> None:
    """Fine-tune a backbone on preprocessed training rows with Ray Train + DeepSpeed (local Ray unless RAY_ADDRESS
    names a cluster); a rerun with the same run folder resumes from its latest checkpoint."""
    from ray_jobs import train

    train.main(_job_argv(args, "config", "out", "run_name"))


def _job_argv(args: argparse.Namespace, *options: str) -> list[str]:
    """The job's command line from the parsed options that were given (`out` is the job's --output-dir)."""
    argv = []
    for option in options:
        value = getattr(args, option)
        if value is not None:
            argv += ["--output-dir" if option == "out" else f"--{option.replace('_', '-')}", str(value)]
    return argv


def cmd_render(args: argparse.Namespace) -> None:
    """Render a manifest of (image, motion/pose video, prompt) rows to MP4s + metadata on Ray (local unless
    RAY_ADDRESS names a cluster)."""
    from ray_jobs import render

    render.main(_job_argv(args, "config", "manifest", "out") + (["--demo"] if args.demo else []))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score generated videos against ground truth paired by file stem: L1, PSNR, SSIM (+ LPIPS, FID, FID-VID,
    FVD with local feature-network weights)."""
    from ray_jobs import evaluate

    evaluate.main(_job_argv(args, "config", "generated", "reference", "out"))


def cmd_demo(args: argparse.Namespace) -> None:
    """The embedded default, three Ray jobs on a local Ray: the demo inputs (held-out synthetic people, their
    motions, ground truth and a render manifest); the motions' articulated-noise operators and previews
    (preprocess); one video per manifest row from the toy model trained here (render), with a side-by-side
    preview each (reference | generated | ground truth); the videos scored against the ground truth (evaluate)."""
    from pipelines.demo.manifest import DEMO_ROWS, write_demo_manifest
    from pipelines.demo.preview import write_preview
    from pipelines.evaluation.job import EvaluateJobConfig
    from pipelines.generation.render_manifest import RenderJobConfig
    from pipelines.io.config import load_config
    from pipelines.preprocess.motion_folder import MotionNoiseJobConfig
    from ray_jobs import evaluate, preprocess, render
    from ray_jobs.common import init_ray

    inputs = args.out / "inputs"
    render_config = load_config(
        RenderJobConfig, render.DEFAULT_CONFIG,
        {"manifest": inputs / "manifest.jsonl", "output_dir": args.out / "render"},
    )
    write_demo_manifest(render_config.manifest, render_config.resolution(), args.frames)
    noise_config = load_config(
        MotionNoiseJobConfig, DEMO_CONFIG, {"input_dir": inputs / "motions", "output_dir": args.out / "noise"}
    )
    generated = args.out / "render" / "videos"
    evaluate_config = load_config(
        EvaluateJobConfig,
        evaluate.DEFAULT_CONFIG,
        {"generated": generated, "reference": inputs / "reference",
         "output_dir": args.out / "evaluation"},
    )
    _quiet_demo_logs()
    init_ray()
    summary = {}
    previews = args.out / "previews"

    def write_previews() -> dict[str, int]:
        written = [write_preview(inputs / "images" / f"{name}.png", generated / f"{name}.mp4",
                                 inputs / "reference" / f"{name}.mp4", previews / f"{name}.mp4")
                   for name in DEMO_ROWS if (generated / f"{name}.mp4").is_file()]
        return {"written": len(written)}

    for name, job in (("noise", lambda: preprocess.run(noise_config)), ("render", lambda: render.run(render_config)),
                      ("preview", write_previews), ("evaluate", lambda: evaluate.run(evaluate_config))):
        started = time.perf_counter()
        summary[name] = job()
        counts = {key: value for key, value in summary[name].items() if isinstance(value, int)}
        seconds = time.perf_counter() - started
        print(f"humanim demo: {name} done in {seconds:.0f} s {counts}", file=sys.stderr, flush=True)
    print(json.dumps(summary))


def _quiet_demo_logs() -> None:
    """One line per job instead of Ray Data's progress reports and the tiny backbone's caption-truncation
    warnings (its tokenizer has no vocabulary); errors still show, and every failed item is in the job's table."""
    import logging
    import warnings

    import ray.data

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # inherited by the local Ray's workers
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Actor restarts can only be passed as Ray Data's generic remote args, which Ray 2.60 flags for removal in
    # 2.64 (the project pins <2.64): a note for the maintainers, not for someone running the demo.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")


def _photo_inputs(args: argparse.Namespace, retarget: bool, how_to_skip: str) -> tuple[Any, Any]:
    """The photo options of the command line, and the keypoint estimator to run on the photo: the --keypoints file,
    else --detector, else (retargeting) MediaPipe; an estimator that cannot be built is an error saying how to get
    one and `how_to_skip`."""
    from pipelines.generation.photo import photo_options
    from pipelines.generation.photo_retarget import KeypointsFile, retarget_estimator

    detector = None if args.detector is None else {"keypoint_backend": args.detector, "dwpose_model": args.dwpose_model}
    options = photo_options({"fit": args.fit, "background": args.background, "margin": args.margin,
                             "detector": detector})
    if args.keypoints is not None:
        return options, KeypointsFile(args.keypoints)
    return options, retarget_estimator(options, how_to_skip) if retarget else None


def cmd_motion_retarget(args: argparse.Namespace) -> None:
    """Retarget a motion onto the person in a photo: their shape, placement and camera, the motion's root trajectory
    relative to its start; --lead-in N blends from the photo's pose into the motion's first pose."""
    from models.body_model import load_body_model
    from pipelines.generation.photo import prepare_photo, read_image, upright
    from pipelines.generation.photo_retarget import retarget_to_photo
    from pipelines.io.motion import load_motion, save_motion

    if (args.height is None) != (args.width is None):
        raise ValueError("--height and --width: give both (the output size the photo is fitted to) or neither")
    image = read_image(args.image)
    size = (args.height, args.width) if args.height else upright(image)[0].size[::-1]
    options, estimator = _photo_inputs(args, True, "or pass the photo's keypoints with --keypoints FILE")
    photo = prepare_photo(image, size, options, estimator, detect=True)
    motion = load_motion(args.motion)
    body = load_body_model(args.smpl_model, args.smpl_uv)
    retargeted, summary = retarget_to_photo(photo, motion, body, args.lead_in)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_motion(args.out, retargeted)
    print(json.dumps({"out": str(args.out), "frames": retargeted.num_frames, "image_size": list(retargeted.image_size),
                      "photo": photo.intake.model_dump(), "retarget": summary.model_dump(exclude_none=True)}))


def _cache_option(text: str) -> Any:
    """`--cache`: "off", or KIND:THRESHOLD (a `StepCacheSettings`)."""
    from models.backbones.config import StepCacheSettings

    if text == "off":
        return text
    kind, _, threshold = text.rpartition(":")
    try:
        return StepCacheSettings(kind=kind or "first_block", threshold=float(threshold))
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise argparse.ArgumentTypeError(f"--cache: expected first_block:THRESHOLD in (0, 1] or off, got {text!r} "
                                         f"({str(err).splitlines()[-1].strip()})") from None


def _attention_option(text: str) -> str:
    """`--attention`: an attention implementation a backbone config's `attention` takes."""
    from models.backbones.config import GenerationOptions

    try:
        return GenerationOptions(attention=text).attention
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--attention: {str(err).splitlines()[-1].strip()}") from None


def _generation_options(args: argparse.Namespace, backbone: BackboneConfig) -> BackboneConfig:
    """`backbone` with what --cache, --compile and --attention set."""
    from models.backbones.config import GenerationOptions

    # --compile sets the mode only: the backbone config's compile backend stays
    compile_ = None if args.compile is None else backbone.compile.model_copy(update={"mode": args.compile})
    return GenerationOptions(cache=args.cache, compile=compile_, attention=args.attention).applied_to(backbone)


def cmd_generate(args: argparse.Namespace) -> None:
    """Animate a reference image with a motion and/or a pose video; writes an MP4. The motion is retargeted onto the
    photo's person first unless --no-retarget."""
    from models.backbones import load_backbone_config
    from models.body_model import load_body_model
    from pipelines.generation.animation import AnimationPipeline
    from pipelines.generation.photo import fit_mask, prepare_photo, read_image
    from pipelines.generation.photo_retarget import RetargetSummary, retarget_to_photo
    from pipelines.io.motion import load_motion

    retarget = args.retarget and args.motion is not None  # a pose video alone is 2D skeletons: nothing to retarget
    options, estimator = _photo_inputs(
        args, retarget, "or pass the photo's keypoints with --keypoints FILE, or --no-retarget to drive the motion "
        "as it is")
    image = read_image(args.image)
    body = load_body_model(args.smpl_model, args.smpl_uv) if args.smpl_model else None
    backbone = _generation_options(args, load_backbone_config(args.backbone))
    pipeline = AnimationPipeline.from_config(
        backbone, lora=args.lora, padaln=args.padaln, device=_device(args.device), body=body
    )
    photo = prepare_photo(image, pipeline.adapter.resolution, options, estimator, detect=retarget)
    motion = args.motion
    summary = RetargetSummary.skipped("--no-retarget" if args.motion else "no motion (a pose video is used as it is)")
    if retarget:
        motion, summary = retarget_to_photo(photo, load_motion(args.motion), body or load_body_model(), args.lead_in)
    output = pipeline(
        photo.pixels,
        args.prompt,
        motion=motion,
        pose_video=args.pose_video,
        negative_prompt=args.negative_prompt,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        gamma=args.gamma,
        seed=args.seed,
        articulated_noise=False if args.no_articulated_noise else None,
        long_video=args.long_video,
        window_overlap=args.overlap,
        window_condition=args.window_condition,
        output_path=args.out,
        # drawn on the photo: fitted with the photo's own box (the pipeline gets the photo already fitted)
        mask=None if args.mask is None else fit_mask(args.mask, photo.intake, pipeline.adapter.resolution),
    )
    frames, height, width, _ = output.frames.shape
    print(json.dumps({"out": str(args.out), "frames": frames, "height": height, "width": width, "fps": output.fps,
                      "photo": photo.intake.model_dump(), "retarget": summary.model_dump(exclude_none=True)}))


def cmd_synth(args: argparse.Namespace) -> None:
    """Synthetic people clips of one split, written as a video folder the preprocessing job reads (Ray Data)."""
    from pipelines.demo.synth import SIZE
    from pipelines.io.config import StageResources
    from ray_jobs import synth
    from ray_jobs.common import init_ray, run_job

    init_ray()
    resources = StageResources(workers=args.workers, batch_size=4)
    size = (args.height or SIZE[0], args.width or SIZE[1])
    print(json.dumps(run_job("synth", lambda: synth.run(args.out, args.clips, args.split, args.seed, args.frames, size,
                                                         resources))))


def cmd_backbone_init(args: argparse.Namespace) -> None:
    """Write a backbone config's seeded random model (its `tiny:` sizes) as a diffusers folder, e.g. to train a toy."""
    from models.backbones import build_adapter, load_backbone_config

    config = load_backbone_config(args.config)
    if config.tiny is None:
        raise SystemExit(f"{args.config}: backbone init builds models from `tiny:` sizes; this config loads `path:`")
    build_adapter(config).save_pretrained(args.out)
    print(json.dumps({"out": str(args.out)}))


def cmd_backbone_ship(args: argparse.Namespace) -> None:
    """Put a finished full fine-tune into a backbone folder as a float16 variant (with --default, also as the
    folder's own transformer)."""
    from pipelines.io.config import load_config
    from pipelines.training.config import TrainJobConfig
    from pipelines.training.engine import EXPORT_DIR
    from pipelines.training.ship import ship_variant, variant_from_run

    config = load_config(TrainJobConfig, args.train_config)
    info = variant_from_run(config, args.train_config, args.name)
    folder = ship_variant(config.run_dir / EXPORT_DIR, args.backbone, info, default=args.default)
    print(json.dumps({"variant": str(folder), "steps": info.steps, "train_s": round(info.train_s, 1)}))


def cmd_vae_train(args: argparse.Namespace) -> None:
    """Train (or resume) a backbone's video VAE on a folder of videos; exports `vae/` in the run folder."""
    from pipelines.io.config import load_config, write_resolved_config
    from pipelines.training.vae import VaeTrainConfig, train_vae

    overrides = {"output_dir": args.out} if args.out else {}
    config = load_config(VaeTrainConfig, args.config, overrides)
    write_resolved_config(config, config.output_dir)
    print(json.dumps(train_vae(config)))


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the HTTP API from a Serve config file on a local Ray (or RAY_ADDRESS); blocks until Ctrl-C."""
    from serve.app import run_config_file

    run_config_file(args.config)


def _add_photo_arguments(parser: argparse.ArgumentParser) -> None:
    """Photo intake and keypoint options, shared by generate and motion retarget."""
    parser.add_argument("--fit", choices=("crop", "centre", "pad"), default="crop",
                        help="crop around the person (default), centre crop, or pad (letterbox) to the output")
    parser.add_argument("--background", default="255,255,255",
                        help="'r,g,b' or '#rrggbb' under transparency and in pad bands (default white)")
    parser.add_argument("--margin", type=float,
                        help="crop to the person's extent plus this times its longer side (default: largest box)")
    parser.add_argument("--detector", choices=("dwpose", "mediapipe"),
                        help="keypoint estimator that finds the person (default: mediapipe when retargeting, else none)")
    parser.add_argument("--dwpose-model", type=Path, help="DWPose's ONNX file for --detector dwpose")
    parser.add_argument("--keypoints", type=Path,
                        help="the photo's COCO-17 keypoints from a file instead of an estimator: .npy [1,17,3], or "
                        ".json/.npz with keypoints2d (and image_size [H,W] if marked on another size), upright pixels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="humanim", description="Human image animation on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    noise = commands.add_parser("noise", help=cmd_noise.__doc__)
    noise.add_argument("--motion", type=Path, required=True, help="motion file (.npz or .json)")
    noise.add_argument("--frames", type=int, default=49, help="video frames, 4k+1 (default 49)")
    noise.add_argument("--height", type=int, default=480)
    noise.add_argument("--width", type=int, default=720)
    noise.add_argument("--channels", type=int, default=16, help="latent channels (16 for CogVideoX and Wan)")
    noise.add_argument("--texture-size", type=int, default=256, help="side of the UV noise texture")
    noise.add_argument("--rule", choices=("aggregate", "nearest"), default="aggregate")
    noise.add_argument("--gamma", type=float, default=0.0, help="noise degradation level in [0, 1]")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--out", type=Path, required=True, help="output .npy, float32 [F_lat, C, h, w]")
    noise.add_argument("--preview", type=Path, help="optional MP4: UV map | noise channels 0-2")
    noise.add_argument("--smpl-model", type=Path, help="SMPL model .npz (default: generated template)")
    noise.add_argument("--smpl-uv", type=Path, help="UV layout (.obj/.npz) for a real SMPL model")
    noise.add_argument("--device", default="auto", help="cpu, cuda or auto")
    noise.set_defaults(func=cmd_noise)

    motion = commands.add_parser("motion", help="motion-file utilities")
    motion_commands = motion.add_subparsers(dest="motion_command", required=True)
    motion_demo = motion_commands.add_parser("demo", help=cmd_motion_demo.__doc__)
    motion_demo.add_argument("--out", type=Path, required=True, help="folder for the .npz files")
    motion_demo.add_argument("--frames", type=int, default=161)
    motion_demo.set_defaults(func=cmd_motion_demo)
    retarget = motion_commands.add_parser("retarget", help=cmd_motion_retarget.__doc__)
    retarget.add_argument("--image", type=Path, required=True, help="the photo of the person")
    retarget.add_argument("--motion", type=Path, required=True, help="motion file (.npz or .json)")
    retarget.add_argument("--out", type=Path, required=True, help="the retargeted motion (.npz or .json)")
    retarget.add_argument("--lead-in", type=int, default=0,
                          help="frames first that blend from the photo's fitted pose into the motion's first pose")
    retarget.add_argument("--height", type=int, help="output height the photo is fitted to (default: the photo's)")
    retarget.add_argument("--width", type=int, help="output width the photo is fitted to (default: the photo's)")
    _add_photo_arguments(retarget)
    retarget.add_argument("--smpl-model", type=Path, help="SMPL model .npz (default: generated template)")
    retarget.add_argument("--smpl-uv", type=Path, help="UV layout (.obj/.npz) for a real SMPL model")
    retarget.set_defaults(func=cmd_motion_retarget)

    preprocess = commands.add_parser("preprocess", help=cmd_preprocess.__doc__)
    preprocess.add_argument("--config", type=Path, required=True)
    preprocess.add_argument("--input", type=Path, help="override the input (videos, or input_dir for motion files)")
    preprocess.add_argument("--out", type=Path, help="override output_dir")
    preprocess.set_defaults(func=cmd_preprocess)

    synth = commands.add_parser("synth", help=cmd_synth.__doc__)
    synth.add_argument("--out", type=Path, required=True, help="output folder (videos with their sidecars)")
    synth.add_argument("--clips", type=int, required=True, help="how many clips")
    synth.add_argument("--split", choices=("train", "test"), required=True,
                       help="train, or test: motion x shirt-colour pairs never seen in training")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=49, help="frames per clip")
    synth.add_argument("--height", type=int, help="frame height (default 96)")
    synth.add_argument("--width", type=int, help="frame width (default 144)")
    synth.add_argument("--workers", type=int, default=1, help="actors writing clips (one CPU each)")
    synth.set_defaults(func=cmd_synth)

    backbone = commands.add_parser("backbone", help="backbone folders")
    backbone_commands = backbone.add_subparsers(dest="backbone_command", required=True)
    backbone_init = backbone_commands.add_parser("init", help=cmd_backbone_init.__doc__)
    backbone_init.add_argument("--config", type=Path, required=True, help="a backbone config with `tiny:` sizes")
    backbone_init.add_argument("--out", type=Path, required=True, help="the diffusers folder to write")
    backbone_init.set_defaults(func=cmd_backbone_init)
    backbone_ship = backbone_commands.add_parser("ship", help=cmd_backbone_ship.__doc__)
    backbone_ship.add_argument("--train-config", type=Path, required=True, help="the finished run's training config")
    backbone_ship.add_argument("--name", required=True, help="the variant's name (e.g. humandiff)")
    backbone_ship.add_argument("--backbone", type=Path, required=True, help="the backbone folder it joins")
    backbone_ship.add_argument("--default", action="store_true", help="also make it the folder's own transformer")
    backbone_ship.set_defaults(func=cmd_backbone_ship)

    vae = commands.add_parser("vae", help="the video VAE")
    vae_commands = vae.add_subparsers(dest="vae_command", required=True)
    vae_train = vae_commands.add_parser("train", help=cmd_vae_train.__doc__)
    vae_train.add_argument("--config", type=Path, required=True, help="VAE training config (configs/train/*vae*.yaml)")
    vae_train.add_argument("--out", type=Path, help="override output_dir (the run folder)")
    vae_train.set_defaults(func=cmd_vae_train)

    train = commands.add_parser("train", help=cmd_train.__doc__)
    train.add_argument("--config", type=Path, required=True, help="train config (configs/train/)")
    train.add_argument("--out", type=Path, help="override output_dir (run folders go under it)")
    train.add_argument("--run-name", help="override run_name")
    train.set_defaults(func=cmd_train)

    generate = commands.add_parser("generate", help=cmd_generate.__doc__)
    generate.add_argument("--image", type=Path, required=True,
                          help="reference photo (any size; EXIF orientation applied, transparency flattened)")
    _add_photo_arguments(generate)
    generate.add_argument("--retarget", action=argparse.BooleanOptionalAction, default=True,
                          help="retarget the motion onto the photo's person (default; needs a keypoint estimator or "
                          "--keypoints): their shape, placement and camera")
    generate.add_argument("--lead-in", type=int, default=0,
                          help="retargeting: frames that blend from the photo's pose into the motion's first pose")
    generate.add_argument("--motion", type=Path, help="motion file (.npz or .json)")
    generate.add_argument("--pose-video", type=Path, help="driving skeleton video (used with --padaln)")
    generate.add_argument("--mask", type=Path, help="region mask for the image (grayscale; white is kept, black is "
                          "blanked and described by the prompt: DynamiCtrl's region control)")
    generate.add_argument("--prompt", default="", help="caption of the video")
    generate.add_argument("--negative-prompt", default="", help="classifier-free guidance against this ('' = empty)")
    generate.add_argument("--out", type=Path, required=True, help="output MP4")
    generate.add_argument(
        "--backbone", type=Path, default=DEFAULT_BACKBONE, help="backbone YAML (default: the toy CogVideoX trained here)"
    )
    generate.add_argument("--frames", type=int, help="video frames (default: as many as the motion/pose video allows)")
    generate.add_argument("--steps", type=int,
                          help="denoising steps (default: the backbone config's, else the family's, 50)")
    generate.add_argument("--guidance", type=float,
                          help="classifier-free guidance scale, 1 = off (default: the backbone config's, else the "
                          "family's, CogVideoX 6, Wan 5)")
    generate.add_argument("--gamma", type=float, help="articulated-noise degradation in [0, 1] (default: the "
                          "backbone config's)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--no-articulated-noise", action="store_true", help="start from i.i.d. noise")
    generate.add_argument("--cache", type=_cache_option, metavar="first_block:THRESHOLD|off",
                          help="step caching (default: the backbone config's), e.g. first_block:0.1")
    generate.add_argument("--compile", choices=("blocks", "off"),
                          help="torch.compile of the repeated DiT block (default: the backbone config's)")
    generate.add_argument("--attention", type=_attention_option, metavar="NAME",
                          help="attention implementation (default: the backbone config's, else sdpa): sdpa, "
                          "sdpa_flash, sdpa_efficient, sdpa_cudnn, sdpa_math; on Wan also flash, flash_3, sage, "
                          "xformers (their libraries installed)")
    generate.add_argument("--padaln", type=Path, help="folder with padaln.safetensors: pose control through PadaLN")
    generate.add_argument("--lora", type=Path, help="folder with pytorch_lora_weights.safetensors")
    generate.add_argument("--long-video", choices=("blend", "chain"), default="blend",
                          help="beyond the backbone's window: blend overlapping windows, or chain chunks")
    generate.add_argument("--overlap", type=int, help="latent frames shared by neighbouring windows (blend)")
    generate.add_argument("--window-condition", choices=("estimate", "reference"), default="estimate",
                          help="a later blended window's first frame: the video's current estimate there (default), "
                          "or the reference image")
    generate.add_argument("--smpl-model", type=Path, help="SMPL model .npz (default: generated template)")
    generate.add_argument("--smpl-uv", type=Path, help="UV layout (.obj/.npz) for a real SMPL model")
    generate.add_argument("--device", default="auto", help="cpu, cuda or auto")
    generate.set_defaults(func=cmd_generate)

    render = commands.add_parser("render", help=cmd_render.__doc__)
    render.add_argument("--config", type=Path, help="render config (default: configs/render/demo.yaml)")
    render.add_argument("--manifest", type=Path, help="override the config's manifest (.parquet, .jsonl or .csv)")
    render.add_argument("--out", help="override output_dir (a local path or a pyarrow filesystem URI)")
    render.add_argument("--demo", action="store_true", help="first write the demo manifest where `manifest` points")
    render.set_defaults(func=cmd_render)

    evaluate = commands.add_parser("evaluate", help=cmd_evaluate.__doc__)
    evaluate.add_argument("--generated", help="folder of generated videos, a path or URI (overrides the config)")
    evaluate.add_argument("--reference", help="folder of ground-truth videos, same file stems (a path or URI)")
    evaluate.add_argument("--config", type=Path, help="evaluation config (default: configs/evaluate/demo.yaml)")
    evaluate.add_argument("--out", type=Path, help="override output_dir")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = commands.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--frames", type=int, default=97,
                      help="frames per demo motion and video (the toy model's 25-frame windows)")
    demo.set_defaults(func=cmd_demo)

    serve = commands.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--config", type=Path, default=SERVE_CONFIG, help="Serve config file (default: local, tiny)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, ImportError) as err:  # ImportError: an optional backend (a detector)
        print(f"humanim {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
