"""Command line: `rum-llmobs-proxy` / `python -m proxy`. Reads settings, serves, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from config.loader import ConfigError, env_name, exit_on_config_error, load_settings, unknown_variables
from config.settings import Settings
from proxy import __version__, compiled

if TYPE_CHECKING:
    import argparse

    from proxy.metrics import Metrics

logger = structlog.get_logger()


def _settings_help() -> str:
    lines = ["environment variables (defaults in brackets):"]
    for name, field in Settings.model_fields.items():
        default = "required" if field.is_required() else _render(field.default)
        lines.append(f"  {env_name(name):<40} {field.description} [{default}]")
    lines.append("  DD_TRACE_ENABLED, DD_SERVICE, DD_ENV, DD_VERSION, DD_TRACE_AGENT_URL: ddtrace's own settings")
    return "\n".join(lines)


def _render(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    import argparse  # only when there are arguments to parse: a sidecar starts without any (issue 20)

    parser = argparse.ArgumentParser(
        prog="rum-llmobs-proxy",
        description="Reverse proxy that forwards the browser's Datadog RUM session ID to an AI agent service, "
        "so its LLM Observability spans carry it as session_id.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--print-config", action="store_true", help="print the effective settings as JSON and exit")
    core = "compiled" if compiled() else "pure Python"
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} ({core})")
    parser.epilog = "subcommand:\n  inject [FILE...]  add the proxy to Kubernetes manifests (inject --help)\n\n" + (
        parser.epilog or ""
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inject"]:  # needs no settings: it only rewrites manifests
        from proxy.inject_cli import main as inject_main

        return inject_main(argv[1:])
    # What the imports built lives as long as the process: frozen, no collection traverses it again. The start's one
    # full collection otherwise walks all of it (~50k objects, about 15 ms of CPU to ready; issue 20).
    gc.freeze()
    print_config = bool(argv) and build_parser().parse_args(argv).print_config
    try:
        settings = load_settings()
    except ConfigError as error:
        exit_on_config_error(error)
    if print_config:
        import json

        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    raise_open_files_limit()
    if settings.workers > 1:
        from proxy.workers import prepare_shared_metrics

        prepare_shared_metrics()  # before prometheus_client is imported anywhere
    from proxy.log import configure_logging

    tracing = settings.apm_span and _ddtrace_enabled()
    configure_logging(settings.log_level, settings.log_format, trace_correlation=tracing)
    for unknown in unknown_variables():
        logger.warning("unknown_variable", variable=unknown.name, did_you_mean=unknown.suggestion)
    import uvloop

    if settings.workers > 1:
        from proxy.workers import supervise

        return supervise(settings, tracing_enabled=tracing)
    return uvloop.run(serve(settings, tracing_enabled=tracing))


def _ddtrace_enabled() -> bool:
    """ddtrace's own switch (DD_TRACE_ENABLED); ddtrace is imported only when the proxy's span is asked for."""
    from ddtrace.trace import tracer

    return bool(tracer.enabled)


def raise_open_files_limit() -> None:
    """Each stream holds two sockets: lift the soft limit on open files to the hard one (often 1024 → 1M)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def serve(
    settings: Settings,
    *,
    tracing_enabled: bool,
    admin: bool = True,
    worker: int | None = None,
    on_listening: Callable[[], object] | None = None,
) -> int:
    """Listen, serve until SIGTERM/SIGINT, drain within the grace period, exit 0.

    With `admin` False (a worker of RUM_PROXY_WORKERS), the supervisor serves the admin port instead and learns
    from `on_listening` that this worker listens.
    """
    from proxy.app import Proxy
    from proxy.health import create_admin_app
    from proxy.server import ClientConnection

    loop = asyncio.get_running_loop()
    proxy = Proxy(settings, tracing_enabled=tracing_enabled)
    admin_runner = web.AppRunner(create_admin_app(proxy.lifecycle, proxy.metrics), access_log=None)
    if admin:
        await admin_runner.setup()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        server = await loop.create_server(
            lambda: ClientConnection(proxy),
            settings.host,
            settings.port,
            backlog=1024,
            reuse_port=settings.reuse_port or worker is not None,
        )
        if admin:
            admin_site = web.TCPSite(admin_runner, settings.admin_host, settings.admin_port)
            await admin_site.start()
    except OSError as error:
        logger.error("cannot_listen", detail=str(error))
        if admin:
            await admin_runner.cleanup()
        return 1
    logger.info(
        "listening",
        proxy=[f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets],
        admin=_addresses(admin_runner) if admin else None,
        worker=worker,
        upstream=str(settings.upstream_url),
        sources=[s.value for s in settings.sources],
        trace_propagation=settings.propagate_trace,
        apm_span=tracing_enabled,
        compiled=compiled(),
        version=__version__,
    )
    gc.freeze()  # so does what the start built: each full collection under load walks only the requests' objects
    if on_listening is not None:
        on_listening()
    publishing = None if admin else loop.create_task(_publish_metrics(proxy.metrics))
    await stop.wait()
    logger.info("draining", grace_seconds=settings.shutdown_grace_seconds)
    # Readiness turns 503 and the listener closes (no new connections); idle keep-alive connections close,
    # busy ones after their response; WebSockets get 1001; what is still open after the grace period is cut.
    server.close()
    proxy.drain()
    await proxy.wait_closed(settings.shutdown_grace_seconds)
    if publishing is not None:
        publishing.cancel()
        proxy.metrics.publish()  # the last requests, before the supervisor reads this worker's files
    if admin:
        await admin_runner.cleanup()
    logger.info("stopped")
    return 0


async def _publish_metrics(metrics: Metrics) -> None:
    """A worker's counts reach the supervisor's /metrics (shared files) within PUBLISH_SECONDS."""
    from proxy.metrics import PUBLISH_SECONDS

    while True:
        await asyncio.sleep(PUBLISH_SECONDS)
        metrics.publish()


def _addresses(runner: web.AppRunner) -> list[str]:
    return [f"{address[0]}:{address[1]}" for address in runner.addresses]
