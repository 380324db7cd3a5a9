"""The one ClientSession used to reach the upstream, configured to pass bytes through untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web

from proxy.keys import SETTINGS, UPSTREAM_SESSION

# aiohttp would otherwise add its own Accept, Accept-Encoding, User-Agent and Content-Type.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


async def upstream_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pooled session for the app's lifetime."""
    settings = app[SETTINGS]
    connector = TCPConnector(limit=settings.max_connections, limit_per_host=0, force_close=False)
    # No total cap: an LLM stream may legitimately last longer than any fixed limit; connect and idle
    # (socket read) timeouts catch dead upstreams instead.
    timeout = ClientTimeout(
        total=None,
        connect=None,
        sock_connect=settings.connect_timeout_seconds,
        sock_read=settings.idle_timeout_seconds,
    )
    session = ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        trust_env=False,
    )
    app[UPSTREAM_SESSION] = session
    yield
    await session.close()
