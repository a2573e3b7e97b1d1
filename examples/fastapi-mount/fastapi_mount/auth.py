"""The application's own authentication: bearer tokens to users. A real application asks its
database or identity provider; the tus endpoint reuses it through a pre-access hook."""

from __future__ import annotations

import os

#: token -> user; FASTAPI_MOUNT_TOKENS="token1:alice,token2:bob" replaces the sample
TOKENS = dict(
    pair.split(":", 1)
    for pair in os.environ.get("FASTAPI_MOUNT_TOKENS", "alice-token:alice,bob-token:bob").split(",")
)


def user_for(authorization: str | None) -> str | None:
    """The user a request's Authorization header names, None if nobody."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return TOKENS.get(authorization.removeprefix("Bearer ").strip())
