"""Synthetic people: the project's SMPL-format body in varied shapes, clothes, motions, backgrounds and camera
distances, rendered with shading and written exactly as the video preprocessing job reads them.

Every clip is drawn from `(seed, split, index)` alone (`draw_clip`), so a dataset is reproducible clip by clip and
can be made in parallel. The held-out split is defined by motion x shirt colour: a pair is in the test split
exactly when `(3 * motion + colour) % 4 == 0`, so no test clip shows a combination seen in training, while every
motion and every colour appear in both splits.

Per clip `<stem>` in the output folder (`pipelines.io.manifest` lists them as a video folder):

    <stem>.mp4              the video
    <stem>.npz              its motion (the motion-file format), the preprocessing job's pose source
    <stem>.txt              a caption naming the colours, the pattern and the action
    <stem>.mask.npy         person masks, uint8 [T, H, W] (255 = person)
    <stem>.background.png   the static background alone (for silhouette metrics: what is not background is person)
    <stem>.synth.json       every parameter the clip was drawn with
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import pyarrow as pa
import torch

from models.body_model import BodyModel, load_body_model
from models.motion import Motion, motion_from_arrays
from models.rasterizer import rasterize, uv_map
from pipelines.demo.motions import FOCAL
from pipelines.demo.synth_motions import ACTIONS, SYNTH_MOTIONS, draw_motion_params
from pipelines.io.failures import describe_error
from pipelines.io.motion import save_motion
from pipelines.io.video import write_video

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
MOTION_KINDS = tuple(SYNTH_MOTIONS)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (230, 200, 40),
    "white": (235, 235, 235), "black": (30, 30, 30), "orange": (235, 120, 30), "purple": (120, 50, 160),
    "grey": (128, 128, 128), "pink": (235, 140, 180),
}
SKIN_TONES = ((245, 210, 180), (225, 180, 140), (180, 130, 90), (120, 80, 55))
PATTERNS = ("plain", "stripes", "checks")
BACKGROUNDS = ("solid", "gradient", "texture")
BACKGROUND_COLOURS = {
    "light grey": (200, 200, 205), "beige": (215, 200, 170), "light blue": (170, 200, 225),
    "pale green": (180, 215, 180), "dark grey": (70, 72, 78), "brown": (120, 90, 60),
}
# SMPL joints that skin each clothing region (the joint that weighs most on a vertex decides its region).
REGION_JOINTS = {
    "trousers": (1, 2, 4, 5),
    "shirt": (0, 3, 6, 9, 13, 14, 16, 17, 18, 19),
    "skin": (12, 15, 20, 21, 22, 23),
    "shoes": (7, 8, 10, 11),
}
PATTERN_CYCLES = 10  # stripes or checks across the UV square
FPS = 24.0
SIZE = (96, 144)  # (H, W) `humanim synth` renders at by default
RESULT_SCHEMA = pa.schema([("stem", pa.string()), ("status", pa.string()), ("error", pa.string())])


def is_test_pair(motion: str, shirt: str) -> bool:
    """Whether a motion x shirt-colour combination belongs to the held-out split."""
    return (3 * MOTION_KINDS.index(motion) + list(COLOURS).index(shirt)) % 4 == 0


@dataclass
class Appearance:
    shirt: str
    trousers: str
    shoes: str
    pattern: str  # plain, stripes or checks, on the shirt
    pattern_colour: str
    skin: int  # index into SKIN_TONES


@dataclass
class Background:
    kind: str  # solid, gradient or texture
    colour: str
    second_colour: str
    seed: int  # the texture's


@dataclass
class ClipSpec:
    """Everything one synthetic clip is drawn with."""

    stem: str
    split: Split
    motion: str
    motion_params: dict[str, Any]
    betas: list[float]
    appearance: Appearance
    background: Background
    num_frames: int
    size: tuple[int, int]  # H, W
    fps: float = FPS

    def caption(self) -> str:
        look = self.appearance
        shirt = f"{look.shirt} shirt" if look.pattern == "plain" else (
            f"{look.shirt} shirt with {look.pattern_colour} {look.pattern}")
        place = {"solid": f"a plain {self.background.colour} wall",
                 "gradient": f"a {self.background.colour} to {self.background.second_colour} gradient",
                 "texture": f"a mottled {self.background.colour} and {self.background.second_colour} wall"}
        article = "an" if shirt[0] in "aeiou" else "a"
        return (f"a person in {article} {shirt} and {look.trousers} trousers, {ACTIONS[self.motion]}, "
                f"in front of {place[self.background.kind]}")


def draw_clip(seed: int, split: Split, index: int, num_frames: int, size: tuple[int, int]) -> ClipSpec:
    """Clip `index` of `split`, drawn deterministically from `(seed, split, index)`."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    colours = list(COLOURS)
    while True:  # redraw until the motion x shirt pair belongs to this split
        motion, shirt = str(rng.choice(MOTION_KINDS)), str(rng.choice(colours))
        if is_test_pair(motion, shirt) == (split == "test"):
            break
    others = [c for c in colours if c != shirt]
    appearance = Appearance(
        shirt=shirt, trousers=str(rng.choice(others)), shoes=str(rng.choice(["black", "white", "grey"])),
        pattern=str(rng.choice(PATTERNS)), pattern_colour=str(rng.choice(others)),
        skin=int(rng.integers(len(SKIN_TONES))),
    )
    walls = list(BACKGROUND_COLOURS)
    first = str(rng.choice(walls))
    background = Background(kind=str(rng.choice(BACKGROUNDS)), colour=first,
                            second_colour=str(rng.choice([w for w in walls if w != first])),
                            seed=int(rng.integers(2**31)))
    depth = float(rng.uniform(2.8, 4.2))
    params = draw_motion_params(motion, rng, num_frames / FPS, depth)
    betas = np.clip(rng.normal(0.0, 0.8, 10), -2.0, 2.0)
    return ClipSpec(f"{split}_{index:05d}", split, motion, params, betas.round(4).tolist(), appearance, background,
                    num_frames, (int(size[0]), int(size[1])))


def first_clip_of(seed: int, split: Split, motion: str, num_frames: int, size: tuple[int, int]) -> ClipSpec:
    """The split's first clip (lowest index) whose motion is `motion`."""
    if motion not in MOTION_KINDS:
        raise ValueError(f"motion: must be one of {MOTION_KINDS}, got {motion!r}")
    index = 0
    while (spec := draw_clip(seed, split, index, num_frames, size)).motion != motion:
        index += 1
    return spec


def cross_spec(person: ClipSpec, driver: ClipSpec) -> ClipSpec:
    """`person`'s look (shape, clothes, background, frame size) in `driver`'s action, parameters and length: what a
    retargeting cross pair's truth shows (rendered with the driver's motion retargeted onto the person)."""
    return replace(person, stem=f"{person.stem}+{driver.stem}", motion=driver.motion,
                   motion_params=driver.motion_params, num_frames=driver.num_frames)


def synth_motion(spec: ClipSpec) -> Motion:
    """The clip's motion in the motion-file format, with intrinsics for its frame size."""
    t = np.arange(spec.num_frames) / spec.fps
    global_orient, body_pose, transl = SYNTH_MOTIONS[spec.motion](t, spec.motion_params)
    height, width = spec.size
    focal = FOCAL * height / 480
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    return motion_from_arrays({"global_orient": global_orient, "body_pose": body_pose, "betas": np.array(spec.betas),
                               "transl": transl, "K": K, "image_size": np.array(spec.size), "fps": spec.fps})


def background_image(background: Background, size: tuple[int, int]) -> np.ndarray:
    """The static background, uint8 `[H, W, 3]`."""
    height, width = size
    first = np.array(BACKGROUND_COLOURS[background.colour], np.float32)
    second = np.array(BACKGROUND_COLOURS[background.second_colour], np.float32)
    if background.kind == "solid":
        image = np.broadcast_to(first, (height, width, 3))
    elif background.kind == "gradient":
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        image = np.broadcast_to(first + (second - first) * ramp, (height, width, 3))
    else:  # low-frequency blobs: a coarse random grid upsampled smoothly
        coarse = np.random.default_rng(background.seed).random((6, 9), dtype=np.float32)
        blend = np.asarray(PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.Resampling.BICUBIC))
        image = first + (second - first) * np.clip(blend, 0, 1)[..., None]
    return np.clip(image, 0, 255).round().astype(np.uint8)


def _face_regions(body: BodyModel) -> torch.Tensor:
    """Region index (order of `REGION_JOINTS`) of every face, from the joint skinning its first corner most."""
    joint_region = torch.zeros(24, dtype=torch.int64)
    for region, joints in enumerate(REGION_JOINTS.values()):
        joint_region[list(joints)] = region
    return joint_region[body.smpl.lbs_weights.argmax(dim=1).cpu()][body.faces[:, 0].cpu()]


def _albedo(appearance: Appearance, region: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour in [0, 1] from each pixel's region and, on the shirt, its UV-space pattern."""
    palette = torch.tensor([COLOURS[appearance.trousers], COLOURS[appearance.shirt],
                            SKIN_TONES[appearance.skin], COLOURS[appearance.shoes]], dtype=torch.float32) / 255
    colour = palette[region]
    cells = torch.floor(uv * PATTERN_CYCLES).to(torch.int64)
    if appearance.pattern == "stripes":
        marked = cells[..., 1] % 2 == 0
    elif appearance.pattern == "checks":
        marked = (cells[..., 0] + cells[..., 1]) % 2 == 0
    else:
        return colour
    accent = torch.tensor(COLOURS[appearance.pattern_colour], dtype=torch.float32) / 255
    return torch.where((marked & (region == list(REGION_JOINTS).index("shirt")))[..., None], accent, colour)


def render_clip(spec: ClipSpec, body: BodyModel, motion: Motion | None = None,
                chunk: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames uint8 `[T, H, W, 3]`, person masks bool `[T, H, W]` and the background uint8 `[H, W, 3]`: the body
    lit by a head-on light plus ambient, its clothes from the appearance, composited over the background
    (`motion`: the spec's own, when already made)."""
    motion = motion or synth_motion(spec)
    background = background_image(spec.background, spec.size)
    regions = _face_regions(body)
    intrinsics = torch.from_numpy(motion.K).float()
    frames, masks = [], []
    for start in range(0, spec.num_frames, chunk):
        index = slice(start, min(start + chunk, spec.num_frames))
        with torch.no_grad():
            vertices = body(*(torch.from_numpy(getattr(motion, key)[index]).float()
                              for key in ("global_orient", "body_pose", "betas", "transl"))).vertices
        fragments = rasterize(vertices, body.faces, intrinsics[index], spec.size, cull_backfaces=True)
        uv, mask = uv_map(fragments, body.uv_coords, body.uv_faces)
        corners = vertices[:, body.faces]  # [B, F, 3, 3]
        normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
        facing = (-torch.nn.functional.normalize(normals, dim=-1)[..., 2]).clamp(min=0)  # [B, F]
        face = fragments.face_id.clamp(min=0)
        light = 0.35 + 0.65 * torch.gather(facing, 1, face.flatten(1)).view(face.shape)
        shaded = _albedo(spec.appearance, regions[face], uv) * light[..., None]
        composite = torch.where(mask[..., None], shaded, torch.from_numpy(background).float() / 255)
        frames.append((composite * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        masks.append(mask.numpy())
    return np.concatenate(frames), np.concatenate(masks), background


def write_clip(spec: ClipSpec, body: BodyModel, output_dir: str | Path) -> Path:
    """The clip and its sidecars under `output_dir` (see the module docstring); returns the video's path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    motion = synth_motion(spec)
    frames, masks, background = render_clip(spec, body, motion)
    base = output_dir / spec.stem
    save_motion(base.with_suffix(".npz"), motion)
    base.with_suffix(".txt").write_text(spec.caption())
    np.save(output_dir / f"{spec.stem}.mask.npy", masks.astype(np.uint8) * 255)
    PIL.Image.fromarray(background).save(output_dir / f"{spec.stem}.background.png")
    (output_dir / f"{spec.stem}.synth.json").write_text(json.dumps(asdict(spec), indent=1))
    video = base.with_suffix(".mp4")
    write_video(video, frames, spec.fps)  # last: a video in the folder always has its sidecars
    return video



class SynthWorker:
    """Writes clips by index (a pyarrow batch with an `id` column, as `ray.data.range` makes) and answers one row
    per clip: its stem, status (`ok`, `skipped` when its video already exists, `failed`) and error; holds the body
    model."""

    def __init__(self, output_dir: str | Path, seed: int, split: Split, num_frames: int, size: tuple[int, int]) -> None:
        self.output_dir, self.seed, self.split = Path(output_dir), seed, split
        self.num_frames, self.size = num_frames, size
        self.body = load_body_model()

    def write(self, index: int) -> dict[str, str | None]:
        stem = f"{self.split}_{index:05d}"
        if (self.output_dir / f"{stem}.mp4").is_file():
            return {"stem": stem, "status": "skipped", "error": None}
        try:
            write_clip(draw_clip(self.seed, self.split, index, self.num_frames, self.size), self.body, self.output_dir)
        except Exception as err:  # noqa: BLE001 - a failed clip is recorded, never lost
            return {"stem": stem, "status": "failed", "error": describe_error(err)}
        return {"stem": stem, "status": "ok", "error": None}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.write(int(index)) for index in batch.column("id").to_pylist()]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
