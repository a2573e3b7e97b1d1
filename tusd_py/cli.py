"""The tusd-py command: serve, migrate, gc."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from .settings import Settings


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(f"TUSD_{name}")
    if value is None or value == "":
        return default
    return convert(value)


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _size(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=_env("DATA_DIR", Path("./tusd-data"), Path),
        help="directory for upload bytes (uploads/) and the embedded SQLite database "
        "(tusd.db). Env TUSD_DATA_DIR. Default: ./tusd-data",
    )
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", None),
        help="state database as an SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. "
        "Default: SQLite at <data-dir>/tusd.db. Env TUSD_DATABASE_URL",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tusd-py", description="A resumable upload server (tus 1.0.0)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the upload server",
        description="Run the upload server. Every option can also be set with the "
        "environment variable named after it (TUSD_<NAME>); the command line wins.",
    )
    serve.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="address to listen on. Env TUSD_HOST. Default: 127.0.0.1",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_env("PORT", 1080, int),
        help="TCP port to listen on. Env TUSD_PORT. Default: 1080",
    )
    serve.add_argument(
        "--base-path",
        default=_env("BASE_PATH", "/files/"),
        help="URL path under which uploads are created and addressed. Env TUSD_BASE_PATH. "
        "Default: /files/",
    )
    _add_storage_options(serve)
    serve.add_argument(
        "--max-size",
        type=_size,
        default=_env("MAX_SIZE", 0, int),
        help="largest upload accepted, in bytes; 0 means no limit. Env TUSD_MAX_SIZE. Default: 0",
    )
    serve.add_argument(
        "--expiration",
        type=_seconds,
        default=_env("EXPIRATION", 86400.0, float),
        help="seconds an unfinished upload may sit idle before it expires and its bytes are "
        "reclaimed; 0 means never. Env TUSD_EXPIRATION. Default: 86400",
    )
    serve.add_argument(
        "--cors-origins",
        default=_env("CORS_ORIGINS", "*"),
        help="comma-separated browser origins allowed to use the server, or * for any. "
        "Env TUSD_CORS_ORIGINS. Default: *",
    )
    serve.add_argument(
        "--behind-proxy",
        action=argparse.BooleanOptionalAction,
        default=_env("BEHIND_PROXY", False, _bool),
        help="trust Forwarded / X-Forwarded-Proto / X-Forwarded-Host when building upload "
        "URLs; set it only behind a proxy that sets them. Env TUSD_BEHIND_PROXY. Default: off",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
        help="log verbosity. Env TUSD_LOG_LEVEL. Default: info",
    )

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the state database schema",
        description="Create or upgrade the state database schema to this version.",
    )
    _add_storage_options(migrate)

    gc = commands.add_parser(
        "gc",
        help="run one expiry sweep and exit",
        description="Reclaim the storage of every upload whose expiry has passed, then exit.",
    )
    _add_storage_options(gc)
    gc.add_argument(
        "--expiration",
        type=_seconds,
        default=None,
        help="also reclaim unfinished uploads idle for longer than this many seconds, "
        "whatever deadline they were given (default: only uploads past their deadline)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    options: dict[str, Any] = {"data_dir": args.data_dir, "database_url": args.database_url}
    if args.command == "serve":
        options.update(
            host=args.host,
            port=args.port,
            base_path=args.base_path,
            max_size=args.max_size,
            expiration=args.expiration,
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            behind_proxy=args.behind_proxy,
            log_level=args.log_level,
        )
    return Settings(**options)


def serve(settings: Settings) -> int:
    import uvicorn

    from .app import SchemaNotMigrated, build_app, prepare_database

    try:
        asyncio.run(prepare_database(settings))
    except SchemaNotMigrated as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    from .fasthttp import protocol_class

    app = build_app(settings)
    uvicorn.run(
        app,
        http=protocol_class(),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
    )
    return 0


def migrate(settings: Settings) -> int:
    from . import migrations

    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    print("tusd-py: the database schema is up to date.")
    return 0


def gc(settings: Settings, args: argparse.Namespace) -> int:
    from .app import SchemaNotMigrated, build_service, prepare_database
    from .db import make_engine

    async def sweep() -> int:
        await prepare_database(settings)
        engine = make_engine(settings.resolved_database_url)
        try:
            idle = None if args.expiration is None else timedelta(seconds=args.expiration)
            return await build_service(settings, engine).sweep_expired(idle_for=idle)
        finally:
            await engine.dispose()

    try:
        reclaimed = asyncio.run(sweep())
    except SchemaNotMigrated as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    print(f"tusd-py: reclaimed {reclaimed} expired upload(s).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "info")).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic's plugin chatter at INFO says nothing an operator needs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "gc":
        return gc(settings, args)
    return {"serve": serve, "migrate": migrate}[args.command](settings)
