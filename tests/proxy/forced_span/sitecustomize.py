"""Test-only: makes the process produce a ddtrace span every 0.1 s, whatever the proxy's request path does.

Put on PYTHONPATH by tests/proxy/test_log.py so ddtrace's trace writer has something to (fail to) send.
"""

from __future__ import annotations

import threading
import time

from ddtrace.trace import tracer


def _produce_spans() -> None:
    while True:
        with tracer.trace("rum_proxy.test.forced_span"):
            pass
        time.sleep(0.1)  # input shape: a steady trickle of spans, not a synchronisation


threading.Thread(target=_produce_spans, name="forced-span", daemon=True).start()
