"""Screenshots of the viewer as a user first sees it, for the README and the docs: the demo's
compiled training step, a small CNN and a 12-block GPT, each page opened in headless Chromium
and written as a small PNG (its colours reduced to a palette, a few tens of KB).

    python tests/viz/screenshots.py docs/images     # refresh the committed pictures

``test_screenshots.py`` takes the same pictures into a temporary folder and checks them.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from viz_helpers import GPT, browser, read_png, run_browser

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.demo import run_demo

WINDOW = (1000, 640)  # px: the browser window each picture is taken in
COLOURS = 96  # the palette: a page's flat colours and enough greys for antialiased text


def demo_page(folder: Path) -> Path:
    """The page ``tracegrad demo`` writes (one epoch is enough to draw it)."""
    page = folder / "demo.html"
    run_demo(epochs=1, picture=page, progress=False)
    return page


def cnn_page(folder: Path) -> Path:
    """A conv-relu-conv-relu-pool-linear CNN on 8x8 images, compiled, forward and backward."""
    tg.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip
    cm = tg.compile(model)
    F.cross_entropy(cm(tg.randn(32, 1, 8, 8)), tg.randint(0, 10, (32,))).backward()
    return cm.visualize(folder / "cnn.html")


def gpt_page(folder: Path) -> Path:
    """A 12-block character transformer, compiled, forward and backward."""
    tg.manual_seed(0)
    cm = tg.compile(GPT(blocks=12))
    idx = tg.tensor([[i % 65 for i in range(16)], [(7 * i) % 65 for i in range(16)]])
    F.cross_entropy(cm(idx).reshape(-1, 65), idx.reshape(-1)).backward()
    return cm.visualize(folder / "gpt12.html")


PICTURES = {"viewer-demo.png": demo_page, "viewer-cnn.png": cnn_page,
            "viewer-gpt12.png": gpt_page}  # fmt: skip


def take_all(folder) -> list[Path]:
    """Every picture in PICTURES, written into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        return [take(make(Path(scratch)), folder / name) for name, make in PICTURES.items()]


def take(page: Path, png: Path) -> Path:
    """A screenshot of ``page`` as it opens in a WINDOW-sized browser, written small."""
    shot = page.with_suffix(".shot.png")
    run_browser(browser(), page.as_uri(), page.parent, "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--screenshot={shot}", window=WINDOW)  # fmt: skip
    palette, indices = quantized(read_png(shot))
    png.write_bytes(palette_png(palette, indices))
    return png


def quantized(pixels: np.ndarray, colours: int = COLOURS) -> tuple[np.ndarray, np.ndarray]:
    """(palette, index of each pixel in it): the ``colours`` commonest colours, every other
    colour drawn in the nearest of them."""
    flat = pixels.reshape(-1, 3)
    distinct, where, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    palette = distinct[np.argsort(-counts, kind="stable")[:colours]]
    gaps = distinct[:, None, :].astype(np.int32) - palette[None, :, :].astype(np.int32)
    nearest = (gaps**2).sum(axis=2).argmin(axis=1)
    return palette, nearest[where.reshape(-1)].reshape(pixels.shape[:2]).astype(np.uint8)


def palette_png(palette: np.ndarray, indices: np.ndarray) -> bytes:
    """An 8-bit palette PNG of ``indices`` (height, width): rows unfiltered, which suits
    palette images, and compressed as far as zlib goes."""
    height, width = indices.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    rows = np.hstack([np.zeros((height, 1), np.uint8), indices]).tobytes()
    return b"\x89PNG\r\n\x1a\n" + b"".join([
        _chunk(b"IHDR", header), _chunk(b"PLTE", palette.astype(np.uint8).tobytes()),
        _chunk(b"IDAT", zlib.compress(rows, 9)), _chunk(b"IEND", b""),
    ])  # fmt: skip


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} FOLDER   (docs/images to refresh the docs')")
    for path in take_all(sys.argv[1]):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
