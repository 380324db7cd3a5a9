"""Zero-code activation of rum_llmobs_hook for a directory on PYTHONPATH (ddtrace-run, library injection).

Runs the next ``sitecustomize`` on sys.path (the image's own) once, then installs the hook when ddtrace
is loaded in this process (ddtrace-run's bootstrap or /datadog-lib imported it); otherwise does nothing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _chain_next_sitecustomize(state: object) -> None:
    if getattr(state, "chained_sitecustomize", True):
        return
    state.chained_sitecustomize = True  # type: ignore[attr-defined]
    here = os.path.dirname(os.path.realpath(__file__))
    entries = [os.path.realpath(entry or os.curdir) for entry in sys.path]
    if here not in entries:
        return
    rest = sys.path[entries.index(here) + 1 :]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin is None:
        return
    if os.path.realpath(spec.origin) == os.path.realpath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    try:
        import rum_llmobs_hook
    finally:
        del sys.path[0]
    try:
        _chain_next_sitecustomize(rum_llmobs_hook._state)
    finally:
        # Install last: if the chained sitecustomize loads ddtrace (/datadog-lib first on the path), it counts.
        if "ddtrace" in sys.modules:
            rum_llmobs_hook.install()


_main()
