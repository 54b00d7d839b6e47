"""Ready for the package index: the sdist and wheel build, pass twine check, and carry the licence.

Builds both artifacts the way a release does (``python -m build``, without
network isolation: the build backend is in the test extras), then checks them
as the index would (``twine check --strict``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["project"]["urls"]["Source"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
         str(ROOT)],
        capture_output=True, text=True, timeout=240,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (sdist,) = out.glob("bbenroll-*.tar.gz")
    (wheel,) = out.glob("bbenroll-*.whl")
    return sdist, wheel


def test_twine_check_is_clean_on_both(artifacts: tuple[Path, Path]) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, artifacts)],
        capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_licence_the_plugin_and_the_metadata_are_in_the_artifacts(artifacts: tuple[Path, Path]) -> None:
    sdist, wheel = artifacts
    licence = (ROOT / "LICENSE").read_bytes()
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (licence_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert whl.read(licence_name) == licence
        assert "twisted/plugins/bbenroll_endpoints.py" in names
        assert not any(n in names for n in ("twisted/__init__.py", "twisted/plugins/__init__.py"))
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(metadata_name).decode()
    assert "License-Expression: GPL-2.0-or-later" in metadata
    assert "License-File: LICENSE" in metadata
    assert f"Project-URL: Source, {REPOSITORY}" in metadata
    assert "Classifier: Framework :: Twisted" in metadata
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        assert tar.extractfile(f"{top}/LICENSE").read() == licence
        assert f"{top}/workers.toml.example" in tar.getnames()


def test_the_licence_file_is_the_licence_pyproject_declares() -> None:
    assert PYPROJECT["project"]["license"] == "GPL-2.0-or-later"
    text = " ".join((ROOT / "LICENSE").read_text().split())
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert "or (at your option) any later version" in text  # the "or later" the expression claims


def test_readme_links_work_when_rendered_on_the_index() -> None:
    """On the index the README has no repository around it: every link must be absolute."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links, "the README links to the docs"
    relative = [link for link in links if not re.match(r"https?://|#", link)]
    assert relative == [], f"relative links in README.md: {relative}"
    for link in links:
        if link.startswith(REPOSITORY + "/blob/main/"):
            assert (ROOT / link.removeprefix(REPOSITORY + "/blob/main/")).exists(), link
