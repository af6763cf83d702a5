"""Video files: MP4 writing with PyAV (H.264); reading user-supplied videos safely.

A video a user supplies (an upload, a manifest's path) is only ever opened as one of `CONTAINERS`, chosen from its
magic bytes and passed to FFmpeg as an explicit format over a Python file object: FFmpeg never probes it and never
sees a path or URL, so no demuxer or protocol that opens other files (concat/ffconcat, HLS and other playlists,
image2 patterns, file:, http:, MOV data references) can run. Anything else is refused, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import pyarrow.fs

# Accepted containers, as the FFmpeg demuxer names forced on them (mp4: FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2" demuxer,
# matroska: "matroska,webm").
CONTAINERS = ("mp4", "matroska", "avi", "gif")
ACCEPTED = "MP4/MOV, WebM/Matroska, AVI or GIF"
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")
SNIFF_BYTES = 12


def sniff_container(head: bytes) -> str | None:
    """The accepted container (one of `CONTAINERS`) the first `SNIFF_BYTES` bytes of a file announce, or None."""
    if head[4:8] in _ISO_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def check_container(head: bytes, field: str, name: str = "the file") -> str:
    """`sniff_container(head)`, or a ValueError naming `field` (e.g. for a playlist or ffconcat text file)."""
    container = sniff_container(head)
    if container is None:
        raise ValueError(f"{field}: {name} is not an {ACCEPTED} video (its first bytes are {head[:SNIFF_BYTES]!r})")
    return container


@contextmanager
def open_video(source: BinaryIO, field: str, name: str = "the file") -> Iterator[av.container.InputContainer]:
    """A PyAV input container over `source` (a seekable binary file object) with its format forced from its magic
    bytes; ValueError naming `field` when it is not an accepted container (see the module docstring)."""
    container_format = check_container(source.read(SNIFF_BYTES), field, name)
    source.seek(0)
    options = {"enable_drefs": "0"} if container_format == "mp4" else {}  # MOV data references name other files
    with av.open(source, format=container_format, options=options) as container:
        yield container


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames `[T, H, W, 3]` as an H.264 MP4 (H and W must be even for yuv420p)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for H.264, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_video(
    path: str | Path, field: str = "video", filesystem: pyarrow.fs.FileSystem | None = None
) -> tuple[np.ndarray, float]:
    """Every frame of a video file, uint8 RGB `[T, H, W, 3]`, and its frame rate; errors name `field`. `path` is on
    `filesystem` (a pyarrow filesystem, e.g. from `pipelines.io.filesystem.resolve_uri`) or, without one, local."""
    name = str(path)
    if filesystem is None:
        filesystem, path = pyarrow.fs.LocalFileSystem(), Path(path).resolve()
    path = str(path)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{field}: video not found: {name}")
    try:
        with filesystem.open_input_file(path) as file, open_video(file, field, name) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"{field}: {name} could not be decoded as a video: {err}") from None
    if not frames:
        raise ValueError(f"{field}: {name} holds no frames")
    return np.stack(frames), fps
