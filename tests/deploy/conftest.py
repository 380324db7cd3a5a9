"""Fixtures for the deployment-artefact tests: repo paths and a kustomize renderer."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"

Render = Callable[[Path], list[dict[str, Any]]]


def _kustomize_command() -> list[str] | None:
    """The real kustomize: standalone binary first, else the one built into kubectl (>= 1.14)."""
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if kubectl := shutil.which("kubectl"):
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


@pytest.fixture(scope="session")
def render() -> Render:
    command = _kustomize_command()
    if command is None:
        pytest.skip(
            "no kustomize: install `kustomize` or `kubectl` (this repo's test machines have "
            "kubectl with kustomize v5 built in; see deploy/README.md)"
        )

    def _render(path: Path) -> list[dict[str, Any]]:
        result = subprocess.run([*command, str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AssertionError(f"kustomize failed on {path}:\n{result.stderr}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render
