"""Maintenance: the work no request asks for, run by the sweeper and by `tusd-py gc`.

Expiry sweeps, assemblies that failed earlier (the store was down when an upload
finished), and orphans in the store that no upload record needs. Each works upload by
upload under the upload's lock, skipping uploads that a request holds.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from tusd_protocol import rules
from tusd_protocol.errors import UploadLocked
from tusd_protocol.state import Upload, UploadStatus
from tusd_storage import LiveUploads

from .service import UploadService

log = logging.getLogger("tusd_py.maintenance")


class Maintenance:
    def __init__(self, service: UploadService) -> None:
        self.service = service
        self.repository = service.repository
        self.locks = service.locks
        self.cache = service.cache
        self.store = service.store
        self.clock = service.clock

    async def sweep_expired(self, idle_for: timedelta | None = None) -> int:
        """Reclaim uploads whose deadline passed (or, with `idle_for`, that sat idle that
        long); returns how many were reclaimed."""
        now = self.clock()
        idle_since = None if idle_for is None else now - idle_for
        reclaimed = 0
        for candidate in await self.repository.expired(now, idle_since):
            if await self.locks.held_anywhere(candidate.id):
                continue  # in use: activity will move its deadline
            try:
                reclaimed += await self._expire(candidate, now)
            except UploadLocked:
                continue  # taken meanwhile (another instance's sweeper, a request)
        if reclaimed:
            self.service.meter.uploads_expired(reclaimed)
            log.info("reclaimed %d expired uploads", reclaimed)
        return reclaimed

    async def _expire(self, candidate: Upload, now: datetime) -> bool:
        async with self.locks.hold(candidate.id, wait=False):
            current = await self.repository.get(candidate.id)
            # unchanged since the query (so still idle), or past its own deadline
            if current is None or not (
                current.version == candidate.version or rules.is_expired(current, now)
            ):
                return False
            layout = await self.service.layout_of(current.id)
            new = await self.repository.transition(
                current, status=UploadStatus.EXPIRED, expires_at=current.expires_at
            )
            if new is None:
                return False
            await self.cache.put(new)
            await self.store.delete(current.id, layout)
            await self.service.forget_layout(current.id, layout)
            return True

    async def assemble_pending(self) -> int:
        """Finish the assembly of finished uploads whose assembly failed before (the store
        was unreachable); returns how many were assembled."""
        if not self.store.uses_layout:
            return 0
        assembled = 0
        for upload_id in await self.repository.unassembled():
            if await self.locks.held_anywhere(upload_id):
                continue
            try:
                upload = await self._assemble_pending_one(upload_id)
            except UploadLocked:
                continue
            if upload is None:
                continue
            assembled += 1
            if upload.is_partial:
                await self.service.complete_waiting_finals(upload.id)
        return assembled

    async def _assemble_pending_one(self, upload_id: str) -> Upload | None:
        async with self.locks.hold(upload_id, wait=False):
            upload = await self.repository.get(upload_id)
            if upload is None or upload.status is not UploadStatus.FINISHED:
                return None
            await self.service.assemble(upload)
            return upload

    async def collect_orphans(self, min_age: timedelta) -> int:
        """Remove what the store holds that no upload we keep refers to (S3: multipart
        uploads and fragments left by crashes or by a lost database); returns the count."""
        live = LiveUploads(
            handles=self.repository.live_handles,
            receiving=self.repository.receiving,
            kept=self.repository.kept,
        )
        return await self.store.collect_garbage(live, min_age)

    async def sweep_forever(self, interval: float) -> None:
        """The background sweeper: expiry, then assemblies that failed, every `interval`."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_expired()
                await self.assemble_pending()
            except Exception:
                log.exception("expiry sweep failed; retrying in %.1f s", interval)
