"""Release files: the licence pyproject.toml names, one version everywhere a user reads it, a changelog entry for it.

The version is `__version__` in proxy/__init__.py; the wheel's metadata reads it (tests/deploy/test_install.py
checks the installed wheel's), `--version` and inject's default image print it, and the image tags the docs and
the Dockerfile show must name it, so a version bump cannot leave a document behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from proxy import __version__
from proxy.inject.model import DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAG = re.compile(r"rum-llmobs-proxy:(\d+\.\d+\.\d+\S*?)\b")


def test_the_license_is_the_apache_2_0_text_pyproject_names() -> None:
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_wheel_takes_its_version_from_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "proxy.__version__"}


def test_inject_defaults_to_this_versions_image() -> None:
    assert DEFAULT_IMAGE == f"rum-llmobs-proxy:{__version__}"


def test_version_prints_the_package_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"rum-llmobs-proxy {__version__} (")


def test_every_image_tag_the_docs_show_is_this_version() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md", "Dockerfile", "deploy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stale = {
        f"{name}: rum-llmobs-proxy:{tag}"
        for name in listed
        if "node_modules" not in name and not name.startswith(("tests/", "CHANGELOG")) and (REPO / name).is_file()
        for tag in IMAGE_TAG.findall((REPO / name).read_text(errors="replace"))
        if tag != __version__
    }
    assert not stale, f"image tags other than {__version__}: {sorted(stale)}"


def test_the_changelog_has_an_entry_for_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert __version__ in headings


def test_the_image_label_is_this_version_and_the_image_ships_the_licence() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{__version__}"' in dockerfile
    assert "COPY LICENSE /usr/share/doc/rum-llmobs-proxy/LICENSE" in dockerfile
