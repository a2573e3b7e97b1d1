"""Header codecs: every formatter's output reads back, every parser accepts only its grammar."""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol.errors import (
    InvalidChecksum,
    InvalidConcat,
    InvalidHeader,
    InvalidInteger,
    InvalidLength,
    InvalidMetadata,
    InvalidOffset,
    ProtocolError,
)
from tusd_protocol.headers import (
    MAX_INT,
    Checksum,
    ConcatFinal,
    ConcatPartial,
    format_checksum,
    format_concat,
    format_http_date,
    format_metadata,
    format_sf_boolean,
    format_sf_int_dictionary,
    format_uint,
    metadata_text,
    parse_checksum,
    parse_concat,
    parse_http_date,
    parse_metadata,
    parse_sf_boolean,
    parse_sf_int_dictionary,
    parse_uint,
)

ARABIC_INDIC_DIGITS = str.maketrans("0123456789", "".join(chr(0x660 + d) for d in range(10)))
PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
#: metadata keys: visible ASCII without the comma
METADATA_KEY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ",")
#: URL characters Upload-Concat accepts: visible ASCII
URL_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
SF_KEY_FIRST = string.ascii_lowercase + "*"
SF_KEY_REST = string.ascii_lowercase + string.digits + "_-.*"

PARSERS = [
    parse_uint,
    parse_metadata,
    parse_concat,
    parse_checksum,
    parse_http_date,
    parse_sf_boolean,
    parse_sf_int_dictionary,
]
PARSER_IDS = [p.__name__ for p in PARSERS]


# --- round trips ----------------------------------------------------------------------


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=MAX_INT))
def test_uint_reads_back(number: int) -> None:
    assert parse_uint(format_uint(number)) == number


@pytest.mark.parametrize("number", [-1, MAX_INT + 1])
def test_format_uint_refuses_values_outside_the_grammar(number: int) -> None:
    with pytest.raises(ValueError):
        format_uint(number)


metadata_keys = st.text(alphabet=METADATA_KEY_CHARS, min_size=1, max_size=20)
# An empty value has no wire form distinct from a bare key (see the test below).
metadata_values = st.none() | st.binary(min_size=1, max_size=64)


@settings(deadline=None)
@given(st.dictionaries(metadata_keys, metadata_values, max_size=8))
def test_metadata_reads_back(metadata: dict[str, bytes | None]) -> None:
    assert parse_metadata(format_metadata(metadata)) == metadata


def test_metadata_empty_value_reads_back_as_a_bare_key() -> None:
    # tus has one wire form for "no value" and "empty value": the bare key.
    assert parse_metadata(format_metadata({"empty": b""})) == {"empty": None}


@settings(deadline=None)
@given(st.lists(st.text(alphabet=URL_CHARS, min_size=1, max_size=40), min_size=1, max_size=6))
def test_concat_final_reads_back(urls: list[str]) -> None:
    concat = ConcatFinal(tuple(urls))
    assert parse_concat(format_concat(concat)) == concat


def test_concat_partial_reads_back() -> None:
    assert parse_concat(format_concat(ConcatPartial())) == ConcatPartial()


@settings(deadline=None)
@given(
    st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=32),
    st.binary(min_size=1, max_size=64),
)
def test_checksum_reads_back(algorithm: str, digest: bytes) -> None:
    checksum = Checksum(algorithm, digest)
    assert parse_checksum(format_checksum(checksum)) == checksum


@settings(deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.just(UTC)
        | st.builds(
            timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
        ),
    )
)
def test_http_date_reads_back(moment: datetime) -> None:
    text = format_http_date(moment)
    assert parse_http_date(text) == moment.astimezone(UTC).replace(microsecond=0)
    assert parse_http_date(text).tzinfo is UTC
    # and the parsed value formats to the very same text
    assert format_http_date(parse_http_date(text)) == text


def test_format_http_date_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        format_http_date(datetime(2014, 6, 25, 16, 0, 0))


@settings(deadline=None)
@given(st.booleans())
def test_sf_boolean_reads_back(value: bool) -> None:
    assert parse_sf_boolean(format_sf_boolean(value)) is value


sf_keys = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(SF_KEY_FIRST),
    st.text(alphabet=SF_KEY_REST, max_size=12),
)
sf_items = st.booleans() | st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1)


@settings(deadline=None)
@given(st.dictionaries(sf_keys, sf_items, max_size=6))
def test_sf_int_dictionary_reads_back(members: dict[str, int | bool]) -> None:
    parsed = parse_sf_int_dictionary(format_sf_int_dictionary(members))
    assert parsed == members
    # True and 1 are equal in Python: check the kinds too
    assert {k: type(v) for k, v in parsed.items()} == {k: type(v) for k, v in members.items()}


# --- parsers raise nothing but ProtocolError ------------------------------------------


def _parses_or_refuses(parser, value: str) -> None:  # type: ignore[no-untyped-def]
    try:
        parser(value)
    except ProtocolError:
        pass


@pytest.mark.parametrize("parser", PARSERS, ids=PARSER_IDS)
@settings(max_examples=1000, deadline=None)
@given(value=st.text())
def test_parsers_raise_only_protocol_errors_on_any_text(parser, value: str) -> None:  # type: ignore[no-untyped-def]
    _parses_or_refuses(parser, value)


@pytest.mark.parametrize("parser", PARSERS, ids=PARSER_IDS)
@settings(max_examples=1000, deadline=None)
@given(value=st.text(alphabet=PRINTABLE_ASCII))
def test_parsers_raise_only_protocol_errors_on_printable_ascii(parser, value: str) -> None:  # type: ignore[no-untyped-def]
    _parses_or_refuses(parser, value)


# Near-misses of each grammar (one character inserted, dropped or replaced in a valid
# value) find the corners that random text rarely reaches.
VALID_SAMPLES = [
    "0",
    "9223372036854775807",
    "filename d29ybGQ=,flag,type aW1hZ2UvcG5n",
    "partial",
    "final;/files/a https://h/files/b",
    "sha1 " + base64.b64encode(bytes(20)).decode(),
    "Wed, 25 Jun 2014 16:00:00 GMT",
    "?1",
    "max-size=1000, min-size=1, expires=?0, flag",
]


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    value = draw(st.sampled_from(VALID_SAMPLES))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        position = draw(st.integers(min_value=0, max_value=len(value)))
        char = draw(st.sampled_from(list("0 ,;=?-+/*_.:\t\x00é٣")) | st.characters())
        operation = draw(st.sampled_from(["insert", "drop", "replace"]))
        if operation == "insert":
            value = value[:position] + char + value[position:]
        elif operation == "drop":
            value = value[:position] + value[position + 1 :]
        else:
            value = value[:position] + char + value[position + 1 :]
    return value


@pytest.mark.parametrize("parser", PARSERS, ids=PARSER_IDS)
@settings(max_examples=500, deadline=None)
@given(value=near_misses())
def test_parsers_raise_only_protocol_errors_on_near_misses(parser, value: str) -> None:  # type: ignore[no-untyped-def]
    _parses_or_refuses(parser, value)


# --- integers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "+1",
        " 1",
        "1 ",
        "",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "\u0661",
        "one",
        "9" * 20,
        str(2**63),
    ],
)
def test_uint_refuses_anything_but_digits_up_to_2_63_minus_1(value: str) -> None:
    with pytest.raises(InvalidInteger):
        parse_uint(value)


def test_uint_accepts_2_63_minus_1() -> None:
    assert parse_uint(str(2**63 - 1)) == 2**63 - 1


def test_uint_accepts_zero() -> None:
    assert parse_uint("0") == 0


def test_uint_accepts_leading_zeros() -> None:
    # 1*DIGIT, like Content-Length; tusd's strconv.ParseInt reads these too
    assert parse_uint("007") == 7


def test_uint_raises_the_error_class_it_is_given() -> None:
    with pytest.raises(InvalidOffset) as info:
        parse_uint("-5", InvalidOffset, "Upload-Offset")
    assert "Upload-Offset" in info.value.message
    assert info.value.status == 400
    with pytest.raises(InvalidLength):
        parse_uint(str(2**63), InvalidLength, "Upload-Length")


# --- metadata -------------------------------------------------------------------------


def test_metadata_values_decode() -> None:
    header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,filetype aW1hZ2UvcG5n"
    assert parse_metadata(header) == {
        "filename": b"world_domination_plan.pdf",
        "is_confidential": None,
        "filetype": b"image/png",
    }


def test_metadata_key_only_is_none() -> None:
    assert parse_metadata("flag") == {"flag": None}


def test_metadata_empty_header_is_empty() -> None:
    assert parse_metadata("") == {}
    assert parse_metadata("   ") == {}


def test_metadata_spaces_around_entries_are_allowed() -> None:
    assert parse_metadata("a YQ==, b Yg==") == {"a": b"a", "b": b"b"}


def test_metadata_duplicate_keys_are_refused() -> None:
    with pytest.raises(InvalidMetadata, match="more than once"):
        parse_metadata("name YQ==,name Yg==")


@pytest.mark.parametrize("header", ["nämé YQ==", "ключ", "ke\u00ffy YQ==", "k\x00 YQ=="])
def test_metadata_key_with_non_ascii_is_refused(header: str) -> None:
    with pytest.raises(InvalidMetadata):
        parse_metadata(header)


@pytest.mark.parametrize(
    "header", ["name YQ", "name Y===", "name !!!!", "name YQ==YQ==", "name YQ= =", "name YQ== x"]
)
def test_metadata_bad_base64_is_refused(header: str) -> None:
    with pytest.raises(InvalidMetadata):
        parse_metadata(header)


@pytest.mark.parametrize("header", ["a YQ==,,b Yg==", "a YQ==,", ",a YQ==", ","])
def test_metadata_empty_entry_is_refused(header: str) -> None:
    with pytest.raises(InvalidMetadata, match="empty entry"):
        parse_metadata(header)


def test_metadata_key_with_tab_is_refused() -> None:
    with pytest.raises(InvalidMetadata):
        parse_metadata("a\tb YQ==")


def test_metadata_errors_are_400() -> None:
    with pytest.raises(InvalidMetadata) as info:
        parse_metadata("a,a")
    assert info.value.status == 400
    assert info.value.code == "ERR_INVALID_METADATA"


def test_format_metadata_refuses_bad_keys() -> None:
    for key in ["", "a b", "a,b", "ä"]:
        with pytest.raises(ValueError):
            format_metadata({key: b"x"})


def test_metadata_text_decodes_utf8_only() -> None:
    metadata = {"name": "résumé".encode(), "raw": b"\xff\xfe", "flag": None}
    assert metadata_text(metadata, "name") == "résumé"
    assert metadata_text(metadata, "raw") is None
    assert metadata_text(metadata, "flag") is None
    assert metadata_text(metadata, "absent") is None


# --- concat ---------------------------------------------------------------------------


def test_concat_partial() -> None:
    assert parse_concat("partial") == ConcatPartial()


def test_concat_final_with_urls_keeps_order_and_repeats() -> None:
    header = "final;/files/a https://tus.example.org/files/b /files/a"
    assert parse_concat(header) == ConcatFinal(
        ("/files/a", "https://tus.example.org/files/b", "/files/a")
    )


def test_concat_final_tolerates_extra_spaces_between_urls() -> None:
    assert parse_concat("final; /files/a  /files/b") == ConcatFinal(("/files/a", "/files/b"))


@pytest.mark.parametrize("header", ["final;", "final; ", "final;   "])
def test_concat_final_without_urls_is_refused(header: str) -> None:
    with pytest.raises(InvalidConcat):
        parse_concat(header)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Partial",
        "partial ",
        " partial",
        "final",
        "final:/files/a",
        "FINAL;/files/a",
        "final;/files/ä",
        "final;/files/a\t/files/b",
        "whatever",
        "partial;final",
    ],
)
def test_concat_garbage_is_refused(header: str) -> None:
    with pytest.raises(InvalidConcat) as info:
        parse_concat(header)
    assert info.value.status == 400


# --- checksum -------------------------------------------------------------------------


def test_checksum_parses_algorithm_and_digest() -> None:
    digest = bytes(range(20))
    header = "sha1 " + base64.b64encode(digest).decode()
    assert parse_checksum(header) == Checksum("sha1", digest)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha1",
        "sha1 ",
        " sha1 YQ==",
        "SHA1 YQ==",
        "sha1 YQ",
        "sha1 YQ== ",
        "sha1  YQ==",
        "sha1 Y!==",
        "sha_1 YQ==",
        "a" * 33 + " YQ==",
    ],
)
def test_checksum_malformed_is_refused(header: str) -> None:
    with pytest.raises(InvalidChecksum) as info:
        parse_checksum(header)
    assert info.value.status == 400


# --- http date ------------------------------------------------------------------------


def test_http_date_parses_the_spec_example() -> None:
    assert parse_http_date("Wed, 25 Jun 2014 16:00:00 GMT") == datetime(
        2014, 6, 25, 16, 0, 0, tzinfo=UTC
    )


def test_http_date_formats_the_spec_example() -> None:
    assert format_http_date(datetime(2014, 6, 25, 16, 0, 0, 999, tzinfo=UTC)) == (
        "Wed, 25 Jun 2014 16:00:00 GMT"
    )


def test_http_date_with_wrong_weekday_is_refused() -> None:
    with pytest.raises(InvalidHeader, match="weekday"):
        parse_http_date("Thu, 25 Jun 2014 16:00:00 GMT")


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 25 Jun 2014 16:00:00 UTC",
        "Wed, 25 Jun 2014 16:00:00 +0000",
        "Wednesday, 25-Jun-14 16:00:00 GMT",  # RFC 850
        "Wed Jun 25 16:00:00 2014",  # asctime
        "Wed, 5 Jun 2014 16:00:00 GMT",
        "Wed, 25 jun 2014 16:00:00 GMT",
        "Mon, 31 Feb 2014 16:00:00 GMT",
        "Wed, 25 Jun 2014 24:00:00 GMT",
        "Wed, 25 Jun 2014 16:00:60 GMT",
        " Wed, 25 Jun 2014 16:00:00 GMT",
        "",
    ],
)
def test_http_date_refuses_everything_but_imf_fixdate(value: str) -> None:
    with pytest.raises(InvalidHeader):
        parse_http_date(value)


def test_http_date_refuses_non_ascii_digits() -> None:
    # the grammar is DIGIT (ASCII); Python's \d and int() also take other scripts' digits
    with pytest.raises(InvalidHeader):
        parse_http_date("Wed, 25 Jun 2014 16:00:00 GMT".translate(ARABIC_INDIC_DIGITS))


# --- structured fields ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["?2", "?", "1", "true", " ?1", "?1 ", "", "?T"])
def test_sf_boolean_refuses_anything_else(value: str) -> None:
    with pytest.raises(InvalidHeader):
        parse_sf_boolean(value)


def test_sf_int_dictionary_parses_upload_limit() -> None:
    assert parse_sf_int_dictionary("max-size=1000, min-size=1, expires=?0, flag") == {
        "max-size": 1000,
        "min-size": 1,
        "expires": False,
        "flag": True,
    }


def test_sf_int_dictionary_empty() -> None:
    assert parse_sf_int_dictionary("") == {}


@pytest.mark.parametrize(
    "value",
    [
        "Max=1",
        "a=1.5",
        "a=x",
        "a=",
        "=1",
        "a=1,",
        "a=1,,b=2",
        "1a=1",
        "a=" + "9" * 16,
        "a=?2",
        'a="s"',
    ],
)
def test_sf_int_dictionary_refuses_other_members(value: str) -> None:
    with pytest.raises(InvalidHeader):
        parse_sf_int_dictionary(value)
