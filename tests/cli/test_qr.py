"""QR codes of FURLs, decoded for real with zxing-cpp: files, terminal output, the CLI."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from bbenroll.cli import qr
from tests.helpers import cli as cli_helpers
from tests.helpers.cli import HINT
from tests.helpers.qr import ANSI_RE, BLOCKS, decode, decode_terminal, render, svg_modules, terminal_modules

TUBID = "ev6y7vlbzcrpgt6niysqd7gqwvkdm2vs"
SWISSNUM = "qmfxqebnmeggx3ttmuyyurezp3b633r6"
TYPICAL_FURL = f"pb://{TUBID}@{HINT}/{SWISSNUM}"
FURLS = [
    TYPICAL_FURL,
    f"pb://{TUBID}@tcp:10.0.0.1:9989,tcp:[2001:db8::1]:9989,tcp:bb.example.org:9989/{SWISSNUM * 2}",
    f"pb://{TUBID}@tcp:b:1/{SWISSNUM}",
]
NO_FORCED_COLOR: dict[str, str | None] = {"FORCE_COLOR": None}  # colour follows the terminal only


# --- image files -------------------------------------------------------------


@pytest.mark.parametrize("furl", FURLS)
def test_png_decodes_to_the_furl_and_is_private(tmp_path: Path, furl: str) -> None:
    path = tmp_path / "code.png"
    qr.write_image(furl, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert decode(img.convert("L")) == [furl]


def test_svg_is_wellformed_private_and_decodes(tmp_path: Path) -> None:
    path = tmp_path / "code.SVG"  # suffix case does not matter
    qr.write_image(TYPICAL_FURL, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert decode(render(svg_modules(root))) == [TYPICAL_FURL]


def test_unknown_suffix_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "code.img"
    qr.write_image(TYPICAL_FURL, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_image_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "code.png"
    path.write_bytes(b"old")
    path.chmod(0o644)
    qr.write_image(TYPICAL_FURL, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Image.open(path) as img:
        assert decode(img.convert("L")) == [TYPICAL_FURL]


# --- terminal ----------------------------------------------------------------


@pytest.mark.parametrize("color", [False, True], ids=["plain", "color"])
@pytest.mark.parametrize("furl", FURLS)
def test_terminal_qr_scans(furl: str, color: bool) -> None:
    text = qr.terminal_text(furl, color=color)
    assert ("\x1b[" in text) == color
    assert decode_terminal(text) == [furl]


@pytest.mark.parametrize("color", [False, True], ids=["plain", "color"])
def test_terminal_qr_polarity(color: bool) -> None:
    """Reading the blocks with the wrong polarity must not scan (so the check above means something)."""
    text = qr.terminal_text(TYPICAL_FURL, color=color)
    wrong = terminal_modules(text, blocks_are_dark=not color)
    assert decode(render(wrong)) == []


@pytest.mark.parametrize("color", [False, True], ids=["plain", "color"])
def test_terminal_qr_is_compact(color: bool) -> None:
    text = qr.terminal_text(TYPICAL_FURL, color=color)
    lines = [ANSI_RE.sub("", line) for line in text.split("\n")]
    assert len(lines) <= 26
    assert max(len(line) for line in lines) <= 50
    # two modules per character row: the symbol plus the border fills the lines exactly
    width, height = qr.qr_code(TYPICAL_FURL).symbol_size(border=qr.TERMINAL_BORDER)
    assert len(lines) == (height + 1) // 2
    assert {len(line) for line in lines} == {width}


@pytest.mark.parametrize("color", [False, True], ids=["plain", "color"])
def test_terminal_qr_quiet_zone_is_light(color: bool) -> None:
    """The border is light all round; with colour the whole block is (the odd row's padding too)."""
    grid = terminal_modules(qr.terminal_text(TYPICAL_FURL, color=color), blocks_are_dark=color)
    border = qr.TERMINAL_BORDER
    width, height = qr.qr_code(TYPICAL_FURL).symbol_size(border=border)
    assert len(grid) == height + 1  # an odd number of rows, padded to whole lines
    symbol = grid[:height]
    for row in symbol[:border] + symbol[-border:]:
        assert not any(row)
    for row in symbol:
        assert not any(row[:border]) and not any(row[-border:])
        assert len(row) == width
    assert any(any(row) for row in symbol)  # not blank: the check above can fail
    if color:
        assert not any(grid[-1])  # white under the code, not a black strip


def test_terminal_color_lines_reset_their_attributes() -> None:
    for line in qr.terminal_text(TYPICAL_FURL, color=True).split("\n"):
        assert line.startswith("\x1b[") and line.endswith("\x1b[0m")


# --- the CLI -----------------------------------------------------------------


def run_cli(argv: list[str], env: dict[str, str | None] | None = None) -> cli_helpers.Result:
    return cli_helpers.run_cli(argv, env={**NO_FORCED_COLOR, **(env or {})})


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry (absolute path) with one worker, created through the CLI."""
    reg = tmp_path_factory.mktemp("qr-cli") / "workers.toml"
    result = run_cli(["--registry", str(reg), "init", "--location", HINT])
    assert result.code == 0, result.err
    result = run_cli(["--registry", str(reg), "add", "wörker-1", "--note", "QR test"])
    assert result.code == 0, result.err
    return reg


def split_qr(out: str) -> tuple[str, list[str]]:
    """(terminal QR block, other lines) of stdout."""
    lines = out.rstrip("\n").split("\n")
    qr_lines = [line for line in lines if ANSI_RE.sub("", line) and set(ANSI_RE.sub("", line)) <= set(BLOCKS)]
    rest = [line for line in lines if line not in qr_lines]
    assert qr_lines == lines[: len(qr_lines)], "the QR code comes first, in one block"
    return "\n".join(qr_lines), rest


@pytest.mark.parametrize("env", [{}, {"NO_COLOR": "1"}], ids=["default", "NO_COLOR"])
def test_cli_show_qr_png_svg(enrolled: Path, tmp_path: Path, env: dict[str, str]) -> None:
    png, svg = tmp_path / "furl.png", tmp_path / "furl.svg"
    shown = run_cli(["--registry", str(enrolled), "show", "wörker-1", "--json"], env)
    assert shown.code == 0, shown.err
    furl = json.loads(shown.out)["furl"]
    result = run_cli(
        ["--registry", str(enrolled), "show", "wörker-1", "--qr", "--png", str(png), "--svg", str(svg)], env
    )
    assert result.code == 0, result.err
    out, err = result.out, result.err
    # stdout is not a terminal here, and NO_COLOR says the same: no escapes at all
    assert "\x1b" not in out and "\x1b" not in err
    # stdout: the QR code, then the FURL on the last line
    lines = out.rstrip("\n").split("\n")
    assert out.endswith("\n")
    assert lines[-1] == furl
    block, rest = split_qr(out)
    assert rest == [furl]
    assert decode_terminal(block) == [furl]
    # files: private, decodable
    for path in (png, svg):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert str(path) in err
    with Image.open(png) as img:
        assert decode(img.convert("L")) == [furl]
    assert decode(render(svg_modules(ET.parse(svg).getroot()))) == [furl]


def test_cli_add_qr(tmp_path: Path) -> None:
    reg = tmp_path / "workers.toml"
    assert run_cli(["--registry", str(reg), "init", "--location", HINT]).code == 0
    added = run_cli(["--registry", str(reg), "add", "w1", "--qr"], {"NO_COLOR": "1"})
    assert added.code == 0, added.err
    assert "\x1b" not in added.out + added.err
    block, rest = split_qr(added.out)
    furl = json.loads(run_cli(["--registry", str(reg), "show", "w1", "--json"]).out)["furl"]
    assert rest == [furl]
    assert decode_terminal(block) == [furl]


# --- a real terminal ---------------------------------------------------------


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 30.0) -> tuple[int, str]:
    """Run ``python -m bbenroll ARGV`` with stdout and stderr on a pseudo-terminal."""
    import pty

    master, slave = pty.openpty()
    unset = ("NO_COLOR", "FORCE_COLOR", "BBENROLL_REGISTRY")
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}, **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbenroll", *argv],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=full_env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError("bbenroll did not finish in time")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = proc.wait(timeout)
    return code, b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_real_terminal_color_and_no_color(tmp_path: Path) -> None:
    reg = tmp_path / "workers.toml"
    assert run_cli(["--registry", str(reg), "init", "--location", HINT]).code == 0
    assert run_cli(["--registry", str(reg), "add", "w1"]).code == 0
    furl = json.loads(run_cli(["--registry", str(reg), "show", "w1", "--json"]).out)["furl"]
    # revoked: 'show' prints a warning, which is coloured on a terminal
    assert run_cli(["--registry", str(reg), "revoke", "w1"]).code == 0

    code, out = run_in_pty(["--registry", str(reg), "show", "w1", "--qr"], {})
    assert code == 0, out
    assert "\x1b[" in out  # a terminal gets colour: the QR blocks and the warning
    qr_lines = [line for line in out.split("\n") if line.startswith("\x1b[30;107m")]
    assert decode_terminal("\n".join(qr_lines)) == [furl]
    assert out.rstrip("\n").split("\n")[-1] == furl

    code, out = run_in_pty(["--registry", str(reg), "show", "w1", "--qr"], {"NO_COLOR": "1"})
    assert code == 0, out
    assert "\x1b" not in out
    assert "warning: worker 'w1' is revoked" in out
    lines = out.rstrip("\n").split("\n")
    assert lines[-1] == furl
    qr_lines = [line for line in lines if line and set(line) <= set(BLOCKS)]
    assert decode_terminal("\n".join(qr_lines)) == [furl]
