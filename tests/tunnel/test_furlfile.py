"""The FURL file format: one FURL line, ``# serial N``, comments; atomic private writes."""

from __future__ import annotations

import os
import stat

import pytest

from bbenroll.tunnel.furlfile import FurlFile, FurlFileError, read_furl_file, write_furl_file
from tests.helpers.fake_master import read_only_directory

FURL = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9/" + "b" * 32
OTHER = "pb://" + "c" * 32 + "@tcp:127.0.0.1:10/" + "d" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FURL + "\n", FurlFile(FURL, 0)),  # what `worker create` always wrote
        (FURL, FurlFile(FURL, 0)),
        (f"# serial 3\n{FURL}\n", FurlFile(FURL, 3)),
        (f"# a comment\n\n  {FURL}  \n# serial 12\n", FurlFile(FURL, 12)),
        (f"#serial 0\n{FURL}\n", FurlFile(FURL, 0)),
        (f"# serialised by hand\n{FURL}\n", FurlFile(FURL, 0)),  # "serial" is a word, not a prefix
    ],
)
def test_reads_the_furl_and_its_serial(tmp_path, text, expected):
    path = tmp_path / "bbenroll.furl"
    path.write_text(text)
    assert read_furl_file(path) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("# serial 3\n", "no FURL in the file"),
        ("", "no FURL in the file"),
        (f"{FURL}\n{OTHER}\n", "2 FURL lines; expected exactly one"),
        (f"# serial three\n{FURL}\n", "malformed serial line"),
        (f"# serial -1\n{FURL}\n", "malformed serial line"),
        (f"# serial \u0663\n{FURL}\n", "malformed serial line"),  # a non-ASCII digit
        (f"# serial\n{FURL}\n", "malformed serial line"),
        (f"# serial 1\n# serial 2\n{FURL}\n", "more than one serial line"),
    ],
)
def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "bbenroll.furl"
    path.write_text(text)
    with pytest.raises(FurlFileError) as caught:
        read_furl_file(path)
    message = str(caught.value)
    assert problem in message and str(path) in message and "\n" not in message


def test_a_missing_file_is_an_error_with_the_path(tmp_path):
    with pytest.raises(FurlFileError, match=r"cannot read FURL file .*missing\.furl: No such file"):
        read_furl_file(tmp_path / "missing.furl")


def test_writes_serial_and_furl_privately_and_reads_them_back(tmp_path):
    path = tmp_path / "bbenroll.furl"
    write_furl_file(path, FURL)
    assert path.read_text() == FURL + "\n"  # serial 0: exactly what `worker create` wrote before
    write_furl_file(path, OTHER, 4)
    assert path.read_text() == f"# serial 4\n{OTHER}\n"
    assert read_furl_file(path) == FurlFile(OTHER, 4)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["bbenroll.furl"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_file_and_says_why(tmp_path):
    path = tmp_path / "bbenroll.furl"
    write_furl_file(path, FURL, 1)
    with read_only_directory(tmp_path):
        with pytest.raises(FurlFileError, match=r"cannot write FURL file .*(denied|not permitted)"):
            write_furl_file(path, OTHER, 2)
    assert read_furl_file(path) == FurlFile(FURL, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["bbenroll.furl"]
