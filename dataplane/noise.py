"""The WireGuard handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s
(WireGuard whitepaper, section 5.4), as initiator and responder.

Pure protocol: these classes build and consume handshake messages and
derive transport keys; sockets, timers, rate limiting and peer tables live
elsewhere. AEAD and BLAKE2s come from our native core, X25519 from
`cryptography`. Message layouts and sizes come from native/wg/dp_wg_messages.h.
"""
from __future__ import annotations

import functools
import os
import struct
import time
from dataclasses import dataclass
from typing import Callable, Container, Optional

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dataplane import crypto
from dataplane._native import ffi, lib

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

KEY_LEN: int = lib.DP_WG_KEY_LEN
MAC_LEN: int = lib.DP_WG_MAC_LEN
TIMESTAMP_LEN: int = lib.DP_WG_TIMESTAMP_LEN
INITIATION_LEN: int = lib.DP_WG_INITIATION_LEN
RESPONSE_LEN: int = lib.DP_WG_RESPONSE_LEN
COOKIE_REPLY_LEN: int = lib.DP_WG_COOKIE_REPLY_LEN
MSG_INITIATION: int = lib.DP_WG_MSG_INITIATION
MSG_RESPONSE: int = lib.DP_WG_MSG_RESPONSE
MSG_COOKIE_REPLY: int = lib.DP_WG_MSG_COOKIE_REPLY

# Offsets of the MACs: mac1 covers everything before it, mac2 everything
# before mac2 (whitepaper 5.4.4).
INITIATION_MAC1_OFF: int = ffi.offsetof("struct dp_wg_initiation", "mac1")
INITIATION_MAC2_OFF: int = ffi.offsetof("struct dp_wg_initiation", "mac2")
RESPONSE_MAC1_OFF: int = ffi.offsetof("struct dp_wg_response", "mac1")
RESPONSE_MAC2_OFF: int = ffi.offsetof("struct dp_wg_response", "mac2")

assert ffi.sizeof("struct dp_wg_initiation") == INITIATION_LEN
assert ffi.sizeof("struct dp_wg_response") == RESPONSE_LEN


class HandshakeError(Exception):
    """A handshake message was refused; the message says why (never a key)."""


# ---------------------------------------------------------------- primitives

def hash_(data: bytes) -> bytes:
    return crypto.blake2s(data)


def mac(key: bytes, data: bytes) -> bytes:
    return crypto.blake2s(data, key=key, digest_size=MAC_LEN)


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104 with a 64-byte block)."""
    block = 64
    if len(key) > block:
        key = hash_(key)
    key = key.ljust(block, b"\0")
    inner = hash_(bytes(b ^ 0x36 for b in key) + data)
    return hash_(bytes(b ^ 0x5C for b in key) + inner)


def kdf(chaining_key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF with HMAC-BLAKE2s: n outputs of 32 bytes."""
    prk = hmac(chaining_key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac(prk, prev + bytes([i]))
        out.append(prev)
    return out


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order point) aborts the handshake."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise HandshakeError("X25519 with a low-order public key") from None
    if shared == bytes(32):
        raise HandshakeError("X25519 with a low-order public key")
    return shared


def aead_seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return crypto.seal(key, counter, plaintext, aad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return crypto.open(key, counter, ciphertext, aad)
    except crypto.AuthenticationError:
        raise HandshakeError("decryption failed") from None


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


# TAI64N with the nanoseconds rounded down to 2^24 ns, as the kernel does,
# so the timestamp does not reveal the initiator's clock finely.
TAI64_EPOCH = 0x400000000000000A
TIMESTAMP_NS_GRANULARITY = 1 << 24


def tai64n(now_ns: Optional[int] = None) -> bytes:
    if now_ns is None:
        now_ns = time.time_ns()
    seconds, ns = divmod(now_ns, 1_000_000_000)
    ns -= ns % TIMESTAMP_NS_GRANULARITY
    return struct.pack(">QI", TAI64_EPOCH + seconds, ns)


def initial_chain() -> tuple[bytes, bytes]:
    ck = hash_(CONSTRUCTION)
    return ck, hash_(ck + IDENTIFIER)


INITIAL_CK, INITIAL_HASH = initial_chain()


def mac1_key(public: bytes) -> bytes:
    return hash_(LABEL_MAC1 + public)


@functools.lru_cache(maxsize=256)
def cookie_key(public: bytes) -> bytes:
    """HASH(LABEL_COOKIE || public): of public keys only, so kept (an
    interface answers every cookie-worthy message under its own)."""
    return hash_(LABEL_COOKIE + public)


# ---------------------------------------------------------------- results

@dataclass
class TransportKeys:
    """Keys of one session. Secret: never logged, wiped by the owner."""
    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool

    def __repr__(self) -> str:
        return (f"TransportKeys(local_index={self.local_index:#x}, "
                f"remote_index={self.remote_index:#x}, initiator={self.is_initiator}, "
                f"keys=<redacted>)")


@dataclass
class ConsumedInitiation:
    """What a responder learns from a valid initiation."""
    peer_public: bytes
    sender_index: int
    timestamp: bytes
    ephemeral: bytes
    chaining_key: bytes
    hash: bytes

    def __repr__(self) -> str:
        return f"ConsumedInitiation(sender_index={self.sender_index:#x}, <secrets redacted>)"


# ---------------------------------------------------------------- the handshake

class Handshake:
    """One side's long-term identity and the handshake operations.

    `psk_for(peer_public) -> bytes | None` gives a peer's preshared key
    (None when the peer is unknown, which refuses its initiation);
    `now_ns` is injectable for tests.
    """

    def __init__(self, private_key: bytes, psk_for: Callable[[bytes], Optional[bytes]],
                 now_ns: Callable[[], int] = time.time_ns):
        self._private = X25519PrivateKey.from_private_bytes(private_key)
        self.public = public_bytes(self._private)
        self._mac1_key = mac1_key(self.public)
        self._psk_for = psk_for
        self._now_ns = now_ns

    # -- MACs

    @staticmethod
    def add_macs(msg: bytearray, mac1_off: int, peer_public: bytes,
                 cookie: Optional[bytes]) -> None:
        msg[mac1_off:mac1_off + MAC_LEN] = mac(mac1_key(peer_public), bytes(msg[:mac1_off]))
        mac2_off = mac1_off + MAC_LEN
        msg[mac2_off:mac2_off + MAC_LEN] = (mac(cookie, bytes(msg[:mac2_off])) if cookie
                                            else bytes(MAC_LEN))

    def check_mac1(self, msg: bytes) -> bool:
        off = _mac1_offset(msg)
        return off is not None and _ct_eq(mac(self._mac1_key, msg[:off]), msg[off:off + MAC_LEN])

    # -- initiator

    def create_initiation(self, peer_public: bytes, sender_index: int,
                          cookie: Optional[bytes] = None,
                          header: int = MSG_INITIATION) -> tuple[bytes, "InitiatorState"]:
        """header: the type field (AmneziaWG's H1 draws one); the MACs
        cover it."""
        psk = self._psk_for(peer_public)
        if psk is None:
            raise HandshakeError("no such peer")
        ck, h = INITIAL_CK, hash_(INITIAL_HASH + peer_public)
        eph = X25519PrivateKey.generate()
        eph_pub = public_bytes(eph)
        ck = kdf(ck, eph_pub, 1)[0]
        h = hash_(h + eph_pub)
        ck, k = kdf(ck, dh(eph, peer_public), 2)
        enc_static = aead_seal(k, 0, self.public, h)
        h = hash_(h + enc_static)
        ck, k = kdf(ck, dh(self._private, peer_public), 2)
        enc_ts = aead_seal(k, 0, tai64n(self._now_ns()), h)
        h = hash_(h + enc_ts)
        msg = bytearray(INITIATION_LEN)
        struct.pack_into("<II", msg, 0, header, sender_index)
        msg[8:8 + 32] = eph_pub
        msg[40:40 + 48] = enc_static
        msg[88:88 + 28] = enc_ts
        self.add_macs(msg, INITIATION_MAC1_OFF, peer_public, cookie)
        state = InitiatorState(peer_public, sender_index, eph, ck, h, psk,
                               bytes(msg[INITIATION_MAC1_OFF:INITIATION_MAC1_OFF + MAC_LEN]))
        return bytes(msg), state

    def consume_response(self, msg: bytes, state: "InitiatorState",
                         expect: Container[int] = (MSG_RESPONSE,)) -> TransportKeys:
        """expect: the type fields a response may carry (AmneziaWG's H2)."""
        if len(msg) != RESPONSE_LEN:
            raise HandshakeError(f"response is {len(msg)} bytes, not {RESPONSE_LEN}")
        mtype, sender, receiver = struct.unpack_from("<III", msg, 0)
        if mtype not in expect:
            raise HandshakeError("not a handshake response")
        if receiver != state.sender_index:
            raise HandshakeError("response for another handshake")
        if not self.check_mac1(msg):
            raise HandshakeError("bad mac1")
        eph_r = msg[12:44]
        enc_nothing = msg[44:60]
        ck, h = state.chaining_key, state.hash
        ck = kdf(ck, eph_r, 1)[0]
        h = hash_(h + eph_r)
        ck = kdf(ck, dh(state.ephemeral, eph_r), 1)[0]
        ck = kdf(ck, dh(self._private, eph_r), 1)[0]
        ck, tau, k = kdf(ck, state.psk, 3)
        h = hash_(h + tau)
        aead_open(k, 0, enc_nothing, h)
        send, recv = kdf(ck, b"", 2)
        return TransportKeys(send, recv, state.sender_index, sender, True)

    # -- responder

    def consume_initiation(self, msg: bytes,
                           expect: Container[int] = (MSG_INITIATION,)) -> ConsumedInitiation:
        """Checks and decrypts an initiation (mac1 must already have been
        checked by the caller, which also decides on mac2/cookies).
        expect: the type fields an initiation may carry (AmneziaWG's H1)."""
        if len(msg) != INITIATION_LEN:
            raise HandshakeError(f"initiation is {len(msg)} bytes, not {INITIATION_LEN}")
        mtype, sender = struct.unpack_from("<II", msg, 0)
        if mtype not in expect:
            raise HandshakeError("not a handshake initiation")
        eph_i = msg[8:40]
        enc_static = msg[40:88]
        enc_ts = msg[88:116]
        ck, h = INITIAL_CK, hash_(INITIAL_HASH + self.public)
        ck = kdf(ck, eph_i, 1)[0]
        h = hash_(h + eph_i)
        ck, k = kdf(ck, dh(self._private, eph_i), 2)
        peer_public = aead_open(k, 0, enc_static, h)
        h = hash_(h + enc_static)
        if self._psk_for(peer_public) is None:
            raise HandshakeError("initiation from an unknown peer")
        ck, k = kdf(ck, dh(self._private, peer_public), 2)
        timestamp = aead_open(k, 0, enc_ts, h)
        h = hash_(h + enc_ts)
        return ConsumedInitiation(peer_public, sender, timestamp, eph_i, ck, h)

    def create_response(self, init: ConsumedInitiation, sender_index: int,
                        cookie: Optional[bytes] = None,
                        header: int = MSG_RESPONSE) -> tuple[bytes, TransportKeys]:
        psk = self._psk_for(init.peer_public)
        if psk is None:
            raise HandshakeError("no such peer")
        ck, h = init.chaining_key, init.hash
        eph = X25519PrivateKey.generate()
        eph_pub = public_bytes(eph)
        ck = kdf(ck, eph_pub, 1)[0]
        h = hash_(h + eph_pub)
        ck = kdf(ck, dh(eph, init.ephemeral), 1)[0]
        ck = kdf(ck, dh(eph, init.peer_public), 1)[0]
        ck, tau, k = kdf(ck, psk, 3)
        h = hash_(h + tau)
        enc_nothing = aead_seal(k, 0, b"", h)
        msg = bytearray(RESPONSE_LEN)
        struct.pack_into("<III", msg, 0, header, sender_index, init.sender_index)
        msg[12:44] = eph_pub
        msg[44:60] = enc_nothing
        self.add_macs(msg, RESPONSE_MAC1_OFF, init.peer_public, cookie)
        recv, send = kdf(ck, b"", 2)
        return bytes(msg), TransportKeys(send, recv, sender_index, init.sender_index, False)


@dataclass
class InitiatorState:
    peer_public: bytes
    sender_index: int
    ephemeral: X25519PrivateKey
    chaining_key: bytes
    hash: bytes
    psk: bytes
    mac1: bytes  # of the initiation we sent: a cookie reply's AAD

    def __repr__(self) -> str:
        return f"InitiatorState(sender_index={self.sender_index:#x}, <secrets redacted>)"


# ---------------------------------------------------------------- cookies

def create_cookie_reply(tau: bytes, receiver_index: int, msg_mac1: bytes,
                        our_public: bytes, header: int = MSG_COOKIE_REPLY) -> bytes:
    """Cookie reply (whitepaper 5.4.7) with tau = MAC(secret, source
    address), which the caller has made already (it checked the message's
    mac2 against it): sent XChaCha20-Poly1305-encrypted under
    HASH(LABEL_COOKIE || our public) with the mac1 of the message we answer
    as AAD."""
    nonce = os.urandom(lib.DP_WG_COOKIE_NONCE_LEN)
    enc = crypto.xseal(cookie_key(our_public), nonce, tau, msg_mac1)
    return struct.pack("<II", header, receiver_index) + nonce + enc


def consume_cookie_reply(msg: bytes, peer_public: bytes, sent_mac1: bytes) -> bytes:
    """The cookie from a reply to a message whose mac1 was sent_mac1."""
    if len(msg) != COOKIE_REPLY_LEN:
        raise HandshakeError(f"cookie reply is {len(msg)} bytes, not {COOKIE_REPLY_LEN}")
    nonce, enc = msg[8:32], msg[32:64]
    try:
        return crypto.xopen(cookie_key(peer_public), nonce, enc, sent_mac1)
    except crypto.AuthenticationError:
        raise HandshakeError("cookie reply does not decrypt") from None


def check_mac2(msg: bytes, cookie: bytes) -> bool:
    off = _mac1_offset(msg)
    if off is None:
        return False
    mac2_off = off + MAC_LEN
    return _ct_eq(mac(cookie, msg[:mac2_off]), msg[mac2_off:mac2_off + MAC_LEN])


def _mac1_offset(msg: bytes) -> Optional[int]:
    """By size alone: the receiver classified the message already, by its
    type field or by an AmneziaWG profile's header ranges."""
    if len(msg) == INITIATION_LEN:
        return INITIATION_MAC1_OFF
    if len(msg) == RESPONSE_LEN:
        return RESPONSE_MAC1_OFF
    return None


def _ct_eq(a: bytes, b: bytes) -> bool:
    import hmac as _hmac
    return _hmac.compare_digest(a, b)
