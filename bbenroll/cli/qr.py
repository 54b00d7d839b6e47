"""QR codes of FURLs: for terminals (compact, two modules per character) and files."""

from __future__ import annotations

import io
from pathlib import Path

from bbenroll.fileio import atomic_write

ERROR_LEVEL = "m"  # survives a slightly blurry phone photo of a screen
TERMINAL_BORDER = 2  # modules of quiet zone; phones cope with 2, 4 is the standard

# (top ink, bottom ink) -> character
_HALF_BLOCKS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def _qr(text: str):
    import segno

    return segno.make(text, error=ERROR_LEVEL, micro=False, boost_error=False)


def module_rows(text: str, border: int) -> list[list[bool]]:
    """The code's modules (True = dark) with a quiet zone of ``border`` modules."""
    matrix = [[bool(m) for m in row] for row in _qr(text).matrix]
    width = len(matrix[0]) + 2 * border
    blank = [False] * width
    rows = [list(blank) for _ in range(border)]
    rows += [[False] * border + row + [False] * border for row in matrix]
    rows += [list(blank) for _ in range(border)]
    return rows


def terminal_text(text: str, *, color: bool, border: int = TERMINAL_BORDER) -> str:
    """A compact QR code for a terminal.

    With colour, dark modules are black on an explicit white background, which
    reads on any terminal theme. Without colour (NO_COLOR, pipes), the light
    modules are drawn as blocks, as ``qrencode -t UTF8`` does: on the usual dark
    terminal background that yields dark modules on light.
    """
    rows = module_rows(text, border)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        if color:
            chars = "".join(_HALF_BLOCKS[(t, b)] for t, b in zip(top, bottom, strict=True))
            lines.append(f"\x1b[30;107m{chars}\x1b[0m")
        else:
            lines.append("".join(_HALF_BLOCKS[(not t, not b)] for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)


def image_bytes(text: str, kind: str, scale: int = 8) -> bytes:
    buffer = io.BytesIO()
    _qr(text).save(buffer, kind=kind, scale=scale, border=4)
    return buffer.getvalue()


def write_image(text: str, path: Path) -> None:
    """Write a PNG or SVG (by suffix) holding the code; mode 0600, it is a secret."""
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in ("png", "svg"):
        kind = "png"
    atomic_write(Path(path), image_bytes(text, kind))
