"""Zero-code activation in real interpreters: sitecustomize chaining, idempotence, inertness, version guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ddtrace
import pytest

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


# ---------------------------------------------------------------- loading independent of order

CHAINING_IMAGE_SITECUSTOMIZE = """\
# An image's sitecustomize that runs the next one, as ddtrace's bootstrap does.
import importlib.machinery, importlib.util, os, sys
print("image sitecustomize ran")
here = os.path.dirname(os.path.abspath(__file__))
rest = sys.path[[os.path.abspath(p or ".") for p in sys.path].index(here) + 1 :]
spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
if spec is not None:
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)
"""

# What Datadog's library injection puts in /datadog-lib/ (DataDog/dd-trace-py lib-injection/sources/
# sitecustomize.py), reduced to the steps that decide what runs: without a ddtrace of the application's own, put
# the bundled site-packages on sys.path, take its own directory off, put ddtrace's bootstrap directory first and
# import ddtrace.bootstrap.sitecustomize, which re-imports `sitecustomize` (the next one on sys.path). With a
# ddtrace of the application's own it stops, and runs nothing after it.
DATADOG_LIB_SITECUSTOMIZE = """\
import importlib.util, os, sys
SCRIPT_DIR = os.path.dirname(__file__)
if importlib.util.find_spec("ddtrace") is None:
    name = "site-packages-ddtrace-py%d.%d-manylinux2014" % sys.version_info[:2]
    pkgs = os.path.join(SCRIPT_DIR, "ddtrace_pkgs", name)
    sys.path.insert(-1, pkgs)
    import ddtrace
    if SCRIPT_DIR in sys.path:
        sys.path.remove(SCRIPT_DIR)
    bootstrap_dir = os.path.join(os.path.abspath(os.path.dirname(ddtrace.__file__)), "bootstrap")
    if bootstrap_dir not in sys.path:
        sys.path.insert(0, bootstrap_dir)
    import ddtrace.bootstrap.sitecustomize
    print("datadog-lib injected ddtrace")
else:
    print("datadog-lib: user-installed ddtrace found, aborting")
"""

LIB_PROBE = (
    "import sys, rum_llmobs_hook as h\n"
    "from ddtrace._trace.processor import SpanProcessor\n"
    "print('installed', h.is_installed())\n"
    "print('bootstrapped', getattr(sys.modules.get('ddtrace.bootstrap.sitecustomize'), 'loaded', None))\n"
    "print('processors', sum(type(p).__name__ == '_SessionProcessor' for p in SpanProcessor.__processors__))\n"
)


def test_hook_first_runs_the_images_sitecustomize_and_an_image_one_first_hides_it(tmp_path: Path) -> None:
    """Why inject puts the hook first: an image's sitecustomize in front of it is the only one Python runs."""
    image = _image_sitecustomize(tmp_path)
    first = _run([str(VENV_PYTHON), "-c", PROBE], [HOOK, image])
    assert first.stdout.splitlines() == ["image sitecustomize ran", "installed False", "ddtrace False"]
    argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), "-c", PROBE]
    hidden = _run(argv, [image, HOOK], DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout.splitlines()[-2:] == ["installed False", "ddtrace True"], "hidden behind the image's"


def test_an_image_sitecustomize_before_the_hook_that_chains_as_ddtrace_does(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "sitecustomize.py").write_text(CHAINING_IMAGE_SITECUSTOMIZE)
    argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), "-c", PROBE]
    result = _run(argv, [image, HOOK], DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-3:] == ["image sitecustomize ran", "installed True", "ddtrace True"]


def test_each_sitecustomize_runs_once_when_one_re_imports_sitecustomize(tmp_path: Path) -> None:
    """A sitecustomize after the hook's that imports `sitecustomize` again (ddtrace's bootstrap does) gets the next
    one, not the same one twice and not none."""
    reimporting, image = tmp_path / "reimporting", _image_sitecustomize(tmp_path)
    reimporting.mkdir()
    (reimporting / "sitecustomize.py").write_text(
        "import sys\nprint('reimporting ran')\nsys.modules.pop('sitecustomize', None)\nimport sitecustomize\n"
    )
    result = _run([str(VENV_PYTHON), "-c", PROBE], [HOOK, reimporting, image])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "reimporting ran",
        "image sitecustomize ran",
        "installed False",
        "ddtrace False",
    ]


@pytest.fixture(scope="module")
def app_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An application's interpreter without ddtrace (what library injection is for): a bare venv of the same Python."""
    venv = tmp_path_factory.mktemp("app-venv")
    subprocess.run([str(VENV_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import ddtrace"], capture_output=True, check=False).returncode != 0
    return python


@pytest.fixture(scope="module")
def datadog_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/datadog-lib/ as Datadog's init container leaves it: its sitecustomize and ddtrace_pkgs/ with this ddtrace."""
    lib = tmp_path_factory.mktemp("datadog-lib")
    (lib / "sitecustomize.py").write_text(DATADOG_LIB_SITECUSTOMIZE)
    major, minor = sys.version_info[:2]
    (lib / "ddtrace_pkgs").mkdir()
    site_packages = Path(ddtrace.__file__).parent.parent
    (lib / "ddtrace_pkgs" / f"site-packages-ddtrace-py{major}.{minor}-manylinux2014").symlink_to(site_packages)
    return lib


@pytest.mark.parametrize("order", ["datadog-lib-first", "hook-first"])
def test_datadog_library_injection_loads_ddtrace_then_the_hook_then_the_image(
    app_python: Path, datadog_lib: Path, tmp_path: Path, order: str
) -> None:
    """Both orders: /datadog-lib/ prepended at pod creation (the admission controller's PYTHONPATH mode), or listed
    after the hook in the manifest (inject puts the hook first). Real ddtrace, real bootstrap."""
    image = _image_sitecustomize(tmp_path)
    path = [datadog_lib, HOOK, image] if order == "datadog-lib-first" else [HOOK, datadog_lib, image]
    result = _run([str(app_python), "-c", LIB_PROBE], path, DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("image sitecustomize ran") == 1, lines
    assert lines[-3:] == ["installed True", "bootstrapped True", "processors 1"], lines
    assert "datadog-lib injected ddtrace" in lines


def test_datadog_library_injection_with_the_images_own_ddtrace_runs_nothing_after_it(
    datadog_lib: Path, tmp_path: Path
) -> None:
    """Datadog's own limit, not the hook's: when the application has ddtrace installed, /datadog-lib/'s
    sitecustomize stops without running the next one; with the hook first, the hook's still runs and chains."""
    image = _image_sitecustomize(tmp_path)
    hidden = _run([str(VENV_PYTHON), "-c", PROBE], [datadog_lib, HOOK, image])
    assert hidden.stdout.splitlines() == [
        "datadog-lib: user-installed ddtrace found, aborting",
        "installed False",
        "ddtrace False",
    ]
    argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), "-c", PROBE]
    first = _run(argv, [HOOK, datadog_lib, image], DD_LLMOBS_ENABLED="1", DD_LLMOBS_ML_APP="t")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-2:] == ["installed True", "ddtrace True"]
