"""Zero-code activation of rum_llmobs_hook for a directory on PYTHONPATH; hides no other sitecustomize.

Python imports only the first ``sitecustomize`` on sys.path. This one first runs the next one after its
directory that has not run yet in this process (the image's own, Datadog's /datadog-lib/ one, ...), as
ddtrace's bootstrap does, so the hook's directory can go first on PYTHONPATH. A sitecustomize that runs
this one again (ddtrace's bootstrap re-imports ``sitecustomize`` once it has loaded the tracer) gets the
next one in turn, so each runs once. Then it installs the hook when ddtrace is loaded in this process
(ddtrace-run's bootstrap, library injection, or the chained sitecustomize loaded it); under plain
``python`` it does nothing. What the chained sitecustomize raises is what Python reports for it anyway.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _run_next_sitecustomize(ran: set[str]) -> None:
    here = os.path.dirname(os.path.realpath(__file__))
    ran.add(os.path.realpath(__file__))
    entries = [os.path.realpath(entry or os.curdir) for entry in sys.path]
    if here not in entries:
        return
    for entry in sys.path[entries.index(here) + 1 :]:
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None or spec.origin is None:
            continue
        origin = os.path.realpath(spec.origin)
        if origin in ran:
            continue
        ran.add(origin)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
        return


def _main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    try:
        import rum_llmobs_hook
    finally:
        del sys.path[0]
    try:
        _run_next_sitecustomize(rum_llmobs_hook._state.sitecustomize_ran)
    finally:
        # Install last: if the chained sitecustomize loads ddtrace (/datadog-lib's), it counts.
        if "ddtrace" in sys.modules:
            rum_llmobs_hook.install()


_main()
