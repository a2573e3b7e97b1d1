"""build_app(settings) -> a Starlette application, mountable under any prefix."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tusd_storage import Store

from ..admission.middleware import AdmissionMiddleware
from ..config import Settings, settings_from_environment
from ..metrics.prometheus import PrometheusMeter
from ..wiring import Runtime, build_admission, build_service, make_database, make_redis
from . import fasthttp
from .cors import CORSMiddleware
from .demo import demo_routes
from .endpoints import TusHandlers
from .metrics import RequestMetrics, metrics_endpoint
from .routes import TusRoutes
from .shutdown import on_exit_signal

ALL_METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"]


def build_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The tus server as an ASGI application; `store` replaces the one the settings name
    (a custom store, or one with fewer capabilities)."""
    fasthttp.configure(
        settings.header_timeout, settings.body_idle_timeout, settings.read_ahead_per_process
    )
    database = make_database(settings)
    redis = make_redis(settings) if settings.redis_url else None
    meter = PrometheusMeter()  # a registry of its own: several apps may share a process
    service = build_service(settings, database, redis, store, meter)
    meter.watch_cache(service.cache)
    meter.watch_database(database)
    meter.watch_connections(fasthttp.open_connections)
    runtime = Runtime(settings, database, service, redis)
    admission = build_admission(settings, redis)
    runtime.readiness_checks.append(admission.disk_problem)
    handlers = TusHandlers(service, settings, runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        await meter.start()
        restore_signals = on_exit_signal(runtime.begin_drain)
        try:
            yield
        finally:
            runtime.begin_drain()  # a lifespan shutdown without a signal drains too
            restore_signals()
            await runtime.stop()
            await meter.stop()
            await service.hooks.close()

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def ready(request: Request) -> Response:
        """Ready when the backing services answer (a load balancer takes it out if not)."""
        problem = await runtime.readiness()
        if problem is not None:
            return PlainTextResponse(f"ERR_UNAVAILABLE: {problem}\n", status_code=503)
        return PlainTextResponse("ok\n")

    base = settings.base_path
    routes = [
        Route("/health", health, methods=["GET", "HEAD"]),
        Route("/ready", ready, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint(meter), methods=["GET"]),
        Route(base, handlers.collection, methods=ALL_METHODS),
        Route(base + "{upload_id}", handlers.upload, methods=ALL_METHODS),
        Route(base + "{upload_id}/progress", handlers.progress, methods=ALL_METHODS),
        Route(base + "{rest:path}", handlers.not_found, methods=ALL_METHODS),
    ]
    if base != "/":
        routes.append(Route(base.rstrip("/"), handlers.collection, methods=ALL_METHODS))
    if settings.demo:
        routes += demo_routes(base)  # the browser upload page at / (serve --demo)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestMetrics, meter=meter),  # outermost: every answer is counted
            Middleware(
                CORSMiddleware,
                origins=settings.cors_origins,
                allow_credentials=settings.cors_allow_credentials,
            ),
            # inside CORS, so that refusals carry CORS headers too
            *(
                [
                    Middleware(
                        AdmissionMiddleware,
                        policy=admission.policy,
                        limiter=admission.limiter,
                        behind_proxy=settings.behind_proxy,
                        on_refusal=meter.admission_refused,
                    )
                ]
                if admission.active
                else []
            ),
            # innermost: the tus URLs without the router's frames (see routes.py)
            Middleware(
                TusRoutes,
                base_path=base,
                collection=handlers.collection,
                upload=handlers.upload,
                methods=ALL_METHODS,
            ),
        ],
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    app.state.meter = meter
    app.state.admission = admission
    return app


def app_from_environment() -> Starlette:
    """The application of one worker process of `serve --workers N`."""
    settings = settings_from_environment()
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return build_app(settings)
