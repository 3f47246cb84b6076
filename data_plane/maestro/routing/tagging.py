"""Content tagging: PII detectors that run before the routing decision.

`ContentTagger.tags` turns a request's message texts into tags such as ``{"pii", "pii.email"}``;
`merge_tags` joins them with the caller-supplied step tags, and the policy tables then keep a
tagged request away from hosted models. A finding records only its kind and offsets, never the
matched value, so nothing downstream (rationale, logs, spans) can leak what was found.

Libraries do the validation wherever a good one exists:

* phone numbers: ``phonenumbers`` (libphonenumber metadata) parses and validates each candidate.
  Its own ``PhoneNumberMatcher`` is not used: on 8 KB of log lines it took ~88 ms for four regions
  (~11 ms/KB) and reported 47 false positives (request ids and byte counts are "valid" German
  numbers), so a regex prefilter finds candidates and only plausible ones are parsed.
* card numbers: ``stdnum.luhn`` checks the check digit. python-stdnum has no card-brand module, so
  the issuer prefixes and lengths are a small table here.
* national ids: ``stdnum.us.ssn`` (US SSN with its invalid areas 000/666/9xx, group 00, serial
  0000 and the known-bad numbers), ``stdnum.fr.nir`` (French social security number, mod-97 key),
  ``stdnum.es.dni`` / ``stdnum.es.nie`` (Spanish DNI and NIE, check letter). UK National Insurance
  numbers have no stdnum module; they are matched with HMRC's allocation rules (NIM39110) below.
  Letter-led ids and IBANs are matched in capitals only (how they are printed).
* IBANs: ``stdnum.iban`` (country length and BBAN structure, mod-97 check digits).
* IP addresses: the stdlib ``ipaddress`` validates IPv6 candidates. IPv4 candidates get the same
  rules (octets 0-255, no leading zeros) in a few lines of code, because the constructor costs
  ~4 us an address and logs hold hundreds; a property test checks they agree with ``ipaddress``.

Hand-written regular expressions only find *candidates* (and an e-mail address, for which no
library finds addresses in free text: ``email.utils`` parses header fields only). Each is anchored
on token boundaries so digits inside longer runs, words or version strings are never candidates.

Precision decisions (documented here because routing depends on them):

* Cards: 13-19 digits, either unbroken or in groups of 3-6 with one consistent separator (space
  or dash) and a first group of 4; the number must start with a known issuer prefix of a length
  that issuer uses, *and* pass Luhn. So 10-digit numbers, timestamps (no issuer starts with 1) and
  order numbers that fail Luhn are never cards. A number directly followed by more digits after a
  single space or dash reads as one longer number (a row of 4-digit numbers is not a card), so
  "4111 1111 1111 1111 536" is not a card; a comma, a word or a line break ends a number.
* Phones: an international number (``+`` or ``00``) is validated for any country. A national
  number is only considered for ``phone_regions``: for regions with a trunk prefix (GB, DE, FR:
  ``0``) it must start with that prefix, because ``20240115`` is a "valid" German local number;
  for regions without one (US) its digit groups must match the library's national format
  (``415-555-2671``, ``(415) 555-2671``), so a bare 10-digit run (an order number) is not a phone.
  Candidates that contain a date (``2024-01-15``, ``01.02.2024``) are skipped.
* SSNs: only the dashed ``AAA-GG-SSSS`` form, or 9 digits (bare, spaced or dashed) right after
  "SSN" / "social security number"; other 9-digit runs and ``ddd dd dddd`` table columns are too
  common (ids, zip+4, numbers).
* French NIRs: 15 digits starting 1, 2, 7 or 8 (no card issuer has such numbers), unbroken or
  spaced as printed, with a valid key.
* IP addresses: a bare dotted quad *is* an IP address, unless version context precedes it (``v``,
  ``version``, ``release``, ``build``, ``==``, ``>=``, ``@``, ...) or it is part of a longer dotted
  run (``1.2.3.4.5``). Private, link-local, CGNAT and documentation addresses *are* flagged: they
  identify hosts and people's machines inside an organisation and map its network, which is what
  a "keep in-house" policy is for. Not flagged, because they identify nobody: unspecified
  (``0.0.0.0/8``, ``::``), loopback (``127.0.0.0/8``, ``::1``), multicast, the broadcast address
  and netmasks (``255.255.255.0``). IPv6 candidates must contain a digit and a group of at least
  3 hex digits (or an embedded IPv4), so ``a::b``, ``cafe::beef`` and slices like ``[1::2]`` are
  not addresses.
* E-mail: a dot-atom local part of at most 64 characters and a domain with an alphabetic TLD of
  2+ letters (``user@localhost``, ``pkg@1.2.3`` and ``@mentions`` are not addresses), except
  file extensions that are not TLDs (``icon@2x.png``).

Speed: a precheck locates the only places any detector can match - an ``@``, an IPv6-looking
``::`` or ``:h:h:h:``, six digits with short separators, or a dotted quad - with C-level
``str.find`` scans (about a dozen memchr passes, far cheaper than one regex pass over the text).
Clean prose has no such place and is done after the scans (the fast path). Otherwise the
detectors run only on windows around those places; text dense with digits (logs, tables) is
scanned whole, in chunks of about 2 KB cut at line breaks. There are five regex passes per window
(numbers, capital-led ids, SSN dashes, IPv4 dots, IPv6 colons) plus a search around each ``@``.
`tags` stops running a detector for the chunks after the one where every kind it reports has
been found.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.us import ssn

__all__ = [
    "KINDS",
    "MAX_TAG_LENGTH",
    "PII_TAG",
    "ContentTagger",
    "Finding",
    "merge_tags",
]

PII_TAG: Final = "pii"
KINDS: Final = ("email", "phone", "card", "national_id", "iban", "ip")
MAX_TAG_LENGTH: Final = 64

# Kinds whose detectors `tags` may stop running once the kind is found (see `tags`).
_SKIPPABLE_ONCE_FOUND: Final = frozenset({"email", "ip"})
# When two findings overlap the longer one wins; on equal spans, the lower number here.
_PRIORITY: Final = {"email": 0, "iban": 1, "card": 2, "national_id": 3, "phone": 4, "ip": 5}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected item: its kind and its offsets in the text (never the matched value)."""

    kind: str
    start: int
    end: int

    @property
    def tag(self) -> str:
        return f"{PII_TAG}.{self.kind}"


# Regex notes. Python's engine scans fast for a literal first character and reasonably fast for
# a character class, then pays ~50 ns for each position where it tries the pattern; a pattern
# that starts with a lookbehind is tried at every position. So the patterns below start with a
# literal where one exists ('-' of an SSN, '.' of a dotted quad, ':' of an IPv6 address), or
# with a class of characters that are rare where the pattern fails (capital letters; the
# character before a number rather than each of its digits), followed by a lookbehind that
# re-checks the character before (same meaning as a leading lookbehind). Lookbehinds see text
# before the `pos` a search starts at, so a window's start never fakes a boundary; a window ends
# at whitespace at least `_WINDOW_AFTER` characters past its last trigger, or at a line break,
# so its end never cuts a match short either.

# ---------------------------------------------------------------------------------------------
# Precheck. Every detector's positives contain an '@' (e-mail), an IPv6 trigger ('::' or three
# ':hex' groups in a row), or a cluster of digits that `_DIGIT_TRIGGER` matches (six digits with
# short separators: cards, phones, national ids, IBANs; or a dotted quad: IPv4).
_DIGITS: Final = "0123456789"
_IPV6_TRIGGER: Final = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_DIGIT_TRIGGER: Final = re.compile(
    r"[0-9](?:(?:[ ./()\-]{0,3}[0-9]){5}|[0-9]{0,2}(?:\.[0-9]{1,3}){3})", re.ASCII
)
_CLUSTER_GAP: Final = 4  # digits at most 3 characters apart belong to one cluster
_CLUSTER_MIN_DIGITS: Final = 4  # the fewest digits any trigger needs (a dotted quad)
_FIND_BUDGET: Final = 64  # digits located one by one with str.find, plus one per ...
_CHARS_PER_FIND: Final = 24  # ... this many characters of text
_DENSE_PLACES: Final = 8  # more trigger places than this, plus one per ...
_CHARS_PER_PLACE: Final = 256  # ... this many characters: the text is dense, scan it all
_WINDOW_BEFORE: Final = 64  # the longest e-mail local part; covers "+44 (0)", "GB82 WEST "
_WINDOW_AFTER: Final = 48
_WHITESPACE: Final = re.compile(r"\s")
_CHUNK: Final = 2048

# ---------------------------------------------------------------------------------------------
# E-mail (hand-written: no library finds addresses in free text). Searched around each '@'.
_ATOM: Final = r"[\w!#$%&'*+/=?^`{|}~-]"
_EMAIL: Final = re.compile(
    r"(?<![\w.+%\-])"  # not inside a longer local part
    rf"\w{_ATOM}*(?:\.{_ATOM}+)*"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"
    r"(?P<tld>[^\W\d_]{2,63}|xn--[\w-]{1,59})"
    r"(?![\w-]|\.[^\W_])",
)
_MAX_LOCAL_PART: Final = 64
# How far past an '@' an address can reach: the '@', the longest domain (253 characters, RFC
# 1035) and the character after it, which the pattern's end checks must see. Searching no
# further keeps the e-mail pass linear: a token of 60 letters and an '@', repeated without
# whitespace, made every '@' search the rest of the text (64 KiB took 2 s; 4 MiB, hours).
_EMAIL_REACH: Final = 1 + 253 + 1
# File extensions that look like TLDs but are not delegated ones ("icon@2x.png").
_NOT_TLDS: Final = frozenset(
    {
        "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf", "txt",
        "log", "json", "yaml", "yml", "toml", "js", "ts", "css", "html", "htm", "xml", "csv",
    }
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Numbers: cards, French NIRs and phones, in one pass (see `_NUMBER` below).
# Long digit runs: cards and NIRs. Cards are 13-19 digits, unbroken or in groups of 3-6 digits
# (the first of 4) with one consistent separator, a space or a dash; NIRs are 15 digits, unbroken
# or spaced as "1 85 05 78 006 084 91". Never inside a longer run, a decimal, a path or a version.
# (Groups, not digit-by-digit repetition: far fewer engine steps on digit-heavy text.)
_RUN_BODY: Final = (
    r"[0-9](?:[0-9]{12,18}+"
    r"|[0-9]{3}(?P<sep>[ \-])[0-9]{3,6}(?:(?P=sep)[0-9]{3,6}){1,3}"
    r"|(?<=[1278])(?: [0-9]{2}){3} [0-9]{3} [0-9]{3} [0-9]{2})"
    r"(?![\w/+\-]|[ .,:][0-9])"
)
_NOT_DIGITS: Final = re.compile(r"[^0-9]+")

# (first prefix, last prefix, lengths): a number is a card candidate when its leading digits,
# cut to the prefix's length, fall in [first, last] and its length is one the issuer uses.
# (python-stdnum has Luhn but no card-brand table.)
_CARD_ISSUERS: Final[tuple[tuple[str, str, frozenset[int]], ...]] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("300", "305", frozenset(range(14, 20))),  # Diners Club
    ("36", "36", frozenset(range(14, 20))),  # Diners Club
    ("38", "39", frozenset(range(14, 20))),  # Diners Club
    ("3528", "3589", frozenset(range(16, 20))),  # JCB
    ("2200", "2204", frozenset(range(16, 20))),  # Mir
    ("50", "50", frozenset(range(13, 20))),  # Maestro, Verve, RuPay
    ("56", "69", frozenset(range(13, 20))),  # Maestro, Discover, UnionPay, RuPay
    ("81", "82", frozenset({16})),  # RuPay
)


def _card_issuer_ok(digits: str) -> bool:
    length = len(digits)
    for first, last, lengths in _CARD_ISSUERS:
        if length in lengths and first <= digits[: len(first)] <= last:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Letter-led ids, one pass over capital letters:
# * IBAN: country code, check digits, then the BBAN compact or printed in groups of four;
# * UK National Insurance number (no stdnum module, so HMRC's rules are written out): neither
#   prefix letter is D, F, I, Q, U or V, the second is not O, the prefixes BG, GB, KN, NK, NT,
#   TN and ZZ are never allocated; six digits (optionally in pairs); suffix A-D;
# * Spanish NIE: X, Y or Z, seven digits, check letter;
# * Spanish DNI, anchored on its check letter: eight digits before it.
_LETTER_LED: Final = re.compile(
    r"[A-Z](?:"
    r"(?<![\w\-][A-Z])(?P<iban>[A-Z][0-9]{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![\w\-]))"
    r"|(?<![\w\-][A-Z])(?<=[A-CEGHJ-PR-TW-Z])(?P<nino>[A-CEGHJ-NPR-TW-Z]"
    r"(?<!BG|GB|KN|NK|NT|TN|ZZ)(?P<sp> ?)[0-9]{2}(?P=sp)[0-9]{2}(?P=sp)[0-9]{2}(?P=sp)[A-D]"
    r"(?![\w\-]))"
    r"|(?<![\w\-][A-Z])(?<=[XYZ])(?P<nie>-?[0-9]{7}-?[A-Z](?![\w\-]))"
    r"|(?P<dni>(?<=(?<![\w\-])[0-9]{8}[A-Z])|(?<=(?<![\w\-])[0-9]{8}-[A-Z]))(?![\w\-])"
    r")",
    re.ASCII,
)
_IBAN_MIN_LENGTH: Final = 15  # Norway

# ---------------------------------------------------------------------------------------------
# Other national ids.
# US SSN, anchored on its first dash: AAA-GG-SSSS.
_SSN: Final = re.compile(
    r"-(?<=(?<![\w./\-])[0-9]{3}-)[0-9]{2}-[0-9]{4}(?![\w/\-]|[.,:][0-9])", re.ASCII
)
# A bare or spaced SSN counts only right after a label.
_SSN_LABELS: Final = ("SSN", "ssn", "ocial", "OCIAL")
_SSN_LABELLED: Final = re.compile(
    r"\b(?:SSN|social\s+security(?:\s+(?:number|no\.?))?)\s*(?:#|no\.?|number)?\s*[:=]?\s*"
    r"([0-9]{3})[ \-]?([0-9]{2})[ \-]?([0-9]{4})(?![\w\-])",
    re.ASCII | re.IGNORECASE,
)
# French NIR with a Corsican department (2A, 2B), anchored on it; numeric NIRs are long runs.
_NIR_CORSICA: Final = re.compile(
    r"2[AB](?:(?<=(?<![\w\-])[1278][0-9]{4}2[AB])[0-9]{8}"
    r"|(?<=(?<![\w\-])[1278] [0-9]{2} [0-9]{2} 2[AB]) [0-9]{3} [0-9]{3} [0-9]{2})(?![\w\-])",
    re.ASCII,
)

# ---------------------------------------------------------------------------------------------
# IP addresses. IPv4 is anchored on its first dot (one to three digits before it).
_IPV4: Final = re.compile(
    r"\.(?:(?<=(?<![\w.\-])[0-9]\.)|(?<=(?<![\w.\-])[0-9]{2}\.)|(?<=(?<![\w.\-])[0-9]{3}\.))"
    r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w\-]|\.[0-9])",
    re.ASCII,
)
_VERSION_CONTEXT: Final = re.compile(
    r"(?:\b(?:v|version|ver\.?|release|rel\.?|build|firmware|fw)\s*:?\s*|==|>=|<=|~=|!=|@|\^|~)$",
    re.ASCII | re.IGNORECASE,
)
_VERSION_CONTEXT_CHARS: Final = 20
# IPv6 is searched near each `_IPV6_TRIGGER`; ipaddress does the validation.
_IPV6: Final = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.\-][0-9A-Fa-f:])[0-9A-Fa-f:]{1,38}"
    r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
    r"(?![\w:\-]|\.[0-9A-Za-z])",
    re.ASCII,
)
_IPV6_REACH: Final = 46  # the longest IPv6 text form is 45 characters
_IPV6_LONG_GROUP: Final = re.compile(r"[0-9A-Fa-f]{3}")
_DIGIT: Final = re.compile(r"[0-9]")

# ---------------------------------------------------------------------------------------------
# Phones: digits with single separators (the '(0)' of "+44 (0)20 ..." is a ' (' then a ')'),
# after '+', '(' or '(+', or starting with a 0 (trunk or '00' exit code), or grouped (a
# separator within the first four digits). Never glued to a preceding token (except
# "tel:+1..."), never a date or a dotted quad.
_PHONE_SEP: Final = r"(?: ?[\-./] ?| |\) ?| ?\()"
_PHONE_BODY: Final = (
    r"(?=[+(]{0,2}[0-9](?:[ ./()\-]{0,3}[0-9]){6})"  # at least 7 digits
    r"[+(0-9]"
    r"(?![0-9]{3}[\-./][0-9]{1,2}[\-./][0-9]{1,2}(?![0-9]))"
    r"(?![0-9]?[\-./][0-9]{1,2}[\-./](?:19|20)[0-9]{2}(?![0-9]))"
    r"(?![0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?!\.?[0-9]))"
    rf"(?:(?<=\()\+?[0-9]|(?<=\+)[0-9]|(?<=0)|(?<=[1-9])[0-9]{{0,3}}+(?={_PHONE_SEP}[0-9]))"
    rf"[0-9]*+(?:{_PHONE_SEP}[0-9]++){{0,10}}+"
    r"\)?(?![\w@]|[\-./]?[0-9])"
)
# The pass is led by the character before the number (one that may precede one): in digit-heavy
# text that is far fewer attempts than one per digit. A long run must not follow a comma or a
# digit and a separator; a phone may follow a ':' only with its '+' ("tel:+1 ...").
_NUMBER: Final = re.compile(
    r"[^\w.+/@\-](?=[0-9+(])"
    rf"(?:(?<![0-9][ \-])(?<!,)(?P<run>{_RUN_BODY})|(?:(?<!:)|(?=\+))(?P<phone>{_PHONE_BODY}))",
    re.ASCII,
)
_NUMBER_AT_START: Final = re.compile(rf"(?P<run>{_RUN_BODY})|(?P<phone>{_PHONE_BODY})", re.ASCII)
_PHONE: Final = re.compile(_PHONE_BODY, re.ASCII)
_PHONE_DATE: Final = re.compile(
    r"(?<![0-9])(?:[0-9]{4}[\-./][0-9]{1,2}[\-./][0-9]{1,2}|"
    r"[0-9]{1,2}[\-./][0-9]{1,2}[\-./](?:19|20)[0-9]{2})(?![0-9])",
    re.ASCII,
)
_SHORT_DOTTED_GROUP: Final = re.compile(r"(?:^|[^0-9])[0-9](?:\.|$)|\.[0-9](?![0-9])", re.ASCII)
_DIGIT_GROUPS: Final = re.compile(r"[0-9]+")
_LAST_GROUP: Final = re.compile(rf"{_PHONE_SEP}[0-9]+\)?$")
_PHONE_TRIMS: Final = 8
_MIN_PHONE_DIGITS: Final = 7
_MAX_PHONE_DIGITS: Final = 17  # 15 (E.164) plus an international '00' prefix


def _ipv4_value(dotted: str) -> int | None:
    """The address of a dotted quad, with `ipaddress.IPv4Address`'s rules (octets 0-255, no
    leading zeros), or None. In-line because the constructor costs ~4 us an address and logs
    hold many; a property test checks the two agree."""
    value = 0
    for octet in dotted.split("."):
        if len(octet) > 1 and octet[0] == "0":
            return None
        number = int(octet)
        if number > 255:
            return None
        value = value << 8 | number
    return value


def _is_identifying_ipv4(value: int) -> bool:
    """False for addresses that identify nobody: 0.0.0.0/8 ("this network", and most 0.x.y.z
    version strings), loopback 127.0.0.0/8, multicast 224.0.0.0/4 and netmasks (which include
    the broadcast address 255.255.255.255)."""
    first = value >> 24
    if first in (0, 127) or 224 <= first <= 239:
        return False
    inverted = ~value & 0xFFFFFFFF
    return inverted & (inverted + 1) != 0


def _is_identifying_ipv6(address: ipaddress.IPv6Address) -> bool:
    if address.ipv4_mapped is not None:
        return _is_identifying_ipv4(int(address.ipv4_mapped))
    return not (address.is_unspecified or address.is_loopback or address.is_multicast)


def _version_context(text: str, start: int) -> bool:
    return _VERSION_CONTEXT.search(text, max(0, start - _VERSION_CONTEXT_CHARS), start) is not None


@dataclass(frozen=True, slots=True)
class _PhoneRegion:
    code: str
    national_prefix: str
    lengths: frozenset[int]  # possible lengths of the national significant number


_Detector = Callable[[str, int, int], Iterator[Finding]]


class ContentTagger:
    """Detects PII in request text. Build once (everything is compiled here), call per request.

    `enabled_kinds` limits detection to some of `KINDS` (default: all). `phone_regions` are the
    regions whose national-format numbers are recognised; international numbers (``+``/``00``)
    are recognised for every country.
    """

    __slots__ = ("_detectors", "_enabled", "_grouped_regions", "_trunk_regions")

    def __init__(
        self,
        enabled_kinds: Iterable[str] | None = None,
        phone_regions: Sequence[str] = ("US", "GB", "DE", "FR"),
    ) -> None:
        if isinstance(enabled_kinds, str):
            raise TypeError("enabled_kinds must be an iterable of kinds, not a string")
        enabled = frozenset(KINDS if enabled_kinds is None else enabled_kinds)
        unknown = sorted(enabled - frozenset(KINDS))
        if unknown:
            raise ValueError(f"unknown content kind(s) {unknown}; known kinds: {list(KINDS)}")
        if isinstance(phone_regions, str):
            raise TypeError("phone_regions must be a sequence of region codes, not a string")
        trunk: dict[str, _PhoneRegion] = {}
        grouped: dict[str, _PhoneRegion] = {}
        for raw_region in phone_regions:
            code = raw_region.strip().upper()
            metadata = phonenumbers.PhoneMetadata.metadata_for_region(code)
            if metadata is None or metadata.general_desc is None:
                raise ValueError(f"unknown phone region {raw_region!r}")
            region = _PhoneRegion(
                code,
                metadata.national_prefix or "",
                frozenset(metadata.general_desc.possible_length or ()),
            )
            (trunk if region.national_prefix == "0" else grouped)[code] = region
        self._enabled = enabled
        self._trunk_regions = tuple(trunk.values())
        self._grouped_regions = tuple(grouped.values())
        # Each detector with the kinds it reports; it runs when any of them is enabled, and its
        # findings of kinds not enabled are dropped.
        table: tuple[tuple[frozenset[str], _Detector], ...] = (
            (frozenset({"email"}), self._find_emails),
            (frozenset({"iban", "national_id"}), self._find_letter_led),
            (frozenset({"card", "national_id", "phone"}), self._find_numbers),
            (frozenset({"national_id"}), self._find_other_national_ids),
            (frozenset({"ip"}), self._find_ipv4),
            (frozenset({"ip"}), self._find_ipv6),
        )
        self._detectors = tuple(
            (kinds & enabled, detector) for kinds, detector in table if kinds & enabled
        )

    @property
    def enabled_kinds(self) -> frozenset[str]:
        return self._enabled

    # -- public API ---------------------------------------------------------------------------

    def findings(self, text: str) -> list[Finding]:
        """Every PII item in `text`, ordered by offset; overlapping candidates resolved."""
        found: list[Finding] = []
        for lo, hi in _windows(text) if self._detectors else ():
            for _, detector in self._detectors:
                found.extend(detector(text, lo, hi))
        return self._resolve(found)

    def tags(self, texts: Iterable[str]) -> frozenset[str]:
        """``{"pii", "pii.<kind>", ...}`` for everything found in `texts`, or an empty set.

        Unlike `findings` it stops running the e-mail and IP detectors once their kind has
        been found (an address-heavy log need not have every address validated). Their patterns
        keep them apart from the other kinds (phones exclude dotted quads, numbers glued to an
        '@' are not numbers), so skipping them does not change which kinds survive; the other
        detectors always run, because their findings can shadow each other (the digits of
        "NL91 ABNA 0417 1643 00" also read as a phone number). A property test checks that
        `tags` agrees with `findings`.
        """
        if isinstance(texts, str):
            raise TypeError("tags() takes an iterable of texts, not a single string")
        found: set[str] = set()
        for text in texts:
            for lo, hi in _windows(text) if self._detectors else ():
                active = [
                    detector
                    for kinds, detector in self._detectors
                    if not (kinds <= found and kinds <= _SKIPPABLE_ONCE_FOUND)
                ]
                if not active:
                    break
                window: list[Finding] = []
                for detector in active:
                    window.extend(detector(text, lo, hi))
                found.update(finding.kind for finding in self._resolve(window))
            if len(found) == len(self._enabled):
                break
        if not found:
            return frozenset()
        return frozenset({PII_TAG, *(f"{PII_TAG}.{kind}" for kind in found)})

    def _resolve(self, found: list[Finding]) -> list[Finding]:
        resolved = _resolve_overlaps(found)
        if len(self._enabled) < len(KINDS):
            resolved = [finding for finding in resolved if finding.kind in self._enabled]
        return resolved

    # -- detectors ----------------------------------------------------------------------------

    def _find_emails(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        at = text.find("@", lo, hi)
        while at >= 0:
            # An address holds no whitespace: search only the token around this '@', and no
            # further than an address can reach.
            reach = min(hi, at + _EMAIL_REACH)
            space = _WHITESPACE.search(text, at, reach)
            end = reach if space is None else space.start()
            match = _EMAIL.search(text, max(lo, at - _MAX_LOCAL_PART), end)
            while match is not None and match.end() <= at:  # an earlier address in the token
                match = _EMAIL.search(text, match.end(), end)
            if (
                match is not None
                and match.start() < at
                and (match.end() < reach or reach == hi)  # else its domain is too long
                and match.group("tld").lower() not in _NOT_TLDS
            ):
                yield Finding("email", match.start(), match.end())
                at = text.find("@", match.end(), hi)
            else:
                at = text.find("@", at + 1, hi)

    def _find_letter_led(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        for match in _LETTER_LED.finditer(text, lo, hi):
            start = match.start()
            if match.group("iban") is not None:
                candidate = match.group()
                # A grouped IBAN whose length is a multiple of four can swallow a following
                # four-character word ("BE71 0961 2345 6769 THEN"): drop trailing groups.
                while len(candidate) - candidate.count(" ") >= _IBAN_MIN_LENGTH:
                    if stdnum_iban.is_valid(candidate):
                        yield Finding("iban", start, start + len(candidate))
                        break
                    cut = candidate.rfind(" ")
                    if cut < 0:
                        break
                    candidate = candidate[:cut]
            elif match.group("nino") is not None:
                yield Finding("national_id", start, match.end())
            elif match.group("nie") is not None:
                if nie.is_valid(match.group()):
                    yield Finding("national_id", start, match.end())
            else:  # DNI: the match is the check letter
                start -= 9 if text[start - 1] == "-" else 8
                if dni.is_valid(text[start : match.end()]):
                    yield Finding("national_id", start, match.end())

    def _find_other_national_ids(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        for match in _SSN.finditer(text, lo, hi):
            start = match.start() - 3
            if ssn.is_valid(text[start : match.end()]):
                yield Finding("national_id", start, match.end())
        if any(text.find(label, lo, hi) >= 0 for label in _SSN_LABELS):
            for match in _SSN_LABELLED.finditer(text, lo, hi):
                if ssn.is_valid("-".join(match.groups())):
                    yield Finding("national_id", match.start(1), match.end(3))
        for match in _NIR_CORSICA.finditer(text, lo, hi):
            start = match.start() - (5 if text[match.start() - 1] != " " else 8)
            if nir.is_valid(text[start : match.end()]):
                yield Finding("national_id", start, match.end())

    def _find_ipv4(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        for match in _IPV4.finditer(text, lo, hi):
            start = match.start() - 1
            while start > 0 and "0" <= text[start - 1] <= "9":
                start -= 1
            value = _ipv4_value(text[start : match.end()])
            if (
                value is not None
                and _is_identifying_ipv4(value)
                and not _version_context(text, start)
            ):
                yield Finding("ip", start, match.end())

    def _find_ipv6(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        trigger = _IPV6_TRIGGER.search(text, lo, hi)
        while trigger is not None:
            colon = trigger.start()
            end = min(hi, colon + _IPV6_REACH)
            match = _IPV6.search(text, max(lo, colon - _IPV6_REACH), end)
            while match is not None and match.end() <= colon:
                match = _IPV6.search(text, match.end(), end)
            resume = colon + 1
            if match is not None and match.start() <= colon:
                resume = match.end()
                # Cut short by `end`: the token goes on, too long to be an address.
                if match.end() < end or end == len(text) or not _is_ipv6_char(text[end]):
                    finding = _ipv6_finding(match.group(), match.start())
                    if finding is not None:
                        yield finding
            trigger = _IPV6_TRIGGER.search(text, resume, hi)

    def _find_numbers(self, text: str, lo: int, hi: int) -> Iterator[Finding]:
        match = _NUMBER_AT_START.match(text, 0, hi) if lo == 0 else None
        if match is None:
            match = _NUMBER.search(text, max(0, lo - 1), hi)
        while match is not None:
            finding = self._number_finding(text, match, hi)
            resume = match.end()
            if finding is not None:
                yield finding
                if finding.end < resume:
                    # A phone took the number after it ("+44 20 7946 0958 4111 1111 1111 1111")
                    # and was cut back: read what follows the separator as a fresh number.
                    resume = finding.end
                    after = _NUMBER_AT_START.match(text, resume + 1, hi)
                    if after is not None and text[resume] == " ":
                        match = after
                        continue
            match = _NUMBER.search(text, resume, hi)

    def _number_finding(self, text: str, match: re.Match[str], hi: int) -> Finding | None:
        if match.group("run") is None:
            return self._phone_finding(text, match.start("phone"), match.group("phone"))
        start, end = match.span("run")
        digits = _NOT_DIGITS.sub("", match.group("run"))
        # No card issuer has 15-digit numbers starting 1, 2, 7 or 8: never both kinds.
        if len(digits) == 15 and digits[0] in "1278" and nir.is_valid(digits):
            return Finding("national_id", start, end)
        if _card_issuer_ok(digits) and luhn.is_valid(digits):
            return Finding("card", start, end)
        if start > 0 and text[start - 1] == ":":
            return None
        phone = _PHONE.match(text, start, hi)  # "0012025550123": a long run, yet a phone
        return None if phone is None else self._phone_finding(text, start, phone.group())

    def _phone_finding(self, text: str, start: int, candidate: str) -> Finding | None:
        for _ in range(_PHONE_TRIMS + 1):
            if candidate[-1] == ")" and candidate.count("(") < candidate.count(")"):
                candidate = candidate[:-1]
            if self._is_phone(candidate):
                if _version_context(text, start):
                    return None
                return Finding("phone", start, start + len(candidate))
            # "call 020 7946 0958 2 times": the run took a following number; drop it.
            trimmed = _LAST_GROUP.sub("", candidate)
            if trimmed == candidate or len(trimmed) < _MIN_PHONE_DIGITS:
                return None
            candidate = trimmed
        return None

    def _is_phone(self, candidate: str) -> bool:
        bare = candidate.lstrip("(")
        digits = _NOT_DIGITS.sub("", candidate)
        if not _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS:
            return False
        if "." in candidate and _SHORT_DOTTED_GROUP.search(candidate) is not None:
            return False  # "0.6.36.547": dotted phone formats use groups of 2+ digits
        if _PHONE_DATE.search(candidate) is not None:
            return False
        if bare[0] == "+":
            return _valid_number(bare, None)
        if digits.startswith("00"):
            # International with the '00' exit code: the country code follows.
            second_zero = _DIGIT.search(bare, bare.index("0") + 1)
            return second_zero is not None and _valid_number("+" + bare[second_zero.end() :], None)
        if digits[0] == "0":
            return any(
                len(digits) - 1 in region.lengths and _valid_number(candidate, region.code)
                for region in self._trunk_regions
            )
        if bare.isdigit():
            return False  # a bare digit run: an id or an amount far more often than a phone
        return any(_is_grouped_national(candidate, digits, r) for r in self._grouped_regions)


def _is_grouped_national(candidate: str, digits: str, region: _PhoneRegion) -> bool:
    """A national number without trunk prefix, grouped the way the region formats it."""
    prefix = region.national_prefix
    with_prefix = bool(prefix) and digits.startswith(prefix)
    if len(digits) not in region.lengths and not (
        with_prefix and len(digits) - len(prefix) in region.lengths
    ):
        return False
    number = _parse(candidate, region.code)
    if number is None or not phonenumbers.is_valid_number(number):
        return False
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    expected = [len(group) for group in _DIGIT_GROUPS.findall(national)]
    actual = [len(group) for group in _DIGIT_GROUPS.findall(candidate)]
    # Optionally after the national prefix as its own group ("1-415-555-2671").
    return actual == expected or (with_prefix and actual[1:] == expected)


def _parse(candidate: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return None


def _valid_number(candidate: str, region: str | None) -> bool:
    number = _parse(candidate, region)
    return number is not None and phonenumbers.is_valid_number(number)


def _is_ipv6_char(char: str) -> bool:
    return char == ":" or char == "." or char.isalnum()


def _ipv6_finding(candidate: str, start: int) -> Finding | None:
    if candidate.count(":") < 2 or _DIGIT.search(candidate) is None:
        return None
    if candidate.endswith(":") and not candidate.endswith("::"):
        candidate = candidate[:-1]  # "... at fe80::1:" - a sentence colon
    if "." not in candidate and _IPV6_LONG_GROUP.search(candidate) is None:
        return None  # "1::2", "a::b": slices and paths, not addresses
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    if not _is_identifying_ipv6(address):
        return None
    return Finding("ip", start, start + len(candidate))


def _windows(text: str) -> list[tuple[int, int]]:
    """Where detectors must look: merged spans around trigger places, each ending at whitespace
    so no token is cut short. Empty when no detector can match anywhere (the fast path); the
    whole text, in chunks, when places are dense (logs, tables).

    Digits are located with `str.find` while that is cheaper than a regex pass (one find costs
    about what the engine spends scanning `_CHARS_PER_FIND` characters); past that budget (prose
    full of years and counts) one `_DIGIT_TRIGGER` pass finds the places instead. Once there are
    more places than windows could usefully skip, the text counts as dense."""
    length = len(text)
    dense = _DENSE_PLACES + length // _CHARS_PER_PLACE
    places: list[tuple[int, int]] = []
    at = text.find("@")
    while at >= 0:
        places.append((at, at + 1))
        if len(places) > dense:
            return _chunks(text)
        at = text.find("@", at + 1)
    if text.find(":") >= 0:
        for hit in _IPV6_TRIGGER.finditer(text):
            places.append(hit.span())
            if len(places) > dense:
                return _chunks(text)
    positions = _digit_positions(text, _FIND_BUDGET + length // _CHARS_PER_FIND)
    if positions is None:  # too many digits to cluster one by one: let the regex look
        for hit in _DIGIT_TRIGGER.finditer(text):
            places.append(hit.span())
            if len(places) > dense:  # windows would cover most of the text anyway
                return _chunks(text)
    elif positions:
        positions.sort()
        first = previous = positions[0]
        count = 1
        for position in (*positions[1:], length + _CLUSTER_GAP + 1):
            if position - previous <= _CLUSTER_GAP:
                previous = position
                count += 1
                continue
            if count >= _CLUSTER_MIN_DIGITS and _DIGIT_TRIGGER.search(text, first, previous + 1):
                places.append((first, previous + 1))
            first = previous = position
            count = 1
    if not places:
        return []
    places.sort()
    windows: list[tuple[int, int]] = []
    for start, end in places:
        lo = max(0, start - _WINDOW_BEFORE)
        space = _WHITESPACE.search(text, min(length, end + _WINDOW_AFTER))
        hi = length if space is None else space.start()
        if windows and lo <= windows[-1][1]:
            lo = windows[-1][0]
            hi = max(hi, windows.pop()[1])
        windows.append((lo, hi))
    return windows


def _digit_positions(text: str, budget: int) -> list[int] | None:
    """Offsets of the ASCII digits in `text`, or None when there are more than `budget`."""
    positions: list[int] = []
    for digit in _DIGITS:
        at = text.find(digit)
        while at >= 0:
            positions.append(at)
            if len(positions) > budget:
                return None
            at = text.find(digit, at + 1)
    return positions


def _chunks(text: str) -> list[tuple[int, int]]:
    """The whole text as windows of about `_CHUNK` characters, each ending at a line break (no
    detector matches across one) and starting a little before the previous end, for the
    lookbehind context of a label. Chunks let `tags` stop running a detector partway through."""
    length = len(text)
    chunks: list[tuple[int, int]] = []
    lo = 0
    while lo < length:
        newline = text.find("\n", lo + _CHUNK)
        hi = length if newline < 0 else newline
        chunks.append((lo, hi))
        lo = max(lo + 1, hi - _WINDOW_BEFORE) if hi < length else length
    return chunks


def _resolve_overlaps(found: list[Finding]) -> list[Finding]:
    """Keep non-overlapping findings: in each group of overlapping ones, longest first."""
    if len(found) < 2:
        return found
    found.sort(key=lambda f: (f.start, f.end))
    resolved: list[Finding] = []
    group: list[Finding] = []
    group_end = -1
    for finding in (*found, None):
        if finding is not None and finding.start < group_end:
            group.append(finding)
            group_end = max(group_end, finding.end)
            continue
        if len(group) == 1:
            resolved.append(group[0])
        elif group:
            kept: list[Finding] = []
            for candidate in sorted(group, key=lambda f: (f.start - f.end, _PRIORITY[f.kind])):
                if all(candidate.end <= k.start or candidate.start >= k.end for k in kept):
                    kept.append(candidate)
            resolved.extend(sorted(kept, key=lambda f: f.start))
        if finding is not None:
            group = [finding]
            group_end = finding.end
    return resolved


def merge_tags(detected: frozenset[str], supplied: Iterable[str]) -> frozenset[str]:
    """Detected tags plus caller-supplied ones, stripped and lower-cased.

    Raises ValueError naming the tag for an empty or over-long (> 64 characters) supplied tag.
    """
    if isinstance(supplied, str):
        raise TypeError("supplied tags must be an iterable of tags, not a single string")
    merged = set(detected)
    for raw in supplied:
        tag = raw.strip().lower()
        if not tag:
            raise ValueError(f"tag {raw!r} is empty")
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"tag {tag!r} is longer than {MAX_TAG_LENGTH} characters")
        merged.add(tag)
    return frozenset(merged)
