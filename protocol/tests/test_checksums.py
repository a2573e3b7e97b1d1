"""The checksum registry: incremental hashing equals one-shot hashing, digests are canonical."""

from __future__ import annotations

import hashlib
import zlib

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol.checksums import ALGORITHMS, Crc32, digest_of, new_hasher
from tusd_protocol.errors import InvalidChecksum, UnsupportedChecksumAlgorithm

#: what each algorithm's digest must be, computed by the reference library in one shot
REFERENCE = {
    "sha1": lambda data: hashlib.sha1(data).digest(),
    "md5": lambda data: hashlib.md5(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha512": lambda data: hashlib.sha512(data).digest(),
    "crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "xxh64": lambda data: xxhash.xxh64(data).digest(),
    "xxh3": lambda data: xxhash.xxh3_64(data).digest(),
    "xxh128": lambda data: xxhash.xxh3_128(data).digest(),
}

DIGEST_SIZES = {
    "sha1": 20,
    "md5": 16,
    "sha256": 32,
    "sha512": 64,
    "crc32": 4,
    "xxh64": 8,
    "xxh3": 8,
    "xxh128": 16,
}


def test_registry_lists_what_protocol_md_promises() -> None:
    assert set(ALGORITHMS) == set(REFERENCE)
    assert "sha1" in ALGORITHMS  # required by the tus checksum extension


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_digest_sizes(algorithm: str) -> None:
    assert len(new_hasher(algorithm).digest()) == DIGEST_SIZES[algorithm]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=20),
)
def test_incremental_equals_one_shot(algorithm: str, data: bytes, cuts: list[int]) -> None:
    hasher = new_hasher(algorithm)
    for piece in _split(data, cuts):
        hasher.update(piece)
    assert hasher.digest() == REFERENCE[algorithm](data)
    assert digest_of(algorithm, data) == REFERENCE[algorithm](data)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_hasher_is_fresh(algorithm: str) -> None:
    first = new_hasher(algorithm)
    first.update(b"something")
    assert new_hasher(algorithm).digest() == REFERENCE[algorithm](b"")


def test_crc32_is_zlib_crc32_big_endian() -> None:
    hasher = Crc32()
    hasher.update(b"123456789")
    assert hasher.digest() == bytes.fromhex("cbf43926")  # the CRC-32 check value


def test_xxhash_digests_are_canonical_big_endian() -> None:
    data = b"tus resumable upload"
    assert digest_of("xxh64", data) == xxhash.xxh64_intdigest(data).to_bytes(8, "big")
    assert digest_of("xxh3", data) == xxhash.xxh3_64_intdigest(data).to_bytes(8, "big")
    assert digest_of("xxh128", data) == xxhash.xxh3_128_intdigest(data).to_bytes(16, "big")


def test_hasher_accepts_memoryview() -> None:
    for algorithm in ALGORITHMS:
        hasher = new_hasher(algorithm)
        hasher.update(memoryview(b"abc"))
        assert hasher.digest() == REFERENCE[algorithm](b"abc")


@pytest.mark.parametrize("name", ["sha3", "SHA1", "", "crc32c", "sha1 "])
def test_unknown_algorithm_is_refused(name: str) -> None:
    with pytest.raises(UnsupportedChecksumAlgorithm) as info:
        new_hasher(name)
    assert isinstance(info.value, InvalidChecksum)
    assert info.value.status == 400
    assert info.value.code == "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"
    assert "sha1" in info.value.message
