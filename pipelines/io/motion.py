"""Reading and writing motion files (.npz, never pickle; or JSON with the same keys)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from models.motion import Motion, MotionError, motion_from_arrays

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# A motion file this large is not a motion file (a 100k-frame motion is ~40 MB).
MAX_MOTION_BYTES = 256 * 1024 * 1024
# {"keypoints2d": [[[x, y, c]]]} is the deepest key: 4 levels.
MAX_JSON_DEPTH = 8
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSING = np.frombuffer(b"]}", dtype=np.uint8)


def motion_from_npz_bytes(payload: bytes) -> Motion:
    """Parse the bytes of an .npz motion (e.g. an upload). Pickled content is refused, never loaded."""
    if len(payload) > MAX_MOTION_BYTES:
        raise MotionError(f"motion file is {len(payload)} bytes; at most {MAX_MOTION_BYTES} are accepted")
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        hint = " (it looks like a pickle, which is never loaded)" if payload[:1] == b"\x80" else ""
        raise MotionError(f"motion file is not an .npz archive{hint}")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as err:  # object arrays need pickle, which stays off
        raise MotionError(f"motion file holds pickled objects, which are never loaded: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise MotionError(f"motion file is a corrupt .npz archive: {err}") from None
    return motion_from_arrays(arrays)


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest, counted without parsing it (brackets inside strings
    are left out; on malformed text, an upper bound of what a parser would reach)."""
    brackets = np.frombuffer(_JSON_STRING.sub("", text).encode(), dtype=np.uint8)
    steps = np.isin(brackets, _OPENING).astype(np.int64) - np.isin(brackets, _CLOSING)
    return int(np.cumsum(steps).max(initial=0))


def motion_from_json_text(text: str) -> Motion:
    """Parse a JSON object with the motion-file keys (nested lists for arrays); its size and nesting depth are
    checked before parsing (a deeply nested document would exhaust the parser's recursion)."""
    if len(text) > MAX_MOTION_BYTES:
        raise MotionError(f"motion JSON is {len(text)} characters; at most {MAX_MOTION_BYTES} are accepted")
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise MotionError(f"motion JSON nests {depth} levels deep; a motion needs at most {MAX_JSON_DEPTH}")
    try:
        data = json.loads(text)
    except ValueError as err:  # malformed, or an integer beyond Python's digit limit
        raise MotionError(f"motion JSON is malformed: {err}") from None
    if not isinstance(data, dict):
        raise MotionError("motion JSON must be an object with the motion-file keys")
    return motion_from_arrays(data)


def load_motion(path: str | Path) -> Motion:
    """Load and validate a motion file (.npz or .json).

    Raises:
        FileNotFoundError: the file does not exist.
        MotionError: the file is a pickle, corrupt, or breaks the motion contract.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise MotionError(f"motion file {path} is a pickle; pickles are never loaded, save it as .npz")
    if not path.is_file():
        raise FileNotFoundError(f"motion file not found: {path} (expected an .npz or .json motion, see DESIGN.md)")
    if path.stat().st_size > MAX_MOTION_BYTES:
        raise MotionError(f"motion file {path} is {path.stat().st_size} bytes; at most {MAX_MOTION_BYTES} are accepted")
    if path.suffix.lower() == ".json":
        return motion_from_json_text(path.read_text())
    return motion_from_npz_bytes(path.read_bytes())


def save_motion(path: str | Path, motion: Motion) -> None:
    """Write a motion as .npz (no pickled objects)."""
    np.savez(Path(path), **motion.to_arrays())
