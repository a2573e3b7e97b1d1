"""The checksum registry: algorithm name -> a fresh incremental hasher.

Every hasher has `update(bytes)` and `digest() -> bytes`. Digests are the bytes clients
base64-encode into Upload-Checksum: crc32 as 4 bytes big-endian, xxhash in its canonical
(big-endian) form, which is what xxhash's own `digest()` returns.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

import xxhash

from .errors import UnsupportedChecksumAlgorithm


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class Crc32:
    """zlib.crc32 with the hashlib interface."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "crc32": Crc32,
    "xxh64": xxhash.xxh64,
    "xxh3": xxhash.xxh3_64,
    "xxh128": xxhash.xxh3_128,
}


def new_hasher(algorithm: str) -> Hasher:
    try:
        factory = ALGORITHMS[algorithm]
    except KeyError:
        raise UnsupportedChecksumAlgorithm(
            f"Checksum algorithm {algorithm[:32]!r} is not supported; use one of "
            f"{', '.join(ALGORITHMS)}."
        ) from None
    return factory()


def digest_of(algorithm: str, data: bytes) -> bytes:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.digest()
