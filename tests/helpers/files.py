"""A directory nothing can be written to, even by root (the tests run as root in CI containers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """``path`` refuses new entries for the block: mode 0500, or ``chattr +i`` for root
    (whom modes do not stop); the test is skipped where neither works."""
    if os.name != "posix":
        pytest.skip("needs POSIX permissions")
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True, capture_output=True)
