"""What can end an upload, a download or a query, as the caller sees it."""

from __future__ import annotations


class ClientError(Exception):
    """Anything the client gives up on."""


class UploadFailed(ClientError):
    """The server refused, or did not answer after every retry.

    `status` is the last HTTP status (0: no answer at all), `code` the server's stable
    error code (`ERR_...`) or one of ours, `message` a sentence for a person.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message


class Cancelled(ClientError):
    """The caller cancelled; what the server acknowledged stays, and a new run resumes."""
