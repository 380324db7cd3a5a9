"""Builds the proxy's request path as C extensions with mypyc, the way mypy and black ship, or as plain Python.

The modules listed in pyproject.toml under [tool.rum-llmobs-proxy] `compiled` are plain, fully typed Python;
mypyc turns them into C extensions that run the same code with about a third less CPU per request (bench/README.md).
Everything else about the package is in pyproject.toml.

Which build you get (RUM_LLMOBS_PROXY_PURE_PYTHON):
- unset: compiled when this machine can compile a C extension (a C compiler and Python.h: Debian's `gcc
  python3-dev`), which is checked by compiling a two-line file before anything else. Otherwise, or when the compiled
  build fails, the package is built as plain Python and ONE line on stderr says so and how to get the compiled build
  (pip shows it with `pip install -v`; `rum-llmobs-proxy --version` always says which build is installed). An
  install never fails for want of a compiler.
- `1`: plain Python, nothing compiled.
- `0`: compiled or fail (`make compile`, and any build that must ship the compiled path).

What mypyc needs, and the decision: mypyc type-checks the compiled modules and what they import (aiohttp, ddtrace,
structlog, ...) and compiles what mypy inferred, so it must see the dependencies the proxy runs with. Under pip's
build isolation (`pip install .`, `pip wheel .`, `pip install git+...`, `python -m build`) the build environment
holds only the build requirements, and mypyc failed on the first missing import. Two ways out: check against
nothing (missing imports as Any), or give the build the dependencies. The first compiles different code from what
the tests, the benchmarks and the image run (every value from a dependency becomes Any), so this file gives the
build the dependencies: it is also the PEP 517 backend (pyproject.toml: `build-backend = "setup:BuildBackend"`),
setuptools' own hooks except that a wheel that will be compiled asks for pyproject.toml's [project] dependencies
as build requirements too. They are read from that one list, so the build and the installed package resolve the
same constraints (the same versions, normally; where a dependency's types changed in between, mypyc's checks at
the boundary raise TypeError rather than misbehave). A plain-Python wheel or an sdist asks for nothing more. Builds
without isolation (`make compile`, the image's `pip install --no-build-isolation`) use the environment they run
in, which holds the dependencies already.

Only the commands that build code compile: metadata and the sdist never run mypyc (the sdist ships the Python
source; its wheel is compiled where it is built).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

# setuptools ships no type information; mypy checks this file with `mypy setup.py`.
from setuptools import Extension, setup  # type: ignore[import-untyped]
from setuptools import build_meta as _setuptools_backend
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent
PURE_ENV = "RUM_LLMOBS_PROXY_PURE_PYTHON"
# The commands that build code; `egg_info`, `dist_info` (metadata) and `sdist` never compile.
BUILDING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop", "bdist", "bdist_egg"}
INSTALL_COMPILER = "install a C compiler and the Python headers (Debian: apt-get install gcc python3-dev)"


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def compiled_modules() -> list[str]:
    modules: list[str] = pyproject()["tool"]["rum-llmobs-proxy"]["compiled"]
    return [f"{module.replace('.', '/')}.py" for module in modules]


def say_pure(reason: str, remedy: str) -> None:
    print(
        f"rum-llmobs-proxy: {reason}: building the request path as plain Python (about 1.5x the CPU per request). "
        f"For the compiled build, {remedy} and reinstall; {PURE_ENV}=1 builds plain Python without this message.",
        file=sys.stderr,
        flush=True,
    )


def c_extension_blocker() -> str | None:
    """Why this interpreter cannot build a C extension here (no compiler, no Python.h), or None when it can."""
    from distutils.ccompiler import new_compiler  # setuptools' copy (imported above): what build_ext will use
    from distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    command: list[str] | None = getattr(compiler, "compiler_so", None)
    if not command:  # not a Unix-style compiler: let the build itself try
        return None
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("#include <Python.h>\nint probe(void) { return Py_IsInitialized(); }\n")
        try:
            result = subprocess.run(  # noqa: S603 - the compiler setuptools would run, on a file written here
                [*command, f"-I{include}", "-c", str(source), "-o", str(Path(tmp, "probe.o"))],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError:
            return f"no C compiler was found ({command[0]})"
    if result.returncode == 0:
        return None
    if "Python.h" in result.stderr:
        return f"the Python headers are missing (no Python.h in {include})"
    last = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
    return f"{command[0]} cannot compile a C extension ({last[0]})"


def pure_choice() -> str:
    """`1` plain Python, `0` compiled or fail, empty: compiled when possible (module docstring)."""
    return os.environ.get(PURE_ENV, "")


def wants_compiled() -> bool:
    """Whether to compile; False, after one line saying why, when the machine cannot and compiling is optional."""
    if pure_choice() == "1":
        return False
    blocker = c_extension_blocker()
    if blocker and pure_choice() == "0":
        sys.exit(f"rum-llmobs-proxy: {PURE_ENV}=0 asks for the compiled build, but {blocker}")
    if blocker:
        say_pure(blocker, INSTALL_COMPILER)
        return False
    return True


def mypyc_extensions() -> list[Extension]:
    from mypyc.build import mypycify

    modules = compiled_modules()
    # One shared library for the lot, inside the package (proxy/_compiled__mypyc.*.so): one group in `separate`.
    return list(mypycify(modules, opt_level="3", separate=[(modules, "proxy._compiled")]))


def ext_modules() -> list[Extension]:
    commands = {arg for arg in sys.argv[1:] if not arg.startswith("-")}
    if not commands & BUILDING or not wants_compiled():
        return []
    if pure_choice() == "0":
        return mypyc_extensions()
    try:
        return mypyc_extensions()
    except ImportError:  # a build without isolation, in an environment without the build requirements
        say_pure("mypy (mypyc) is not installed", "install the build requirements of pyproject.toml")
    except (Exception, SystemExit):  # mypy printed its errors; SystemExit is how mypyc reports them
        say_pure("mypyc failed", "resolve the errors above")
    return []


class FallbackBuildExt(build_ext):  # type: ignore[misc]
    """Builds the extensions; when the compiler fails on them, the modules stay Python (unless PURE_ENV is 0)."""

    def run(self) -> None:
        if pure_choice() == "0":
            super().run()
            return
        try:
            super().run()
        except Exception as error:  # CompileError, LinkError: the compiler printed why
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            say_pure(f"the C compiler failed ({error})", "resolve the errors above")


def mypyc_requirements() -> list[str]:
    """What mypyc type-checks against, when the wheel will be compiled: the [project] dependencies."""
    if pure_choice() == "1" or c_extension_blocker():
        return []
    dependencies: list[str] = pyproject()["project"]["dependencies"]
    return dependencies


class BuildBackend:
    """setuptools' PEP 517 backend; a wheel that will be compiled also requires the runtime dependencies."""

    build_wheel = staticmethod(_setuptools_backend.build_wheel)
    build_sdist = staticmethod(_setuptools_backend.build_sdist)
    build_editable = staticmethod(_setuptools_backend.build_editable)
    prepare_metadata_for_build_wheel = staticmethod(_setuptools_backend.prepare_metadata_for_build_wheel)
    prepare_metadata_for_build_editable = staticmethod(_setuptools_backend.prepare_metadata_for_build_editable)
    get_requires_for_build_sdist = staticmethod(_setuptools_backend.get_requires_for_build_sdist)

    @staticmethod
    def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
        return [*_setuptools_backend.get_requires_for_build_wheel(config_settings), *mypyc_requirements()]

    @staticmethod
    def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
        return [*_setuptools_backend.get_requires_for_build_editable(config_settings), *mypyc_requirements()]


if __name__ == "__main__":  # setuptools' backend runs this file as __main__; as the module `setup` it only defines
    setup(ext_modules=ext_modules(), cmdclass={"build_ext": FallbackBuildExt})
