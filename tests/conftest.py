"""Settings every test process shares, and Datadog's test agent for the suites that start real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.testagent import TestAgent, run_test_agent

# The proxy's ddtrace must never try to reach a Datadog Agent from the unit suite.
os.environ.setdefault("DD_TRACE_ENABLED", "false")
os.environ.setdefault("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false")
os.environ.setdefault("DD_REMOTE_CONFIGURATION_ENABLED", "false")


@pytest.fixture(scope="session")
def test_agent() -> Iterator[TestAgent]:
    """Datadog's test agent (ddapm-test-agent) on a free loopback port, standing in for the Datadog Agent."""
    with run_test_agent() as agent:
        yield agent
