"""AmneziaWG 2.0 obfuscation: the wire profile of an interface.

AmneziaWG keeps WireGuard's cryptography and changes only what is on the
wire (amneziawg-go v0.2.19 is the reference):

- S1..S4: that many random bytes in front of every initiation, response,
  cookie reply and transport message (keepalives included). The MACs
  cover the message as it is without them.
- H1..H4: the 32-bit little-endian type field of those four messages,
  replacing 1..4: one value `N`, or a range `A-B` from which every message
  draws a fresh value. The ranges must not overlap.
- Jc, Jmin, Jmax: before every handshake initiation the initiator sends Jc
  datagrams of Jmin..Jmax random bytes.
- I1..I5: "signature" datagrams sent before the junk, built from tags:
  `<b 0xHEX>` those bytes, `<r N>` N random bytes, `<rc N>` N random
  letters, `<rd N>` N random digits, `<t>` the time (4 bytes, big-endian
  Unix seconds).

S and H must be equal on both ends; J and I are the initiator's alone. All
of them unset is plain WireGuard, bit for bit.

A receiver classifies a datagram by size and header (`Obfuscation.classify`,
the model that the native data path and the XDP program follow):
initiation when it is 148+S1 bytes and the 4 bytes at S1 fall in H1,
response 92+S2 and H2, cookie reply 64+S3 and H3, transport when it is at
least 32+S4 bytes and the header at S4 falls in H4. Anything else is junk.

This module holds the settings, their checks (every error names the key,
in the caller's spelling: `Jc` in a file, `jc` over UAPI and the API) and
the initiator's extra datagrams. Sizes come from C.
"""
from __future__ import annotations

import dataclasses
import re
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from dataplane._native import lib

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = (
    lib.DP_WG_MSG_INITIATION, lib.DP_WG_MSG_RESPONSE, lib.DP_WG_MSG_COOKIE_REPLY,
    lib.DP_WG_MSG_DATA)
KINDS = (INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT)
KIND_NAMES = {INITIATION: "initiation", RESPONSE: "response", COOKIE_REPLY: "cookie reply",
              TRANSPORT: "transport"}
# Size of each message kind (the transport message's least: an empty
# keepalive), as in native/wg/dp_wg_messages.h.
BASE_LEN = {INITIATION: lib.DP_WG_INITIATION_LEN, RESPONSE: lib.DP_WG_RESPONSE_LEN,
            COOKIE_REPLY: lib.DP_WG_COOKIE_REPLY_LEN, TRANSPORT: lib.DP_WG_DATA_MIN_LEN}
# The largest UDP payload over IPv4 (65535 - 20 - 8): every padded message,
# junk and signature datagram must fit one.
MAX_DATAGRAM = 65507
HEADER_MAX = 0xFFFFFFFF
# Jc: AmneziaWG documents 1..128 (amneziawg-go only asks for > 0). The
# bound keeps one handshake from turning into a flood of our own.
JUNK_COUNT_MAX = 128
# I1..I5: AmneziaWG's tools refuse a value of 5 KiB or more (awg's
# MAX_AWG_STRING_LEN); the UAPI line limit follows from it.
SIGNATURE_SPEC_MAX = 5 * 1024 - 1

# The keys, as a wg-quick file spells them; UAPI and the API use them in
# lower case.
JUNK_KEYS = ("Jc", "Jmin", "Jmax")
PADDING_KEYS = ("S1", "S2", "S3", "S4")
HEADER_KEYS = ("H1", "H2", "H3", "H4")
SIGNATURE_KEYS = ("I1", "I2", "I3", "I4", "I5")
KEYS = JUNK_KEYS + PADDING_KEYS + HEADER_KEYS + SIGNATURE_KEYS

_DIGITS = re.compile(r"[0-9]+")
# Enough digits for any value we take (2^32 - 1 has 10): longer is out of
# range without asking int() to convert thousands of digits.
_DIGITS_MAX = 10
_TAG = re.compile(r"<([^<>]*)>")
_LETTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGIT_BYTES = b"0123456789"


class ObfuscationError(ValueError):
    """A setting that cannot be used. str() is `Key: reason`, with the key
    spelled as the caller wrote it (`key`); `related` names the other key
    of a rule between two (a file points at its line when `key` is not
    written there)."""

    def __init__(self, key: str, reason: str, related: Optional[str] = None) -> None:
        self.key, self.reason, self.related = key, reason, related
        super().__init__(f"{key}: {reason}")


def _spell(key: str, lower: bool) -> str:
    return key.lower() if lower else key


def _shown(value: object) -> str:
    """A value as an error quotes it: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: object) -> Optional[int]:
    """A decimal number from text (a file, UAPI) or a JSON integer; None if
    it is neither or longer than any value we take."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text) and len(text) <= _DIGITS_MAX:
            return int(text)
    return None


def _count(key: str, value: object, lo: int, hi: int, what: str, note: str = "") -> int:
    n = _whole(value)
    if n is None or not lo <= n <= hi:
        raise ObfuscationError(key, f"expected {what} {lo}..{hi}{note}, got {_shown(value)}")
    return n


# ---------------------------------------------------------------- headers

@dataclass(frozen=True)
class HeaderRange:
    """H1..H4: the type field's value, or a range of them (both ends in)."""
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: object, key: str = "H") -> "HeaderRange":
        """`N` or `A-B`, decimal, 0..2^32-1, A <= B (a JSON integer too)."""
        parts = text.split("-") if isinstance(text, str) else [text]
        ends = [_whole(p) for p in parts]
        if len(parts) > 2 or any(n is None for n in ends):
            raise ObfuscationError(key, f"expected a type value N or a range A-B of "
                                        f"0..{HEADER_MAX}, got {_shown(text)}")
        lo, hi = ends[0], ends[-1]
        if not 0 <= lo <= HEADER_MAX or not 0 <= hi <= HEADER_MAX:
            raise ObfuscationError(key, f"{_shown(text)}: type values are 32-bit, "
                                        f"0..{HEADER_MAX}")
        if lo > hi:
            raise ObfuscationError(key, f"{_shown(text)}: the range's start is above its end")
        return cls(lo, hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def __contains__(self, value: int) -> bool:
        return self.lo <= value <= self.hi

    def overlaps(self, other: "HeaderRange") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def draw(self) -> int:
        """A value for one message: fresh for each, uniform over the range."""
        return self.lo + secrets.randbelow(self.hi - self.lo + 1)


PLAIN_HEADERS = tuple(HeaderRange(k, k) for k in KINDS)


# ---------------------------------------------------------------- signatures

@dataclass(frozen=True)
class Tag:
    """One tag of a signature chain: kind 'b' (data holds the bytes), 'r',
    'rc', 'rd' (length random bytes, letters, digits) or 't' (4 bytes)."""
    kind: str
    length: int
    data: bytes = b""

    def build(self) -> bytes:
        if self.kind == "b":
            return self.data
        if self.kind == "r":
            return secrets.token_bytes(self.length)
        if self.kind == "rc":
            return bytes(_LETTERS[b % 52] for b in secrets.token_bytes(self.length))
        if self.kind == "rd":
            return bytes(_DIGIT_BYTES[secrets.randbelow(10)] for _ in range(self.length))
        return struct.pack(">I", int(time.time()) & 0xFFFFFFFF)


SIGNATURE_TAGS = ("b", "r", "rc", "rd", "t")


def parse_chain(text: object, key: str = "I1") -> tuple[Tag, ...]:
    """A signature packet's spec: one or more tags, nothing but whitespace
    between them, at most SIGNATURE_SPEC_MAX characters, building at most
    MAX_DATAGRAM bytes. (amneziawg-go skips text outside tags; here it is
    refused, as it is a mistake more likely than a comment.)"""
    if not isinstance(text, str):
        raise ObfuscationError(key, f"expected a chain of tags such as <b 0x...><r 16>, "
                                    f"got {_shown(text)}")
    if len(text) > SIGNATURE_SPEC_MAX:
        raise ObfuscationError(key, f"{len(text)} characters, more than AmneziaWG's tools "
                                    f"take ({SIGNATURE_SPEC_MAX})")
    tags: list[Tag] = []
    pos = 0
    for m in _TAG.finditer(text):
        _outside(key, text[pos:m.start()])
        pos = m.end()
        parts = m.group(1).split()
        if not parts:
            raise ObfuscationError(key, "empty tag <>")
        name, args = parts[0], parts[1:]
        if name == "t":
            if args:
                raise ObfuscationError(key, "<t> takes no value")
            tags.append(Tag("t", 4))
        elif name == "b":
            hexa = args[0][2:] if len(args) == 1 and args[0][:2].lower() == "0x" else \
                "".join(args[:1])
            if len(args) != 1 or not hexa or len(hexa) % 2 or \
                    not re.fullmatch(r"[0-9a-fA-F]+", hexa):
                raise ObfuscationError(key, f"<{m.group(1)[:24]}>: <b> takes one value, an even "
                                            f"number of hex digits such as 0xc0ffee")
            data = bytes.fromhex(hexa)
            tags.append(Tag("b", len(data), data))
        elif name in ("r", "rc", "rd"):
            n = _whole(args[0]) if len(args) == 1 else None
            if n is None or n > MAX_DATAGRAM:
                raise ObfuscationError(key, f"<{name}> takes a length 0..{MAX_DATAGRAM}, "
                                            f"as <{name} 16>")
            tags.append(Tag(name, n))
        else:
            raise ObfuscationError(key, f"unknown tag <{name[:16]}> (signature packets take "
                                        f"{', '.join(f'<{t}>' for t in SIGNATURE_TAGS)})")
    _outside(key, text[pos:])
    if not tags:
        raise ObfuscationError(key, "no tags (an empty value leaves the key unset)")
    size = chain_length(tags)
    if size > MAX_DATAGRAM:
        raise ObfuscationError(key, f"{size} bytes, more than a UDP datagram holds "
                                    f"({MAX_DATAGRAM})")
    return tuple(tags)


def _outside(key: str, between: str) -> None:
    between = between.strip()
    if "<" in between:
        raise ObfuscationError(key, f"a tag is not closed: {_shown(between)}")
    if between:
        raise ObfuscationError(key, f"text outside a tag: {_shown(between)}")


def chain_length(tags: Iterable[Tag]) -> int:
    return sum(t.length for t in tags)


def chain_prefix(tags: Iterable[Tag], most: int = 8) -> bytes:
    """The fixed bytes a chain starts with (its leading <b> tags), up to
    `most`: what a receiver can recognise a signature packet by."""
    out = b""
    for t in tags:
        if t.kind != "b":
            break
        out += t.data
    return out[:most]


# ---------------------------------------------------------------- the profile

@dataclass(frozen=True)
class Obfuscation:
    """An interface's AmneziaWG settings. The default is plain WireGuard."""
    jc: int = 0
    jmin: int = 0
    jmax: int = 0
    s1: int = 0
    s2: int = 0
    s3: int = 0
    s4: int = 0
    h1: HeaderRange = PLAIN_HEADERS[0]
    h2: HeaderRange = PLAIN_HEADERS[1]
    h3: HeaderRange = PLAIN_HEADERS[2]
    h4: HeaderRange = PLAIN_HEADERS[3]
    i1: Optional[str] = None
    i2: Optional[str] = None
    i3: Optional[str] = None
    i4: Optional[str] = None
    i5: Optional[str] = None

    # -- reading settings

    @staticmethod
    def parse_setting(key: str, value: object, lower: bool = False) -> tuple[str, object]:
        """One setting alone: (field name, value). `key` in any case; the
        value is text as in a file or over UAPI, or from JSON an integer
        (J, S, H) or null. None or "" unsets the key (plain WireGuard's
        value); so does 0 for J. Raises ObfuscationError naming the key
        (lower case with `lower`)."""
        canonical = _CANONICAL.get(key.lower()) if isinstance(key, str) else None
        if canonical is None:
            raise ObfuscationError(str(key)[:24], "not an AmneziaWG setting (known: "
                                                  f"{', '.join(_spell(k, lower) for k in KEYS)})")
        name, spelled = canonical.lower(), _spell(canonical, lower)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            return name, getattr(PLAIN, name)
        if canonical == "Jc":
            return name, _count(spelled, value, 0, JUNK_COUNT_MAX, "a count of junk packets",
                                " (0: none)")
        if canonical in JUNK_KEYS:
            return name, _count(spelled, value, 0, MAX_DATAGRAM, "a junk packet size in bytes")
        if canonical in PADDING_KEYS:
            return name, _count(spelled, value, 0, MAX_DATAGRAM, "a padding in bytes")
        if canonical in HEADER_KEYS:
            return name, HeaderRange.parse(value, spelled)
        parse_chain(value, spelled)
        return name, value

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], base: Optional["Obfuscation"] = None,
                      lower: bool = False, check: bool = True) -> "Obfuscation":
        """Settings by key (any case) onto `base` (default: plain), each
        checked as parse_setting does, then (unless `check` is False: what
        another device holds, read back) the whole as check does."""
        base = base or PLAIN
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
        for key, value in settings.items():
            name, parsed = cls.parse_setting(key, value, lower)
            values[name] = parsed
        obf = cls(**values)
        if check:
            obf.check(lower)
        return obf

    def check(self, lower: bool = False) -> None:
        """The rules between keys: amneziawg-go's (header ranges must not
        overlap; junk sizes positive), Jmin <= Jmax, and every padded
        message fits a datagram. Raises ObfuscationError naming the key."""
        def name(k: str) -> str:
            return _spell(k, lower)
        for key, kind, pad in zip(PADDING_KEYS, KINDS, self.paddings):
            if pad + BASE_LEN[kind] > MAX_DATAGRAM:
                raise ObfuscationError(name(key), f"{pad} bytes of padding on a "
                                                  f"{KIND_NAMES[kind]} message of "
                                                  f"{BASE_LEN[kind]} bytes do not fit a UDP "
                                                  f"datagram ({MAX_DATAGRAM} bytes)")
        if self.jc:
            for key in ("Jmin", "Jmax"):
                if not getattr(self, key.lower()):
                    raise ObfuscationError(name(key), f"Jc = {self.jc} junk packets need a size: "
                                                      f"set {key} to 1..{MAX_DATAGRAM} bytes",
                                           name("Jc"))
        if self.jmin and self.jmax and self.jmin > self.jmax:
            raise ObfuscationError(name("Jmin"), f"{self.jmin} is above Jmax ({self.jmax})",
                                   name("Jmax"))
        headers = self.headers
        for a in range(4):
            for b in range(a + 1, 4):
                if headers[a].overlaps(headers[b]):
                    # name the one that was set, not a default it ran into
                    if headers[b] == PLAIN_HEADERS[b] and headers[a] != PLAIN_HEADERS[a]:
                        a, b = b, a
                    default = " (the default)" if headers[a] == PLAIN_HEADERS[a] else ""
                    raise ObfuscationError(
                        name(HEADER_KEYS[b]),
                        f"{headers[b]} overlaps {name(HEADER_KEYS[a])} = {headers[a]}{default}: "
                        f"a receiver could not tell the message kinds apart",
                        name(HEADER_KEYS[a]))

    def check_plain_alongside(self, lower: bool = False,
                              key: str = "AcceptPlainWireGuard") -> None:
        """With plain WireGuard served on the same port (`key` names that
        setting), a datagram must belong to one profile only: no header
        range may hold 1..4, the plain types. (With S = 0 a plain message
        would read as an obfuscated one outright; with S > 0 only by the
        chance that its bytes at S fall in H, which the data path resolves
        by trying plain where the obfuscated reading finds no session.)"""
        if self.profile_is_plain:
            return
        for k, h, plain in zip(HEADER_KEYS, self.headers, PLAIN_HEADERS):
            clash = [t for t in KINDS if t in h]
            if clash:
                default = " (the default)" if h == plain else ""
                what = f"{clash[0]}, a plain WireGuard message type" if len(clash) == 1 else \
                    f"{', '.join(map(str, clash[:-1]))} and {clash[-1]}, plain WireGuard " \
                    f"message types"
                raise ObfuscationError(
                    _spell(k, lower),
                    f"{h}{default} includes {what}: with {key} the two profiles could not "
                    f"be told apart (set {_spell('H1..H4', lower)} to values above 4)")

    # -- what it says

    @property
    def headers(self) -> tuple[HeaderRange, HeaderRange, HeaderRange, HeaderRange]:
        return (self.h1, self.h2, self.h3, self.h4)

    @property
    def paddings(self) -> tuple[int, int, int, int]:
        return (self.s1, self.s2, self.s3, self.s4)

    @property
    def signatures(self) -> tuple[Optional[str], ...]:
        return (self.i1, self.i2, self.i3, self.i4, self.i5)

    @property
    def profile_is_plain(self) -> bool:
        """S and H as plain WireGuard (what both ends must agree on)."""
        return not any(self.paddings) and self.headers == PLAIN_HEADERS

    @property
    def is_plain(self) -> bool:
        """Nothing set at all."""
        return self == PLAIN

    def padding(self, kind: int) -> int:
        return self.paddings[KINDS.index(kind)]

    def header(self, kind: int) -> HeaderRange:
        return self.headers[KINDS.index(kind)]

    # -- sending

    def draw_header(self, kind: int) -> int:
        return self.header(kind).draw()

    def wrap(self, kind: int, msg: bytes) -> bytes:
        """The datagram for a message whose type field (and MACs) are set:
        its padding of random bytes in front."""
        pad = self.padding(kind)
        return secrets.token_bytes(pad) + msg if pad else bytes(msg)

    def signature_packets(self) -> list[bytes]:
        """I1..I5, built afresh (random parts, the time)."""
        return [b"".join(t.build() for t in parse_chain(spec))
                for spec in self.signatures if spec]

    def junk_packets(self) -> list[bytes]:
        """Jc datagrams of Jmin..Jmax random bytes."""
        return [secrets.token_bytes(self.jmin + secrets.randbelow(self.jmax - self.jmin + 1))
                for _ in range(self.jc)]

    def preamble(self) -> list[bytes]:
        """What an initiator sends before each handshake initiation, in
        order: the signature packets, then the junk."""
        return self.signature_packets() + self.junk_packets()

    def signature_shapes(self) -> list[tuple[int, bytes]]:
        """(length, leading fixed bytes) of each signature packet: what a
        receiver configured with the same I1..I5 recognises them by."""
        return [(chain_length(tags), chain_prefix(tags))
                for tags in (parse_chain(s) for s in self.signatures if s)]

    # -- receiving (the model of the native classifier)

    def classify(self, datagram: bytes) -> Optional[tuple[int, int]]:
        """(kind, offset of the message) by this profile's sizes and header
        ranges, or None for junk. Handshake kinds are tried first, in
        order, as amneziawg-go does."""
        n = len(datagram)
        for kind in KINDS:
            pad = self.padding(kind)
            if kind == TRANSPORT:
                fits = n >= pad + BASE_LEN[kind]
            else:
                fits = n == pad + BASE_LEN[kind]
            if fits and struct.unpack_from("<I", datagram, pad)[0] in self.header(kind):
                return kind, pad
        return None

    # -- writing it out

    def settings(self) -> dict[str, object]:
        """Every key that differs from plain WireGuard, lower case, values
        as UAPI writes them (numbers; headers and signatures as text), in
        amneziawg-go's order."""
        out: dict[str, object] = {}
        for k in JUNK_KEYS + PADDING_KEYS:
            if getattr(self, k.lower()):
                out[k.lower()] = getattr(self, k.lower())
        for k, h, plain in zip(HEADER_KEYS, self.headers, PLAIN_HEADERS):
            if h != plain:
                out[k.lower()] = str(h)
        for k, s in zip(SIGNATURE_KEYS, self.signatures):
            if s:
                out[k.lower()] = s
        return out

    def as_json(self) -> dict[str, object]:
        """All keys, for the API and `dataplane show --json`: numbers for
        J and S (0: none), text for H (`N` or `A-B`), text or null for I.
        from_settings takes it back."""
        out: dict[str, object] = {k.lower(): getattr(self, k.lower())
                                  for k in JUNK_KEYS + PADDING_KEYS}
        out.update({k.lower(): str(h) for k, h in zip(HEADER_KEYS, self.headers)})
        out.update({k.lower(): s for k, s in zip(SIGNATURE_KEYS, self.signatures)})
        return out

    def file_lines(self) -> list[str]:
        """`Key = value` lines for a wg-quick [Interface] section."""
        return [f"{_CANONICAL[k]} = {v}" for k, v in self.settings().items()]


_CANONICAL = {k.lower(): k for k in KEYS}
PLAIN = Obfuscation()
