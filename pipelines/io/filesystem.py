"""Job outputs and inputs named by a local path or a pyarrow filesystem URI (file://, s3://bucket/prefix, gs://, ...),
so every node of a cluster reads and writes the same files. Needs pyarrow alone."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs

from models.paths import is_uri


def resolve_uri(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of `uri`, a local path (relative ones against the working directory) or a pyarrow
    filesystem URI."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri if is_uri(uri) else str(Path(uri).resolve()))
    return filesystem, path.rstrip("/")


def child_uri(uri: str, *parts: str) -> str:
    """The location of `parts` under the folder `uri`, as a user names it on any node: the URI for a URI (its query,
    e.g. ?region=..., kept at the end), the absolute path for a local path."""
    if not is_uri(uri):
        return str(Path(uri).resolve().joinpath(*parts))
    split = urlsplit(uri)
    return urlunsplit(split._replace(path="/".join([split.path.rstrip("/"), *parts])))


def exists(filesystem: pyarrow.fs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(filesystem: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """`text` into the file `path` (UTF-8), creating its folder."""
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())
