"""tusd-py uploads: the uploads in the state database, for operators.

tusd-py uploads list [--status S] [--owner O] [--older-than SECONDS]
                     [--metadata KEY[=VALUE]] [--limit N]
tusd-py uploads show ID
tusd-py uploads delete ID...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..config import Settings
from .common import when, with_repository

if TYPE_CHECKING:
    from ..state.sql import UploadQuery

HELP = "list, show or delete uploads (status, owner, age, metadata)"
DESCRIPTION = (
    "Read the uploads the state database records: `list` with filters, `show` one upload "
    "whole; `delete` terminates uploads as DELETE would (their bytes are removed and later "
    "requests answer 410), whoever owns them, without asking the pre-terminate hook."
)
ARGUMENTS = ("action", "upload_ids", "status", "owner", "older_than", "metadata", "limit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tusd_protocol.state import UploadStatus

    parser.add_argument("action", nargs="?", default="list", choices=("list", "show", "delete"))
    parser.add_argument("upload_ids", nargs="*", metavar="ID", help="show or delete: uploads")
    parser.add_argument("--status", choices=[s.value for s in UploadStatus], help="list")
    parser.add_argument("--owner", help="list: uploads of this owner (a pre-access subject)")
    parser.add_argument(
        "--older-than", type=float, metavar="SECONDS", help="list: created this long ago or more"
    )
    parser.add_argument(
        "--metadata", metavar="KEY[=VALUE]", help="list: uploads with this metadata key (value)"
    )
    parser.add_argument("--limit", type=int, default=100, help="list: at most this many")


def run(settings: Settings, arguments: dict[str, Any]) -> int:
    action = arguments["action"]
    ids = tuple(arguments["upload_ids"])
    if action != "list" and not ids:
        print(f"tusd-py: uploads {action} needs upload ids", file=sys.stderr)
        return 2
    if action == "delete":
        from ..wiring import SchemaNotMigrated

        try:
            return asyncio.run(_delete(settings, ids))
        except SchemaNotMigrated as exc:
            print(f"tusd-py: {exc}", file=sys.stderr)
            return 2
    query = _query(arguments, ids if action == "show" else ())
    rows = with_repository(settings, lambda repository: repository.listing(query))
    if rows is None:
        return 2
    if action == "show":
        for row in rows:
            _print_record(row)
        missing = set(ids) - {row["id"] for row in rows}
        for upload_id in sorted(missing):
            print(f"tusd-py: no upload {upload_id}", file=sys.stderr)
        return 1 if missing else 0
    _print_table(rows)
    return 0


def _query(arguments: dict[str, Any], ids: tuple[str, ...]) -> UploadQuery:
    from ..state.sql import UploadQuery

    key, value = None, None
    if arguments["metadata"]:
        key, sep, text = arguments["metadata"].partition("=")
        # stored as each byte's latin-1 character (state/sql.encode_metadata)
        value = text.encode().decode("latin-1") if sep else None
    older = arguments["older_than"]
    return UploadQuery(
        ids=ids,
        status=arguments["status"],
        owner=arguments["owner"],
        created_before=None if older is None else datetime.now(UTC) - timedelta(seconds=older),
        metadata_key=key,
        metadata_value=value,
        limit=max(len(ids), arguments["limit"]),
    )


async def _delete(settings: Settings, ids: tuple[str, ...]) -> int:
    from tusd_protocol.errors import ProtocolError

    from ..core.hooks import OPERATOR
    from ..state.database import Database
    from ..wiring import build_service, make_redis, prepare_database

    await prepare_database(settings)
    database = Database(settings.resolved_database_url)
    redis = make_redis(settings) if settings.redis_url else None
    service = build_service(settings, database, redis)
    await service.locks.start()  # a running server's locks: a request in flight lets go
    failed = 0
    try:
        await service.store.open()
        for upload_id in ids:
            try:
                await service.terminate(upload_id, OPERATOR)
            except ProtocolError as exc:
                failed += 1
                print(f"tusd-py: {upload_id}: {exc.code}: {exc.message}", file=sys.stderr)
            else:
                print(f"tusd-py: terminated {upload_id}")
    finally:
        await service.locks.stop()
        await service.store.close()
        await service.hooks.close()
        await database.close()
        if redis is not None:
            await redis.aclose()
    return 1 if failed else 0


def _metadata(row: dict[str, Any]) -> dict[str, str | None]:
    raw: dict[str, str | None] = json.loads(row["metadata_json"] or "{}")
    return {
        k: None if v is None else v.encode("latin-1").decode("utf-8", "replace")
        for k, v in raw.items()
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no uploads")
        return
    header = ("ID", "STATUS", "OFFSET", "LENGTH", "OWNER", "CREATED", "FILENAME")
    print("{:22}  {:13}  {:>12}  {:>12}  {:16}  {:19}  {}".format(*header))
    for row in rows:
        length = "-" if row["length"] is None else row["length"]
        name = _metadata(row).get("filename") or ""
        print(
            f"{row['id']:22}  {row['status']:13}  {row['offset']:>12}  {length:>12}  "
            f"{(row['owner'] or '-')[:16]:16}  {when(row['created_at']):19}  {name}"
        )


def _print_record(row: dict[str, Any]) -> None:
    shown = {k: v for k, v in row.items() if k not in ("metadata_json", "metadata_header")}
    for key, value in shown.items():
        print(f"{key:15} {when(value) if isinstance(value, datetime) else value}")
    print(f"{'metadata':15} {json.dumps(_metadata(row), ensure_ascii=False)}")
    print()
