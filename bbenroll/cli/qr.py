"""QR codes of FURLs: for terminals (compact, two modules per character) and files.

segno draws everything; what is ours is the terminal's colour choice. segno's
compact terminal writer draws the light modules as blocks and leaves the dark
ones to the terminal's background, as ``qrencode -t UTF8`` does: right for a
dark terminal without colour. With colour we draw the dark modules instead, in
black on an explicit white background, which reads on any terminal theme.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bbenroll.fileio import atomic_write

ERROR_LEVEL = "m"  # survives a slightly blurry phone photo of a screen
TERMINAL_BORDER = 2  # modules of quiet zone; phones cope with 2, 4 is the standard
IMAGE_BORDER = 4  # modules of quiet zone in PNG and SVG files: the standard
IMAGE_SCALE = 8  # pixels per module in PNG files (SVG: user units)
IMAGE_KINDS = ("png", "svg")  # by file suffix; anything else is written as PNG
BLACK_ON_WHITE = "\x1b[30;107m"  # SGR: black foreground, bright white background
RESET = "\x1b[0m"

# segno's half blocks draw light modules; drawing the dark ones swaps each for its opposite.
_DARK_BLOCKS = str.maketrans("█▀▄ ", " ▄▀█")
# A symbol with its quiet zone has an odd number of rows: segno pads the last line's
# lower half as dark, which with colour would be a black strip under the white quiet zone.
_LIGHT_LOWER_HALF = str.maketrans("▄█", " ▀")


def qr_code(text: str) -> Any:
    """The ``segno.QRCode`` of ``text``, always a full QR code at ``ERROR_LEVEL``."""
    import segno

    return segno.make(text, error=ERROR_LEVEL, micro=False, boost_error=False)


def terminal_text(text: str, *, color: bool, border: int = TERMINAL_BORDER) -> str:
    """A compact QR code for a terminal (no trailing newline).

    With colour, dark modules are black on an explicit white background, which
    reads on any terminal theme. Without colour (NO_COLOR, pipes), the light
    modules are drawn as blocks, as ``qrencode -t UTF8`` does: on the usual dark
    terminal background that yields dark modules on light.
    """
    out = io.StringIO()
    qr_code(text).terminal(out=out, border=border, compact=True)
    lines = out.getvalue().rstrip("\n").split("\n")
    if not color:
        return "\n".join(lines)
    lines = [line.translate(_DARK_BLOCKS) for line in lines]
    lines[-1] = lines[-1].translate(_LIGHT_LOWER_HALF)
    return "\n".join(f"{BLACK_ON_WHITE}{line}{RESET}" for line in lines)


def image_bytes(text: str, kind: str, scale: int = IMAGE_SCALE) -> bytes:
    buffer = io.BytesIO()
    qr_code(text).save(buffer, kind=kind, scale=scale, border=IMAGE_BORDER)
    return buffer.getvalue()


def write_image(text: str, path: Path) -> None:
    """Write a PNG or SVG (by suffix) holding the code; mode 0600, it is a secret."""
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in IMAGE_KINDS:
        kind = "png"
    atomic_write(Path(path), image_bytes(text, kind))
