"""Builds the proxy's request path as C extensions with mypyc, the way mypy and black ship.

The modules listed in pyproject.toml under [tool.rum-llmobs-proxy] `compiled` are plain, fully typed Python;
mypyc turns them into C extensions that run the same code with about a third less CPU per request (bench/README.md).
RUM_LLMOBS_PROXY_PURE_PYTHON=1 builds without a C compiler: the same modules then run as Python, slower and
otherwise identical. Everything else about the package is in pyproject.toml.
"""

import os
import tomllib
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list[str]:
    with (Path(__file__).parent / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["rum-llmobs-proxy"]["compiled"]
    return [f"{module.replace('.', '/')}.py" for module in modules]


def ext_modules() -> list[object]:
    if os.environ.get("RUM_LLMOBS_PROXY_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    modules = compiled_modules()
    # One shared library for the lot, inside the package (proxy/_compiled__mypyc.*.so): one group in `separate`.
    return list(mypycify(modules, opt_level="3", separate=[(modules, "proxy._compiled")]))


setup(ext_modules=ext_modules())
