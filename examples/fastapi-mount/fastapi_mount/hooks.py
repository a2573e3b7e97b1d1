"""The tus endpoint's hooks (`hooks_module="fastapi_mount.hooks"`): every tus request is
checked with the application's own authentication, and its user owns what it uploads (the
server then answers 404 to anyone else for those uploads)."""

from __future__ import annotations

from typing import Any

from .auth import user_for


def pre_access(event: dict[str, Any]) -> dict[str, Any]:
    user = user_for(event["request"]["headers"].get("authorization"))
    if user is None:
        return {
            "reject": {
                "status": 401,
                "code": "ERR_SIGN_IN",
                "message": "Sign in first: send Authorization: Bearer <token>.",
                "headers": {"WWW-Authenticate": "Bearer"},
            }
        }
    return {"subject": user}
