"""Checking a CSV file as a stream: memory stays bounded by the longest line, whatever the
file's size.

A file is accepted when it is UTF-8 (a leading byte order mark is allowed), its first line is
a header naming every column (no empty or repeated names), and every record has as many
fields as the header. Empty lines are skipped. The first problem ends the check, naming the
line it is on (1 is the header's).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

#: the longest line (and field) taken; a longer one is a problem, not a memory spike
MAX_LINE_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CsvSummary:
    #: data records (the header not counted)
    rows: int
    columns: int
    header: tuple[str, ...]
    size: int


class CsvProblem(Exception):
    """The file is not an acceptable CSV file; `line` is where the check stopped."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class _Lines:
    """The stream's lines as text, one at a time, counting them and their bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.number = 0
        self.size = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            raw = self.stream.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self.number += 1
            self.size += len(raw)
            if len(raw) > MAX_LINE_BYTES:
                raise CsvProblem(self.number, f"longer than {MAX_LINE_BYTES} bytes")
            if self.number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            try:
                # splitting at b"\n" never cuts a UTF-8 character: no byte of a multi-byte
                # character is 0x0A
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CsvProblem(
                    self.number,
                    f"not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)",
                ) from None


def check_csv(stream: BinaryIO) -> CsvSummary:
    """Read `stream` to its end; the summary of an acceptable file, or CsvProblem."""
    lines = _Lines(stream)
    csv.field_size_limit(MAX_LINE_BYTES)
    records = csv.reader(lines, strict=True)
    header: list[str] | None = None
    rows = 0
    while True:
        first_line = lines.number + 1  # where the next record begins
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CsvProblem(max(lines.number, first_line), str(exc)) from None
        if not record:
            continue  # an empty line
        if header is None:
            header = _header(record, first_line)
            continue
        if len(record) != len(header):
            raise CsvProblem(
                first_line,
                f"{len(record)} fields where the header has {len(header)}",
            )
        rows += 1
    if header is None:
        raise CsvProblem(1, "no header row (the file is empty)")
    return CsvSummary(rows=rows, columns=len(header), header=tuple(header), size=lines.size)


def _header(record: list[str], line: int) -> list[str]:
    names = [name.strip() for name in record]
    seen: set[str] = set()
    for column, name in enumerate(names, start=1):
        if not name:
            raise CsvProblem(line, f"the header's column {column} has no name")
        if name in seen:
            raise CsvProblem(line, f"the header names {name!r} twice")
        seen.add(name)
    return names
