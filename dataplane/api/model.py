"""The API's request bodies, checked whole before anything changes.

Every parser takes decoded JSON and returns a typed, normalised value, or
raises ApiError naming the field (dotted path) and what is wrong with it.
Messages never quote a key or an endpoint: requests may be logged by
whoever sits in front of the API, and keys must not reach a log."""
from __future__ import annotations

import base64
import binascii
import re
import socket
from dataclasses import dataclass
from typing import Any, Optional

from dataplane._native import lib
from dataplane.keys import (KEY_BYTES, LOW_ORDER_POINTS, PresharedKey, PrivateKey, PublicKey,
                            Secret)
from dataplane.obfuscation import (HEADER_KEYS, JUNK_KEYS, KEYS as OBFUSCATION_KEYS,
                                   PADDING_KEYS, Obfuscation, ObfuscationError)

GENERATION_MAX = (1 << 63) - 1
INDEX_MAX = (1 << 32) - 1
PORT_MAX = 65535
FWMARK_MAX = (1 << 32) - 1
KEEPALIVE_MAX = 65535
# A session lives at most REJECT_AFTER_TIME: WireGuard peers refuse older keys.
SESSION_LIFETIME_MAX = lib.DP_WG_REJECT_AFTER_TIME
ALLOWED_IPS_MAX = 1024  # per peer and request
ACTIVATE = ("on_receive", "now")
BULK_OPS = ("put_peer", "delete_peer", "put_session", "delete_session")

_KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_LOW_ORDER = frozenset(LOW_ORDER_POINTS)


class ApiError(Exception):
    """A refused request: HTTP status, the field at fault (or None) and why."""

    def __init__(self, status: int, message: str, field: Optional[str] = None, **extra):
        super().__init__(message)
        self.status, self.message, self.field, self.extra = status, message, field, extra

    def body(self) -> dict:
        out = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        out.update(self.extra)
        return out


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}: {message}", field)


class SessionKey(Secret):
    """A transport key pushed by a control plane (wiped once installed)."""

    __slots__ = ()

    @classmethod
    def adopt(cls, raw: bytes) -> "SessionKey":
        """From 32 bytes already checked (the bulk path makes many)."""
        key = cls.__new__(cls)
        key._key = bytearray(raw)
        return key

    def __repr__(self) -> str:
        return "SessionKey(<hidden>)"


# ---------------------------------------------------------------- scalars

def _object(value: Any, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = (),
            known: frozenset = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise bad(field or "body", f"must be a JSON object, not {_kind(value)}")
    if not (known or frozenset(allowed)).issuperset(value):
        for key in value:
            if key not in allowed:
                name = f"{field}.{key}" if field else key
                raise ApiError(400, f"{name}: unknown field (known: {', '.join(allowed)})", name)
    for key in required:
        if key not in value:
            name = f"{field}.{key}" if field else key
            raise ApiError(400, f"{name}: required", name)
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(field, f"must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise bad(field, f"must be in {low}..{high}, got {value}")
    return value


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(field, f"must be a number, not {_kind(value)}")
    if not low < value <= high:
        raise bad(field, f"must be more than {low} and at most {high}, got {value}")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise bad(field, f"must be true or false, not {_kind(value)}")
    return value


def generation(value: Any, field: str = "generation") -> Optional[int]:
    return None if value is None else _int(value, field, 0, GENERATION_MAX)


def key_bytes(value: Any, field: str) -> bytes:
    """32 bytes from a key in `wg`'s base64; the message never quotes it."""
    if not isinstance(value, str):
        raise bad(field, f"must be a base64 key string, not {_kind(value)}")
    if _KEY_TEXT.fullmatch(value):
        return binascii.a2b_base64(value)
    try:
        raw = base64.b64decode(value, validate=True)
        why = f"decodes to {len(raw)} bytes, not {KEY_BYTES}" if len(raw) != KEY_BYTES else \
            "its last character has non-zero padding bits"
    except (binascii.Error, ValueError):
        why = "not base64"
    raise bad(field, f"not a valid key ({why}); keys are 44 base64 characters, as `wg` prints")


def public_key(value: Any, field: str = "public_key") -> PublicKey:
    raw = key_bytes(value, field)
    # The list holds every low-order encoding (bit 255 is ignored by X25519).
    if raw[:31] + bytes([raw[31] & 0x7F]) in _LOW_ORDER:
        raise bad(field, "a low-order point: no handshake with it can succeed")
    return PublicKey(raw)


def prefix(value: Any, field: str) -> tuple[int, bytes, int]:
    """(IP version, network address bytes, prefix length) of "addr/len";
    host bits are cleared, as `wg` does."""
    if not isinstance(value, str):
        raise bad(field, f"must be a prefix string like 10.0.0.2/32, not {_kind(value)}")
    addr, slash, length = value.partition("/")
    family, version, bits = (socket.AF_INET6, 6, 128) if ":" in addr else (socket.AF_INET, 4, 32)
    try:
        packed = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        raise bad(field, "not an IP prefix (expected ADDRESS/LENGTH, like 10.0.0.2/32)") from None
    if not slash:
        cidr = bits
    elif length.isdigit() and length.isascii() and len(length) <= 3 and int(length) <= bits:
        cidr = int(length)
    else:
        raise bad(field, f"the prefix length must be 0..{bits}")
    n = int.from_bytes(packed, "big")
    mask = ((1 << bits) - 1) ^ ((1 << (bits - cidr)) - 1)
    return version, (n & mask).to_bytes(bits // 8, "big"), cidr


def format_prefix(p: tuple[int, bytes, int]) -> str:
    family = socket.AF_INET if p[0] == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, p[1])}/{p[2]}"


def endpoint(value: Any, field: str = "endpoint") -> Optional[tuple[str, int]]:
    """(address, port) of "1.2.3.4:51820" or "[2001:db8::1]:51820"; literal
    addresses only (a control plane resolves names itself)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(field, f"must be a string HOST:PORT, or null, not {_kind(value)}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        family = socket.AF_INET6
    else:
        host, sep, port = value.rpartition(":")
        family = socket.AF_INET
    try:
        socket.inet_pton(family, host)
        ok = bool(sep) and port.isdigit() and port.isascii() and 0 < int(port) <= PORT_MAX
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise bad(field, "must be IPV4:PORT or [IPV6]:PORT with a literal address and a port "
                         "in 1..65535")
    return host, int(port)


# ---------------------------------------------------------------- resources

@dataclass(slots=True)
class SessionSpec:
    receiver_index: int
    sender_index: int
    send_key: SessionKey
    receive_key: SessionKey
    lifetime: float
    activate: str
    generation: Optional[int]

    def same_as(self, other: "SessionSpec") -> bool:
        return (self.receiver_index, self.sender_index, self.lifetime, self.activate) == \
            (other.receiver_index, other.sender_index, other.lifetime, other.activate) and \
            self.send_key == other.send_key and self.receive_key == other.receive_key

    def wipe(self) -> None:
        self.send_key.wipe()
        self.receive_key.wipe()


SESSION_FIELDS = ("receiver_index", "sender_index", "send_key", "receive_key", "lifetime",
                  "activate", "generation")
_SESSION_FIELDS = frozenset(SESSION_FIELDS)


def session(body: Any, field: str = "") -> SessionSpec:
    d = _object(body, field, SESSION_FIELDS,
                ("receiver_index", "sender_index", "send_key", "receive_key"), _SESSION_FIELDS)
    f = (lambda k: f"{field}.{k}") if field else (lambda k: k)
    activate = d.get("activate", "on_receive")
    if activate not in ACTIVATE:
        raise bad(f("activate"), f"must be one of {', '.join(ACTIVATE)}")
    send = SessionKey.adopt(key_bytes(d["send_key"], f("send_key")))
    recv = SessionKey.adopt(key_bytes(d["receive_key"], f("receive_key")))
    return SessionSpec(
        receiver_index=_int(d["receiver_index"], f("receiver_index"), 1, INDEX_MAX),
        sender_index=_int(d["sender_index"], f("sender_index"), 0, INDEX_MAX),
        send_key=send, receive_key=recv,
        lifetime=_number(d.get("lifetime", SESSION_LIFETIME_MAX), f("lifetime"), 0,
                         SESSION_LIFETIME_MAX),
        activate=activate,
        generation=generation(d.get("generation"), f("generation")))


@dataclass(slots=True)
class PeerSpec:
    public_key: PublicKey
    preshared_key: Optional[PresharedKey]
    allowed_ips: tuple[tuple[int, bytes, int], ...]
    endpoint: Optional[tuple[str, int]]
    persistent_keepalive: int
    generation: Optional[int]
    replace: bool
    session: Optional[SessionSpec]

    def same_as(self, other: "PeerSpec") -> bool:
        """The same settings (the session and `replace` aside)."""
        return (self.public_key, self.preshared_key, self.allowed_ips, self.endpoint,
                self.persistent_keepalive) == \
            (other.public_key, other.preshared_key, other.allowed_ips, other.endpoint,
             other.persistent_keepalive)


PEER_FIELDS = ("public_key", "preshared_key", "allowed_ips", "endpoint", "persistent_keepalive",
               "generation", "replace", "session")
_PEER_FIELDS = frozenset(PEER_FIELDS)


def peer(body: Any, key: Optional[PublicKey] = None, field: str = "") -> PeerSpec:
    """A PUT body; `key` is the one in the path (the body may repeat it)."""
    d = _object(body, field, PEER_FIELDS, () if key is not None else ("public_key",),
                _PEER_FIELDS)
    f = (lambda k: f"{field}.{k}") if field else (lambda k: k)
    if "public_key" in d:
        pk = public_key(d["public_key"], f("public_key"))
        if key is not None and pk != key:
            raise bad(f("public_key"), "differs from the key in the path")
        key = pk
    psk = d.get("preshared_key")
    if psk is not None:
        psk = PresharedKey(key_bytes(psk, f("preshared_key")))
        if psk.is_zero():
            psk = None
    ips = d.get("allowed_ips", [])
    if not isinstance(ips, list):
        raise bad(f("allowed_ips"), f"must be an array of prefixes, not {_kind(ips)}")
    if len(ips) > ALLOWED_IPS_MAX:
        raise bad(f("allowed_ips"), f"at most {ALLOWED_IPS_MAX} prefixes a peer")
    prefixes = []
    seen = set()
    for i, text in enumerate(ips):
        p = prefix(text, f"{f('allowed_ips')}[{i}]")
        if p not in seen:
            seen.add(p)
            prefixes.append(p)
    sess = d.get("session")
    return PeerSpec(
        public_key=key, preshared_key=psk, allowed_ips=tuple(prefixes),
        endpoint=endpoint(d.get("endpoint"), f("endpoint")),
        persistent_keepalive=_int(d.get("persistent_keepalive", 0), f("persistent_keepalive"),
                                  0, KEEPALIVE_MAX),
        generation=generation(d.get("generation"), f("generation")),
        replace=_bool(d.get("replace", False), f("replace")),
        session=None if sess is None else session(sess, f("session")))


@dataclass(slots=True)
class InterfacePatch:
    private_key: Optional[PrivateKey]
    set_private_key: bool
    listen_port: Optional[int]
    fwmark: Optional[int]
    generation: Optional[int]
    # AmneziaWG keys given (lower case) and their values, each checked
    # alone: together and with what the interface holds by the controller
    obfuscation: dict
    accept_plain_wireguard: Optional[bool]


INTERFACE_FIELDS = ("private_key", "listen_port", "fwmark", "obfuscation",
                    "accept_plain_wireguard", "generation")
OBFUSCATION_FIELDS = tuple(k.lower() for k in OBFUSCATION_KEYS)
_NUMBER_FIELDS = frozenset(k.lower() for k in JUNK_KEYS + PADDING_KEYS)
_HEADER_FIELDS = frozenset(k.lower() for k in HEADER_KEYS)


def obfuscation_settings(value: Any, field: str = "obfuscation") -> dict:
    """The `obfuscation` object of a PATCH: only the keys given change; J
    and S integers, H an integer or "A-B", I a tag chain; null (or "")
    unsets a key. Each value is checked alone here."""
    d = _object(value, field, OBFUSCATION_FIELDS)
    for key, v in d.items():
        name = f"{field}.{key}"
        if v is None:
            continue
        if key in _NUMBER_FIELDS and (isinstance(v, bool) or not isinstance(v, int)):
            raise bad(name, f"must be an integer or null, not {_kind(v)}")
        if key in _HEADER_FIELDS and (isinstance(v, bool) or not isinstance(v, (int, str))):
            raise bad(name, f"must be an integer, a range string \"A-B\" or null, "
                            f"not {_kind(v)}")
        if key not in _NUMBER_FIELDS | _HEADER_FIELDS and not isinstance(v, str):
            raise bad(name, f"must be a string of tags or null, not {_kind(v)}")
        try:
            Obfuscation.parse_setting(key, v, lower=True)
        except ObfuscationError as e:
            raise obfuscation_error(e, field) from None
    return dict(d)


def obfuscation_error(e: ObfuscationError, field: str = "obfuscation") -> ApiError:
    """An ObfuscationError (key in lower case) as a 400 naming the field."""
    return bad(f"{field}.{e.key}", e.reason)


def interface_patch(body: Any) -> InterfacePatch:
    d = _object(body, "", INTERFACE_FIELDS)
    key = None
    if d.get("private_key") is not None:
        key = PrivateKey(key_bytes(d["private_key"], "private_key"))
    port = d.get("listen_port")
    mark = d.get("fwmark")
    return InterfacePatch(
        private_key=key, set_private_key="private_key" in d,
        listen_port=None if port is None else _int(port, "listen_port", 0, PORT_MAX),
        fwmark=None if mark is None else _int(mark, "fwmark", 0, FWMARK_MAX),
        generation=generation(d.get("generation")),
        obfuscation=obfuscation_settings(d["obfuscation"]) if d.get("obfuscation") is not None
        else {},
        accept_plain_wireguard=None if d.get("accept_plain_wireguard") is None
        else _bool(d["accept_plain_wireguard"], "accept_plain_wireguard"))


@dataclass(slots=True)
class DeleteOp:
    public_key: PublicKey
    generation: Optional[int]


@dataclass(slots=True)
class BulkOp:
    line: int
    op: str
    public_key: PublicKey
    spec: object  # PeerSpec | SessionSpec | DeleteOp


def bulk_line(value: Any, line: int) -> BulkOp:
    """One NDJSON line of POST /v1/bulk."""
    if not isinstance(value, dict):
        raise bad("op", f"each line must be a JSON object, not {_kind(value)}")
    op = value.get("op")
    if op not in BULK_OPS:
        raise bad("op", f"must be one of {', '.join(BULK_OPS)}")
    rest = {k: v for k, v in value.items() if k != "op"}
    if "public_key" not in rest:
        raise ApiError(400, "public_key: required", "public_key")
    key = public_key(rest.pop("public_key"))
    if op == "put_peer":
        spec = peer(rest, key)
    elif op == "put_session":
        spec = session(rest)
    else:
        _object(rest, "", ("generation",))
        spec = DeleteOp(key, generation(rest.get("generation")))
    return BulkOp(line, op, key, spec)
