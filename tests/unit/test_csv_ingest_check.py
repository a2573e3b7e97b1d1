"""The csv-ingest example's CSV check (examples/csv-ingest/csv_ingest/check.py)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "csv-ingest"))

from csv_ingest.check import MAX_LINE_BYTES, CsvProblem, CsvSummary, check_csv
from csv_ingest.hooks import pre_create


def check(data: bytes) -> CsvSummary:
    return check_csv(io.BufferedReader(io.BytesIO(data)))


def problem(data: bytes) -> CsvProblem:
    with pytest.raises(CsvProblem) as caught:
        check_csv(io.BufferedReader(io.BytesIO(data)))
    return caught.value


def test_a_good_file_is_counted() -> None:
    summary = check(b"id,name,price\n1,apple,0.5\n2,pear,0.7\n")
    assert (summary.rows, summary.columns) == (2, 3)
    assert summary.header == ("id", "name", "price")
    assert summary.size == 37


def test_a_byte_order_mark_crlf_and_empty_lines_are_taken() -> None:
    summary = check(b"\xef\xbb\xbfa,b\r\n1,2\r\n\r\n3,4\r\n\r\n")
    assert summary.header == ("a", "b")
    assert summary.rows == 2


def test_a_record_with_too_few_fields_names_its_line() -> None:
    found = problem(b"a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n")
    assert found.line == 4
    assert str(found) == "line 4: 2 fields where the header has 3"


def test_lines_are_counted_across_quoted_line_breaks() -> None:
    # the record of lines 2-4 is one record; the bad one starts on line 5
    found = problem(b'a,b\n1,"x\ny\nz"\n2\n')
    assert found.line == 5


def test_bytes_that_are_not_utf8_name_their_line() -> None:
    found = problem(b"a,b\n1,2\n3,caf\xe9\n")
    assert found.line == 3
    assert "not UTF-8 (byte 0xe9 at byte 6 of the line)" in str(found)


@pytest.mark.parametrize(
    ("data", "line", "says"),
    [
        (b"", 1, "no header row"),
        (b"\n\n", 1, "no header row"),
        (b"a,,c\n", 1, "column 2 has no name"),
        (b"a,b,a\n", 1, "names 'a' twice"),
        (b'a,b\n1,"2\n', 2, "unexpected end of data"),
        (b'a,b\n1,"2"x\n', 2, "','"),
    ],
)
def test_what_is_not_a_csv_file(data: bytes, line: int, says: str) -> None:
    found = problem(data)
    assert found.line == line
    assert says in str(found)


def test_a_line_longer_than_the_limit_is_a_problem_not_a_memory_spike() -> None:
    data = b"a\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\n"
    found = problem(data)
    assert found.line == 2
    assert "longer than" in str(found)


@given(
    st.integers(min_value=1, max_value=6).flatmap(
        lambda columns: st.tuples(
            st.just(columns),
            st.lists(
                st.lists(
                    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
                    min_size=columns,
                    max_size=columns,
                ),
                max_size=20,
            ),
        )
    )
)
def test_whatever_a_csv_writer_writes_is_counted_right(
    table: tuple[int, list[list[str]]],
) -> None:
    columns, rows = table
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow([f"col{i}" for i in range(columns)])
    # a record of one empty field is written as an empty line, which the check skips
    kept = [row for row in rows if row != [""]]
    writer.writerows(kept)
    summary = check(out.getvalue().encode())
    assert (summary.rows, summary.columns) == (len(kept), columns)


def event(filename: str | None, length: int | None, concat: str = "none") -> dict[str, object]:
    metadata = {} if filename is None else {"filename": filename}
    return {"upload": {"metadata": metadata, "length": length, "concat": concat}}


def test_pre_create_takes_csv_names_of_known_size_within_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CSV_INGEST_MAX_BYTES", "1000")
    assert pre_create(event("Report.CSV", 1000)) is None
    assert pre_create(event(None, 10, concat="partial")) is None  # a piece of a parallel upload
    refused = {
        "setup.exe": pre_create(event("setup.exe", 10)),
        "nameless": pre_create(event(None, 10)),
        "deferred": pre_create(event("a.csv", None)),
        "large": pre_create(event("a.csv", 1001)),
        "large piece": pre_create(event(None, 1001, concat="partial")),
    }
    assert {name: answer["reject"]["status"] for name, answer in refused.items()} == {  # type: ignore[index]
        "setup.exe": 415,
        "nameless": 415,
        "deferred": 411,
        "large": 413,
        "large piece": 413,
    }
