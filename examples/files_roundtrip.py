"""Files in and out: upload an image, run an app on it, stream its progress, save the result.

    export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
    python examples/files_roundtrip.py [IMAGE] [OUTPUT_FOLDER]

Without an IMAGE it writes a small PNG to upload. The `pathlib.Path` in the input is uploaded
before the task is created (a plain string would be sent as it is); the output's files are
saved in OUTPUT_FOLDER (default: the current folder), each written completely or not at all.
"""

import os
import struct
import sys
import zlib
from pathlib import Path

from inferencesh import TaskStatus, TransferProgress, inference


def tiny_png(path: Path) -> Path:
    """A 2x2 red PNG, so the example needs no image of its own."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def show(state: TransferProgress) -> None:
    if state.total and state.done == state.total:
        print(f"saved {state.filename}: {state.done} bytes")


image = Path(sys.argv[1]) if len(sys.argv) > 1 else tiny_png(Path("input.png"))
folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")

with inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local")) as client:
    config = {"app": "infsh/flux-schnell", "input": {"prompt": "make it blue", "image": image}}
    final = None
    for update in client.run(config, stream=True):
        if update.progress is not None:
            print(
                f"Status: {update.status.value}, {update.progress.current}/{update.progress.total}"
            )
        else:
            print(f"Status: {update.status.value}")
        final = update
    if final is None or final.status is not TaskStatus.COMPLETED:
        sys.exit(f"the task did not complete: {final.error if final else 'no update'}")
    for file in final.files:
        client.download(file, folder, progress=show)
