"""The worker: takes post-finish events from the server's Redis stream, checks each finished
upload as a CSV file, and tells the application the outcome through a webhook.

    python -m csv_ingest.worker --redis-url redis://127.0.0.1:6379/0 --stream uploads \\
        --notify-url https://app.example.com/csv-ingested

Run as many as you like: they share the consumer group, so each event goes to one of them.
An event is acknowledged (XACK) only after its notification was taken (a 2xx), so a worker
that dies mid-file loses nothing: after --claim-idle seconds another worker (or this one,
restarted) claims the entry and checks the file again. A notification can therefore arrive
twice; it carries the event's id (also as Idempotency-Key) for the application to drop the
second. Events this worker already notified are remembered in Redis for a week.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from .check import CsvProblem, check_csv
from .sources import S3Credentials, UnknownStorage, open_upload

log = logging.getLogger("csv_ingest.worker")

DONE_TTL = 7 * 24 * 3600
NOTIFY_ATTEMPTS = 3


@dataclass
class Settings:
    redis_url: str
    stream: str
    group: str
    consumer: str
    notify_url: str
    claim_idle: float = 60.0
    notify_timeout: float = 10.0


def outcome_of(event: Mapping[str, Any], credentials: S3Credentials | None) -> dict[str, Any]:
    """The notification for one post-finish event: the file checked as a stream."""
    upload = event["upload"]
    told: dict[str, Any] = {
        "event_id": event["id"],
        "upload_id": upload["id"],
        "filename": upload["metadata"].get("filename"),
        "owner": upload["owner"],
        "size": upload["length"],
    }
    try:
        with open_upload(upload.get("storage"), credentials) as stream:
            summary = check_csv(stream)
    except CsvProblem as problem:
        return {**told, "status": "invalid", "line": problem.line, "error": str(problem)}
    except (UnknownStorage, FileNotFoundError) as exc:
        return {**told, "status": "unreadable", "error": str(exc)}
    return {
        **told,
        "status": "valid",
        "rows": summary.rows,
        "columns": summary.columns,
        "header": list(summary.header),
    }


class Worker:
    def __init__(self, settings: Settings, credentials: S3Credentials | None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=30, socket_connect_timeout=5
        )
        self.http = httpx.Client(timeout=settings.notify_timeout)
        self.stopping = False
        self._claimed_at = 0.0

    def run(self) -> None:
        self._join_group()
        self._drain("0")  # what this consumer took before it was stopped
        while not self.stopping:
            if time.monotonic() - self._claimed_at > self.settings.claim_idle / 2:
                self._claim_abandoned()
            self._drain(">", block_ms=1000)
        self.http.close()
        self.redis.close()

    def _join_group(self) -> None:
        try:
            self.redis.xgroup_create(
                self.settings.stream, self.settings.group, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _drain(self, start: str, block_ms: int | None = None) -> None:
        answer: Any = self.redis.xreadgroup(
            self.settings.group,
            self.settings.consumer,
            {self.settings.stream: start},
            count=10,
            block=block_ms,
        )
        for _, entries in answer or []:
            for entry_id, fields in entries:
                if fields:  # an entry trimmed away since it was read has no fields
                    self.handle(entry_id, fields)
                else:
                    self._ack(entry_id)

    def _claim_abandoned(self) -> None:
        """Take over entries another consumer read and did not finish (it died)."""
        self._claimed_at = time.monotonic()
        claimed: Any = self.redis.xautoclaim(
            self.settings.stream,
            self.settings.group,
            self.settings.consumer,
            min_idle_time=int(self.settings.claim_idle * 1000),
            count=10,
        )
        for entry_id, fields in claimed[1]:
            if fields:
                self.handle(entry_id, fields)

    def handle(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        if fields.get(b"type") != b"post-finish":
            self._ack(entry_id)
            return
        event = json.loads(fields[b"event"])
        done_key = f"csv-ingest:{self.settings.group}:done:{event['id']}"
        if self.redis.exists(done_key):  # delivered twice by the server's relay
            self._ack(entry_id)
            return
        started = time.monotonic()
        outcome = outcome_of(event, self.credentials)
        log.info(
            "upload %s: %s in %.1f s",
            event["upload"]["id"],
            outcome.get("error") or f"{outcome['rows']} rows",
            time.monotonic() - started,
        )
        if self.notify(outcome):
            self.redis.set(done_key, "1", ex=DONE_TTL)
            self._ack(entry_id)
        # else: left pending; claimed again after --claim-idle seconds

    def notify(self, outcome: Mapping[str, Any]) -> bool:
        delay = 0.5
        for attempt in range(1, NOTIFY_ATTEMPTS + 1):
            try:
                response = self.http.post(
                    self.settings.notify_url,
                    json=outcome,
                    headers={"Idempotency-Key": str(outcome["event_id"])},
                )
                if response.is_success:
                    return True
                why = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                why = str(exc) or type(exc).__name__
            log.warning("notification %d/%d not taken: %s", attempt, NOTIFY_ATTEMPTS, why)
            if attempt < NOTIFY_ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        return False

    def _ack(self, entry_id: bytes) -> None:
        self.redis.xack(self.settings.stream, self.settings.group, entry_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m csv_ingest.worker", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True, help="the server's --events-redis-stream")
    parser.add_argument("--group", default="csv-ingest", help="the consumer group")
    parser.add_argument("--consumer", default=socket.gethostname(), help="this worker's name")
    parser.add_argument("--notify-url", required=True, help="where outcomes are POSTed")
    parser.add_argument("--claim-idle", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    worker = Worker(
        Settings(
            redis_url=args.redis_url,
            stream=args.stream,
            group=args.group,
            consumer=args.consumer,
            notify_url=args.notify_url,
            claim_idle=args.claim_idle,
        ),
        S3Credentials.from_environment(),
    )

    def stop(signum: int, frame: object) -> None:
        worker.stopping = True  # the file being checked is finished first

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()


if __name__ == "__main__":
    main()
