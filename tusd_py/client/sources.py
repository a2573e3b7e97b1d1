"""Where an upload's bytes come from: a file (read at any offset, as often as needed) or a
stream of unknown length (each chunk spooled until the server acknowledged it).

Reads go a block at a time: a request's body is produced as it is sent, so memory does not
grow with the file or with the chunk size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .flow import Filled

#: bytes read (and handed to the connection) at a time
BLOCK = 1024 * 1024


class FileSource:
    """A regular file; many requests (parallel partials) may read it at once (pread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size: int | None = os.fstat(self._fd).st_size

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        position = start
        while position < end:
            block = os.pread(self._fd, min(BLOCK, end - position), position)
            if not block:
                raise OSError(f"{self.path} is shorter than it was ({position} bytes)")
            position += len(block)
            yield block

    def fill(self, start: int, end: int) -> Filled:
        raise AssertionError("a file's length is known: nothing is spooled")

    def close(self) -> None:
        os.close(self._fd)


class StreamSource:
    """A stream without a known length (standard input, a pipe). The bytes of the chunk in
    flight are kept in a spool file, so that a failed request can send them again."""

    size: int | None = None

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        # a disk spool: the chunk is never all in memory, whatever its size
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
        self._base = 0
        self._spooled = 0
        #: one byte read past the last chunk, to know whether the stream ended there
        self._carry = b""

    def fill(self, start: int, end: int) -> Filled:
        """Spool the stream's next bytes [start, up to end)."""
        if start != self._base + self._spooled:
            raise AssertionError("a stream is spooled in order")
        self._spool.seek(0)
        self._spool.truncate()
        self._base, self._spooled = start, 0
        wanted = end - start
        if self._carry:
            self._spool.write(self._carry)
            self._spooled, self._carry = len(self._carry), b""
        while self._spooled < wanted:
            block = self.stream.read(min(BLOCK, wanted - self._spooled))
            if not block:
                return Filled(start + self._spooled, last=True)
            self._spool.write(block)
            self._spooled += len(block)
        self._carry = self.stream.read(1)
        return Filled(start + self._spooled, last=not self._carry)

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        if start < self._base or end > self._base + self._spooled:
            raise AssertionError("only the spooled chunk can be sent again")
        position = start - self._base
        stop = end - self._base
        while position < stop:
            self._spool.seek(position)
            block = self._spool.read(min(BLOCK, stop - position))
            position += len(block)
            yield block

    def close(self) -> None:
        self._spool.close()


Source = FileSource | StreamSource


def open_source(source: str | os.PathLike[str] | BinaryIO) -> Source:
    """A path is a file; anything else with `read` a stream of unknown length."""
    if isinstance(source, str | os.PathLike):
        return FileSource(source)
    return StreamSource(source)
