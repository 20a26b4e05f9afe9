"""WireGuard keys: Curve25519 key pairs and preshared keys, and their text forms.

Operators see keys as `wg` prints them: 44 characters of standard base64
with one '=' of padding (32 bytes). The UAPI socket carries them as 64
lowercase hex digits. Parsers here accept exactly what `wg` accepts (for
base64 that includes zero trailing bits, so every key has one spelling) and
raise ValueError naming the field, never echoing the value: the value might
be a private key.

Secrets (private and preshared keys) live in `Secret` objects whose repr and
str are redacted, so a config or an operation logged by mistake shows
`PrivateKey(<redacted>, public_key='...')` and nothing more. `reveal*()` is
the one way to the bytes.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import os
import re

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_BYTES = 32
KEY_BASE64_CHARS = 44
KEY_HEX_CHARS = 64

_P = 2**255 - 19

# u-coordinates of the Curve25519 points of small order (RFC 7748 section 7,
# and the list libsodium blocks): X25519 with any of them gives all zeros.
# p and p + 1 are the non-canonical spellings of 0 and 1; X25519 ignores the
# top bit, so each value also has a second encoding with bit 255 set.
_LOW_ORDER_U = (
    0,                      # order 4
    1,                      # order 1
    325606250916557431795983626356110631294008115727848805560023387167927233504,  # order 8
    39382357235489614581723060781553021112529911719440698176882885853963445705823,  # order 8
    _P - 1,                 # order 2
    _P,                     # 0 again, non-canonical
    _P + 1,                 # 1 again, non-canonical
)
LOW_ORDER_POINTS: tuple[bytes, ...] = tuple(u.to_bytes(KEY_BYTES, "little") for u in _LOW_ORDER_U)
"""The seven low-order encodings with bit 255 clear; `is_low_order` also
matches each one with bit 255 set."""

# 43 base64 characters carry 258 bits; the last one holds 4 key bits and 2
# bits that must be zero, so it is one of these 16 characters.
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")

# Any clamped scalar works for the low-order check: its factor 8 clears the
# small subgroup, so the result is zero exactly when the point is low-order.
_PROBE = X25519PrivateKey.from_private_bytes(bytes([0x48]) + bytes(30) + bytes([0x40]))


# ---------------------------------------------------------------- raw bytes

def _raw(field: str, value) -> bytes:
    if isinstance(value, Secret):
        raise TypeError(f"{field} must be bytes-like, not a {type(value).__name__}; "
                        f"use its own methods (or reveal() where the bytes are needed)")
    if isinstance(value, str) or not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{field} must be bytes-like, not {type(value).__name__}")
    raw = bytes(value)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{field} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _text(field: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, not {type(value).__name__}")
    return value


def parse_base64_key(text: str, field: str = "key") -> bytes:
    """The 32 bytes of a key written as `wg` writes it; ValueError naming
    `field` (and never the value) otherwise."""
    text = _text(field, text)
    if _BASE64_KEY.fullmatch(text):
        return base64.b64decode(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if not text:
        reason = "the value is empty"
    elif raw is not None and len(raw) != KEY_BYTES:
        reason = f"decodes to {len(raw)} bytes"
    elif raw is not None:
        reason = "its last character has non-zero padding bits; `wg` rejects it"
    elif not text.isascii() or re.search(r"[^A-Za-z0-9+/=]", text):
        reason = "it has characters outside the base64 alphabet"
    elif len(text) == KEY_BASE64_CHARS - 1:
        reason = "the '=' padding is missing"
    else:
        reason = f"{len(text)} characters where a key has {KEY_BASE64_CHARS}"
    raise ValueError(f"{field}: not a valid base64 key ({reason}); "
                     f"a key is {KEY_BASE64_CHARS} characters, as `wg genkey` prints them")


def format_base64_key(key) -> str:
    """The 44-character base64 form `wg` prints."""
    return base64.b64encode(_raw("key", key)).decode("ascii")


def parse_hex_key(text: str, field: str = "key") -> bytes:
    """The 32 bytes of a key in UAPI hex (either case, as wireguard-go accepts)."""
    text = _text(field, text)
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) != KEY_HEX_CHARS:
        reason = f"{len(text)} characters where a key has {KEY_HEX_CHARS}"
    else:
        reason = "it has characters that are not hex digits"
    raise ValueError(f"{field}: not a valid hex key ({reason})")


def format_hex_key(key) -> str:
    """The 64 lowercase hex digits the UAPI uses."""
    return _raw("key", key).hex()


def clamp(private_key) -> bytes:
    """Curve25519 scalar clamping (RFC 7748), as `wg genkey` and the kernel
    apply to private keys."""
    b = bytearray(_raw("private_key", private_key))
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


# ---------------------------------------------------------------- types

class PublicKey(bytes):
    """A 32-byte Curve25519 public key; str() is its base64 form. Being
    bytes, it compares and hashes like the raw key."""

    __slots__ = ()

    def __new__(cls, raw):
        return super().__new__(cls, _raw("public key", raw))

    @classmethod
    def from_base64(cls, text: str, field: str = "public key") -> "PublicKey":
        return cls(parse_base64_key(text, field))

    @classmethod
    def from_hex(cls, text: str, field: str = "public_key") -> "PublicKey":
        return cls(parse_hex_key(text, field))

    def base64(self) -> str:
        return base64.b64encode(self).decode("ascii")

    def is_low_order(self) -> bool:
        return is_low_order(self)

    def __str__(self) -> str:
        return self.base64()

    def __repr__(self) -> str:
        return f"PublicKey({self.base64()!r})"


class Secret:
    """32 bytes of key material that never show in repr, str or format().

    The bytes sit in a private bytearray; `wipe()` zeroes it (best effort:
    copies handed out by `reveal()` are the caller's to drop)."""

    __slots__ = ("_key",)

    def __init__(self, raw) -> None:
        self._key = bytearray(_raw(type(self).__name__, raw))

    @classmethod
    def from_base64(cls, text: str, field: str | None = None):
        return cls(parse_base64_key(text, field or cls.__name__))

    @classmethod
    def from_hex(cls, text: str, field: str | None = None):
        return cls(parse_hex_key(text, field or cls.__name__))

    @classmethod
    def generate(cls):
        return cls(os.urandom(KEY_BYTES))

    def reveal(self) -> bytes:
        """The raw key. Keep the copy short-lived."""
        return bytes(self._key)

    def reveal_base64(self) -> str:
        return format_base64_key(self._key)

    def reveal_hex(self) -> str:
        return format_hex_key(self._key)

    def is_zero(self) -> bool:
        return not any(self._key)

    def wipe(self) -> None:
        self._key[:] = bytes(len(self._key))  # in place: same length, same buffer

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash((type(self).__name__, bytes(self._key)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)


class PrivateKey(Secret):
    """A Curve25519 private key. Stored as given; X25519 clamps when it uses
    it, so a clamped and an unclamped spelling have the same public key."""

    __slots__ = ()

    @classmethod
    def generate(cls) -> "PrivateKey":
        """A fresh clamped key, as `wg genkey` makes."""
        return cls(clamp(os.urandom(KEY_BYTES)))

    def public_key(self) -> PublicKey:
        return public_key(self)

    def clamped(self) -> "PrivateKey":
        return PrivateKey(clamp(bytes(self._key)))

    def __repr__(self) -> str:
        return f"PrivateKey(<redacted>, public_key={self.public_key().base64()!r})"

    __str__ = __repr__


class PresharedKey(Secret):
    """A 32-byte symmetric key mixed into the handshake (`wg genpsk`). All
    zeros means no preshared key, in `wg` and in the UAPI."""

    __slots__ = ()


# ---------------------------------------------------------------- functions

def generate_private_key() -> PrivateKey:
    return PrivateKey.generate()


def generate_preshared_key() -> PresharedKey:
    return PresharedKey.generate()


def public_key(private_key) -> PublicKey:
    """The public key of a PrivateKey or of 32 raw bytes (`wg pubkey`)."""
    if isinstance(private_key, Secret) and not isinstance(private_key, PrivateKey):
        raise TypeError(f"private_key must be a PrivateKey or bytes, "
                        f"not {type(private_key).__name__}")
    raw = private_key.reveal() if isinstance(private_key, PrivateKey) else \
        _raw("private_key", private_key)
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return PublicKey(pub.public_bytes_raw())


def is_low_order(public_key) -> bool:
    """True for the encodings of Curve25519 points of small order, with which
    every Diffie-Hellman result is zero and no handshake can succeed."""
    raw = _raw("public_key", public_key)
    if raw[:31] + bytes([raw[31] & 0x7F]) in LOW_ORDER_POINTS:
        return True
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:  # cryptography refuses an all-zero shared secret
        return True
    return False
