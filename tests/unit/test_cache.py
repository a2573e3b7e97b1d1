"""StateCache: versioned hot state; an older writer never replaces a newer record."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol.state import Upload, UploadStatus
from tusd_py.state.memory_cache import StateCache

T = TypeVar("T")


def run(step: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(step)


def make(upload_id: str = "a" * 16, version: int = 0, offset: int = 0) -> Upload:
    return Upload(upload_id, UploadStatus.RECEIVING, offset, 100, version=version)


def test_miss_then_hit() -> None:
    cache = StateCache()
    assert run(cache.get("a" * 16)) is None
    upload = make()
    run(cache.put(upload))
    assert run(cache.get("a" * 16)) == upload
    assert (cache.hits, cache.misses) == (1, 1)


def test_hit_and_miss_counts() -> None:
    cache = StateCache()
    run(cache.put(make("a" * 16)))
    for _ in range(3):
        run(cache.get("a" * 16))
    for _ in range(2):
        run(cache.get("b" * 16))
    assert (cache.hits, cache.misses) == (3, 2)


def test_newer_version_replaces() -> None:
    cache = StateCache()
    run(cache.put(make(version=1, offset=10)))
    run(cache.put(make(version=2, offset=20)))
    assert run(cache.get("a" * 16)) == make(version=2, offset=20)


def test_older_version_never_replaces_newer() -> None:
    cache = StateCache()
    run(cache.put(make(version=5, offset=50)))
    run(cache.put(make(version=4, offset=40)))
    assert run(cache.get("a" * 16)) == make(version=5, offset=50)


def test_same_version_replaces() -> None:
    # a refresh from the database after a 409 rewrites the same version
    cache = StateCache()
    run(cache.put(make(version=3, offset=30)))
    refreshed = replace(make(version=3, offset=30), status=UploadStatus.FINISHED)
    run(cache.put(refreshed))
    assert run(cache.get("a" * 16)) == refreshed


def test_forget_removes_and_is_idempotent() -> None:
    cache = StateCache()
    run(cache.put(make()))
    run(cache.forget("a" * 16))
    run(cache.forget("a" * 16))
    assert run(cache.get("a" * 16)) is None


def test_after_forget_any_version_may_be_written() -> None:
    cache = StateCache()
    run(cache.put(make(version=9)))
    run(cache.forget("a" * 16))
    run(cache.put(make(version=1)))
    assert run(cache.get("a" * 16)) == make(version=1)


def test_lru_eviction_drops_the_least_recently_used() -> None:
    cache = StateCache(max_entries=2)
    a, b, c = make("a" * 16), make("b" * 16), make("c" * 16)
    run(cache.put(a))
    run(cache.put(b))
    run(cache.get("a" * 16))  # a is now more recent than b
    run(cache.put(c))
    assert run(cache.get("b" * 16)) is None
    assert run(cache.get("a" * 16)) == a
    assert run(cache.get("c" * 16)) == c


def test_a_put_counts_as_use() -> None:
    cache = StateCache(max_entries=2)
    run(cache.put(make("a" * 16, version=1)))
    run(cache.put(make("b" * 16)))
    run(cache.put(make("a" * 16, version=2)))  # refreshes a
    run(cache.put(make("c" * 16)))
    assert run(cache.get("b" * 16)) is None
    assert run(cache.get("a" * 16)) is not None


def test_a_refused_older_put_does_not_evict() -> None:
    cache = StateCache(max_entries=2)
    run(cache.put(make("a" * 16, version=5)))
    run(cache.put(make("b" * 16)))
    run(cache.put(make("a" * 16, version=4)))
    assert len(cache._entries) == 2
    assert run(cache.get("a" * 16)) == make("a" * 16, version=5)


def test_never_holds_more_than_max_entries() -> None:
    cache = StateCache(max_entries=10)
    for index in range(100):
        run(cache.put(make(f"{index:016d}")))
        assert len(cache._entries) <= 10
    assert run(cache.get(f"{99:016d}")) is not None
    assert run(cache.get(f"{89:016d}")) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=30))
def test_the_cached_version_is_the_highest_written(versions: list[int]) -> None:
    cache = StateCache()
    for version in versions:
        run(cache.put(make(version=version, offset=version)))
    cached = run(cache.get("a" * 16))
    assert cached is not None
    assert cached.version == max(versions)
    assert cached.offset == max(versions)


def test_an_entry_another_process_may_have_overtaken_is_not_given_out() -> None:
    tenured = {"a" * 16: True}
    cache = StateCache(current=lambda upload_id: tenured.get(upload_id, False))
    run(cache.put(make()))
    assert run(cache.get("a" * 16)) == make()
    tenured["a" * 16] = False  # another process took the upload's lock
    assert run(cache.get("a" * 16)) is None
    tenured["a" * 16] = True  # back with us: but the old entry is gone, not believed again
    assert run(cache.get("a" * 16)) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_drop_forgets_at_once() -> None:
    cache = StateCache()
    run(cache.put(make()))
    cache.drop("a" * 16)
    cache.drop("a" * 16)
    assert run(cache.get("a" * 16)) is None
