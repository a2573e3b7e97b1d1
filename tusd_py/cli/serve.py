"""tusd-py serve: run the upload server."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from ..config import SETTINGS_ENVIRONMENT, Settings, settings_to_json

HELP = "run the upload server"
DESCRIPTION = "Run the upload server."


def raise_open_files_limit() -> tuple[int, int] | None:
    """Every upload in flight holds a socket, and with the file store a file: a soft limit
    of 1,024 open files (systemd's and most shells' default) would have the server refuse
    connections at a few hundred uploads. Raise the soft limit to the hard one, as Go's
    runtime does for tusd. Returns (old, new) when it changed."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft, target


def preflight(settings: Settings) -> str | None:
    """Check the schema and the store before any request is taken: the problem, said in a
    sentence (a wrong bucket or key is said here, not in a traceback), or None."""
    from tusd_storage import StorageError

    from ..wiring import SchemaNotMigrated, build_store, prepare_database

    async def check() -> None:
        await prepare_database(settings)
        store = build_store(settings)
        try:
            await store.open()
        finally:
            await store.close()

    try:
        asyncio.run(check())
    except (SchemaNotMigrated, StorageError) as exc:
        return str(exc)
    return None


def preflight_in_child(settings: Settings) -> str | None:
    """preflight() in a child process. With --workers N the serving process only supervises
    the workers; had it checked itself, it would keep the application's modules (SQLAlchemy,
    the store, ...: about 40 MiB) for its whole life."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
        return child.submit(preflight, settings).result()


def run(settings: Settings) -> int:
    import uvicorn

    from ..http.fasthttp import protocol_import_string
    from ..http.shutdown import exit_quietly

    problem = preflight_in_child(settings) if settings.workers > 1 else preflight(settings)
    if problem is not None:
        print(f"tusd-py: {problem}", file=sys.stderr)
        return 2
    raised = raise_open_files_limit()
    if raised is not None:
        logging.getLogger("tusd_py").info("open files limit raised from %d to %d", *raised)
    if settings.redis_url is None and not settings.resolved_database_url.startswith("sqlite"):
        logging.getLogger("tusd_py").warning(
            "no --redis-url: locks live in the processes of this host, so only this one "
            "instance may use this database; run several only with Redis"
        )
    common: dict[str, Any] = {
        "http": protocol_import_string(),
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": False,
        "server_header": False,
        # on SIGTERM, uploads in flight save what they have and answer within this time
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    exit_quietly()
    if settings.workers > 1:
        from ..metrics.prometheus import prepare_multiprocess_dir

        # each worker process builds its own application from the same settings
        os.environ[SETTINGS_ENVIRONMENT] = settings_to_json(settings)
        # and keeps its figures where the worker that answers GET /metrics adds them up
        forget_metrics = prepare_multiprocess_dir()
        try:
            from ..http.workers import run_workers

            run_workers(
                uvicorn.Config(
                    "tusd_py.http.app:app_from_environment",
                    factory=True,
                    workers=settings.workers,
                    **common,
                )
            )
        finally:
            forget_metrics()
    else:
        from ..http.app import build_app

        uvicorn.run(build_app(settings), **common)
    return 0
