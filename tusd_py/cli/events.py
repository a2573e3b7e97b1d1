"""tusd-py events: the outbox of notifying hooks (post-create, post-finish, post-terminate).

tusd-py events list [--status pending|failed|delivered|all] [--limit N]
tusd-py events retry ID... | --all-failed
tusd-py events drop ID... | --all-failed
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeVar

from ..config import Settings
from .common import when, with_repository

T = TypeVar("T")

HELP = "list, retry or drop the events waiting for (or given up on) delivery"
DESCRIPTION = (
    "The events of notifying hooks wait in the state database's outbox until delivered. "
    "`list` shows them; `retry` makes events due again now (a failed one gets its attempts "
    "anew); `drop` deletes them, so they are never delivered."
)
#: the command's own arguments (not options of Settings)
ARGUMENTS = ("action", "event_ids", "status", "limit", "all_failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..state.sql import EVENT_STATUSES

    parser.add_argument("action", nargs="?", default="list", choices=("list", "retry", "drop"))
    parser.add_argument("event_ids", nargs="*", metavar="ID", help="events to retry or drop")
    parser.add_argument(
        "--status", choices=EVENT_STATUSES, default="pending", help="list: which events"
    )
    parser.add_argument("--limit", type=int, default=100, help="list: at most this many")
    parser.add_argument(
        "--all-failed", action="store_true", help="retry or drop every failed event"
    )


def run(settings: Settings, arguments: dict[str, Any]) -> int:
    action = arguments["action"]
    ids: list[str] = arguments["event_ids"]
    if action != "list" and not ids and not arguments["all_failed"]:
        print(f"tusd-py: events {action} needs event ids or --all-failed", file=sys.stderr)
        return 2
    if action == "list":
        rows = with_repository(
            settings, lambda r: r.list_events(arguments["status"], arguments["limit"])
        )
        if rows is None:
            return 2
        _print_table(rows)
        return 0
    done = with_repository(
        settings,
        lambda r: (r.retry_events if action == "retry" else r.drop_events)(
            ids, arguments["all_failed"]
        ),
    )
    if done is None:
        return 2
    verb = "made due again" if action == "retry" else "dropped"
    print(f"tusd-py: {done} event(s) {verb}.")
    return 0 if done or arguments["all_failed"] else 1


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no events")
        return
    print(
        f"{'ID':32}  {'TYPE':14}  {'UPLOAD':22}  {'TRIES':>5}  {'STATE':9}  {'NEXT TRY':19}  ERROR"
    )
    for row in rows:
        if row["delivered_at"] is not None:
            state = "delivered"
        elif row["failed_at"] is not None:
            state = "failed"
        else:
            state = "pending"
        error = (row["last_error"] or "").replace("\n", " ")[:80]
        print(
            f"{row['id']:32}  {row['type']:14}  {row['upload_id'] or '-':22}  "
            f"{row['attempts']:>5}  {state:9}  {when(row['next_attempt_at']):19}  {error}"
        )
