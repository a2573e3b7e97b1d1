"""The S3 store's pure rules: part sizes, how a concatenation is cut into parts, the
completion body, the storage URL. (The store itself is tested against real S3 servers in
tests/integration/test_s3_store.py.)"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tusd_storage.s3 import (
    DEFAULT_PART_SIZE,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    S3Config,
    _cut,
    part_size_for,
)
from tusd_storage.s3api import CompletedPart, completion_xml

MiB = 1024 * 1024


def test_part_size_is_the_preferred_one_while_the_length_fits() -> None:
    assert part_size_for(None) == DEFAULT_PART_SIZE
    assert part_size_for(0) == DEFAULT_PART_SIZE
    assert part_size_for(MAX_PARTS * DEFAULT_PART_SIZE) == DEFAULT_PART_SIZE


def test_part_size_grows_in_whole_mib_when_the_length_needs_more_parts() -> None:
    size = part_size_for(MAX_PARTS * DEFAULT_PART_SIZE + 1)
    assert size == DEFAULT_PART_SIZE + MiB


def test_part_size_is_never_below_the_s3_minimum() -> None:
    assert part_size_for(10, preferred=MiB) == MIN_PART_SIZE


@given(st.integers(min_value=0, max_value=MAX_OBJECT_SIZE))
def test_every_length_up_to_5_tib_fits_in_10000_parts(length: int) -> None:
    size = part_size_for(length)
    assert MIN_PART_SIZE <= size <= MAX_PART_SIZE
    assert size % MiB == 0
    assert -(-length // size) <= MAX_PARTS


@given(
    st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=16),
)
def test_cut_makes_equal_parts_that_cover_the_sources_in_order(
    lengths: list[int], part_size: int
) -> None:
    spans = [(f"k{i}", 0, length) for i, length in enumerate(lengths) if length]
    parts = _cut(spans, part_size)
    sizes = [sum(end - first for _, first, end in part) for part in parts]
    total = sum(lengths)
    assert sum(sizes) == total
    assert all(size == part_size for size in sizes[:-1])
    assert not sizes or 0 < sizes[-1] <= part_size
    flat = [
        (key, position)
        for part in parts
        for key, first, end in part
        for position in range(first, end)
    ]
    assert flat == [(key, position) for key, first, end in spans for position in range(first, end)]


def test_cut_copies_a_part_inside_one_source_and_streams_one_that_spans() -> None:
    parts = _cut([("a", 0, 5), ("b", 0, 7), ("c", 0, 3)], 5)
    assert parts == [[("a", 0, 5)], [("b", 0, 5)], [("b", 5, 7), ("c", 0, 3)]]


def test_completion_repeats_recorded_checksums() -> None:
    body = completion_xml([CompletedPart(1, "e1", "c2hh"), CompletedPart(2, "e2")])
    root = ET.fromstring(body)
    parts = root.findall("Part")
    assert [p.findtext("PartNumber") for p in parts] == ["1", "2"]
    assert [p.findtext("ETag") for p in parts] == ['"e1"', '"e2"']
    assert [p.findtext("ChecksumSHA256") for p in parts] == ["c2hh", None]


def test_storage_url_names_bucket_and_prefix() -> None:
    config = S3Config.from_url("s3://media/tus/uploads", endpoint="h:9000")
    assert (config.bucket, config.prefix, config.endpoint) == ("media", "tus/uploads/", "h:9000")
    assert S3Config.from_url("s3://media").prefix == ""


@pytest.mark.parametrize("url", ["media", "s3://", "http://media/x"])
def test_storage_url_must_be_s3(url: str) -> None:
    with pytest.raises(ValueError):
        S3Config.from_url(url)


def test_part_size_below_5_mib_is_refused() -> None:
    with pytest.raises(ValueError):
        S3Config(bucket="b", part_size=MIN_PART_SIZE - 1)
