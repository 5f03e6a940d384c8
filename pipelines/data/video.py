"""Video decoding (decord, falling back to PyAV), mp4 encoding (PyAV) and resize + center crop.

decord decodes about 3x faster than PyAV, so it is tried first; PyAV covers containers and codecs
decord cannot open. Encoding uses PyAV's libx264 at a low CRF in yuv444p (no chroma subsampling),
which keeps small frames close to lossless; ``prepare`` measures and records the round-trip PSNR.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import numpy as np

from pipelines.errors import V2WError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


def _decode_decord(src, start: float | None, end: float | None):
    import decord

    vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    fps = float(vr.get_avg_fps()) or None
    if n == 0:
        raise ValueError("no frames")
    if start is None and end is None:
        idx = list(range(n))
    else:
        ts = vr.get_frame_timestamp(list(range(n)))[:, 0]  # start time of each frame, seconds
        lo = -np.inf if start is None else start - 1e-4
        hi = np.inf if end is None else end - 1e-4
        idx = [i for i in range(n) if lo <= ts[i] < hi]
    if not idx:
        return np.zeros((0, 0, 0, 3), np.uint8), fps
    return vr.get_batch(idx).asnumpy(), fps


def _decode_av(src, start: float | None, end: float | None):
    import av

    frames = []
    with av.open(src) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else None
        if start is not None and start > 0 and stream.time_base:
            # jump to the keyframe before `start` (several episodes share one LeRobot mp4)
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else None
            if t is not None:
                if start is not None and t < start - 1e-4:
                    continue
                if end is not None and t >= end - 1e-4:
                    break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8), fps
    return np.stack(frames), fps


def decode_video(
    path: str | os.PathLike | bytes,
    start: float | None = None,
    end: float | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, float | None]:
    """Decode a video to (T, H, W, 3) uint8 RGB and its average fps.

    ``path`` may be a file path or the encoded bytes. ``start``/``end`` (seconds) keep frames whose
    timestamp lies in [start, end), for files holding several episodes (LeRobot v3).
    Raises ``V2WError`` naming the file for unreadable, truncated or empty videos.
    """
    label = name or (str(path) if not isinstance(path, bytes) else "<video bytes>")
    errors = []
    for decoder in (_decode_decord, _decode_av):
        src = io.BytesIO(path) if isinstance(path, bytes) else str(path)
        try:
            frames, fps = decoder(src, start, end)
        except Exception as e:  # decoders raise many types; we report them as one problem
            errors.append(f"{decoder.__name__[8:]}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if frames.shape[0] == 0:
            errors.append(f"{decoder.__name__[8:]}: no frames")
            continue
        return frames, fps
    raise V2WError(
        f"cannot decode video ({'; '.join(errors)[:300]}). Is the file complete? Re-export it or "
        "pass --skip-bad to leave it out",
        path=label,
    )


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 10) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 mp4 bytes (yuv444p, every frame a keyframe
    candidate left to x264). Odd sizes are fine in 4:4:4."""
    import av

    frames = np.ascontiguousarray(frames)
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(30)
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p"
        # one thread: x264's output depends on its thread count, and shards must be byte-identical
        # on every machine and for any --workers (parallelism comes from worker processes)
        stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        stream.thread_count = 1
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``"HxW"`` (e.g. ``"320x512"``) into (H, W)."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise V2WError(f"--size must look like HxW with positive integers, e.g. 320x512. Got {text!r}") from None
    return h, w


RESIZE_MODES = ("crop", "stretch")


def resize_frames(frames: np.ndarray, size: tuple[int, int], mode: str = "crop") -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to ``size`` = (h, w).

    ``crop``: scale by max(h/H, w/W) so the frame covers (h, w), keeping the aspect ratio, then
    cut the excess of the longer side equally from both ends (center crop).
    ``stretch``: scale each axis independently (the usual Atari preprocessing; keeps HUDs and
    paddles at the frame edges that a center crop would cut). PIL's bilinear filter widens its
    support when shrinking (antialiasing), as torchvision's ``Resize(antialias=True)`` does in
    DynamiCrafter's data pipeline; PIL keeps torch out of the decoding workers.
    """
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise V2WError(f"--resize must be one of {{{', '.join(RESIZE_MODES)}}}. Got {mode!r}")
    h, w = size
    t, fh, fw, _ = frames.shape
    if (fh, fw) == (h, w):
        return frames
    if mode == "stretch":
        nh, nw = h, w
    else:
        scale = max(h / fh, w / fw)
        nh, nw = max(h, round(fh * scale)), max(w, round(fw * scale))
    top, left = (nh - h) // 2, (nw - w) // 2
    box = (left, top, left + w, top + h)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        out[i] = np.asarray(Image.fromarray(frames[i]).resize((nw, nh), Image.BILINEAR).crop(box))
    return out
