"""Content tagging (issue 3, scope 4): PII detectors and caller-supplied tags.

Each detector is checked against real-looking positives and near-misses; hypothesis checks the
fast path, the Luhn rule, the in-line IPv4 check and that `tags` agrees with `findings`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stdnum import luhn

from maestro.routing import tagging
from maestro.routing.tagging import (
    KINDS,
    MAX_TAG_LENGTH,
    PII_TAG,
    ContentTagger,
    Finding,
    merge_tags,
)

TAGGER = ContentTagger()


def found(text: str, tagger: ContentTagger = TAGGER) -> list[tuple[str, str]]:
    """(kind, matched text) for each finding, sliced from the text by the finding's offsets."""
    return [(finding.kind, text[finding.start : finding.end]) for finding in tagger.findings(text)]


def in_sentence(item: str) -> str:
    return f"Hi team, please use {item} for the follow-up. Thanks!"


# -- positives: (as written in the message, what the finding covers) -------------------------

EMAILS = [
    ("jane.doe@example.com", "jane.doe@example.com"),
    ("first.last+billing@mail.example.co.uk", "first.last+billing@mail.example.co.uk"),
    ("o'brien@example.ie", "o'brien@example.ie"),
    ("user_name-1@example-mail.io", "user_name-1@example-mail.io"),
    ("élodie.durand@exemple.fr", "élodie.durand@exemple.fr"),
    ("<bob@xn--80ak6aa92e.com>", "bob@xn--80ak6aa92e.com"),
]
PHONES = [
    ("+44 20 7946 0958", "+44 20 7946 0958"),
    ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
    ("+1 (415) 555-2671", "+1 (415) 555-2671"),
    ("(201) 555-0123", "(201) 555-0123"),
    ("201-555-0123", "201-555-0123"),
    ("1-201-555-0123", "1-201-555-0123"),
    ("201.555.0123", "201.555.0123"),
    ("020 7946 0958", "020 7946 0958"),
    ("07911 123456", "07911 123456"),
    ("030 12345678", "030 12345678"),
    ("030/12345678", "030/12345678"),
    ("0151 23456789", "0151 23456789"),
    ("+49 30 12345678", "+49 30 12345678"),
    ("01 23 45 67 89", "01 23 45 67 89"),
    ("01.23.45.67.89", "01.23.45.67.89"),
    ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
    ("0044 20 7946 0958", "0044 20 7946 0958"),
    ("+81 3-1234-5678", "+81 3-1234-5678"),
    ("tel:+14155552671", "+14155552671"),
]
CARDS = [
    ("4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("4242424242424242", "4242424242424242"),
    ("4222222222222", "4222222222222"),
    ("5555 5555 5555 4444", "5555 5555 5555 4444"),
    ("2223 0031 2200 3222", "2223 0031 2200 3222"),
    ("3782 822463 10005", "3782 822463 10005"),
    ("378282246310005", "378282246310005"),
    ("6011 1111 1111 1117", "6011 1111 1111 1117"),
    ("3530 1113 3330 0000", "3530 1113 3330 0000"),
    ("3056 930902 5904", "3056 930902 5904"),
]
NATIONAL_IDS = [
    ("536-90-4399", "536-90-4399"),  # US SSN
    ("SSN: 536904399", "536904399"),
    ("social security number 536 90 4399", "536 90 4399"),
    ("AB 12 34 56 C", "AB 12 34 56 C"),  # UK NINO
    ("AB123456C", "AB123456C"),
    ("1 85 05 78 006 084 91", "1 85 05 78 006 084 91"),  # FR NIR
    ("185057800608491", "185057800608491"),
    ("1 85 05 2A 006 084 35", "1 85 05 2A 006 084 35"),  # FR NIR, Corsica
    ("12345678Z", "12345678Z"),  # ES DNI
    ("X1234567L", "X1234567L"),  # ES NIE
]
IBANS = [
    ("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    ("DE89370400440532013000", "DE89370400440532013000"),
    ("GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ("NL91 ABNA 0417 1643 00", "NL91 ABNA 0417 1643 00"),
    ("ES91 2100 0418 4502 0005 1332", "ES91 2100 0418 4502 0005 1332"),
    ("BE71 0961 2345 6769 THEN", "BE71 0961 2345 6769"),
]
IPS = [
    ("192.168.1.10", "192.168.1.10"),
    ("10.0.0.1", "10.0.0.1"),
    ("8.8.8.8", "8.8.8.8"),
    ("203.0.113.42", "203.0.113.42"),
    ("http://198.51.100.7:8080/", "198.51.100.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("::ffff:192.0.2.128", "::ffff:192.0.2.128"),
    ("[2001:db8::42]:8080", "2001:db8::42"),
]

# -- near-misses: nothing at all may be found in them ------------------------------------------

EMAIL_NEAR_MISSES = [
    "user@localhost",
    "@mention",
    "pkg@1.2.3",
    "icon@2x.png",
    "name@domain",
    "a@b.c",
    "foo@@bar.com",
    "decorator @property",
]
PHONE_NEAR_MISSES = [
    "2024-01-15",
    "01.02.2024",
    "20240115",
    "order 4155552671",  # a bare 10-digit run
    "version 0.6.36.547",
    "12:30:45",
    "1,234,567",
    "ISBN 978-3-16-148410-0",
    "invoice 123-456-7890",  # no US area code starts with 1
    "555-555-5555",
    "+1234",
]
CARD_NEAR_MISSES = [
    "4111 1111 1111 1112",  # fails Luhn
    "4111111111111112",
    "1234567890",  # 10 digits
    "2718281828",  # 10 digits
    "1700000000000",  # a millisecond timestamp
    "20240115123045",  # a compact timestamp
    "order 9876543210123456",  # no issuer starts with 9
    "0000 0000 0000 0000",  # passes Luhn, no issuer
    "12 34 56 78 90 12 34 56",  # a row of two-digit numbers
    "pi is 3.14159265358979",
    "4111 1111 1111 1111 7",  # a last group of one digit: a longer number
]
NATIONAL_ID_NEAR_MISSES = [
    "666-12-3456",  # area 666 is never issued
    "000-12-3456",
    "900-12-3456",  # 9xx areas are not SSNs
    "536-00-4399",  # group 00
    "536-90-0000",  # serial 0000
    "219-09-9999",  # a known invalid (advertised) number
    "id 536904399",  # 9 bare digits without an SSN label
    "536 90 4399",  # spaced without a label: a row of numbers
    "QQ123456C",  # Q is never a NINO prefix letter
    "GB123456A",  # GB is never allocated
    "AB123456E",  # suffix beyond A-D
    "185057800608436",  # wrong NIR key
    "12345678A",  # wrong DNI letter
    "20240115T101500Z",
]
IBAN_NEAR_MISSES = [
    "DE89 3704 0044 0532 0130 01",  # wrong check digits
    "XX89 3704 0044 0532 0130 00",  # no such country
    "GB82 WEST 1234 5698 7654",  # too short for GB
    "AB12 3456 7890 1234",
]
IP_NEAR_MISSES = [
    "version 1.2.3.4",
    "v1.2.3.4",
    "numpy==1.26.4.1",
    "release 2.4.1.0",
    "1.2.3.4.5",
    "127.0.0.1",  # loopback
    "0.0.0.0",
    "0.9.1.2",
    "255.255.255.0",  # a netmask
    "224.0.0.1",  # multicast
    "256.1.1.1",
    "01.02.03.04",
    "::1",
    "::",
    "00:1A:2B:3C:4D:5E",  # a MAC address
    "std::vector<int>",
    "a[1::2]",
    "cafe::beef",
    "2024-01-15T12:30:45Z",
]
OTHER_NEAR_MISSES = [
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "ts=1700000000123 latency=1234567ms",
    "price $1,299.99 for 1000000 units",
]


@pytest.mark.parametrize(("written", "covered"), EMAILS)
def test_email_detector_finds_addresses(written: str, covered: str) -> None:
    assert found(in_sentence(written)) == [("email", covered)]


@pytest.mark.parametrize(("written", "covered"), PHONES)
def test_phone_detector_finds_international_and_national_numbers(
    written: str, covered: str
) -> None:
    assert found(in_sentence(written)) == [("phone", covered)]


@pytest.mark.parametrize(("written", "covered"), CARDS)
def test_card_detector_finds_luhn_valid_issuer_numbers(written: str, covered: str) -> None:
    assert found(in_sentence(written)) == [("card", covered)]


@pytest.mark.parametrize(("written", "covered"), NATIONAL_IDS)
def test_national_id_detector_finds_ssn_nino_nir_dni_nie(written: str, covered: str) -> None:
    assert found(in_sentence(written)) == [("national_id", covered)]


@pytest.mark.parametrize(("written", "covered"), IBANS)
def test_iban_detector_finds_compact_and_grouped_ibans(written: str, covered: str) -> None:
    assert found(in_sentence(written)) == [("iban", covered)]


@pytest.mark.parametrize(("written", "covered"), IPS)
def test_ip_detector_finds_ipv4_and_ipv6_addresses(written: str, covered: str) -> None:
    assert found(in_sentence(written)) == [("ip", covered)]


@pytest.mark.parametrize("text", EMAIL_NEAR_MISSES)
def test_email_detector_rejects_near_misses(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", PHONE_NEAR_MISSES)
def test_phone_detector_rejects_dates_versions_and_ids(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", CARD_NEAR_MISSES)
def test_card_detector_rejects_luhn_failures_timestamps_and_short_numbers(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", NATIONAL_ID_NEAR_MISSES)
def test_national_id_detector_rejects_invalid_ranges_and_check_digits(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", IBAN_NEAR_MISSES)
def test_iban_detector_rejects_bad_check_digits_and_lengths(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", IP_NEAR_MISSES)
def test_ip_detector_rejects_versions_loopback_netmasks_and_code(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize("text", OTHER_NEAR_MISSES)
def test_hashes_ids_and_amounts_are_not_pii(text: str) -> None:
    assert found(in_sentence(text)) == []


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Send the invoice to ana.silva@example.org please.", {"pii", "pii.email"}),
        ("My card number is 4242 4242 4242 4242, expiry 12/27.", {"pii", "pii.card"}),
        (
            "Charge 4242-4242-4242-4242 and mail the receipt to ana.silva@example.org",
            {"pii", "pii.card", "pii.email"},
        ),
    ],
)
def test_message_with_an_email_address_or_card_number_is_tagged_pii(
    message: str, expected: set[str]
) -> None:
    assert TAGGER.tags([message]) == expected


def test_tags_are_empty_for_text_without_pii() -> None:
    assert TAGGER.tags(["Summarise the quarterly report in 3 bullet points, version 2.1."]) == (
        frozenset()
    )


def test_tags_union_the_kinds_found_across_texts() -> None:
    texts = ["Call me on +44 20 7946 0958.", "No PII here.", "The host is 10.1.2.3."]
    assert TAGGER.tags(texts) == {PII_TAG, "pii.phone", "pii.ip"}


def test_tags_of_later_texts_still_resolve_overlaps() -> None:
    # Once an IBAN has been found, the digits of a second grouped IBAN must not read as a phone.
    texts = ["536-90-4399 DE89 3704 0044 0532 0130 00", "NL91 ABNA 0417 1643 00"]
    assert TAGGER.tags(texts) == {"pii", "pii.national_id", "pii.iban"}


def test_tags_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        TAGGER.tags("jane.doe@example.com")


def test_findings_hold_only_kind_and_offsets() -> None:
    text = "Reach jane.doe@example.com or 4111 1111 1111 1111 or 536-90-4399."
    findings = TAGGER.findings(text)
    assert [f.kind for f in findings] == ["email", "card", "national_id"]
    assert [field.name for field in dataclasses.fields(Finding)] == ["kind", "start", "end"]
    assert not hasattr(findings[0], "__dict__")  # slotted: nowhere to hang a value
    for finding in findings:
        raw = text[finding.start : finding.end]
        assert raw not in repr(finding)
        assert raw not in str(dataclasses.astuple(finding))


def test_findings_are_frozen() -> None:
    finding = TAGGER.findings("jane.doe@example.com")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.kind = "card"  # type: ignore[misc]


def test_finding_tag_names_its_kind() -> None:
    assert Finding("iban", 0, 22).tag == "pii.iban"


def test_findings_are_ordered_by_offset() -> None:
    text = "10.0.0.7 then 536-90-4399 then jane.doe@example.com then +1 (415) 555-2671"
    assert [f.kind for f in TAGGER.findings(text)] == ["ip", "national_id", "email", "phone"]


def test_digits_inside_an_iban_are_not_also_cards_or_phones() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00 and DE44500105175407324931"
    assert [kind for kind, _ in found(text)] == ["iban", "iban"]


def test_enabled_kinds_limit_detection() -> None:
    text = "jane.doe@example.com paid with 4111 1111 1111 1111 from 10.0.0.9"
    tagger = ContentTagger(enabled_kinds=["email", "ip"])
    assert [kind for kind, _ in found(text, tagger)] == ["email", "ip"]
    assert tagger.tags([text]) == {"pii", "pii.email", "pii.ip"}


def test_no_enabled_kinds_find_nothing() -> None:
    tagger = ContentTagger(enabled_kinds=[])
    assert tagger.findings("jane.doe@example.com 4111 1111 1111 1111") == []
    assert tagger.tags(["jane.doe@example.com"]) == frozenset()


def test_unknown_kind_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="passport"):
        ContentTagger(enabled_kinds=["email", "passport"])


def test_unknown_phone_region_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="XQ"):
        ContentTagger(phone_regions=("US", "XQ"))


def test_national_phone_formats_follow_phone_regions() -> None:
    us_only = ContentTagger(phone_regions=("US",))
    assert found(in_sentence("020 7946 0958"), us_only) == []
    assert found(in_sentence("+44 20 7946 0958"), us_only) == [("phone", "+44 20 7946 0958")]
    spain = ContentTagger(phone_regions=("ES",))
    assert found(in_sentence("612 34 56 78"), spain) == [("phone", "612 34 56 78")]


def _log_lines(count: int) -> str:
    return "".join(
        f"2024-03-{1 + i % 28:02d} 12:{i % 60:02d}:{(7 * i) % 60:02d}.{i % 1000:03d} INFO "
        f"req={1000000000 + 7919 * i} latency_ms={i % 997} bytes={100000 + 31 * i} status=200\n"
        for i in range(count)
    )


def test_pii_in_digit_heavy_logs_is_found() -> None:
    logs = _log_lines(150)
    text = logs + "user=jane.doe@example.com card=4111111111111111 peer=203.0.113.9\n" + logs
    assert [kind for kind, _ in found(text)] == ["email", "card", "ip"]
    assert TAGGER.tags([text]) == {"pii", "pii.email", "pii.card", "pii.ip"}


def test_digit_heavy_logs_alone_are_not_pii() -> None:
    assert TAGGER.findings(_log_lines(300)) == []


# -- properties -------------------------------------------------------------------------------

_NO_TRIGGERS = st.characters(exclude_categories=["Cs"], exclude_characters="0123456789@:")


@given(st.lists(st.text(_NO_TRIGGERS, max_size=400), max_size=4))
def test_text_without_digits_at_signs_or_colons_never_tags(texts: list[str]) -> None:
    assert TAGGER.tags(texts) == frozenset()
    assert all(TAGGER.findings(text) == [] for text in texts)


_CARD_SHAPES = [  # (issuer prefix, length, group sizes when printed in groups)
    ("4", 16, (4, 4, 4, 4)),
    ("4", 13, ()),
    ("51", 16, (4, 4, 4, 4)),
    ("2221", 16, (4, 4, 4, 4)),
    ("37", 15, (4, 6, 5)),
    ("6011", 16, (4, 4, 4, 4)),
    ("3530", 16, (4, 4, 4, 4)),
    ("36", 14, (4, 6, 4)),
]
_PROSE = st.text(st.sampled_from("abcdefghij klmnopqrst UVWXYZ,;!?'\"()"), max_size=60)


@st.composite
def _embedded_cards(draw: st.DrawFn) -> tuple[str, str, str]:
    prefix, length, groups = draw(st.sampled_from(_CARD_SHAPES))
    rest = draw(st.text("0123456789", min_size=length - len(prefix), max_size=length - len(prefix)))
    digits = prefix + rest
    separator = draw(st.sampled_from(["", " ", "-"])) if groups else ""
    if separator:
        parts, at = [], 0
        for size in groups:
            parts.append(digits[at : at + size])
            at += size
        written = separator.join(parts)
    else:
        written = digits
    text = f"{draw(_PROSE)} {written} {draw(_PROSE)}"
    return text, written, digits


@settings(max_examples=300)
@given(_embedded_cards())
def test_card_in_random_text_is_found_iff_it_passes_luhn(case: tuple[str, str, str]) -> None:
    text, written, digits = case
    cards = [raw for kind, raw in found(text) if kind == "card"]
    assert cards == ([written] if luhn.is_valid(digits) else [])


@given(st.lists(st.from_regex(r"[0-9]{1,3}", fullmatch=True), min_size=4, max_size=4))
def test_inline_ipv4_check_agrees_with_ipaddress(octets: list[str]) -> None:
    dotted = ".".join(octets)
    try:
        expected: int | None = int(ipaddress.IPv4Address(dotted))
    except ValueError:
        expected = None
    assert tagging._ipv4_value(dotted) == expected


_SNIPPETS = [
    written for table in (EMAILS, PHONES, CARDS, NATIONAL_IDS, IBANS, IPS) for written, _ in table
] + [
    *EMAIL_NEAR_MISSES,
    *PHONE_NEAR_MISSES,
    *CARD_NEAR_MISSES,
    *NATIONAL_ID_NEAR_MISSES,
    *IP_NEAR_MISSES,
    "The quick brown fox.",
    "\n",
    _log_lines(40),
]


@settings(max_examples=150)
@given(st.lists(st.lists(st.sampled_from(_SNIPPETS), max_size=8).map(" ".join), max_size=3))
def test_tags_agree_with_findings(texts: list[str]) -> None:
    kinds = {finding.kind for text in texts for finding in TAGGER.findings(text)}
    expected = (
        frozenset({PII_TAG, *(f"{PII_TAG}.{kind}" for kind in kinds)}) if kinds else frozenset()
    )
    assert TAGGER.tags(texts) == expected


_NOISY = st.text(st.sampled_from("0123456789 -./()+@:,;\nabcXYZDEGBé"), max_size=300)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(_SNIPPETS), _NOISY), max_size=6).map(" ".join))
def test_findings_are_in_bounds_ordered_and_disjoint(text: str) -> None:
    findings = TAGGER.findings(text)
    assert all(0 <= f.start < f.end <= len(text) and f.kind in KINDS for f in findings)
    assert all(a.end <= b.start for a, b in pairwise(findings))


def test_every_kind_has_a_detector() -> None:
    sample = ", ".join(
        written
        for table in (EMAILS, PHONES, CARDS, NATIONAL_IDS, IBANS, IPS)
        for written, _ in table[:1]
    )
    assert {finding.kind for finding in TAGGER.findings(sample)} == set(KINDS)


# -- merge_tags -------------------------------------------------------------------------------


def test_merge_tags_strips_and_lower_cases_supplied_tags() -> None:
    merged = merge_tags(frozenset({"pii", "pii.email"}), ["  Finance ", "EXPORT-CONTROLLED", "pii"])
    assert merged == {"pii", "pii.email", "finance", "export-controlled"}


def test_merge_tags_without_detections_keeps_supplied_tags() -> None:
    assert merge_tags(frozenset(), ["PII"]) == {"pii"}


def test_merge_tags_accepts_a_tag_of_exactly_the_maximum_length() -> None:
    tag = "t" * MAX_TAG_LENGTH
    assert merge_tags(frozenset(), [tag]) == {tag}


@pytest.mark.parametrize("tag", ["", "   ", "\t\n"])
def test_merge_tags_rejects_an_empty_tag_naming_it(tag: str) -> None:
    with pytest.raises(ValueError, match="empty") as caught:
        merge_tags(frozenset(), ["ok", tag])
    assert repr(tag) in str(caught.value)


def test_merge_tags_rejects_an_over_long_tag_naming_it() -> None:
    tag = "x" * (MAX_TAG_LENGTH + 1)
    with pytest.raises(ValueError, match=tag):
        merge_tags(frozenset(), [tag])


def test_merge_tags_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        merge_tags(frozenset(), "pii")


@given(
    st.frozensets(st.sampled_from(["pii", "pii.email", "pii.card"])),
    st.lists(st.text(min_size=1, max_size=MAX_TAG_LENGTH).filter(lambda t: t.strip() != "")),
)
def test_merge_tags_is_the_union_with_normalised_tags(
    detected: frozenset[str], supplied: list[str]
) -> None:
    normalised = {tag.strip().lower() for tag in supplied}
    assume(all(len(tag) <= MAX_TAG_LENGTH for tag in normalised))  # lower() can lengthen "İ"
    assert merge_tags(detected, supplied) == detected | normalised
