"""Every setting of the proxy, read from RUM_PROXY_* environment variables and validated once."""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from typing import Annotated

from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2 token
_DOTTED_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


class SessionSource(enum.StrEnum):
    """Where in a request the RUM session ID may be found."""

    BODY = "body"
    QUERY = "query"
    HEADER = "header"
    BAGGAGE = "baggage"
    COOKIE = "cookie"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


DEFAULT_SOURCES = (
    SessionSource.BODY,
    SessionSource.QUERY,
    SessionSource.HEADER,
    SessionSource.BAGGAGE,
    SessionSource.COOKIE,
)

CommaList = Annotated[tuple[str, ...], NoDecode]


ENV_PREFIX = "RUM_PROXY_"


def env_name(field: str) -> str:
    """The environment variable of a settings field: `admin_port` -> `RUM_PROXY_ADMIN_PORT`."""
    return f"{ENV_PREFIX}{field}".upper()


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# host[:port][/path] with no scheme: a name, an IPv4 address or a bracketed IPv6 address.
_SCHEMELESS = re.compile(r"^(?:[\w.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:/\S*)?$")
UPSTREAM_EXAMPLE = "http://127.0.0.1:8000"


def _upstream_scheme(value: object) -> object:
    """An upstream URL without `http://` is named with the URL to write instead (pydantic would read `localhost:8000`
    as scheme `localhost` and `127.0.0.1:8000` as a relative URL, and suggest https, which is refused)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        raise ValueError(f"is empty: give the agent's URL, e.g. {UPSTREAM_EXAMPLE}")
    scheme = _SCHEME.match(text)
    if scheme and scheme.group(1).lower() == "https":
        raise ValueError(
            f"must be an http:// URL: the agent runs beside the proxy, TLS to it is not supported "
            f"(use http://{text[scheme.end() :]})"
        )
    if scheme and scheme.group(1).lower() != "http":
        raise ValueError(f"must be an http:// URL such as {UPSTREAM_EXAMPLE}, not {scheme.group(1)}://")
    if not scheme:
        bare = text.removeprefix("//")
        if "//" not in bare and _SCHEMELESS.match(bare):
            raise ValueError(f"{text!r} has no scheme: use http://{bare}")
        raise ValueError(f"{text!r} is not an http:// URL such as {UPSTREAM_EXAMPLE}")
    return text


def _lower_case(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _parse_sources(value: object) -> object:
    """Comma-separated sources: at least one, each a SessionSource; the message lists the valid values."""
    values = _split_commas(value)
    if not isinstance(values, tuple | list):
        return values
    names = [source.value for source in SessionSource]
    valid = ", ".join(names)
    if not values:
        raise ValueError(f"must name at least one source (valid: {valid}); empty would correlate nothing")
    unknown = [str(v) for v in values if str(v).lower() not in names]
    if unknown:
        verb = "is not a source" if len(unknown) == 1 else "are not sources"
        raise ValueError(f"{', '.join(map(repr, unknown))} {verb} (valid: {valid})")
    return tuple(SessionSource(str(v).lower()) for v in values)


class Settings(BaseSettings):
    """The proxy's configuration. Environment variables are the field names upper-cased, prefixed RUM_PROXY_."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    upstream_url: AnyHttpUrl = Field(description="Base URL of the agent service the proxy forwards to (required).")
    host: str = Field("0.0.0.0", description="Address the proxy listens on.")  # noqa: S104 - a sidecar serves the pod
    port: int = Field(8080, ge=0, le=65535, description="Port the proxy listens on.")
    admin_host: str = Field("0.0.0.0", description="Address of the admin server (health, readiness, metrics).")  # noqa: S104
    admin_port: int = Field(8081, ge=0, le=65535, description="Port of the admin server.")

    session_header: str = Field("x-rum-session-id", description="Header the validated session ID is forwarded in.")
    sources: Annotated[tuple[SessionSource, ...], NoDecode] = Field(
        DEFAULT_SOURCES,
        description="Where to look for the session ID, in order of precedence; leave a source out to switch it off.",
    )
    body_fields: CommaList = Field(
        ("session_id",), description="JSON body fields (dotted paths) or form fields holding the session ID."
    )
    query_params: CommaList = Field(("session_id",), description="Query parameters holding the session ID.")
    header_names: CommaList = Field(("x-rum-session-id",), description="Request headers holding the session ID.")
    max_inspect_bytes: int = Field(
        1_048_576, ge=0, description="Largest JSON or form body buffered to look for the session ID."
    )
    propagate_baggage: bool = Field(True, description="Add session.id to the W3C baggage header forwarded upstream.")
    preserve_host: bool = Field(True, description="Forward the client's Host header (else the upstream's host).")

    connect_timeout_seconds: float = Field(5.0, gt=0, description="Time to open a connection to the upstream.")
    idle_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest silence from the upstream (before or between response chunks)."
    )
    body_read_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest wait for the client's request body (whole inspected body, or between chunks).",
    )
    max_connections: int = Field(
        1024, ge=1, description="Concurrent upstream requests and WebSockets; more are refused with 503."
    )
    ws_max_message_bytes: int = Field(4_194_304, ge=1024, description="Largest WebSocket frame relayed.")
    max_client_connections: int = Field(
        4096, ge=1, description="Open client connections; one more is answered 503 and closed at once."
    )
    max_header_bytes: int = Field(
        65_536, ge=1024, description="Largest request head (request line and headers); more is refused with 431."
    )
    max_headers: int = Field(100, ge=8, description="Most request headers; more are refused with 431.")
    max_response_header_bytes: int = Field(
        65_536, ge=1024, description="Largest upstream response head; a larger one is answered 502 to the client."
    )
    inspect_budget_bytes: int = Field(
        67_108_864,
        ge=0,
        description="Request bytes all connections together may hold while looking for the session ID; past it "
        "bodies are forwarded uninspected (fail open).",
    )
    send_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest time a client may leave the proxy's bytes unread (mid-response, or flushing before a "
        "close); then the connection is reset. In a WebSocket, the same for either end, agent included.",
    )
    linger_seconds: float = Field(
        5.0,
        ge=0,
        description="After answering a request whose body is still arriving, how long the rest is read and "
        "discarded before closing, so the client sees the answer instead of a reset (RFC 9112 §9.6).",
    )
    header_read_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest time from a request's first byte to the end of its headers (then 408)."
    )
    keepalive_timeout_seconds: float = Field(
        75.0, gt=0, description="How long an idle client connection is kept open between requests."
    )
    upstream_keepalive_seconds: float = Field(
        1.5,
        ge=0,
        description="How long an idle pooled upstream connection is kept; shorter than the agent server's own "
        "keep-alive (gunicorn 2 s, uvicorn 5 s) so the proxy never reuses one the agent is closing.",
    )
    workers: int = Field(1, ge=1, le=64, description="Processes serving the port (SO_REUSEPORT).")
    reuse_port: bool = Field(
        True, description="Listen with SO_REUSEPORT, so a new proxy process can take the port while the old drains."
    )
    propagate_trace: bool = Field(
        True,
        description="Continue the incoming Datadog/W3C trace context (or start one) and carry the session in it "
        "as _dd.p.llmobs_sid.",
    )
    apm_span: bool = Field(
        False, description="Also report a ddtrace APM span per request (costs CPU; needs a Datadog Agent)."
    )
    shutdown_grace_seconds: float = Field(
        25.0, ge=0, description="On SIGTERM, how long in-flight requests and streams may take to finish."
    )

    log_level: LogLevel = Field(LogLevel.INFO, description="debug, info, warning or error.")
    log_format: LogFormat = Field(
        LogFormat.AUTO, description="json, console, or auto (console on a TTY, JSON otherwise)."
    )

    _split = field_validator("body_fields", "query_params", "header_names", mode="before")(_split_commas)
    _sources = field_validator("sources", mode="before")(_parse_sources)
    _upstream = field_validator("upstream_url", mode="before")(_upstream_scheme)
    _log_case = field_validator("log_level", "log_format", mode="before")(_lower_case)

    @field_validator("upstream_url")
    @classmethod
    def _no_query_in_upstream(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.query or value.fragment:
            raise ValueError("must not carry a query or fragment")
        if value.scheme != "http":
            raise ValueError("must be an http:// URL (the agent runs beside the proxy; TLS to it is not supported)")
        return value

    @field_validator("session_header")
    @classmethod
    def _header_token(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid header name")
        return value.lower()

    @field_validator("header_names")
    @classmethod
    def _header_tokens(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not _HEADER_NAME.match(value):
                raise ValueError(f"{value!r} is not a valid header name")
        return tuple(v.lower() for v in values)

    @field_validator("body_fields")
    @classmethod
    def _dotted_paths(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not _DOTTED_PATH.match(value):
                raise ValueError(f"{value!r} is not a dotted field path")
        return values

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, values: tuple[SessionSource, ...]) -> tuple[SessionSource, ...]:
        repeated = sorted({source.value for source in values if values.count(source) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} is listed more than once")
        return values

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.port and self.port == self.admin_port:
            raise ValueError(f"{env_name('port')} and {env_name('admin_port')} must differ (both are {self.port})")
        return self

    @model_validator(mode="after")
    def _upstream_is_not_the_proxy(self) -> Settings:
        """An upstream that is the proxy's own listening address would send every request back to the proxy."""
        upstream = (self.upstream_url.host or "").strip("[]").lower()
        if self.port and (self.upstream_url.port or 80) == self.port and _same_listener(upstream, self.host):
            raise ValueError(
                f"{env_name('upstream_url')} {self.upstream_url} is the proxy's own address ({env_name('host')}="
                f"{self.host}, {env_name('port')}={self.port}): every request would come back to the proxy. Point "
                "it at the agent's port, or give the proxy another port."
            )
        return self


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, compared, never bound
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_listener(upstream: str, listen: str) -> bool:
    """Whether a connection to `upstream` (on the proxy's port) reaches a socket listening on `listen`."""
    listen = listen.strip("[]").lower()
    if upstream == listen or upstream in _WILDCARDS:  # connecting to 0.0.0.0 or :: reaches this host
        return True
    if listen in _WILDCARDS:
        return _is_loopback(upstream) or upstream == socket.gethostname().lower()
    if upstream in _LOOPBACK_NAMES:  # localhost: 127.0.0.1 or ::1
        return listen in ("127.0.0.1", "::1")
    return False
