"""Locations a user reads from any node: a file's URI under a folder URI, or the absolute path under a local one."""

from __future__ import annotations

from pipelines.io.filesystem import child_uri, resolve_uri


def test_child_uri_keeps_the_scheme_and_query_and_makes_local_paths_absolute(tmp_path, monkeypatch) -> None:
    assert child_uri("s3://bucket/render/", "videos", "a.mp4") == "s3://bucket/render/videos/a.mp4"
    assert child_uri("s3://bucket/render?region=eu-west-1", "videos", "a.mp4") == (
        "s3://bucket/render/videos/a.mp4?region=eu-west-1"
    )
    assert child_uri(f"file://{tmp_path}", "a.mp4") == f"file://{tmp_path}/a.mp4"
    monkeypatch.chdir(tmp_path)
    assert child_uri("out", "videos") == str(tmp_path / "out" / "videos")
    filesystem, path = resolve_uri(child_uri(f"file://{tmp_path}/", "x"))
    assert path == f"{tmp_path}/x" and filesystem.type_name == "local"
