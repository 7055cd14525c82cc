"""mp4 encode/decode: round trip close to the rendered frames, determinism, uniform sampling, bad input."""

import numpy as np
import pytest

from longvila.data import video_io, world


@pytest.fixture(scope="module")
def clip():
    v = world.make_video(7, 40)
    return v, video_io.encode_mp4(v.frames, v.fps)


def test_round_trip_close_and_deterministic(clip):
    v, mp4 = clip
    assert video_io.encode_mp4(v.frames, v.fps) == mp4
    dec = video_io.read_frames(mp4)
    assert dec.shape == v.frames.shape and dec.dtype == np.uint8
    err = np.abs(dec.astype(np.int16) - v.frames).mean()
    assert err < 4.0, err


def test_decord_and_pyav_agree(clip):
    _, mp4 = clip
    a = video_io.read_frames(mp4, 9, backend="decord")
    b = video_io.read_frames(mp4, 9, backend="pyav")
    assert np.abs(a.astype(np.int16) - b).max() <= 2


def test_uniform_sampling(clip, tmp_path):
    v, mp4 = clip
    assert video_io.sample_indices(40, 5).tolist() == [0, 10, 20, 29, 39]
    p = tmp_path / "v.mp4"
    p.write_bytes(mp4)
    full = video_io.read_frames(p)
    sub = video_io.read_frames(p, 5)
    assert np.array_equal(sub, full[[0, 10, 20, 29, 39]])
    assert video_io.num_frames_of(p) == 40


def test_bad_input_names_the_file(clip, tmp_path):
    _, mp4 = clip
    p = tmp_path / "short.mp4"
    p.write_bytes(mp4)
    with pytest.raises(video_io.VideoError, match=r"short\.mp4.*40 frames, 41 asked"):
        video_io.read_frames(p, 41)
    e = tmp_path / "empty.mp4"
    e.write_bytes(b"")
    with pytest.raises(video_io.VideoError, match=r"empty\.mp4.*empty"):
        video_io.read_frames(e)
    c = tmp_path / "corrupt.mp4"
    c.write_bytes(mp4[: len(mp4) // 3])
    with pytest.raises(video_io.VideoError, match=r"corrupt\.mp4"):
        video_io.read_frames(c)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_io.read_frames(tmp_path / "missing.mp4")
    with pytest.raises(video_io.VideoError, match="empty"):
        video_io.read_frames(b"")
    with pytest.raises(video_io.VideoError, match="corrupt"):
        video_io.read_frames(b"not a video" * 50)
    with pytest.raises(ValueError, match="even"):
        video_io.encode_mp4(np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        video_io.encode_mp4(np.zeros((0, 32, 32, 3), np.uint8))


def test_rgb_to_yuv420p_bt601_limited_range():
    def convert(rgb):
        img = np.broadcast_to(np.array(rgb, np.uint8), (4, 4, 3))
        yuv = video_io.rgb_to_yuv420p(img)
        assert yuv.shape == (6, 4)
        return int(yuv[0, 0]), int(yuv[4, 0]), int(yuv[5, 0])

    assert convert((0, 0, 0)) == (16, 128, 128)
    assert convert((255, 255, 255)) == (235, 128, 128)
    assert convert((255, 0, 0)) == (82, 90, 240)  # BT.601 red (integer form: Y 81.5 rounds up)
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 255  # the top-left chroma sample averages a white 2x2 block
    yuv = video_io.rgb_to_yuv420p(img)
    assert yuv[0, 0] == 235 and yuv[0, 2] == 16 and yuv[4, 0] == 128


def test_streaming_and_indexed_readers_agree_with_read_frames(clip, tmp_path):
    v, mp4 = clip
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4)
    whole = video_io.read_frames(path)
    assert video_io.video_meta(path) == (40, v.fps)
    chunks = list(video_io.iter_frames(path, chunk=16))
    assert [len(c) for c in chunks] == [16, 16, 8] and np.array_equal(np.concatenate(chunks), whole)
    small = np.concatenate(list(video_io.iter_frames(path, size=(16, 24))))
    assert small.shape == (40, 16, 24, 3)
    at = video_io.read_frames_at(path, [39, 0, 5, 5])
    assert np.array_equal(at, whole[[39, 0, 5, 5]])
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        video_io.video_meta(tmp_path / "nope.mp4")
