"""Decoding QR codes for real (zxing-cpp): images, segno's SVG, terminal half-block art."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import zxingcpp
from PIL import Image

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BLOCKS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}
PX = 8  # pixels per module when rendering for the decoder
QUIET = 4  # modules of white added around anything we decode


def render(dark: list[list[bool]]) -> Image.Image:
    """A grayscale image of a module grid (True = dark), with a white quiet zone."""
    height, width = len(dark), len(dark[0])
    img = Image.new("L", ((width + 2 * QUIET) * PX, (height + 2 * QUIET) * PX), 255)
    pixels = img.load()
    for y, row in enumerate(dark):
        for x, is_dark in enumerate(row):
            if is_dark:
                for dy in range(PX):
                    for dx in range(PX):
                        pixels[(x + QUIET) * PX + dx, (y + QUIET) * PX + dy] = 0
    return img


def decode(img: Image.Image) -> list[str]:
    """Every QR code zxing finds, dark-on-light only (an inverted image must not pass)."""
    results = zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode, try_invert=False)
    return [r.text for r in results]


def terminal_modules(text: str, *, blocks_are_dark: bool) -> list[list[bool]]:
    """Turn half-block terminal art back into a grid of modules (True = dark)."""
    lines = [ANSI_RE.sub("", line) for line in text.split("\n")]
    assert lines and len({len(line) for line in lines}) == 1, "ragged QR lines"
    grid: list[list[bool]] = []
    for line in lines:
        unknown = set(line) - set(BLOCKS)
        assert not unknown, f"unexpected characters in QR: {unknown!r}"
        top = [BLOCKS[c][0] == blocks_are_dark for c in line]
        bottom = [BLOCKS[c][1] == blocks_are_dark for c in line]
        grid += [top, bottom]
    return grid


def decode_terminal(text: str) -> list[str]:
    # colour output draws dark modules as blocks; plain output draws light ones
    blocks_are_dark = "\x1b[" in text
    return decode(render(terminal_modules(text, blocks_are_dark=blocks_are_dark)))


def svg_modules(root: ET.Element) -> list[list[bool]]:
    """Rasterise segno's SVG: one stroked path of horizontal unit-width lines."""
    ns = "{http://www.w3.org/2000/svg}"
    paths = root.findall(f".//{ns}path")
    assert len(paths) == 1
    path = paths[0]
    scale = re.fullmatch(r"scale\((\d+)\)", path.get("transform", "scale(1)"))
    assert scale is not None
    factor = int(scale.group(1))
    size = int(root.get("width")) // factor
    assert int(root.get("height")) // factor == size
    grid = [[False] * size for _ in range(size)]
    x = y = 0.0
    for cmd, args in re.findall(r"([MmHhz])([^MmHhz]*)", path.get("d")):
        nums = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        if cmd == "M":
            x, y = nums
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        elif cmd in "hH":
            end = x + nums[0] if cmd == "h" else nums[0]
            row = int(y)  # a line at y+.5 with stroke width 1 covers row int(y)
            for col in range(int(min(x, end)), int(max(x, end))):
                grid[row][col] = True
            x = end
    return grid
