"""Shared fixtures: real upstream servers and a proxy in front of them."""

from __future__ import annotations

import os

# The proxy's ddtrace must never try to reach a Datadog Agent from the unit suite.
os.environ.setdefault("DD_TRACE_ENABLED", "false")
os.environ.setdefault("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false")
os.environ.setdefault("DD_REMOTE_CONFIGURATION_ENABLED", "false")
