"""Zero-code activation in real interpreters: sitecustomize chaining, idempotence, inertness, version guard."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.processes import REPO, VENV_PYTHON

HOOK = REPO / "hook"
PROBE = (
    "import sys, rum_llmobs_hook as h; print('installed', h.is_installed()); print('ddtrace', 'ddtrace' in sys.modules)"
)


def _run(argv: list[str], pythonpath: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_ENABLED": "false",
        **env,
    }
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60, check=False)


def _image_sitecustomize(tmp_path: Path) -> Path:
    other = tmp_path / "image"
    other.mkdir()
    (other / "sitecustomize.py").write_text("print('image sitecustomize ran')\n")
    return other


def test_plain_python_chains_to_the_next_sitecustomize_and_stays_inert(tmp_path: Path) -> None:
    result = _run([str(VENV_PYTHON), "-c", PROBE], [HOOK, _image_sitecustomize(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["image sitecustomize ran", "installed False", "ddtrace False"]


def test_ddtrace_run_installs_once_and_chains_once(tmp_path: Path) -> None:
    argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), "-c", PROBE]
    result = _run(argv, [HOOK, _image_sitecustomize(tmp_path)], DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert result.returncode == 0, result.stderr
    # once in the ddtrace-run launcher (hook inert there), once in the application
    assert result.stdout.count("image sitecustomize ran") == 2
    assert result.stdout.splitlines()[-2:] == ["installed True", "ddtrace True"]
    assert "rum_llmobs_hook" not in result.stderr


def test_install_is_idempotent_and_registers_one_processor() -> None:
    code = (
        "import ddtrace.auto, rum_llmobs_hook as h\n"
        "from ddtrace._trace.processor import SpanProcessor\n"
        "assert h.install() and h.install()\n"
        "print(sum(type(p).__name__ == '_SessionProcessor' for p in SpanProcessor.__processors__))\n"
    )
    result = _run([str(VENV_PYTHON), "-c", code], [HOOK])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_unsupported_ddtrace_logs_one_line_and_does_nothing() -> None:
    code = "import ddtrace, rum_llmobs_hook as h\nddtrace.__version__ = '4.12.0'\nprint(h.install())\n"
    result = _run([str(VENV_PYTHON), "-c", code], [HOOK])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    lines = [line for line in result.stderr.splitlines() if "rum_llmobs_hook" in line]
    assert lines == ["rum_llmobs_hook: ddtrace 4.12.0 is not supported (need >=4.13,<5.0); hook not installed"]


def test_disabled_by_environment() -> None:
    code = "import ddtrace, rum_llmobs_hook as h; print(h.install())"
    result = _run([str(VENV_PYTHON), "-c", code], [HOOK], RUM_LLMOBS_HOOK_ENABLED="false")
    assert result.stdout.strip() == "False"


def test_pip_installed_hook_activates_with_one_import(tmp_path: Path) -> None:
    """`pip install ./hook` installs only the module (never a sitecustomize); `install()` activates it."""
    target = tmp_path / "site"
    build = subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(HOOK)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert "deprecated" not in build.stderr  # e.g. setuptools' `project.license as a TOML table is deprecated`
    assert (target / "rum_llmobs_hook.py").exists()
    assert not (target / "sitecustomize.py").exists()
    code = "import ddtrace.auto, rum_llmobs_hook as h\nprint(h.install(), h.__file__)\n"
    result = _run([str(VENV_PYTHON), "-c", code], [target], DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert result.returncode == 0, result.stderr
    installed, path = result.stdout.split()
    assert installed == "True"
    assert Path(path).parent == target
