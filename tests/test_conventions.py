"""Research-software conventions: a licence, valid citation metadata, a changelog in the Keep a
Changelog format, and one version (``attnflow.__version__``) that the packaging metadata, the
``attnflow --version`` command and CITATION.cff repeat. (The installed wheel is checked in
``tests/test_meshdata.py``: meshes, a particle run and the version outside the repository.)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mpi4py import MPI

import attnflow

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def _cff() -> dict:
    """CITATION.cff's top-level scalars (a YAML subset: ``key: value`` lines)."""
    out = {}
    for line in (ROOT / "CITATION.cff").read_text().splitlines():
        m = re.match(r'^([a-z-]+):\s*"?([^"]*?)"?\s*$', line)
        if m and m.group(2):
            out[m.group(1)] = m.group(2)
    return out


def test_version_has_one_source():
    assert "version" not in PYPROJECT["project"], "pyproject.toml repeats the version"
    assert "version" in PYPROJECT["project"]["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "attnflow.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d*)?", attnflow.__version__)
    # The installed metadata (editable install) says the same.
    assert importlib.metadata.version("attnflow") == attnflow.__version__
    assert _cff()["version"] == attnflow.__version__


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="runs a child interpreter")
def test_the_command_prints_the_version(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPIR_"))}
    out = subprocess.run(
        [sys.executable, "-m", "attnflow", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"attnflow {attnflow.__version__}"
    assert not any(tmp_path.iterdir())  # nothing written to the working directory


def test_licence_is_mit_everywhere():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert PYPROJECT["project"]["license"] == "MIT"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]
    assert _cff()["license"] == "MIT"


def test_citation_cff_is_valid():
    cffconvert = shutil.which("cffconvert") or str(Path(sys.executable).parent / "cffconvert")
    if importlib.util.find_spec("cffconvert") is None or not Path(cffconvert).exists():
        if os.environ.get("ATTNFLOW_REQUIRE_DOCS") == "1":
            pytest.fail("cffconvert missing (pip install -e '.[docs]')")
        pytest.skip("cffconvert missing (pip install -e '.[docs]')")
    out = subprocess.run(
        [cffconvert, "--validate", "-i", str(ROOT / "CITATION.cff")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_changelog_follows_keep_a_changelog():
    lines = (ROOT / "CHANGELOG.md").read_text().splitlines()
    assert lines[0] == "# Changelog"
    releases = [ln for ln in lines if ln.startswith("## ")]
    assert releases[0] == "## [Unreleased]"
    dates = []
    for ln in releases[1:]:
        m = re.fullmatch(r"## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})", ln)
        assert m, f"release heading not '## [x.y.z] - YYYY-MM-DD': {ln!r}"
        dates.append(m.group(2))
    assert dates == sorted(dates, reverse=True), "releases newest first"
    # The released version of the package has its entry (or is the next, unreleased one).
    versions = [re.search(r"\[(.*?)\]", ln).group(1) for ln in releases[1:]]
    assert attnflow.__version__ in versions
    subsections = {ln[4:].strip() for ln in lines if ln.startswith("### ")}
    assert subsections <= SECTIONS, subsections - SECTIONS
    # Every subsection has entries.
    for i, ln in enumerate(lines):
        if ln.startswith("### "):
            assert lines[i + 1].startswith("- "), f"empty section {ln!r}"
