"""The hook is a standalone module on its own path (hook/), imported here the way PYTHONPATH would."""

from __future__ import annotations

import sys

from tests.support.processes import REPO

if str(REPO / "hook") not in sys.path:
    sys.path.insert(0, str(REPO / "hook"))
