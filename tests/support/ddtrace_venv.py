"""A second virtualenv with another ddtrace version, everything else shared with the main venv (cheap)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def installed_ddtrace_version(python: Path) -> str | None:
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import ddtrace; print(ddtrace.__version__)"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_ddtrace_venv(version: str, venv: Path | None = None) -> Path:
    """Return the python of a venv whose ddtrace is ``version``; other packages come from the main venv.

    The venv has only ddtrace (installed with --no-deps) and a .pth file adding the main venv's
    site-packages after its own, so its ddtrace shadows the main one. Reused when already present.
    """
    venv = venv or REPO / ".venv-ddtrace-oldest"
    python = venv / "bin" / "python"
    if installed_ddtrace_version(python) == version:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    main_site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    (_site_packages(venv) / "_main_venv.pth").write_text(f"{main_site}\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", f"ddtrace=={version}"],
        check=True,
    )
    return python
