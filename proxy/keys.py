"""Typed state of the admin application: every shared object has one AppKey here."""

from __future__ import annotations

from aiohttp import web

from proxy.app import Lifecycle
from proxy.metrics import Metrics

LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
