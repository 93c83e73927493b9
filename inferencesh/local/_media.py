"""Built-in media apps: the simulated app, plus a real image or video file in its output.

An unregistered app whose name (the part after `/`, without `@version` or `:function`,
case-insensitive) contains `video` is a video app; otherwise one containing an image pattern
(`IMAGE_PATTERNS`) is an image app; otherwise one containing another video pattern
(`VIDEO_PATTERNS`) is a video app; `PLAIN_APPS` stay plain. A media app's output keeps the
simulated app's keys and adds `image` or `video`: the FileDTO of a file made here with the
standard library only. The same prompt and size make the same bytes, stored once: runs that
repeat give the same output (`AppContext.save_file(..., reuse=True)`).

- Images are PNG (RGB, 8 bits per channel): `width` and `height` from the input (default 256,
  at most 1024).
- Videos are uncompressed AVI (RIFF, 24-bit DIB frames, an `idx1` index), 12 frames per
  second: `width` and `height` (default 128x96, at most 320x240) and `num_frames` (default 12,
  at most 24) from the input.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib
from typing import Any, Literal

from ._apps import AppContext, SimSettings, simulated_app

__all__ = [
    "IMAGE_PATTERNS",
    "PLAIN_APPS",
    "VIDEO_PATTERNS",
    "avi",
    "media_kind",
    "png",
    "simulated_media_app",
]

#: Name parts that make an unregistered app an image app.
IMAGE_PATTERNS = ("flux", "sdxl", "stable-diffusion", "image", "img", "dall", "imagen", "kandinsky")
#: Name parts that make an unregistered app a video app (checked after the image ones, except
#: `video` itself).
VIDEO_PATTERNS = ("video", "veo", "kling", "wan", "ltx", "hunyuan", "sora", "mochi")
#: Apps that stay plain simulated apps (output exactly `text`, `steps`, `input`) although
#: their names match: `google/veo-3-1-fast` is the streaming demo of the examples and tests.
PLAIN_APPS = frozenset({"google/veo-3-1-fast"})

_IMAGE_DEFAULT = (256, 256)
_IMAGE_MAX = 1024
_VIDEO_DEFAULT = (128, 96)
_VIDEO_MAX = (320, 240)
_VIDEO_FRAMES = 12
_VIDEO_MAX_FRAMES = 24
_FPS = 12
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def media_kind(app: str) -> Literal["image", "video"] | None:
    """Whether the app `app` (a reference, `ns/name@version:function`) makes images or videos."""
    ref = app.split("@", 1)[0].split(":", 1)[0].lower()
    if ref in PLAIN_APPS:
        return None
    name = ref.split("/", 1)[-1]
    if "video" in name:
        return "video"
    if any(pattern in name for pattern in IMAGE_PATTERNS):
        return "image"
    if any(pattern in name for pattern in VIDEO_PATTERNS):
        return "video"
    return None


async def simulated_media_app(input: dict[str, Any], ctx: AppContext, settings: SimSettings) -> Any:
    """The simulated app; a media app's output also gets its `image` or `video` file."""
    output = await simulated_app(input, ctx, settings)
    kind = media_kind(ctx.app)
    if kind is None or not isinstance(output, dict):
        return output
    prompt = input.get("prompt")
    seed = hashlib.sha256(str(prompt if prompt is not None else "").encode()).digest()
    if kind == "image":
        width = _dimension(input.get("width"), _IMAGE_DEFAULT[0], _IMAGE_MAX)
        height = _dimension(input.get("height"), _IMAGE_DEFAULT[1], _IMAGE_MAX)
        data = await asyncio.to_thread(png, width, height, seed)
        saved = ctx.save_file(data, filename="image.png", content_type="image/png", reuse=True)
    else:
        width = _dimension(input.get("width"), _VIDEO_DEFAULT[0], _VIDEO_MAX[0])
        height = _dimension(input.get("height"), _VIDEO_DEFAULT[1], _VIDEO_MAX[1])
        frames = _dimension(input.get("num_frames"), _VIDEO_FRAMES, _VIDEO_MAX_FRAMES)
        data = await asyncio.to_thread(avi, width, height, frames, seed)
        saved = ctx.save_file(
            data, filename="video.avi", content_type="video/x-msvideo", reuse=True
        )
    # The file goes before the echo of the input, which stays the output's last key.
    keys = list(output)
    at = keys.index("input") if "input" in keys else len(keys)
    return {**{k: output[k] for k in keys[:at]}, kind: saved, **{k: output[k] for k in keys[at:]}}


def _dimension(value: Any, default: int, maximum: int) -> int:
    """A positive whole number from the input, capped; `default` for anything else."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return default
    return min(value, maximum)


def _gradient(length: int, start: int, span: int) -> bytes:
    """`length` bytes rising from `start` by `span` in all, wrapping at 256."""
    step = max(1, length - 1)
    return bytes((start + i * span // step) & 0xFF for i in range(length))


def _rows(width: int, height: int, seed: bytes, shift: int = 0) -> list[bytearray]:
    """RGB rows of a pattern: red across, green down, blue in seeded diagonal stripes."""
    red = _gradient(width, seed[0], 255)
    stripes = bytes(
        (seed[2] + ((i + shift) * (seed[3] % 7 + 2))) & 0xFF for i in range(width + height)
    )
    row = bytearray(3 * width)
    row[0::3] = red
    rows = []
    for y in range(height):
        green = (seed[1] + y * 255 // max(1, height - 1)) & 0xFF
        row[1::3] = bytes((green,)) * width
        row[2::3] = stripes[y : y + width]
        rows.append(bytearray(row))
    return rows


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(width: int, height: int, seed: bytes) -> bytes:
    """A `width`x`height` RGB PNG of a pattern seeded by `seed` (at least 4 bytes)."""
    raw = b"".join(b"\x00" + row for row in _rows(width, height, seed))  # filter type 0
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _riff(kind: bytes, data: bytes) -> bytes:
    pad = b"\x00" if len(data) % 2 else b""
    return kind + struct.pack("<I", len(data)) + data + pad


def _list(kind: bytes, data: bytes) -> bytes:
    return _riff(b"LIST", kind + data)


def avi(width: int, height: int, frames: int, seed: bytes, fps: int = _FPS) -> bytes:
    """An uncompressed AVI: `frames` 24-bit frames of a pattern that moves, `fps` a second."""
    stride = (3 * width + 3) & ~3  # DIB rows are padded to 4 bytes
    frame_size = stride * height
    padding = bytes(stride - 3 * width)
    avih = struct.pack(
        "<14I",
        1_000_000 // fps,  # microseconds per frame
        frame_size * fps,  # max bytes per second
        0,  # padding granularity
        0x10,  # AVIF_HASINDEX
        frames,
        0,  # initial frames
        1,  # streams
        frame_size,  # suggested buffer size
        width,
        height,
        0, 0, 0, 0,
    )  # fmt: skip
    strh = struct.pack(
        "<4s4sIHHIIIIIIIIhhhh",
        b"vids",
        b"DIB ",
        0,  # flags
        0,  # priority
        0,  # language
        0,  # initial frames
        1,  # scale
        fps,  # rate: rate / scale frames a second
        0,  # start
        frames,  # length
        frame_size,  # suggested buffer size
        0xFFFFFFFF,  # quality: the default
        0,  # sample size: varies
        0, 0, width, height,  # frame rectangle
    )  # fmt: skip
    strf = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, frame_size, 0, 0, 0, 0)
    stream = _list(b"strl", _riff(b"strh", strh) + _riff(b"strf", strf))
    header = _list(b"hdrl", _riff(b"avih", avih) + stream)
    chunks = []
    index = []
    offset = 4  # from the start of the `movi` list's type
    for number in range(frames):
        rows = _rows(width, height, seed, shift=number * 4)
        # Bottom-up rows of blue, green, red.
        data = b"".join(bytes(_bgr(row)) + padding for row in reversed(rows))
        chunks.append(_riff(b"00db", data))
        index.append(struct.pack("<4sIII", b"00db", 0x10, offset, frame_size))  # keyframe
        offset += 8 + frame_size
    movi = _list(b"movi", b"".join(chunks))
    body = b"AVI " + header + movi + _riff(b"idx1", b"".join(index))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _bgr(row: bytearray) -> bytearray:
    swapped = bytearray(row)
    swapped[0::3], swapped[2::3] = row[2::3], row[0::3]
    return swapped
