"""RedisStateCache: the hot state of uploads, shared by every instance.

Each upload is one Redis hash holding its version and its state (JSON). A write goes
through one Lua script that replaces the entry only when the new version is not older
than the stored one, so a slow writer can never put back an offset that a newer commit
moved past. Entries expire after a TTL; a HEAD that finds one answers without touching
the database.

Redis is a cache here, not the truth: when it cannot be reached, reads fall back to the
database (a miss) and writes are skipped after an attempt to drop the entry. Requests that
change an upload read the database under their lock (`authoritative` is False), so a
stale entry can mislead at most a HEAD, for at most the TTL, and only if Redis lost a write
while it stayed up.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tusd_protocol.state import ConcatKind, Upload, UploadStatus

log = logging.getLogger("tusd_py.redis_cache")

#: KEYS[1] entry; ARGV[1] version, ARGV[2] state JSON, ARGV[3] TTL in ms.
#: Returns 1 when written, 0 when a newer version was already there.
PUT_IF_NOT_OLDER = """
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def encode_upload(upload: Upload) -> str:
    return json.dumps(
        {
            "id": upload.id,
            "status": upload.status.value,
            "offset": upload.offset,
            "length": upload.length,
            "metadata_header": upload.metadata_header,
            "concat_kind": upload.concat_kind.value,
            "concat_header": upload.concat_header,
            "expires_at": upload.expires_at.isoformat() if upload.expires_at else None,
            "version": upload.version,
            "owner": upload.owner,
        },
        separators=(",", ":"),
    )


def decode_upload(text: str | bytes) -> Upload:
    raw: dict[str, Any] = json.loads(text)
    return Upload(
        id=raw["id"],
        status=UploadStatus(raw["status"]),
        offset=raw["offset"],
        length=raw["length"],
        metadata_header=raw["metadata_header"],
        concat_kind=ConcatKind(raw["concat_kind"]),
        concat_header=raw["concat_header"],
        expires_at=datetime.fromisoformat(raw["expires_at"]) if raw["expires_at"] else None,
        version=raw["version"],
        owner=raw.get("owner"),  # entries written before owners were kept have none
    )


class RedisStateCache:
    #: other instances commit too: a write must read the database under its lock
    authoritative = False

    def __init__(self, redis: Redis, ttl_seconds: float = 3600.0, prefix: str = "tusd:") -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_seconds * 1000)
        self.prefix = prefix
        self._put = redis.register_script(PUT_IF_NOT_OLDER)
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def key(self, upload_id: str) -> str:
        return f"{self.prefix}upload:{upload_id}"

    async def get(self, upload_id: str) -> Upload | None:
        if self.ttl_ms <= 0:  # the cache is switched off: every read is the database's
            self.misses += 1
            return None
        try:
            state = await self.redis.hget(self.key(upload_id), "s")
        except RedisError as exc:
            self.errors += 1
            log.warning("Redis unavailable for a cache read, using the database: %s", exc)
            state = None
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        return decode_upload(state)

    async def put(self, upload: Upload) -> None:
        if self.ttl_ms <= 0:
            return
        try:
            await self._put(
                keys=[self.key(upload.id)],
                args=[upload.version, encode_upload(upload), self.ttl_ms],
            )
        except RedisError as exc:
            self.errors += 1
            log.warning("Redis did not take the state of %s: %s", upload.id, exc)
            await self.forget(upload.id)

    async def refresh(self, upload: Upload) -> None:
        """Write the database's record whatever version the entry has: only a holder of the
        upload's lock may call this (no commit can race it), after reading the database.
        It repairs an entry that is ahead of the truth (a database restored from a backup)."""
        if self.ttl_ms <= 0:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:  # one round trip
                pipe.hset(
                    self.key(upload.id), mapping={"v": upload.version, "s": encode_upload(upload)}
                )
                pipe.pexpire(self.key(upload.id), self.ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            self.errors += 1
            log.warning("Redis did not take the state of %s: %s", upload.id, exc)
            await self.forget(upload.id)

    async def forget(self, upload_id: str) -> None:
        try:
            await self.redis.delete(self.key(upload_id))
        except RedisError as exc:
            self.errors += 1
            log.warning("Redis did not drop the state of %s: %s", upload_id, exc)
