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
