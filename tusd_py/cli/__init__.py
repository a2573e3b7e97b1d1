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

from ..config import Settings


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(f"TUSD_{name}")
    if value is None or value == "":
        return default
    try:
        return convert(value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"tusd-py: TUSD_{name}={value!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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


def _part_size(value: str) -> int:
    number = _size(value)
    if number < 5 * 1024 * 1024:
        raise argparse.ArgumentTypeError("S3 parts must be at least 5 MiB (5242880 bytes)")
    if number > 5 * 1024 * 1024 * 1024:
        raise argparse.ArgumentTypeError("S3 parts must be at most 5 GiB")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _at_least_two(value: str) -> int:
    number = int(value)
    if number < 2:
        raise argparse.ArgumentTypeError("must be at least 2 (the handover listener keeps one)")
    return number


def _add_object_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=_env("STORAGE", "file"),
        help="where upload bytes live: 'file' (<data-dir>/uploads) or s3://BUCKET/PREFIX "
        "(an S3 or MinIO bucket). Env TUSD_STORAGE. Default: file",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=_env("S3_ENDPOINT", "s3.amazonaws.com"),
        help="S3 endpoint as host[:port] (or a URL; http:// implies --no-s3-secure). "
        "Env TUSD_S3_ENDPOINT. Default: s3.amazonaws.com",
    )
    parser.add_argument(
        "--s3-region",
        default=_env("S3_REGION", "us-east-1"),
        help="S3 region. Env TUSD_S3_REGION. Default: us-east-1",
    )
    parser.add_argument(
        "--s3-access-key",
        default=_env("S3_ACCESS_KEY", None),
        help="S3 access key. Env TUSD_S3_ACCESS_KEY",
    )
    parser.add_argument(
        "--s3-secret-key",
        default=_env("S3_SECRET_KEY", None),
        help="S3 secret key (prefer the environment variable). Env TUSD_S3_SECRET_KEY",
    )
    parser.add_argument(
        "--s3-secure",
        action=argparse.BooleanOptionalAction,
        default=_env("S3_SECURE", True, _bool),
        help="use HTTPS to reach the S3 endpoint. Env TUSD_S3_SECURE. Default: on",
    )
    parser.add_argument(
        "--s3-create-bucket",
        action=argparse.BooleanOptionalAction,
        default=_env("S3_CREATE_BUCKET", False, _bool),
        help="create the bucket at start when it does not exist. Env TUSD_S3_CREATE_BUCKET. "
        "Default: off",
    )
    parser.add_argument(
        "--s3-part-size",
        type=_part_size,
        default=_env("S3_PART_SIZE", 8 * 1024 * 1024, _part_size),
        help="bytes per S3 part (at least 5 MiB); grown per upload so that its length fits "
        "in 10,000 parts. Env TUSD_S3_PART_SIZE. Default: 8388608",
    )
    parser.add_argument(
        "--s3-max-concurrent-parts",
        type=_positive,
        default=_env("S3_MAX_CONCURRENT_PARTS", 16, _positive),
        help="part uploads in flight at once in this process; each holds one part in memory. "
        "Env TUSD_S3_MAX_CONCURRENT_PARTS. Default: 16",
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
    _add_object_store_options(serve)
    _add_instance_options(serve)
    serve.add_argument(
        "--workers",
        type=_positive,
        default=_env("WORKERS", 1, _positive),
        help="server processes on this host; more than one needs --redis-url. "
        "Env TUSD_WORKERS. Default: 1",
    )
    serve.add_argument(
        "--lock-acquire-timeout",
        type=_seconds,
        default=_env("LOCK_ACQUIRE_TIMEOUT", 20.0, _seconds),
        help="seconds a request waits for an upload another request holds before it answers "
        "423. Env TUSD_LOCK_ACQUIRE_TIMEOUT. Default: 20",
    )
    serve.add_argument(
        "--lock-handover-timeout",
        type=_seconds,
        default=_env("LOCK_HANDOVER_TIMEOUT", 3.0, _seconds),
        help="seconds a holder gets to let go when a newcomer asks before it is asked again. "
        "Env TUSD_LOCK_HANDOVER_TIMEOUT. Default: 3",
    )
    serve.add_argument(
        "--db-pool-size",
        type=_positive,
        default=_env("DB_POOL_SIZE", 20, _positive),
        help="PostgreSQL connections kept per process. Env TUSD_DB_POOL_SIZE. Default: 20",
    )
    serve.add_argument(
        "--db-max-overflow",
        type=_size,
        default=_env("DB_MAX_OVERFLOW", 30, _size),
        help="extra PostgreSQL connections allowed under load. Env TUSD_DB_MAX_OVERFLOW. "
        "Default: 30",
    )
    serve.add_argument(
        "--db-pool-timeout",
        type=_seconds,
        default=_env("DB_POOL_TIMEOUT", 5.0, _seconds),
        help="seconds a request waits for a database or Redis connection before it answers "
        "503. Env TUSD_DB_POOL_TIMEOUT. Default: 5",
    )
    serve.add_argument(
        "--cache-ttl",
        type=_seconds,
        default=_env("CACHE_TTL", 3600.0, _seconds),
        help="seconds an upload's state stays in the Redis cache; 0 switches the cache off "
        "(every HEAD reads the database). Env TUSD_CACHE_TTL. Default: 3600",
    )
    serve.add_argument(
        "--redis-pool-size",
        type=_at_least_two,
        default=_env("REDIS_POOL_SIZE", 200, _at_least_two),
        help="Redis connections per process. Env TUSD_REDIS_POOL_SIZE. Default: 200",
    )
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
        "--cors-allow-credentials",
        action=argparse.BooleanOptionalAction,
        default=_env("CORS_ALLOW_CREDENTIALS", False, _bool),
        help="allow cookies and HTTP authentication from the listed --cors-origins "
        "(Access-Control-Allow-Credentials); refused with *. Env TUSD_CORS_ALLOW_CREDENTIALS. "
        "Default: off",
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
        help="run one sweep (expiry, pending assemblies, orphaned S3 objects) and exit",
        description="Reclaim the storage of every upload whose expiry has passed, finish "
        "assemblies that failed, and (S3) remove multipart uploads and objects that no upload "
        "record needs; then exit.",
    )
    _add_storage_options(gc)
    _add_object_store_options(gc)
    _add_instance_options(gc)
    gc.add_argument(
        "--orphan-age",
        type=_seconds,
        default=_env("ORPHAN_AGE", 3600.0, _seconds),
        help="with S3: abort multipart uploads and remove fragments that no upload record "
        "needs once they are this many seconds old. Env TUSD_ORPHAN_AGE. Default: 3600",
    )
    gc.add_argument(
        "--expiration",
        type=_seconds,
        default=None,
        help="also reclaim unfinished uploads idle for longer than this many seconds, "
        "whatever deadline they were given (default: only uploads past their deadline)",
    )
    return parser


def _add_instance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=_env("REDIS_URL", None),
        help="Redis for the shared upload cache and locks, e.g. redis://host:6379/0; needed "
        "to run several processes or hosts on one database. Env TUSD_REDIS_URL",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    options: dict[str, Any] = {"data_dir": args.data_dir, "database_url": args.database_url}
    if args.command in ("serve", "gc"):
        options.update(redis_url=args.redis_url)
        options.update(
            storage=args.storage,
            s3_endpoint=args.s3_endpoint,
            s3_region=args.s3_region,
            s3_access_key=args.s3_access_key,
            s3_secret_key=args.s3_secret_key,
            s3_secure=args.s3_secure,
            s3_create_bucket=args.s3_create_bucket,
            s3_part_size=args.s3_part_size,
            s3_max_concurrent_parts=args.s3_max_concurrent_parts,
        )
    if args.command == "serve":
        options.update(
            host=args.host,
            port=args.port,
            base_path=args.base_path,
            max_size=args.max_size,
            expiration=args.expiration,
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            cors_allow_credentials=args.cors_allow_credentials,
            behind_proxy=args.behind_proxy,
            log_level=args.log_level,
            workers=args.workers,
            lock_acquire_timeout=args.lock_acquire_timeout,
            lock_handover_timeout=args.lock_handover_timeout,
            db_pool_size=args.db_pool_size,
            db_max_overflow=args.db_max_overflow,
            db_pool_timeout=args.db_pool_timeout,
            redis_pool_size=args.redis_pool_size,
            cache_ttl=args.cache_ttl,
        )
    return Settings(**options)


def serve(settings: Settings) -> int:
    import uvicorn

    from tusd_storage import StorageError

    from ..http.app import build_app
    from ..wiring import SchemaNotMigrated, build_store, prepare_database

    async def preflight() -> None:
        await prepare_database(settings)
        store = build_store(settings)  # a wrong bucket or key is said here, not in a traceback
        try:
            await store.open()
        finally:
            await store.close()

    try:
        asyncio.run(preflight())
    except (SchemaNotMigrated, StorageError) as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None and not settings.resolved_database_url.startswith("sqlite"):
        logging.getLogger("tusd_py").warning(
            "no --redis-url: locks live in this process, so only this one instance may use "
            "this database; run several only with Redis"
        )
    from ..config import SETTINGS_ENVIRONMENT, settings_to_json
    from ..http.fasthttp import protocol_import_string

    common: dict[str, Any] = {
        "http": protocol_import_string(),
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": False,
        "server_header": False,
        # on SIGTERM, requests in flight get this long to finish (a PATCH saves what it has)
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers > 1:
        # each worker process builds its own application from the same settings
        os.environ[SETTINGS_ENVIRONMENT] = settings_to_json(settings)
        uvicorn.run(
            "tusd_py.http.app:app_from_environment",
            factory=True,
            workers=settings.workers,
            **common,
        )
    else:
        uvicorn.run(build_app(settings), **common)
    return 0


def migrate(settings: Settings) -> int:
    from ..state import migrations

    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    print("tusd-py: the database schema is up to date.")
    return 0


def gc(settings: Settings, args: argparse.Namespace) -> int:
    from ..core.maintenance import Maintenance
    from ..state.sql import make_engine
    from ..wiring import SchemaNotMigrated, build_service, make_redis, prepare_database

    async def sweep() -> tuple[int, int]:
        await prepare_database(settings)
        engine = make_engine(settings.resolved_database_url)
        redis = make_redis(settings) if settings.redis_url else None
        service = build_service(settings, engine, redis)
        maintenance = Maintenance(service)
        try:
            await service.store.open()
            idle = None if args.expiration is None else timedelta(seconds=args.expiration)
            reclaimed = await maintenance.sweep_expired(idle_for=idle)
            await maintenance.assemble_pending()
            orphans = await maintenance.collect_orphans(timedelta(seconds=args.orphan_age))
            return reclaimed, orphans
        finally:
            await service.store.close()
            await engine.dispose()
            if redis is not None:
                await redis.aclose()

    try:
        reclaimed, orphans = asyncio.run(sweep())
    except SchemaNotMigrated as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    print(f"tusd-py: reclaimed {reclaimed} expired upload(s).")
    if settings.uses_s3:
        print(f"tusd-py: removed {orphans} orphaned multipart upload(s) or fragment set(s).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "info")).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic's plugin chatter at INFO says nothing an operator needs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "gc":
        return gc(settings, args)
    return {"serve": serve, "migrate": migrate}[args.command](settings)
