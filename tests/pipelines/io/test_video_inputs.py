"""User-supplied videos are opened only as an accepted container: playlists, concat lists and URLs are refused
before FFmpeg (or decord) can follow them to other files."""

from __future__ import annotations

import pytest
from helpers import HOSTILE_FRAMES, hostile_files

from pipelines.io.video import read_video
from pipelines.preprocess.clips import VideoError, probe_video


@pytest.fixture()
def hostile(tmp_path):
    files = {}
    for name, data in hostile_files(tmp_path).items():
        files[name] = tmp_path / f"{name}.mp4"
        files[name].write_bytes(data)
    return files


@pytest.mark.parametrize("name", ["ffconcat", "hls", "file_url"])
def test_read_video_refuses_playlists_and_concat_lists(hostile, name):
    with pytest.raises(ValueError, match="^pose_video: ") as refused:
        read_video(hostile[name], "pose_video")
    assert "No such file" not in str(refused.value)
    assert read_video(hostile[name].with_name("secret.mp4"))[0].shape == HOSTILE_FRAMES.shape  # the real video reads


@pytest.mark.parametrize("name", ["ffconcat", "hls"])
def test_preprocessing_refuses_them_before_decord_sees_them(hostile, name):
    with pytest.raises(VideoError, match="is not an MP4/MOV"):
        probe_video(hostile[name])
