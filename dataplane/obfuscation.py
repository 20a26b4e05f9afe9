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

A receiver classifies a datagram by size and header (`Profile.classify`,
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
    spelled as the caller wrote it (`key`)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


def _spell(key: str, lower: bool) -> str:
    return key.lower() if lower else key


# ---------------------------------------------------------------- headers

@dataclass(frozen=True)
class HeaderRange:
    """H1..H4: the type field's value, or a range of them (both ends in)."""
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str, key: str = "H") -> "HeaderRange":
        """`N` or `A-B`, decimal, 0..2^32-1, A <= B."""
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str):
            raise ObfuscationError(key, f"expected N or A-B, got {text!r}")
        parts = text.strip().split("-")
        if len(parts) > 2 or not all(_DIGITS.fullmatch(p.strip()) for p in parts):
            raise ObfuscationError(key, f"expected a number N or a range A-B of 0..{HEADER_MAX}, "
                                        f"got {text!r}")
        lo, hi = int(parts[0]), int(parts[-1])
        if lo > HEADER_MAX or hi > HEADER_MAX:
            raise ObfuscationError(key, f"{text!r}: values are 32-bit, 0..{HEADER_MAX}")
        if lo > hi:
            raise ObfuscationError(key, f"{text!r}: the range's start is above its end")
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


def parse_chain(text: str, key: str = "I1") -> tuple[Tag, ...]:
    """A signature packet's spec: one or more tags, nothing but whitespace
    between them, at most MAX_DATAGRAM bytes in all."""
    if not isinstance(text, str):
        raise ObfuscationError(key, f"expected a chain of tags such as <b 0x...><r 16>, "
                                    f"got {text!r}")
    tags: list[Tag] = []
    pos = 0
    for m in _TAG.finditer(text):
        if text[pos:m.start()].strip():
            raise ObfuscationError(key, f"text outside a tag: {text[pos:m.start()].strip()!r}")
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
            if len(args) != 1:
                raise ObfuscationError(key, "<b> takes one value, hex bytes such as 0xc0ffee")
            hexa = args[0][2:] if args[0][:2].lower() == "0x" else args[0]
            if not hexa or len(hexa) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", hexa):
                raise ObfuscationError(key, f"<b {args[0]}>: expected an even number of hex "
                                            f"digits")
            data = bytes.fromhex(hexa)
            tags.append(Tag("b", len(data), data))
        elif name in ("r", "rc", "rd"):
            if len(args) != 1 or not _DIGITS.fullmatch(args[0]) or \
                    not 1 <= int(args[0]) <= MAX_DATAGRAM:
                raise ObfuscationError(key, f"<{name}> takes a length 1..{MAX_DATAGRAM}")
            tags.append(Tag(name, int(args[0])))
        else:
            raise ObfuscationError(key, f"unknown tag <{name}> (signature packets take <b>, "
                                        f"<r>, <rc>, <rd> and <t>)")
    if text[pos:].strip():
        raise ObfuscationError(key, f"text outside a tag: {text[pos:].strip()!r}")
    if not tags:
        raise ObfuscationError(key, "no tags (an empty value leaves the key unset)")
    if sum(t.length for t in tags) > MAX_DATAGRAM:
        raise ObfuscationError(key, f"{sum(t.length for t in tags)} bytes, more than a UDP "
                                    f"datagram holds ({MAX_DATAGRAM})")
    return tuple(tags)


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

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], base: Optional["Obfuscation"] = None,
                      lower: bool = False) -> "Obfuscation":
        """Settings by key (any case) onto `base` (default: plain), checked
        one by one and then as a whole. Values are text as in a file or
        over UAPI (numbers and None also do, from JSON); None or "" unsets
        a key. lower: name keys in errors in lower case (UAPI, the API)."""
        values = dataclasses.asdict(base or cls())
        for k in ("h1", "h2", "h3", "h4"):
            values[k] = getattr(base or cls(), k)
        for raw_key, value in settings.items():
            k = raw_key.lower()
            canonical = next((x for x in KEYS if x.lower() == k), None)
            if canonical is None:
                raise ObfuscationError(raw_key, "not an AmneziaWG setting")
            key = _spell(canonical, lower)
            if isinstance(value, str):
                value = value.strip()
            unset = value is None or value == ""
            if canonical in JUNK_KEYS or canonical in PADDING_KEYS:
                values[k] = 0 if unset else _count(key, value, canonical in JUNK_KEYS)
            elif canonical in HEADER_KEYS:
                values[k] = (PLAIN_HEADERS[HEADER_KEYS.index(canonical)] if unset
                             else HeaderRange.parse(value, key))
            else:
                if not unset:
                    parse_chain(value, key)
                values[k] = None if unset else value
        obf = cls(**values)
        obf.check(lower)
        return obf

    def check(self, lower: bool = False) -> None:
        """The rules between keys (amneziawg-go's, and that everything fits
        a datagram). Raises ObfuscationError naming the key."""
        def name(k: str) -> str:
            return _spell(k, lower)
        for key in PADDING_KEYS:
            kind = KINDS[PADDING_KEYS.index(key)]
            pad = getattr(self, key.lower())
            if pad + BASE_LEN[kind] > MAX_DATAGRAM:
                raise ObfuscationError(name(key), f"{pad} bytes of padding on a "
                                                  f"{KIND_NAMES[kind]} message of "
                                                  f"{BASE_LEN[kind]} bytes do not fit a UDP "
                                                  f"datagram ({MAX_DATAGRAM} bytes)")
        if self.jc:
            if not self.jmin or not self.jmax:
                raise ObfuscationError(name("Jc"), "junk packets need Jmin and Jmax too")
        if (self.jmin or self.jmax) and not self.jc:
            raise ObfuscationError(name("Jmin" if self.jmin else "Jmax"),
                                   "set Jc too (how many junk packets to send)")
        if self.jmin > self.jmax:
            raise ObfuscationError(name("Jmin"), f"{self.jmin} is above Jmax ({self.jmax})")
        if self.jmax > MAX_DATAGRAM:
            raise ObfuscationError(name("Jmax"), f"{self.jmax} bytes do not fit a UDP datagram "
                                                 f"({MAX_DATAGRAM} bytes)")
        headers = self.headers
        for a in range(4):
            for b in range(a + 1, 4):
                if headers[a].overlaps(headers[b]):
                    raise ObfuscationError(
                        name(HEADER_KEYS[b]),
                        f"{headers[b]} overlaps {HEADER_KEYS[a] if not lower else HEADER_KEYS[a].lower()} "
                        f"({headers[a]}): a receiver could not tell the message kinds apart")

    def check_plain_alongside(self, lower: bool = False, key: str = "AcceptPlainWireGuard") -> None:
        """With plain WireGuard served on the same port, a datagram must
        belong to one profile only: no header range may hold 1..4, the
        plain types (with S = 0 a plain message's type would read as an
        obfuscated header; with S > 0 a transport message's type field
        would)."""
        if self.is_plain:
            return
        for k, h in zip(HEADER_KEYS, self.headers):
            clash = [t for t in KINDS if t in h]
            if clash:
                raise ObfuscationError(
                    _spell(k, lower),
                    f"{h} includes {', '.join(map(str, clash))}, a plain WireGuard message type: "
                    f"with {key} the two profiles could not be told apart (pick values above 4)")

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
        return self == Obfuscation()

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
        as UAPI writes them (numbers; headers and signatures as text)."""
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
        J and S, text for H (`N` or `A-B`), text or null for I."""
        out: dict[str, object] = {k.lower(): getattr(self, k.lower())
                                  for k in JUNK_KEYS + PADDING_KEYS}
        out.update({k.lower(): str(h) for k, h in zip(HEADER_KEYS, self.headers)})
        out.update({k.lower(): s for k, s in zip(SIGNATURE_KEYS, self.signatures)})
        return out

    def file_lines(self) -> list[str]:
        """`Key = value` lines for a wg-quick [Interface] section."""
        canon = {k.lower(): k for k in KEYS}
        return [f"{canon[k]} = {v}" for k, v in self.settings().items()]


def _count(key: str, value: object, positive: bool) -> int:
    """J keys: 1..MAX_DATAGRAM (amneziawg-go refuses 0 and below); S keys:
    0..MAX_DATAGRAM."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    lo = 1 if positive else 0
    if not isinstance(text, str) or not _DIGITS.fullmatch(text) or \
            not lo <= int(text) <= MAX_DATAGRAM:
        raise ObfuscationError(key, f"expected a whole number {lo}..{MAX_DATAGRAM}, got {value!r}")
    return int(text)


PLAIN = Obfuscation()
