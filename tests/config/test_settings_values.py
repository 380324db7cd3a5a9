"""Values a new user types: an upstream without `http://`, a log level in capitals. Each is read or named with the
value to write instead, never with a parser's words ("relative URL without a base") or a scheme that is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import ConfigError, load_settings
from config.settings import LogFormat, LogLevel

UPSTREAM = "RUM_PROXY_UPSTREAM_URL"
REPO = Path(__file__).resolve().parents[2]


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        ("127.0.0.1:8000", "'127.0.0.1:8000' has no scheme: use http://127.0.0.1:8000"),
        ("localhost:8000", "'localhost:8000' has no scheme: use http://localhost:8000"),
        ("agent", "'agent' has no scheme: use http://agent"),
        ("agent:8000/base", "'agent:8000/base' has no scheme: use http://agent:8000/base"),
        ("[::1]:8000", "'[::1]:8000' has no scheme: use http://[::1]:8000"),
        ("//agent:8000", "'//agent:8000' has no scheme: use http://agent:8000"),
        ("https://agent:8000", "must be an http:// URL: the agent runs beside the proxy, TLS to it is not supported "
         "(use http://agent:8000)"),
        ("ftp://agent", "must be an http:// URL such as http://127.0.0.1:8000, not ftp://"),
        ("http//agent:8000", "'http//agent:8000' is not an http:// URL such as http://127.0.0.1:8000"),
        ("a b", "'a b' is not an http:// URL such as http://127.0.0.1:8000"),
        ("", "is empty: give the agent's URL, e.g. http://127.0.0.1:8000"),
        ("http://agent/?a=1", "must not carry a query or fragment"),
    ],
)  # fmt: skip
def test_an_unusable_upstream_is_named_with_what_to_write(typed: str, line: str) -> None:
    [problem] = problems({UPSTREAM: typed})
    assert problem == f"{UPSTREAM}: {line}"


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
        ("HTTP://Agent:8000", "http://agent:8000/"),
        ("  http://agent:8000/base ", "http://agent:8000/base"),
    ],
)
def test_an_http_upstream_is_read(typed: str, url: str) -> None:
    assert str(load_settings({UPSTREAM: typed}).upstream_url) == url


@pytest.mark.parametrize(
    ("variable", "typed", "field", "value"),
    [
        ("RUM_PROXY_LOG_LEVEL", "INFO", "log_level", LogLevel.INFO),
        ("RUM_PROXY_LOG_LEVEL", "Debug", "log_level", LogLevel.DEBUG),
        ("RUM_PROXY_LOG_LEVEL", " warning ", "log_level", LogLevel.WARNING),
        ("RUM_PROXY_LOG_FORMAT", "JSON", "log_format", LogFormat.JSON),
        ("RUM_PROXY_LOG_FORMAT", "Console", "log_format", LogFormat.CONSOLE),
    ],
)
def test_log_settings_ignore_case(variable: str, typed: str, field: str, value: object) -> None:
    settings = load_settings({UPSTREAM: "http://agent:8000", variable: typed})
    assert getattr(settings, field) == value


def test_an_unknown_log_level_lists_the_valid_ones() -> None:
    assert problems({UPSTREAM: "http://agent:8000", "RUM_PROXY_LOG_LEVEL": "VERBOSE"}) == [
        "RUM_PROXY_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'"
    ]


def test_the_command_names_the_url_to_write_and_exits_2() -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("RUM_PROXY_")}
    result = subprocess.run(
        [sys.executable, "-m", "proxy"],
        env={**environ, UPSTREAM: "localhost:8000", "RUM_PROXY_LOG_LEVEL": "INFO"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        ["rum-llmobs-proxy: configuration error: RUM_PROXY_UPSTREAM_URL: 'localhost:8000' has no scheme: use "
         "http://localhost:8000"],
    )  # fmt: skip
