"""A FastAPI application with tusd-py mounted under /uploads.

    PYTHONPATH=examples/fastapi-mount uvicorn fastapi_mount.app:app

The tus endpoint is https://host/uploads/files/. Its lifespan (database, sweeper, event
relay) runs inside the application's: a mounted Starlette app's own lifespan is not run by
FastAPI, so the application enters it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException

from tusd_py.config import Settings
from tusd_py.http.app import build_app

from .auth import user_for

tus = build_app(
    Settings(
        data_dir=os.environ.get("FASTAPI_MOUNT_DATA_DIR", "./data"),
        base_path="/files/",
        hooks_module="fastapi_mount.hooks",
    )
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with tus.router.lifespan_context(tus):
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/uploads", tus)


def current_user(authorization: Annotated[str | None, Header()] = None) -> str:
    user = user_for(authorization)
    if user is None:
        raise HTTPException(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    return user


@app.get("/whoami")
def whoami(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
    """The same authentication the tus endpoint uses, for the application's own routes."""
    return {"user": user, "upload_to": "/uploads/files/"}
