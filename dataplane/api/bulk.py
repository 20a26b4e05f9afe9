"""POST /v1/bulk read by the native parser (native/wg/bulk.c).

The parser reads the common shape of a batch (the four operations, plain
strings, integers) straight into fixed records in locked memory, with the
digests the controller compares already computed, and declines anything
else; a declined body goes through dataplane.api.model, which is the
authority on what a line means and on every error message. Secrets never
become Python objects here except a preshared key a new peer keeps.

The digests are keyed BLAKE2s over one canonical encoding, computed in C
for parsed batches and here for bodies the model parsed, so either path
recognises what the other applied."""
from __future__ import annotations

import hashlib
import socket
from typing import Optional

import numpy as np

from dataplane._native import ffi, lib
from dataplane.keys import LOW_ORDER_POINTS, PublicKey

PUT_PEER = lib.DP_BULK_PUT_PEER
DELETE_PEER = lib.DP_BULK_DELETE_PEER
PUT_SESSION = lib.DP_BULK_PUT_SESSION
DELETE_SESSION = lib.DP_BULK_DELETE_SESSION
OP_NAMES = {PUT_PEER: "put_peer", DELETE_PEER: "delete_peer", PUT_SESSION: "put_session",
            DELETE_SESSION: "delete_session"}
DECLINED_MEMORY = lib.DP_BULK_DECLINED_MEMORY
HAS_GENERATION = lib.DP_BULK_HAS_GENERATION
HAS_PSK = lib.DP_BULK_HAS_PSK
HAS_SESSION = lib.DP_BULK_HAS_SESSION
ACTIVATE_NOW = lib.DP_BULK_ACTIVATE_NOW
SESSION_HAS_GENERATION = lib.DP_BULK_SESSION_HAS_GENERATION
DIGEST_BYTES = lib.DP_BULK_DIGEST_BYTES

_LOW_ORDER = ffi.new("uint8_t[]", b"".join(LOW_ORDER_POINTS))


def _dtype() -> np.dtype:
    """struct dp_bulk_op as numpy sees it (offsets from the C compiler);
    the secret fields are left out."""
    fields = {"line": "<u4", "op": "<u4", "flags": "<u4", "keepalive": "<u4",
              "first_prefix": "<u4", "n_prefixes": "<u4", "generation": "<u8",
              "session_generation": "<u8", "receiver_index": "<u4", "sender_index": "<u4",
              "lifetime": "<u4", "public_key": ("u1", (32,)),
              "settings_digest": ("u1", (16,)), "session_digest": ("u1", (16,))}
    return np.dtype({"names": list(fields), "formats": list(fields.values()),
                     "offsets": [ffi.offsetof("struct dp_bulk_op", f) for f in fields],
                     "itemsize": ffi.sizeof("struct dp_bulk_op")})


OP_DTYPE = _dtype()
PREFIX_DTYPE = np.dtype({"names": ["version", "cidr", "addr"],
                         "formats": ["u1", "u1", ("u1", (16,))],
                         "offsets": [ffi.offsetof("struct dp_bulk_prefix", f)
                                     for f in ("version", "cidr", "addr")],
                         "itemsize": ffi.sizeof("struct dp_bulk_prefix")})


class Parsed:
    """A batch the native parser read: column lists for the controller
    (public keys as PublicKey), the records for dp_device_bulk_apply. Use as a context manager: the
    records (with their keys) are wiped and unmapped on exit."""

    def __init__(self, c) -> None:
        self.c = c
        n = c.n_ops
        arr = np.frombuffer(ffi.buffer(c.ops, n * OP_DTYPE.itemsize), dtype=OP_DTYPE)
        self.n = n
        self.line = arr["line"].tolist()
        self.op = arr["op"].tolist()
        self.flags = arr["flags"].tolist()
        self.keepalive = arr["keepalive"].tolist()
        self.first_prefix = arr["first_prefix"].tolist()
        self.n_prefixes = arr["n_prefixes"].tolist()
        self.generation = arr["generation"].tolist()
        self.session_generation = arr["session_generation"].tolist()
        self.receiver_index = arr["receiver_index"].tolist()
        self.sender_index = arr["sender_index"].tolist()
        self.lifetime = arr["lifetime"].tolist()
        keys = arr["public_key"].tobytes()
        new = bytes.__new__  # the parser checked them: no PublicKey() checks again
        self.public_key = [new(PublicKey, keys[i:i + 32]) for i in range(0, 32 * n, 32)]
        dig = arr["settings_digest"].tobytes()
        self.settings_digest = [dig[i:i + DIGEST_BYTES] for i in range(0, DIGEST_BYTES * n,
                                                                       DIGEST_BYTES)]
        dig = arr["session_digest"].tobytes()
        self.session_digest = [dig[i:i + DIGEST_BYTES] for i in range(0, DIGEST_BYTES * n,
                                                                      DIGEST_BYTES)]
        del arr
        prefixes = _prefixes(c)
        # each op's allowed IPs (most have one: the list is shared then)
        self.prefixes = [prefixes[f:f + k] for f, k in zip(self.first_prefix, self.n_prefixes)]

    def preshared_key(self, i: int) -> bytes:
        """Op i's preshared key (only for a peer that keeps it)."""
        return bytes(ffi.buffer(self.c.ops[i].preshared_key))

    def prefixes_of(self, i: int) -> list:
        return self.prefixes[i]

    def close(self) -> None:
        lib.dp_bulk_free(self.c)

    def __enter__(self) -> "Parsed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prefixes(c) -> list:
    """Every prefix as the model's (version, address bytes, length)."""
    n = c.n_prefixes
    if n == 0:
        return []
    arr = np.frombuffer(ffi.buffer(c.prefixes, n * PREFIX_DTYPE.itemsize), dtype=PREFIX_DTYPE)
    versions = arr["version"].tolist()
    cidrs = arr["cidr"].tolist()
    addrs = arr["addr"].tobytes()
    return [(v, addrs[16 * i:16 * i + 4] if v == 4 else addrs[16 * i:16 * i + 16], cidr)
            for i, (v, cidr) in enumerate(zip(versions, cidrs))]


def parse(body: bytes, digest_key: bytes) -> tuple[Optional[Parsed], int, int]:
    """(the parsed batch, 0, 0), or (None, line, why) when the parser
    declined the body (the model reads it instead)."""
    c = ffi.new("struct dp_bulk *")
    rc = lib.dp_bulk_parse(ffi.from_buffer("uint8_t[]", body), len(body),
                           ffi.from_buffer("uint8_t[]", digest_key), _LOW_ORDER,
                           len(LOW_ORDER_POINTS), c)
    if rc != 0:
        return None, c.declined_line, c.declined_why if rc > 0 else DECLINED_MEMORY
    try:
        return Parsed(c), 0, 0
    except BaseException:
        lib.dp_bulk_free(c)
        raise


def settings_digest(digest_key: bytes, psk: Optional[bytes], allowed_ips, endpoint,
                    keepalive: int) -> bytes:
    """As the parser's: the peer settings a PUT gives (allowed_ips as
    the model's prefixes, endpoint as (host, port) or None)."""
    # the key goes straight into the hash: no growing buffer leaves copies
    h = hashlib.blake2s(psk if psk else bytes(32), key=digest_key, digest_size=DIGEST_BYTES)
    rest = bytearray(keepalive.to_bytes(2, "big"))
    if endpoint is None:
        rest += bytes(3)
    else:
        host, port = endpoint
        v6 = ":" in host
        rest.append(6 if v6 else 4)
        rest += port.to_bytes(2, "big")
        rest += socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
    rest += len(allowed_ips).to_bytes(2, "big")
    for version, addr, cidr in allowed_ips:
        rest += bytes((version, cidr))
        rest += addr
    h.update(rest)
    return h.digest()


def session_digest(digest_key: bytes, send_key: bytes, recv_key: bytes) -> bytes:
    h = hashlib.blake2s(send_key, key=digest_key, digest_size=DIGEST_BYTES)
    h.update(recv_key)
    return h.digest()
