"""tusd-py gc: one sweep (expiry, pending assemblies, orphans), then exit."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from ..config import Settings

HELP = "run one sweep (expiry, pending assemblies, orphaned objects) and exit"
DESCRIPTION = (
    "Reclaim the storage of every upload whose expiry has passed, finish assemblies that "
    "failed, and remove what the store holds that no upload record needs; then exit."
)


def run(settings: Settings) -> int:
    from ..core.maintenance import Maintenance
    from ..state.database import Database
    from ..wiring import SchemaNotMigrated, build_service, make_redis, prepare_database

    async def sweep() -> tuple[int, int]:
        await prepare_database(settings)
        database = Database(settings.resolved_database_url)
        redis = make_redis(settings) if settings.redis_url else None
        service = build_service(settings, database, redis)
        maintenance = Maintenance(service)
        # the locks a running server holds (Redis, or this host's through --data-dir): gc
        # leaves what a request holds, and the server learns what gc took
        await service.locks.start()
        try:
            await service.store.open()
            idle = None if settings.max_idle is None else timedelta(seconds=settings.max_idle)
            reclaimed = await maintenance.sweep_expired(idle_for=idle)
            await maintenance.assemble_pending()
            orphans = await maintenance.collect_orphans(timedelta(seconds=settings.orphan_age))
            return reclaimed, orphans
        finally:
            await service.locks.stop()
            await service.store.close()
            await database.close()
            if redis is not None:
                await redis.aclose()

    try:
        reclaimed, orphans = asyncio.run(sweep())
    except SchemaNotMigrated as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 2
    print(f"tusd-py: reclaimed {reclaimed} expired upload(s).")
    print(f"tusd-py: removed {orphans} orphaned object(s) from the store.")
    return 0
