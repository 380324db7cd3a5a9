"""A proxy that forwards to itself (issue 17, item 12): its own listening address is refused at start
(tests/config/test_upstream_loop.py); a loop it cannot see from its settings — here two proxies pointing at each
other — is stopped by the Via pseudonym each adds to every request it forwards."""

from __future__ import annotations

from tests.hardening.conftest import ProxyFactory
from tests.hardening.rawhttp import build_request, exchange
from tests.support.processes import free_port


def test_a_request_that_comes_back_is_answered_508_once(running_proxy: ProxyFactory) -> None:
    port_a, port_b = free_port(), free_port()
    proxy_a = running_proxy(f"http://127.0.0.1:{port_b}", port=port_a, MAX_CONNECTIONS=8)
    proxy_b = running_proxy(f"http://127.0.0.1:{port_a}", port=port_b, MAX_CONNECTIONS=8)
    response = exchange(proxy_a.port, build_request("GET", "/loop"))
    assert (response.status, response.json()["error"]) == (508, "loop_detected"), response.body[:300]
    # A (the client's request, then the one B forwarded back), B once: no storm of requests.
    proxy_a.wait_for_lines(lambda _: len(proxy_a.request_lines("/loop")) == 2)
    assert len(proxy_b.request_lines("/loop")) == 1
