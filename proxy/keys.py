"""Typed application state: every object shared across requests has one AppKey here."""

from __future__ import annotations

from aiohttp import ClientSession, web

from config.settings import Settings
from proxy.forward import Forwarder
from proxy.metrics import Metrics
from proxy.websocket import WebSocketBridge


class Lifecycle:
    """Whether the proxy still takes traffic; readiness answers 503 once draining."""

    def __init__(self) -> None:
        self.draining = False


SETTINGS = web.AppKey("settings", Settings)
UPSTREAM_SESSION = web.AppKey("upstream_session", ClientSession)
FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", Metrics)
WEBSOCKETS = web.AppKey("websockets", WebSocketBridge)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
