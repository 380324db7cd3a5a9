"""The small interfaces the pieces of the forwarding core know each other by, so every import points one way:
server (client connection) -> forward (exchange) -> upstream (pool, connection) and websocket (tunnel), all of them
-> ports; app (the services and the registry) knows connections, exchanges and tunnels only through these."""

from __future__ import annotations

from typing import Final, Protocol

from proxy.flow import FlowControl
from proxy.headers import RequestHead
from proxy.session import NOT_FOUND, Extraction

CLIENT_CLOSED_REQUEST: Final = 499  # nginx's convention, for logs and metrics only: nothing is sent


class ResponseListener(Protocol):
    """What an upstream connection reports to the exchange (or tunnel) using it."""

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep: bool) -> None: ...
    def on_response_body(self, chunk: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upgraded(self, rest: bytes) -> None: ...
    def on_upstream_error(self, kind: str, detail: str) -> None: ...
    def on_upstream_lost(self, exc: Exception | None) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...


class Peer(Protocol):
    """One side of an exchange or a tunnel: a connection whose flow state it owns."""

    @property
    def flow(self) -> FlowControl: ...
    def write(self, data: bytes) -> None: ...


class Downstream(Peer, Protocol):
    """The client connection, as an exchange and a tunnel see it."""

    @property
    def remote(self) -> str | None: ...
    def abort(self) -> None: ...
    def exchange_done(self, exchange: object, keep_client: bool, linger: bool) -> None: ...
    def start_tunnel(self, exchange: object, upstream: object, rest: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...


class RequestRecord:
    """What counting and logging a request reads (proxy.app.Proxy.request_finished): the exchange's own fields,
    kept in a base class so that reading them is compiled attribute access, not a Protocol's dynamic lookup."""

    def __init__(self, head: RequestHead, started: float) -> None:
        self.head = head
        self.started = started
        self.extraction: Extraction = NOT_FOUND
        self.status = CLIENT_CLOSED_REQUEST
        self.error: str | None = None
        self.log_trace_id: str | None = None
        self.logged = False  # the request line is written by someone else (a rate-limited bad_request line)
        self.counted = False
        self.span: object | None = None

    @property
    def path(self) -> str:
        return self.head.target.partition(b"?")[0].decode("latin-1")


class Abortable(Protocol):
    def abort(self) -> None: ...


class GoingAway(Protocol):
    def go_away(self) -> None: ...
