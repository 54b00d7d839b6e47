"""The worker's FURL file (``bbenroll.furl``): one FURL line, and ``# serial N`` once it was pushed.

Lines starting with ``#`` are comments to every reader; ``# serial N`` is the one
comment that means something: the number of the FURL (docs/rotation.md), 0 when
absent. Written atomically (a 0600 temp file in the same directory, fsync,
rename), so a crash or a full disk leaves the old FURL or the new one, never half.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bbenroll.errors import BBEnrollError
from bbenroll.fileio import atomic_write

_SERIAL_RE = re.compile(r"#\s*serial\b(.*)\Z")
_DECIMAL_RE = re.compile(r"[0-9]{1,18}\Z")  # ASCII digits only; fits the wire's 8-byte Serial


class FurlFileError(BBEnrollError):
    """The FURL file cannot be read, is malformed, or cannot be written."""


@dataclass(frozen=True)
class FurlFile:
    furl: str
    serial: int = 0


def parse_furl_text(text: str, where: str) -> FurlFile:
    """The FURL and serial in ``text`` (the content of the file ``where``, named in errors)."""
    furls: list[str] = []
    serial: int | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _SERIAL_RE.match(line)
            if match is None:
                continue  # an ordinary comment
            value = match.group(1).strip()
            if not _DECIMAL_RE.match(value):
                raise FurlFileError(f"{where}: malformed serial line {line[:40]!r} (expected '# serial N')")
            if serial is not None:
                raise FurlFileError(f"{where}: more than one serial line")
            serial = int(value)
            continue
        furls.append(line)
    if not furls:
        raise FurlFileError(f"{where}: no FURL in the file")
    if len(furls) > 1:
        raise FurlFileError(f"{where}: {len(furls)} FURL lines; expected exactly one")
    return FurlFile(furls[0], serial or 0)


def read_furl_file(path: Path) -> FurlFile:
    """Read ``path``; :class:`FurlFileError` (one line, with the path) when it cannot be used.

    The FURL's syntax is the caller's to check (``parse_furl``): this reads the format only.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FurlFileError(f"{path}: not a text file") from None
    except OSError as e:
        raise FurlFileError(f"cannot read FURL file {path}: {e.strerror}") from None
    return parse_furl_text(text, str(path))


def furl_file_text(furl: str, serial: int = 0) -> str:
    """The file's content: the FURL line, after ``# serial N`` when N is not 0 (files from
    before pushed rotation stay byte for byte what they were)."""
    if serial < 0:
        raise ValueError("serials are not negative")
    line = furl.strip() + "\n"
    return f"# serial {serial}\n{line}" if serial else line


def write_furl_file(path: Path, furl: str, serial: int = 0) -> None:
    """Replace ``path`` atomically and durably (mode 0600) with ``furl`` numbered ``serial``."""
    try:
        atomic_write(Path(path), furl_file_text(furl, serial).encode("ascii"))
    except UnicodeEncodeError:
        raise FurlFileError(f"{path}: a FURL is ASCII; refusing to write this one") from None
    except OSError as e:
        raise FurlFileError(f"cannot write FURL file {e.filename or path}: {e.strerror}") from None
