"""The hook is a standalone module on its own path (hook/), imported here the way PYTHONPATH would."""

from __future__ import annotations

import sys

from tests.support.processes import REPO

for hook_dir in (REPO / "hook", REPO / "hook" / "otel"):  # rum_llmobs_hook, and its OpenTelemetry twin
    if str(hook_dir) not in sys.path:
        sys.path.insert(0, str(hook_dir))
