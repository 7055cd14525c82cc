"""Encode frames to mp4 (H.264 through PyAV) and read frames back (decord first, PyAV as fallback).

Design choices:
- Encoding is bit-exact: single-threaded x264 on its C code paths (``threads=1``, ``asm=0``; the SIMD
  paths were seen to vary run to run), muxer ``bitexact`` flag (no creation time), RGB -> yuv420p in
  integer numpy instead of swscale. The same frames give the same mp4 bytes, so shard checksums are
  reproducible (the shards tests build the same set in several processes and compare bytes).
- yuv420p, the pixel format every player and decoder reads; at 32x32 chroma is 16x16, so colour edges
  blur by a pixel while object interiors keep their colour (tested against the rendered frames).
- Reading samples ``num_frames`` indices uniformly: ``linspace(0, n - 1, num_frames)`` rounded, as LongVILA
  does. decord reads from a path or a file-like object; if it fails (a codec it cannot read) PyAV decodes
  everything and the same indices are taken. Empty, corrupt or too-short input raises ``VideoError`` that
  names the source.
- Long videos (``data/longvideo.py``) are never decoded whole: ``iter_frames`` streams them in chunks, at a
  small size if asked (decord resizes while decoding), and ``read_frames_at`` decodes only the frames asked.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video that cannot be read as asked (empty, corrupt, too short); the message names the source."""


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 // 2, W) uint8 planar yuv420p (Y, then U, V at half resolution).

    BT.601 limited range (what decoders assume for untagged standard-definition video) in integer
    arithmetic, chroma averaged over 2x2 blocks. Done here rather than by FFmpeg's swscale or a float
    matmul, whose SIMD/BLAS paths are not bit-exact from run to run (seen as differing mp4 bytes for the
    same frames); integers keep the encoder input, and so the mp4, identical.
    """
    h, w, _ = rgb.shape
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128

    def half(c):
        return (c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) + 2) // 4

    planes = [y, half(u).reshape(h // 4, w), half(v).reshape(h // 4, w)]
    return np.clip(np.concatenate(planes, axis=0), 0, 255).astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: float = 2.0, crf: int = 12) -> bytes:
    """Encode ``frames`` (N, H, W, 3) uint8 (H and W even) as H.264 mp4 bytes; deterministic."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError("cannot encode an empty video (0 frames)")
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {h}x{w}")
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # NOTE: asm=0 (x264's C code paths): with its SIMD paths the same input gave a different bitstream
        # in about 1 of 150 encodes (measured here, 4 of 600 under load); at 32x32 the C path is as fast.
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "tune": "stillimage",
                          "x264-params": "asm=0"}
        stream.codec_context.thread_count = 1
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frames[i]), format="yuv420p")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _name(src) -> str:
    return str(src) if isinstance(src, str | os.PathLike) else f"<{len(src)} bytes of video>"


def sample_indices(total: int, num_frames: int | None) -> np.ndarray:
    """Uniform frame indices: ``round(linspace(0, total - 1, num_frames))`` (all frames when None)."""
    if num_frames is None:
        return np.arange(total)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, not {num_frames}")
    return np.round(np.linspace(0, total - 1, num_frames)).astype(np.int64)


def _read_decord(src, num_frames):
    import decord

    vr = decord.VideoReader(str(src) if isinstance(src, str | os.PathLike) else io.BytesIO(src),
                            ctx=decord.cpu(0), num_threads=1)
    total = len(vr)
    if num_frames is not None and num_frames > total:
        raise VideoError(f"{_name(src)}: video has {total} frames, {num_frames} asked")
    if total == 0:
        raise VideoError(f"{_name(src)}: video has no frames")
    return vr.get_batch(sample_indices(total, num_frames).tolist()).asnumpy()


def _read_pyav(src, num_frames):
    import av

    f = str(src) if isinstance(src, str | os.PathLike) else io.BytesIO(src)
    with av.open(f) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    if not frames:
        raise VideoError(f"{_name(src)}: video has no frames")
    if num_frames is not None and num_frames > len(frames):
        raise VideoError(f"{_name(src)}: video has {len(frames)} frames, {num_frames} asked")
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)])


def read_frames(src: str | os.PathLike | bytes, num_frames: int | None = None,
                backend: str = "auto") -> np.ndarray:
    """Decode ``num_frames`` uniformly sampled frames (all when None) -> (n, H, W, 3) uint8.

    ``backend``: "auto" (decord, then PyAV if decord cannot read it), "decord" or "pyav".
    """
    if isinstance(src, str | os.PathLike):
        if not Path(src).is_file():
            raise FileNotFoundError(f"{src}: no such video file")
        if Path(src).stat().st_size == 0:
            raise VideoError(f"{src}: empty video file (0 bytes)")
    elif isinstance(src, bytes | bytearray | memoryview):
        src = bytes(src)
        if not src:
            raise VideoError("<0 bytes of video>: empty video")
    else:
        raise TypeError(f"src must be a path or bytes, not {type(src).__name__}")
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be auto, decord or pyav, not {backend!r}")
    errors = []
    if backend in ("auto", "decord"):
        try:
            return _read_decord(src, num_frames)
        except VideoError:
            raise
        except Exception as e:  # decord raises its own DECORDError / RuntimeError types
            if backend == "decord":
                raise VideoError(f"{_name(src)}: decord cannot read it ({str(e).splitlines()[0]})") from None
            errors.append(f"decord: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    try:
        return _read_pyav(src, num_frames)
    except VideoError:
        raise
    except Exception as e:
        errors.append(f"pyav: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        raise VideoError(f"{_name(src)}: corrupt or unreadable video ({'; '.join(errors)})") from None


def num_frames_of(src: str | os.PathLike | bytes) -> int:
    """Number of frames in a video: decord's index (no decoding), else PyAV decodes and counts.

    Raises ``VideoError`` (naming the source) for an empty or unreadable video.
    """
    if isinstance(src, str | os.PathLike):
        if not Path(src).is_file():
            raise FileNotFoundError(f"{src}: no such video file")
        if Path(src).stat().st_size == 0:
            raise VideoError(f"{src}: empty video file (0 bytes)")
    elif not src:
        raise VideoError("<0 bytes of video>: empty video")
    try:
        import decord

        vr = decord.VideoReader(str(src) if isinstance(src, str | os.PathLike) else io.BytesIO(src),
                                ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        if n > 0:
            return n
    except Exception:  # decord's own error types; PyAV decides below
        pass
    return int(read_frames(src, None, backend="pyav").shape[0])


def video_meta(src: str | os.PathLike) -> tuple[int, float]:
    """(number of frames, frames per second) of a video file: decord's index, else PyAV's stream header."""
    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no such video file")
    try:
        import decord

        vr = decord.VideoReader(str(src), ctx=decord.cpu(0), num_threads=1)
        if len(vr) > 0 and vr.get_avg_fps() > 0:
            return len(vr), float(vr.get_avg_fps())
    except Exception:  # decord's own error types; PyAV decides below
        pass
    import av

    try:
        with av.open(str(src)) as c:
            rate = c.streams.video[0].average_rate
    except Exception as e:
        raise VideoError(f"{src}: corrupt or unreadable video ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if not rate:
        raise VideoError(f"{src}: the video stream states no frame rate")
    return num_frames_of(src), float(rate)


def iter_frames(src: str | os.PathLike, size: tuple[int, int] | None = None, chunk: int = 64):
    """Every frame of a video in order, as chunks (k, H, W, 3) uint8 of at most ``chunk`` frames.

    ``size`` = (H', W') decodes at that size (decord resizes while decoding, so a long high-resolution video
    never sits in memory at full size); PyAV when decord cannot read the file.
    """
    try:
        import decord

        kw = {"height": size[0], "width": size[1]} if size else {}
        vr = decord.VideoReader(str(src), ctx=decord.cpu(0), num_threads=1, **kw)
        n = len(vr)
        first = vr.get_batch(list(range(min(n, chunk)))).asnumpy() if n else None
    except Exception:  # decord's own error types: PyAV below
        # NOTE: decord's resizing fails for some output widths (seen: 16 and 24 fail, 32 works)
        n, first = 0, None
    if first is not None:
        yield first
        for a in range(chunk, n, chunk):
            yield vr.get_batch(list(range(a, min(n, a + chunk)))).asnumpy()
        return
    import av

    buf = []
    with av.open(str(src)) as c:
        for fr in c.decode(video=0):
            if size:
                fr = fr.reformat(width=size[1], height=size[0])
            buf.append(fr.to_ndarray(format="rgb24"))
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)


def read_frames_at(src: str | os.PathLike, indices, size: tuple[int, int] | None = None) -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) -> (len(indices), H, W, 3) uint8.

    ``size`` = (H', W') decodes at that size. decord seeks to each index; PyAV decodes up to the last one.
    """
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("read_frames_at needs at least one index")
    try:
        import decord

        kw = {"height": size[0], "width": size[1]} if size else {}
        vr = decord.VideoReader(str(src), ctx=decord.cpu(0), num_threads=1, **kw)
        if len(vr) > max(idx):
            return vr.get_batch(idx).asnumpy()
    except Exception:  # decord's own error types: PyAV below
        pass
    import av

    want, got = set(idx), {}
    with av.open(str(src)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i in want:
                if size:
                    fr = fr.reformat(width=size[1], height=size[0])
                got[i] = fr.to_ndarray(format="rgb24")
            if i >= max(idx):
                break
    missing = sorted(want - set(got))
    if missing:
        raise VideoError(f"{src}: no frame {missing[0]} (the video has fewer frames)")
    return np.stack([got[i] for i in idx])
