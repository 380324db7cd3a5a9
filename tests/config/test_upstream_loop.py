"""A proxy whose upstream is its own listening address is refused at start (issue 17, item 12): it would turn one
request into as many as it has connection slots, all answered 503."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from config.loader import ConfigError, load_settings
from tests.support.processes import REPO


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),  # the defaults with the agent's port mistaken for the proxy's
        ("0.0.0.0", "http://localhost:8080/api"),
        ("0.0.0.0", "http://[::1]:8080"),
        ("0.0.0.0", "http://127.0.0.2:8080"),
        ("0.0.0.0", "http://0.0.0.0:8080"),
        ("0.0.0.0", f"http://{socket.gethostname()}:8080"),
        ("::", "http://127.0.0.1:8080"),
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("127.0.0.1", "http://localhost:8080"),
        ("10.1.2.3", "http://10.1.2.3:8080"),
    ],
)
def test_an_upstream_that_is_the_proxy_itself_is_refused(listen: str, upstream: str) -> None:
    environ = {"RUM_PROXY_HOST": listen, "RUM_PROXY_PORT": "8080", "RUM_PROXY_UPSTREAM_URL": upstream}
    [line] = problems(environ)
    assert line.startswith(f"RUM_PROXY_UPSTREAM_URL {upstream}")
    assert f"is the proxy's own address (RUM_PROXY_HOST={listen}, RUM_PROXY_PORT=8080)" in line


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),  # the agent beside the proxy
        ("0.0.0.0", "http://agent:8080"),  # another host on the same port
        ("127.0.0.1", "http://127.0.0.2:8080"),  # another loopback address than the one listened on
        ("10.1.2.3", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1"),  # port 80
    ],
)
def test_an_upstream_elsewhere_is_accepted(listen: str, upstream: str) -> None:
    load_settings({"RUM_PROXY_HOST": listen, "RUM_PROXY_PORT": "8080", "RUM_PROXY_UPSTREAM_URL": upstream})


def test_the_proxy_exits_with_the_configuration_error() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUM_PROXY_")}
    env.update({"RUM_PROXY_UPSTREAM_URL": "http://localhost:18080", "RUM_PROXY_PORT": "18080"})
    done = subprocess.run(
        [sys.executable, "-m", "proxy"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "configuration error: RUM_PROXY_UPSTREAM_URL http://localhost:18080/ is the proxy's own address" in (
        done.stderr
    )
