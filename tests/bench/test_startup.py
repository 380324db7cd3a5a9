"""bench/startup.py's own parts: its section of RESULTS.md, the memory and CPU figures it reads from /proc."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_STARTUP = Path(__file__).resolve().parents[2] / "bench" / "startup.py"


@pytest.fixture(scope="module")
def startup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_startup", BENCH_STARTUP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_startup"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def section(startup: ModuleType, text: str) -> str:
    return f"{startup.BEGIN}\n{text}\n{startup.END}\n"


def test_write_replaces_only_its_own_section(startup: ModuleType, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Proxy benchmark\n\nrun.py's tables\n")
    startup.write(section(startup, "first run"), results)  # run.py rewrote the file: appended
    assert results.read_text() == "# Proxy benchmark\n\nrun.py's tables\n\n" + section(startup, "first run")
    results.write_text(results.read_text() + "\n## Written later by hand\n")
    startup.write(section(startup, "second run"), results)
    text = results.read_text()
    assert "first run" not in text and text.count(startup.BEGIN) == 1
    assert text.startswith("# Proxy benchmark\n\nrun.py's tables\n\n" + section(startup, "second run"))
    assert text.endswith("\n## Written later by hand\n")


def test_memory_and_cpu_are_read_for_a_live_process(startup: ModuleType) -> None:
    memory = startup.smaps(os.getpid())
    assert 0 < memory.anon_mb < memory.rss_mb  # this interpreter has both heap and mapped code
    assert startup.cpu_ms(os.getpid()) > 0


def test_a_startup_probe_would_hold_the_agent_a_whole_period(startup: ModuleType) -> None:
    """The kubelet probes as the sidecar starts and every second after: a proxy ready in 0.2 s passes the second
    probe (1 s), one ready in 1.2 s the third (2 s)."""
    series = startup.Series("proxy", [200.0, 256.0, 1200.0], [], [])
    assert startup.gate(series).startswith("INFO  a startupProbe with periodSeconds: 1 would start the agent 1 s ")
    assert "(median; 1–2 s over these starts)" in startup.gate(series)
