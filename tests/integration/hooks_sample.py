"""The hooks module the hook tests run servers with (`--hooks-module
tests.integration.hooks_sample`): bearer tokens name the caller, file names steer pre-create.

Every event is appended as a JSON line to the file named by TUSD_TEST_HOOKS_LOG, so that a
test can read what each hook was told.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from tusd_py.events import Reject

TOKENS = {"Bearer alice-token": "alice", "Bearer bob-token": "bob"}


def _log(event: dict[str, Any]) -> None:
    path = os.environ.get("TUSD_TEST_HOOKS_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(event) + "\n")


def pre_access(event: dict[str, Any]) -> dict[str, Any] | None:
    """A plain function: it runs in a worker thread."""
    _log(event)
    token = event["request"]["headers"].get("authorization")
    if token is None:
        return None  # anonymous: may use uploads without an owner
    if token not in TOKENS:
        raise Reject(
            401, "The token is not known.", code="ERR_BAD_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return {"subject": TOKENS[token]}


async def pre_create(event: dict[str, Any]) -> dict[str, Any] | None:
    _log(event)
    metadata = event["upload"]["metadata"]
    name = metadata.get("filename") or ""
    if name.endswith(".exe"):
        return {"reject": {"status": 422, "message": "No programs.", "code": "ERR_FILE_TYPE"}}
    if name == "slow":
        await asyncio.sleep(30)
    if name == "crash":
        raise RuntimeError("the hook broke")
    if name == "nonsense":
        return {"colour": "blue"}
    if name.startswith("id:"):
        return {"id": name[3:]}
    return {"metadata": {**metadata, "checked": "yes"}}


def pre_terminate(event: dict[str, Any]) -> None:
    _log(event)
    if event["upload"]["metadata"].get("keep") == "forever":
        raise Reject(403, "This upload is kept.", code="ERR_KEPT")


def post_finish(event: dict[str, Any]) -> None:
    """Notifying: what it returns does not matter; raising makes the relay try again."""
    _log(event)
    if event["upload"]["metadata"].get("filename") == "flaky" and not _seen_before(event):
        raise RuntimeError("not this time")


def _seen_before(event: dict[str, Any]) -> bool:
    path = os.environ.get("TUSD_TEST_HOOKS_LOG")
    if not path:
        return False
    with open(path) as log:
        return sum(1 for line in log if event["id"] in line) > 1


def pre_finish(event: dict[str, Any]) -> None:
    _log(event)
    name = event["upload"]["metadata"].get("filename") or ""
    if name.endswith(".bad"):
        raise Reject(422, "The file did not pass the check.", code="ERR_CHECK")
    if name == "finish-crash":
        raise RuntimeError("the check broke")


async def post_receive(event: dict[str, Any]) -> None:
    _log(event)
