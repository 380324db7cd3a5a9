"""RUM_PROXY_WORKERS > 1: worker processes share the port (SO_REUSEPORT); this supervisor serves the admin port.

Metrics are summed across workers with prometheus-client's multiprocess mode (one memory-mapped file per worker
in a private directory). SIGTERM reaches every worker, which drains as a single process would; a worker that
dies on its own is started again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile

import structlog
from aiohttp import web

from config.settings import Settings

logger = structlog.get_logger()
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_shared_metrics() -> None:
    if MULTIPROC_ENV not in os.environ:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="rum-llmobs-proxy-metrics-")


def _start_worker(settings: Settings, index: int, *, tracing_enabled: bool, listening_fd: int) -> int:
    """Fork worker `index`; it writes one byte to `listening_fd` once it listens on the proxy port."""
    from proxy.access_log import flush_logs

    flush_logs()  # or the child would write the parent's buffered lines again
    pid = os.fork()
    if pid:
        return pid
    import uvloop

    from proxy.cli import serve

    code = 1
    try:
        code = uvloop.run(
            serve(
                settings,
                tracing_enabled=tracing_enabled,
                admin=False,
                worker=index,
                on_listening=lambda: os.write(listening_fd, b"."),
            )
        )
    finally:
        flush_logs()
        os._exit(code)


def supervise(settings: Settings, *, tracing_enabled: bool) -> int:
    directory = os.environ[MULTIPROC_ENV]
    listening_read, listening_write = os.pipe()
    workers = {
        _start_worker(settings, index, tracing_enabled=tracing_enabled, listening_fd=listening_write): index
        for index in range(settings.workers)
    }
    import uvloop

    try:
        return uvloop.run(
            _supervise(settings, workers, tracing_enabled=tracing_enabled, listening=(listening_read, listening_write))
        )
    finally:
        os.close(listening_read)
        os.close(listening_write)
        if directory.startswith(tempfile.gettempdir()):
            shutil.rmtree(directory, ignore_errors=True)


async def _supervise(
    settings: Settings, workers: dict[int, int], *, tracing_enabled: bool, listening: tuple[int, int]
) -> int:
    """Serve the admin port, restart workers that die, drain them all on SIGTERM. `listening`: the pipe the
    workers write one byte to once they listen."""
    from prometheus_client import CollectorRegistry, multiprocess

    from proxy.app import Lifecycle
    from proxy.health import create_admin_app
    from proxy.metrics import Metrics

    lifecycle = Lifecycle()
    # Ready once every worker listens: before that, a connection the readiness probe lets through may be refused.
    lifecycle.starting = True
    listeners = 0

    def worker_listening() -> None:
        nonlocal listeners
        listeners += len(os.read(listening[0], 64))
        if listeners >= settings.workers and lifecycle.starting:
            lifecycle.starting = False
            logger.info("workers_listening", workers=settings.workers)

    os.set_blocking(listening[0], False)
    shared = CollectorRegistry()
    multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
    metrics = Metrics(exposed=shared)
    runner = web.AppRunner(create_admin_app(lifecycle, metrics), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
    except OSError as error:
        logger.error("cannot_listen", detail=str(error))
        _signal_all(workers, signal.SIGTERM)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_reader(listening[0], worker_listening)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("supervising", workers=len(workers), admin=f"{settings.admin_host}:{settings.admin_port}")
    while not stop.is_set():
        for pid, index in list(_reap(workers)):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
            logger.warning("worker_restarted", worker=index, pid=pid)
            workers[_start_worker(settings, index, tracing_enabled=tracing_enabled, listening_fd=listening[1])] = index
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            pass
    logger.info("draining", grace_seconds=settings.shutdown_grace_seconds, workers=len(workers))
    lifecycle.draining = True
    _signal_all(workers, signal.SIGTERM)
    deadline = loop.time() + settings.shutdown_grace_seconds + 5.0
    while workers and loop.time() < deadline:
        for pid, _ in list(_reap(workers)):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        await asyncio.sleep(0.05)
    _signal_all(workers, signal.SIGKILL)
    await runner.cleanup()
    logger.info("stopped")
    return 0


def _reap(workers: dict[int, int]) -> list[tuple[int, int]]:
    ended = []
    for pid in list(workers):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            ended.append((pid, workers.pop(pid)))
    return ended


def _signal_all(workers: dict[int, int], signum: int) -> None:
    for pid in workers:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
