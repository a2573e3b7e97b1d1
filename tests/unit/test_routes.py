"""TusRoutes: which URLs the tus handlers answer directly, and which go on to the router."""

from __future__ import annotations

from typing import Any

import pytest

from tusd_py.http.routes import TusRoutes


async def collection(request: Any) -> Any:
    raise AssertionError("not called")


async def upload(request: Any) -> Any:
    raise AssertionError("not called")


async def router(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def routes(base: str) -> TusRoutes:
    return TusRoutes(router, base, collection, upload, ["POST", "PATCH"])


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("/files/", "/files/", (collection, None)),
        ("/files/", "/files", (collection, None)),
        ("/files/", "/files/abc_DEF-123", (upload, "abc_DEF-123")),
        ("/files/", "/files/abc/extra", (None, None)),  # the router's 404
        ("/files/", "/filesabc", (None, None)),
        ("/files/", "/health", (None, None)),
        ("/files/", "/other/abc", (None, None)),
        ("/", "/", (collection, None)),
        ("/", "/abc", (upload, "abc")),
        ("/", "/health", (None, None)),  # the router's own routes stay its own
        ("/", "/ready", (None, None)),
        ("/", "/metrics", (None, None)),
        ("/a/b/", "/a/b/xyz", (upload, "xyz")),
        ("/a/b/", "/a/b", (collection, None)),
    ],
)
def test_tus_urls_are_matched_and_the_rest_left_to_the_router(
    base: str, path: str, expected: tuple[Any, Any]
) -> None:
    assert routes(base).match(path) == expected
