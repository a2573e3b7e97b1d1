"""UploadService: the heart. Every request that touches an upload runs here.

lock -> load state -> decide (tusd_protocol.rules) -> stream the body into the store while
hashing -> verify -> commit state (one guarded transition) -> write cache -> release.
A dialect parses requests into commands and formats outcomes; the rules decide; this
module carries decisions out. It takes commands, never headers, and reaches the database,
the cache and the locks only through the Protocols of `ports.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from tusd_protocol import rules
from tusd_protocol.checksums import new_hasher
from tusd_protocol.commands import Append, Create, Download
from tusd_protocol.download import DownloadPlan, decide_download
from tusd_protocol.errors import (
    PartialNotFound,
    ProtocolError,
    ServerFault,
    UploadNotFound,
)
from tusd_protocol.headers import format_metadata, parse_metadata
from tusd_protocol.rules import AppendOutcome, AppendPlan, Feature, Limits
from tusd_protocol.state import ConcatKind, Upload, UploadStatus
from tusd_storage import EMPTY_LAYOUT, Layout, Source, Store, Stored

from .body import NO_BYTES, pump_body
from .hooks import (
    ANONYMOUS,
    NO_HOOKS,
    Caller,
    HookFailed,
    HookPoint,
    HookRejected,
    Hooks,
    HookUpload,
    make_event,
)
from .ports import (
    NULL_METER,
    BackendUnavailable,
    Holding,
    Meter,
    ProgressFeed,
    ProgressNote,
    Receive,
    Repository,
    UploadCache,
    UploadLocks,
)

log = logging.getLogger("tusd_py.service")


def metadata_texts(metadata: dict[str, bytes | None]) -> dict[str, str | None]:
    """Metadata for a hook: each value as UTF-8 text (a byte that is not UTF-8 becomes
    U+FFFD; the stored value is unchanged)."""
    return {k: None if v is None else v.decode("utf-8", "replace") for k, v in metadata.items()}


def hook_upload(
    upload: Upload,
    metadata: dict[str, bytes | None] | None = None,
    storage: dict[str, str] | None = None,
) -> HookUpload:
    """What a hook is told about a stored upload (and, given `storage`, where its bytes are)."""
    if metadata is None and upload.metadata_header:
        metadata = parse_metadata(upload.metadata_header)
    return HookUpload(
        id=upload.id,
        offset=upload.offset,
        length=upload.length,
        metadata=metadata_texts(metadata or {}),
        owner=upload.owner,
        concat=upload.concat_kind.value,
        storage=storage,
    )


#: a watcher reads the upload's record this often (notes in between are best effort)
WATCH_POLL = 2.0
#: and stops after this long without a change (a client that went away for good)
WATCH_IDLE = 600.0


def note_of(upload: Upload) -> ProgressNote:
    return ProgressNote(upload.id, upload.offset, upload.length, upload.status.value)


class _Unwatched:
    """The progress feed of a service nobody set one for: no one watches."""

    def wanted(self, upload_id: str) -> bool:
        return False

    def publish(self, note: ProgressNote) -> None:
        pass

    @contextlib.asynccontextmanager
    async def watch(self, upload_id: str) -> AsyncIterator[asyncio.Queue[ProgressNote]]:
        yield asyncio.Queue()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


UNWATCHED = _Unwatched()


def new_upload_id() -> str:
    """128 random bits, URL-safe: unguessable, and safe as a file or object name. Never
    with a leading '-', which command lines (`tusd-py uploads show ID`, `ls`, `rm`) would
    take for an option."""
    while True:
        upload_id = secrets.token_urlsafe(16)
        if not upload_id.startswith("-"):
            return upload_id


@dataclass(frozen=True)
class DownloadResult:
    upload: Upload
    plan: DownloadPlan
    #: the bytes [plan.start, plan.end), streamed from the store
    body: Callable[[], AsyncIterator[bytes]]


class UploadService:
    def __init__(
        self,
        store: Store,
        repository: Repository,
        limits: Limits,
        cache: UploadCache,
        locks: UploadLocks,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        meter: Meter = NULL_METER,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self.store = store
        self.repository = repository
        self.limits = limits
        self.cache = cache
        self.locks = locks
        self.clock = clock
        self.meter = meter
        self.hooks = hooks
        #: called after a commit that wrote events (the relay then looks at once)
        self.on_events: Callable[[], None] = lambda: None
        #: post-receive: seconds between two events of one upload, and when each upload's
        #: last one went (bounded: the oldest are forgotten first)
        self.progress_interval = 1.0
        self._progress_told: dict[str, float] = {}
        self._telling: set[asyncio.Task[None]] = set()
        #: notes for people watching uploads (wiring sets the feed)
        self.progress_feed: ProgressFeed = UNWATCHED

    # --- reading -----------------------------------------------------------------------

    async def load(self, upload_id: str) -> Upload:
        if not rules.is_valid_upload_id(upload_id):
            raise UploadNotFound()
        upload = await self.cache.get(upload_id)
        if upload is None:
            upload = await self.repository.get(upload_id)
            if upload is None:
                raise UploadNotFound()
            await self.cache.put(upload)
        return upload

    async def head(self, upload_id: str, caller: Caller = ANONYMOUS) -> Upload:
        """The state a resuming client must continue from.

        When a request holds the upload (on any instance), ask it to let go first, so the
        offset we report includes what it received (PROTOCOL 23).
        """
        if not rules.is_valid_upload_id(upload_id):
            raise UploadNotFound()
        kept = self.locks.kept_state(upload_id)
        if kept is not None:  # this process holds the upload between its requests
            rules.check_owner(kept, caller.subject)
            rules.check_available(kept, self.clock())
            return kept
        try:
            held = await self.locks.held_anywhere(upload_id)
        except BackendUnavailable:
            held = False  # no lock service: the database's word is all there is
        if held:
            async with self.locks.hold(upload_id) as holding:
                upload = await self.load_for_write(upload_id, holding)
        else:
            upload = await self.load(upload_id)
        rules.check_owner(upload, caller.subject)
        rules.check_available(upload, self.clock())
        return upload

    async def load_for_write(self, upload_id: str, holding: Holding | None = None) -> Upload:
        """The upload as the database has it, for a request that holds its lock: the state
        its lock was kept with, or from the cache when every commit goes through it, else
        from the database (a cache that other instances also write may lag behind; this
        read refreshes it, now or as the lock is released)."""
        if holding is not None and holding.kept is not None:
            # the lock came with the state it was kept with (RedisLocks keeps a lock between
            # an upload's requests): that is the database's record
            upload = holding.kept
        elif self.cache.authoritative:
            upload = await self.load(upload_id)
        else:
            found = await self.repository.get(upload_id)
            if found is None:
                raise UploadNotFound()
            upload = found
            if holding is None or not holding.keeps_state:
                await self.cache.refresh(upload)  # we hold the lock: the database's word
        if holding is not None:
            holding.settled = upload
        return upload

    async def download(
        self, upload_id: str, command: Download, caller: Caller = ANONYMOUS
    ) -> DownloadResult:
        upload = await self.load(upload_id)
        rules.check_owner(upload, caller.subject)
        metadata = await self.repository.metadata(upload_id) if upload.metadata_header else {}
        plan = decide_download(
            upload,
            command,
            metadata,
            self.clock(),
            ranges=Feature.RANGE_READS in self.limits.features,
        )
        layout = await self.layout_of(upload_id)
        if layout.handle is not None:
            # finished, but its assembly failed earlier (the store was down): finish it now
            async with self.locks.hold(upload_id):
                layout = await self.assemble(upload)
        return DownloadResult(
            upload,
            plan,
            lambda: self.store.read(upload_id, plan.start, plan.end, layout),
        )

    async def layout_of(self, upload_id: str) -> Layout:
        if not self.store.uses_layout:
            return EMPTY_LAYOUT
        return await self.repository.layout(upload_id)

    # --- creating ----------------------------------------------------------------------

    async def create(
        self,
        command: Create,
        receive: Receive,
        base_path: str,
        own_hosts: frozenset[str],
        caller: Caller = ANONYMOUS,
    ) -> Upload:
        plan = rules.decide_creation(command, self.limits)
        now = self.clock()
        partials: list[Upload] = []
        partial_ids: list[str] = []
        length = plan.length
        if plan.concat_kind is ConcatKind.FINAL:
            partial_ids = [
                rules.partial_id_from_url(url, base_path, own_hosts) for url in plan.partial_urls
            ]
            found = await self.repository.get_many(partial_ids)
            # another owner's partial does not exist for this caller
            missing = [
                p
                for p in partial_ids
                if p not in found or not rules.is_owned_by(found[p], caller.subject)
            ]
            if missing:
                raise PartialNotFound(f"Partial upload {missing[0]} does not exist.")
            partials = [found[p] for p in partial_ids]
            length = rules.decide_final_length(partials, self.limits, now)
        status = rules.initial_status(plan)
        upload_id = new_upload_id()
        if self.hooks.enabled(HookPoint.PRE_CREATE):
            plan, upload_id = await self._pre_create(plan, length, partial_ids, caller, upload_id)
        upload = Upload(
            id=upload_id,
            status=status,
            offset=0,
            length=length,
            metadata_header=plan.metadata_header,
            concat_kind=plan.concat_kind,
            concat_header=plan.concat_header,
            expires_at=rules.next_expiry(self.limits, now, status),
            owner=caller.subject,
        )
        if status is UploadStatus.FINISHED and self.hooks.enabled(HookPoint.PRE_FINISH):
            # complete at birth (no bytes to come): refused, it is never created
            finished = self._hook_upload(upload, plan.metadata)
            await self.hooks.call(HookPoint.PRE_FINISH, finished, caller)
        # a new upload is locked from birth: no one else knows its id yet, but taking the lock
        # first means that without a lock service nothing is created (503, not half an upload)
        async with self.locks.hold(upload.id) as holding:
            layout = await self.store.create(upload.id, length)
            try:
                events = self._events(HookPoint.POST_CREATE, upload, caller, plan.metadata)
                if status is UploadStatus.FINISHED:
                    events += self._events(HookPoint.POST_FINISH, upload, caller, plan.metadata)
                await self.repository.insert(
                    upload, plan.metadata, partial_ids, now, layout, events=events
                )
                if events:
                    self.on_events()
            except BaseException:
                await self.store.delete(upload.id, layout)
                raise
            await self._settle(holding, upload)
            if status is UploadStatus.FINISHED:
                self.meter.upload_finished()
                await self.assemble(upload)
            if plan.concat_kind is ConcatKind.FINAL and rules.final_ready(partials):
                holding.settled = None  # unknown until the transition is known to be done
                upload = await self._assemble_if_ready(upload)
                holding.settled = upload
            if plan.initial_append is not None:
                try:
                    upload = await self._receive(
                        upload, plan.initial_append, receive, holding, caller
                    )
                except ProtocolError:
                    # bad input changes nothing: the upload it would have created goes too
                    holding.settled = None
                    await self._discard(upload)
                    raise
        self.meter.upload_created()
        return upload

    async def _pre_create(
        self,
        plan: rules.CreationPlan,
        length: int | None,
        partial_ids: list[str],
        caller: Caller,
        upload_id: str,
    ) -> tuple[rules.CreationPlan, str]:
        """The pre-create hook may refuse the creation, replace its metadata and choose its
        id; the plan and id the upload is created with."""
        proposed = HookUpload(
            id=None,
            length=length,
            metadata=metadata_texts(plan.metadata),
            owner=caller.subject,
            concat=plan.concat_kind.value,
            partials=tuple(partial_ids),
        )
        answer = await self.hooks.call(HookPoint.PRE_CREATE, proposed, caller)
        if answer.metadata is not None:
            metadata = {k: None if v is None else v.encode() for k, v in answer.metadata.items()}
            plan = replace(
                plan, metadata=metadata, metadata_header=format_metadata(metadata) or None
            )
        if answer.upload_id is not None:
            if await self.repository.get(answer.upload_id) is not None:
                raise HookFailed(
                    f"The pre-create hook chose the id {answer.upload_id}, which is in use."
                )
            upload_id = answer.upload_id
        return plan, upload_id

    def _progress(
        self, upload: Upload, offset: int, caller: Caller
    ) -> Callable[[int], None] | None:
        """For a request appending at `offset`: how far the upload got, at most once per
        progress_interval per upload, to post-receive (in the background, best effort) and
        to the people watching it."""
        tell = self.hooks.enabled(HookPoint.POST_RECEIVE)
        feed = self.progress_feed
        loop = asyncio.get_running_loop()

        def received(count: int) -> None:
            now = loop.time()
            last = self._progress_told.get(upload.id)
            if last is not None and now - last < self.progress_interval:
                return
            watched = feed.wanted(upload.id)
            if not tell and not watched:
                return
            if len(self._progress_told) >= 10_000 and last is None:
                del self._progress_told[next(iter(self._progress_told))]  # the oldest
            self._progress_told.pop(upload.id, None)
            self._progress_told[upload.id] = now  # newest last
            if watched:
                feed.publish(ProgressNote(upload.id, offset + count, upload.length, "receiving"))
            if tell:
                moved = self._hook_upload(replace(upload, offset=offset + count))
                task = loop.create_task(
                    self._tell(make_event(HookPoint.POST_RECEIVE, moved, caller))
                )
                self._telling.add(task)
                task.add_done_callback(self._telling.discard)

        return received

    def _note(self, upload: Upload) -> None:
        """A committed state, for the people watching the upload."""
        if self.progress_feed.wanted(upload.id):
            self.progress_feed.publish(note_of(upload))

    async def watch(
        self, upload_id: str, caller: Caller = ANONYMOUS
    ) -> AsyncIterator[ProgressNote | None]:
        """How far the upload gets, for a person watching: its state now, then a note as
        bytes arrive or its state changes, ending once it finished or ended otherwise (or
        after WATCH_IDLE without a change). None means: nothing new (time for a keep-alive).
        It never asks a request to let go of the upload, as HEAD does."""
        if not rules.is_valid_upload_id(upload_id):
            raise UploadNotFound()
        upload = self.locks.kept_state(upload_id) or await self.load(upload_id)
        rules.check_owner(upload, caller.subject)
        rules.check_available(upload, self.clock())
        return self._notes(note_of(upload))

    async def _notes(self, first: ProgressNote) -> AsyncIterator[ProgressNote | None]:
        yield first
        if first.final:
            return
        loop = asyncio.get_running_loop()
        last, changed_at = first, loop.time()
        async with self.progress_feed.watch(first.upload_id) as queue:
            while True:
                try:
                    async with asyncio.timeout(WATCH_POLL):
                        note = await queue.get()
                except TimeoutError:  # notes are best effort: the record is the truth
                    try:
                        current = self.locks.kept_state(first.upload_id) or await self.load(
                            first.upload_id
                        )
                    except UploadNotFound:
                        return
                    note = note_of(current)
                if note.status == last.status and note.offset <= last.offset:
                    if loop.time() - changed_at > WATCH_IDLE:
                        return
                    yield None  # a committed offset behind the bytes already reported
                    continue
                last, changed_at = note, loop.time()
                yield note
                if note.final:
                    return

    async def _tell(self, event: dict[str, Any]) -> None:
        try:
            await self.hooks.deliver(HookPoint.POST_RECEIVE, event)
        except HookFailed as exc:  # progress is told once: the next event says more anyway
            log.warning("post-receive for %s not told: %s", event["upload"]["id"], exc.detail)

    def _hook_upload(
        self, upload: Upload, metadata: dict[str, bytes | None] | None = None
    ) -> HookUpload:
        return hook_upload(upload, metadata, self.store.location(upload.id))

    def _events(
        self,
        point: HookPoint,
        upload: Upload,
        caller: Caller,
        metadata: dict[str, bytes | None] | None = None,
    ) -> list[dict[str, Any]]:
        """The event of a notifying point for the outbox, when anything listens there."""
        if not self.hooks.enabled(point):
            return []
        return [make_event(point, self._hook_upload(upload, metadata), caller)]

    async def _settle(self, holding: Holding, upload: Upload) -> None:
        """`upload` is now the database's record: the lock writes it to the cache as it is
        released (RedisLocks), or it goes to the cache now."""
        holding.settled = upload
        if not holding.keeps_state:
            await self.cache.put(upload)

    async def _discard(self, upload: Upload) -> None:
        await self.cache.forget(upload.id)
        layout = await self.layout_of(upload.id)
        await self.repository.delete(upload.id)
        await self.store.delete(upload.id, layout)

    # --- appending ---------------------------------------------------------------------

    async def append(
        self, upload_id: str, command: Append, receive: Receive, caller: Caller = ANONYMOUS
    ) -> Upload:
        if not rules.is_valid_upload_id(upload_id):
            raise UploadNotFound()
        async with self.locks.hold(upload_id) as holding:
            upload = await self.load_for_write(upload_id, holding)
            rules.check_owner(upload, caller.subject)
            plan = rules.decide_append(upload, command, self.limits, self.clock())
            return await self._receive(upload, plan, receive, holding, caller)

    async def _receive(
        self,
        upload: Upload,
        plan: AppendPlan,
        receive: Receive,
        holding: Holding,
        caller: Caller = ANONYMOUS,
    ) -> Upload:
        layout = await self.layout_of(upload.id)
        plan = rules.limit_to_store_room(plan, self.store.room(layout, plan.offset))
        length = upload.length if upload.length is not None else plan.declare_length
        appender = (
            self.store.appender(upload.id, plan.offset, layout, length)
            if plan.stores_bytes
            else NO_BYTES
        )
        hasher = new_hasher(plan.checksum.algorithm) if plan.checksum else None
        self.meter.receiving_started()
        progress = self._progress(upload, plan.offset, caller)
        try:
            body = await pump_body(
                receive, appender, plan.max_bytes, hasher, holding, self.meter, progress
            )
            if body.overrun:
                await appender.abort()
                raise rules.body_overrun(plan, upload.length, self.limits)
            stored = await appender.close()
        except BaseException:
            await appender.abort()
            raise
        finally:
            self.meter.receiving_ended()
        outcome = rules.conclude_append(
            upload, plan, stored.size, body.complete, hasher.digest() if hasher else None
        )
        # bytes that do not count (an interrupted chunk with a checksum) leave no record
        return await self._commit_append(
            upload, outcome, stored if outcome.kept else None, holding, caller
        )

    async def _commit_append(
        self,
        upload: Upload,
        outcome: AppendOutcome,
        stored: Stored | None,
        holding: Holding,
        caller: Caller = ANONYMOUS,
    ) -> Upload:
        if upload.status is UploadStatus.FINISHED:
            return upload  # an empty PATCH at the end of a finished upload changes nothing
        now = self.clock()
        stored = stored if stored is not None and self.store.uses_layout else None
        holding.settled = None  # unknown until the transition is known to be done
        events = []
        if outcome.new_status is UploadStatus.FINISHED:
            finished = replace(
                upload,
                status=outcome.new_status,
                offset=outcome.new_offset,
                length=outcome.new_length if outcome.new_length is not None else upload.length,
            )
            if self.hooks.enabled(HookPoint.PRE_FINISH):
                try:
                    await self.hooks.call(HookPoint.PRE_FINISH, self._hook_upload(finished), caller)
                except HookRejected:
                    await self._fail(upload, stored, holding)
                    raise
            events = self._events(HookPoint.POST_FINISH, finished, caller)
        new = await self.repository.transition(
            upload,
            status=outcome.new_status,
            offset=outcome.new_offset,
            length=outcome.new_length,
            expires_at=rules.next_expiry(self.limits, now, outcome.new_status),
            now=now,
            layout=stored.layout if stored else None,
            new_parts=stored.new_parts if stored else (),
            events=events,
        )
        if new is None:
            await self.cache.forget(upload.id)
            raise ServerFault("The upload changed under this request; nothing was acknowledged.")
        await self._settle(holding, new)
        self._note(new)
        if stored is not None:
            await self.store.discard(stored.obsolete)
        if new.status is UploadStatus.FINISHED:
            self.meter.upload_finished()
            # committed first, assembled second: a failed assembly is retried (GET, sweeper)
            # from the recorded parts, and no acknowledged byte depends on it
            await self.assemble(new)
        if events:
            # after the assembly: post-finish is told once the bytes are whole (the relay
            # would wait for them anyway, see ensure_whole)
            self.on_events()
        if new.status is UploadStatus.FINISHED and new.is_partial:
            await self.complete_waiting_finals(new.id)
        return new

    async def _fail(self, upload: Upload, stored: Stored | None, holding: Holding) -> None:
        """A pre-finish hook refused the complete upload: it ends failed, and its bytes
        (those of this request too: `stored`) are removed."""
        layout = stored.layout if stored is not None else await self.layout_of(upload.id)
        new = await self.repository.transition(upload, status=UploadStatus.FAILED)
        if new is None:
            await self.cache.forget(upload.id)
            raise ServerFault("The upload changed while it was being refused.")
        await self._settle(holding, new)
        self._note(new)
        await self.store.delete(upload.id, layout)
        await self.forget_layout(upload.id, layout)

    async def forget_layout(self, upload_id: str, layout: Layout) -> None:
        """The store's objects are gone: so are the records of its parts and fragments."""
        if self.store.uses_layout:
            await self.repository.save_layout(upload_id, replace(layout, handle=None, fragments=()))

    async def assemble(self, upload: Upload) -> Layout:
        """Make a finished upload's bytes whole in the store (S3: complete the multipart
        upload from the recorded parts); idempotent. Call with the upload's lock held."""
        assert upload.length is not None
        layout = await self.layout_of(upload.id)
        parts = await self.repository.parts(upload.id) if layout.handle is not None else []
        new_layout = await self.store.finish(upload.id, upload.length, layout, parts)
        if self.store.uses_layout and new_layout != layout:
            await self.repository.save_layout(upload.id, new_layout)
        return new_layout

    async def ensure_whole(self, upload_id: str) -> None:
        """Before post-finish is told: a finished upload's bytes are whole in the store,
        where the event's `upload.storage` points a reader (S3: the multipart upload is
        completed). Normally the finishing request did it already; after a crash, or while
        that request is still at it, this does it or waits for it (under the lock)."""
        if not self.store.uses_layout or (await self.layout_of(upload_id)).handle is None:
            return
        async with self.locks.hold(upload_id):
            upload = await self.repository.get(upload_id)
            if upload is not None and upload.status is UploadStatus.FINISHED:
                await self.assemble(upload)

    # --- concatenation -----------------------------------------------------------------

    async def complete_waiting_finals(self, partial_id: str) -> None:
        """PROTOCOL 20: a final created before its partials finished completes with them."""
        for final_id in await self.repository.finals_waiting_on(partial_id):
            async with self.locks.hold(final_id):
                final = await self.repository.get(final_id)
                if final is not None and final.status is UploadStatus.CONCATENATING:
                    await self._assemble_if_ready(final)

    async def _assemble_if_ready(self, final: Upload) -> Upload:
        ids = await self.repository.partial_ids(final.id)
        found = await self.repository.get_many(ids)
        partials = [found[i] for i in ids if i in found]
        if len(partials) != len(ids) or not rules.final_ready(partials):
            return final
        layouts: dict[str, Layout] = {}
        for partial in partials:  # a partial may repeat: look at each once
            if partial.id not in layouts:
                layout = await self.layout_of(partial.id)
                if layout.handle is not None:
                    # its own assembly failed earlier: finish it first (idempotent, so the
                    # partial's lock, against the partial -> final lock order, is not needed)
                    layout = await self.assemble(partial)
                layouts[partial.id] = layout
        sources = [Source(p.id, p.length or 0, layouts[p.id]) for p in partials]
        length = sum(source.length for source in sources)
        layout = await self.store.concatenate(final.id, sources, await self.layout_of(final.id))
        layout = await self.store.finish(final.id, length, layout)
        finished = replace(final, status=UploadStatus.FINISHED, offset=length, length=length)
        # the server's own doing (the last partial finished): no request to tell of
        events = self._events(HookPoint.POST_FINISH, finished, ANONYMOUS)
        new = await self.repository.transition(
            final,
            status=UploadStatus.FINISHED,
            offset=length,
            length=length,
            now=self.clock(),
            layout=layout if self.store.uses_layout else None,
            events=events,
        )
        if new is not None and events:
            self.on_events()
        if new is None:
            await self.cache.forget(final.id)
            raise ServerFault("The final upload changed while it was being assembled.")
        await self.cache.put(new)
        self._note(new)
        self.meter.upload_finished()
        return new

    # --- ending ------------------------------------------------------------------------

    async def terminate(self, upload_id: str, caller: Caller = ANONYMOUS) -> None:
        if not rules.is_valid_upload_id(upload_id):
            raise UploadNotFound()
        async with self.locks.hold(upload_id):
            upload = await self.load_for_write(upload_id)
            if not caller.operator:
                rules.check_owner(upload, caller.subject)
            rules.check_available(upload, self.clock())
            if self.hooks.enabled(HookPoint.PRE_TERMINATE) and not caller.operator:
                # the lock is held across the hook: nothing can change the upload meanwhile
                await self.hooks.call(HookPoint.PRE_TERMINATE, self._hook_upload(upload), caller)
            layout = await self.layout_of(upload_id)
            terminated = replace(upload, status=UploadStatus.TERMINATED)
            events = self._events(HookPoint.POST_TERMINATE, terminated, caller)
            new = await self.repository.transition(
                upload, status=UploadStatus.TERMINATED, events=events
            )
            if new is not None and events:
                self.on_events()
            if new is None:
                await self.cache.forget(upload_id)
                raise ServerFault("The upload changed while it was being terminated.")
            await self.cache.put(new)
            self._note(new)
            self.meter.upload_terminated()
            await self.store.delete(upload_id, layout)
            await self.forget_layout(upload_id, layout)
