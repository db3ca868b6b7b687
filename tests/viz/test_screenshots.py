"""The viewer's screenshots (``screenshots.py``, which refreshes docs/images): taken in
headless Chromium into a temporary folder, small, and showing what a user first sees."""

from __future__ import annotations

import re

import pytest
from screenshots import PICTURES, WINDOW, cnn_page, take_all
from viz_helpers import READABLE, browser, pixel_counts, read_png, run_browser

from tracegrad.viz.scene import KINDS


def colour(kind: str) -> bytes:
    return bytes.fromhex(KINDS[kind].fill[1:])


def test_screenshots_are_small_pictures_of_each_page_as_it_opens(tmp_path):
    browser()  # (skips without one)
    paths = take_all(tmp_path)
    assert [p.name for p in paths] == list(PICTURES)
    width, height = WINDOW
    for path in paths:
        assert 10_000 < path.stat().st_size < 80_000, path  # a few tens of KB
        pixels = read_png(path)
        assert pixels.shape == (height, width, 3)
        header = pixel_counts(pixels, 0, width, 0, 10)
        assert max(header, key=header.get) == bytes.fromhex("23232e")  # the page's top bar
        graph = pixel_counts(pixels, 0, width // 2, 190, height)  # left of the side panel
        assert len(graph) > 20 and graph.get(colour("input"), 0) > 300, path  # boxes drawn
    cnn, gpt = (read_png(tmp_path / name) for name in ("viewer-cnn.png", "viewer-gpt12.png"))
    for pixels in (cnn, gpt):  # module boxes, open (the CNN) or collapsed (the GPT)
        assert pixel_counts(pixels, 0, width // 2, 190, height).get(colour("module"), 0) > 3000


def test_a_drawing_too_small_fitted_opens_readable_from_its_top_left(tmp_path):
    """The CNN's forward, a long column of layers, fitted to the window would be too small
    to read: it opens at READABLE with its inputs in view."""
    page = cnn_page(tmp_path)
    dom = run_browser(browser(), page.as_uri(), tmp_path, "--dump-dom", window=WINDOW).stdout
    opened = r'<div class="pane" data-view="0" data-pane="[^"]*">.*?<svg class="graph"[^>]*>'
    shown = re.search(opened, dom, re.S).group()
    width, natural = (float(re.search(f'{a}="([\\d.]+)"', shown).group(1))
                      for a in ("width", "data-w"))  # fmt: skip
    assert width == pytest.approx(READABLE * natural)
