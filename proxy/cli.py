"""Command line: `rum-llmobs-proxy` / `python -m proxy`. Reads settings, serves, drains on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import structlog
from aiohttp import http_parser, web

from config.loader import ConfigError, env_name, exit_on_config_error, load_settings, unknown_variables
from config.settings import Settings
from proxy import __version__

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
    parser = argparse.ArgumentParser(
        prog="rum-llmobs-proxy",
        description="Reverse proxy that forwards the browser's Datadog RUM session ID to an AI agent service, "
        "so its LLM Observability spans carry it as session_id.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--print-config", action="store_true", help="print the effective settings as JSON and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        exit_on_config_error(error)
    if args.print_config:
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    if http_parser.HttpResponseParser is http_parser.HttpResponseParserPy:
        print(
            "rum-llmobs-proxy: aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS set, or no binary wheel "
            "for this platform); refusing to parse untrusted upstream responses with the slow pure-Python parser",
            file=sys.stderr,
        )
        return 2

    from ddtrace.trace import tracer

    from proxy.log import configure_logging

    configure_logging(settings.log_level, settings.log_format, trace_correlation=tracer.enabled)
    for unknown in unknown_variables():
        logger.warning("unknown_variable", variable=unknown.name, did_you_mean=unknown.suggestion)
    return asyncio.run(serve(settings, tracing_enabled=tracer.enabled))


async def serve(settings: Settings, *, tracing_enabled: bool) -> int:
    from proxy.app import create_app
    from proxy.health import create_admin_app
    from proxy.keys import LIFECYCLE

    app = create_app(settings, tracing_enabled=tracing_enabled)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds
    )
    admin_runner = web.AppRunner(create_admin_app(app), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await admin_runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        admin_site = web.TCPSite(admin_runner, settings.admin_host, settings.admin_port)
        await site.start()
        await admin_site.start()
    except OSError as error:
        logger.error("cannot_listen", detail=str(error))
        await runner.cleanup()
        await admin_runner.cleanup()
        return 1
    logger.info(
        "listening",
        proxy=_addresses(runner),
        admin=_addresses(admin_runner),
        upstream=str(settings.upstream_url),
        sources=[s.value for s in settings.sources],
        tracing=tracing_enabled,
        version=__version__,
    )
    await stop.wait()
    logger.info("draining", grace_seconds=settings.shutdown_grace_seconds)
    app[LIFECYCLE].draining = True
    # Stops listening, closes idle keep-alive connections, runs on_shutdown (WebSockets get 1001), waits up to
    # the grace period for in-flight requests and streams, cancels the rest, then closes the upstream session.
    await runner.cleanup()
    await admin_runner.cleanup()
    logger.info("stopped")
    return 0


def _addresses(runner: web.AppRunner) -> list[str]:
    return [f"{address[0]}:{address[1]}" for address in runner.addresses]
