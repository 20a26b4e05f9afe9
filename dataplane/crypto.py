"""ChaCha20-Poly1305, XChaCha20-Poly1305 and BLAKE2s from the native core.

WireGuard's transport nonce is 32 zero bits followed by a 64-bit
little-endian counter; seal/open take that counter. seal_with_nonce and
open_with_nonce take a raw 96-bit nonce (RFC 8439), xseal/xopen a 192-bit
one. Every size comes from the C headers through the cffi module.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

from dataplane._native import ffi, lib

KEY_BYTES: int = lib.DP_CHACHA20POLY1305_KEY_BYTES
NONCE_BYTES: int = lib.DP_CHACHA20POLY1305_NONCE_BYTES
TAG_BYTES: int = lib.DP_CHACHA20POLY1305_TAG_BYTES
XNONCE_BYTES: int = lib.DP_XCHACHA20POLY1305_NONCE_BYTES
BLAKE2S_OUT_BYTES: int = lib.DP_BLAKE2S_OUT_BYTES
BLAKE2S_KEY_BYTES: int = lib.DP_BLAKE2S_KEY_BYTES
MAX_MESSAGE_BYTES: int = lib.DP_AEAD_MAX_BYTES
BATCH_MAX: int = lib.DP_AEAD_BATCH_MAX
COUNTER_MAX: int = 2**64 - 1

# Built for tests only: AVX-512's lane layout compiled for AVX2, and the IFMA
# Poly1305 with its multiply-adds emulated.
_TEST_ONLY_IMPLS = {lib.DP_IMPL_AVX512_ON_AVX2, lib.DP_IMPL_AVX512_IFMA_EMULATED}


class CryptoError(Exception):
    """Base class of this module's errors."""


class AuthenticationError(CryptoError):
    """The tag did not match: the message was forged, corrupted, or sealed
    with another key, counter or associated data."""


class UnsupportedImplementation(CryptoError):
    """The CPU cannot run the requested implementation."""


# ---------------------------------------------------------------- arguments

def _buffer(name: str, value, writable: bool = False):
    """A cffi view of a bytes-like argument, or TypeError naming it."""
    if isinstance(value, str) or not _is_buffer(value):
        raise TypeError(f"{name} must be bytes-like (bytes, bytearray, memoryview), "
                        f"not {type(value).__name__}")
    try:
        return ffi.from_buffer("uint8_t[]", value, require_writable=writable)
    except (TypeError, BufferError):
        raise TypeError(f"{name} must be a writable buffer (bytearray or a writable "
                        f"memoryview), not {type(value).__name__}") from None


def _is_buffer(value) -> bool:
    try:
        memoryview(value)
    except TypeError:
        return False
    return True


def _sized(name: str, value, size: int):
    buf = _buffer(name, value)
    if len(buf) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(buf)}")
    return buf


def _counter(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= COUNTER_MAX:
        raise ValueError(f"{name} must be in 0..2**64-1, got {value}")
    return value


def _length(name: str, buf) -> int:
    if len(buf) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{name} is {len(buf)} bytes; at most {MAX_MESSAGE_BYTES} are allowed")
    return len(buf)


def _counter_nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "little")


def _address(buf) -> int:
    return int(ffi.cast("uintptr_t", buf))


def _check_overlap(dst, src) -> None:
    """In place (same start) is fine; any other overlap is not."""
    if not len(dst) or not len(src):
        return
    d, s = _address(dst), _address(src)
    if d != s and d < s + len(src) and s < d + len(dst):
        raise ValueError("out and the input overlap without starting at the same address; "
                         "use the same buffer for in-place operation or separate buffers")


def _check(rc: int, what: str) -> None:
    if rc == -lib.DP_EAUTH:
        raise AuthenticationError(f"{what}: authentication failed")
    if rc < 0:
        raise ValueError(f"{what}: the native core refused the arguments (error {-rc})")


# ---------------------------------------------------------------- AEAD

def _seal(fn, what, key, nonce, plaintext, aad, out=None):
    pt = _buffer("plaintext", plaintext)
    ad = _buffer("aad", aad)
    _length("plaintext", pt)
    _length("aad", ad)
    n = len(pt) + TAG_BYTES
    if out is None:
        dst = ffi.new("uint8_t[]", n)
    else:
        dst = _buffer("out", out, writable=True)
        if len(dst) < n:
            raise ValueError(f"out must hold at least {n} bytes, got {len(dst)}")
        _check_overlap(dst, pt)
    _check(fn(dst, pt, len(pt), ad, len(ad), nonce, key), what)
    return n if out is not None else bytes(ffi.buffer(dst, n))


def _open(fn, what, key, nonce, ciphertext, aad, out=None):
    ct = _buffer("ciphertext", ciphertext)
    ad = _buffer("aad", aad)
    if len(ct) < TAG_BYTES:
        raise ValueError(f"ciphertext must be at least {TAG_BYTES} bytes (the tag), "
                         f"got {len(ct)}")
    _length("ciphertext", ct)
    _length("aad", ad)
    n = len(ct) - TAG_BYTES
    if out is None:
        dst = ffi.new("uint8_t[]", max(n, 1))
    else:
        dst = _buffer("out", out, writable=True)
        if len(dst) < n:
            raise ValueError(f"out must hold at least {n} bytes, got {len(dst)}")
        _check_overlap(dst, ct)
    _check(fn(dst, ct, len(ct), ad, len(ad), nonce, key), what)
    return n if out is not None else bytes(ffi.buffer(dst, n))


def seal(key, counter: int, plaintext, aad=b"") -> bytes:
    """ChaCha20-Poly1305 with WireGuard's counter nonce; returns ciphertext || tag."""
    nonce = _counter_nonce(_counter("counter", counter))
    return _seal(lib.dp_aead_seal, "seal", _sized("key", key, KEY_BYTES), nonce, plaintext, aad)


def open(key, counter: int, ciphertext, aad=b"") -> bytes:  # noqa: A001 - the AEAD verb
    """Inverse of seal; raises AuthenticationError if the tag does not match."""
    nonce = _counter_nonce(_counter("counter", counter))
    return _open(lib.dp_aead_open, "open", _sized("key", key, KEY_BYTES), nonce, ciphertext, aad)


def seal_into(out, key, counter: int, plaintext, aad=b"") -> int:
    """seal writing into out (len(plaintext) + 16 bytes); out may be the
    plaintext's own buffer (in place). Returns the bytes written."""
    nonce = _counter_nonce(_counter("counter", counter))
    return _seal(lib.dp_aead_seal, "seal", _sized("key", key, KEY_BYTES), nonce, plaintext, aad,
                 out)


def open_into(out, key, counter: int, ciphertext, aad=b"") -> int:
    """open writing into out; on failure out is zeroed and AuthenticationError raised."""
    nonce = _counter_nonce(_counter("counter", counter))
    return _open(lib.dp_aead_open, "open", _sized("key", key, KEY_BYTES), nonce, ciphertext, aad,
                 out)


def seal_with_nonce(key, nonce, plaintext, aad=b"") -> bytes:
    """ChaCha20-Poly1305 with a raw 96-bit nonce (RFC 8439)."""
    return _seal(lib.dp_aead_seal, "seal", _sized("key", key, KEY_BYTES),
                 _sized("nonce", nonce, NONCE_BYTES), plaintext, aad)


def open_with_nonce(key, nonce, ciphertext, aad=b"") -> bytes:
    return _open(lib.dp_aead_open, "open", _sized("key", key, KEY_BYTES),
                 _sized("nonce", nonce, NONCE_BYTES), ciphertext, aad)


def xseal(key, nonce, plaintext, aad=b"") -> bytes:
    """XChaCha20-Poly1305 with a 192-bit nonce."""
    return _seal(lib.dp_xaead_seal, "xseal", _sized("key", key, KEY_BYTES),
                 _sized("nonce", nonce, XNONCE_BYTES), plaintext, aad)


def xopen(key, nonce, ciphertext, aad=b"") -> bytes:
    return _open(lib.dp_xaead_open, "xopen", _sized("key", key, KEY_BYTES),
                 _sized("nonce", nonce, XNONCE_BYTES), ciphertext, aad)


# ---------------------------------------------------------------- batches

def _batch_args(keys, counters, messages, aads):
    for name, seq in (("keys", keys), ("counters", counters), ("messages", messages)):
        if not isinstance(seq, Sequence) or isinstance(seq, (bytes, bytearray, str)):
            raise TypeError(f"{name} must be a list, not {type(seq).__name__}")
    if aads is None:
        aads = [b""] * len(messages)
    elif not isinstance(aads, Sequence) or isinstance(aads, (bytes, bytearray, str)):
        raise TypeError(f"aads must be a list or None, not {type(aads).__name__}")
    if not len(keys) == len(counters) == len(messages) == len(aads):
        raise ValueError(f"keys, counters, messages and aads must have the same length, got "
                         f"{len(keys)}, {len(counters)}, {len(messages)}, {len(aads)}")
    return [(_sized(f"keys[{i}]", k, KEY_BYTES), _counter(f"counters[{i}]", c),
             _buffer(f"messages[{i}]", m), _buffer(f"aads[{i}]", a))
            for i, (k, c, m, a) in enumerate(zip(keys, counters, messages, aads))]


def _run_batch(fn, items, out_len):
    results = []
    for start in range(0, len(items), BATCH_MAX):
        chunk = items[start:start + BATCH_MAX]
        msgs = ffi.new("struct dp_aead_msg[]", len(chunk))
        outs = []
        for m, (key, counter, data, ad) in zip(msgs, chunk):
            n = out_len(len(data))
            dst = ffi.new("uint8_t[]", max(n, 1))
            outs.append((dst, n))
            m.key, m.counter, m.ad, m.ad_len = key, counter, ad, len(ad)
            m.src, m.len, m.dst = data, len(data), dst
        rc = fn(msgs, len(chunk))
        if rc < 0:
            raise ValueError(f"batch refused by the native core (error {-rc})")
        for m, (dst, n) in zip(msgs, outs):
            results.append(bytes(ffi.buffer(dst, n)) if m.status == lib.DP_OK else None)
    return results


def seal_batch(keys, counters, plaintexts, aads=None) -> list[bytes]:
    """Seal many independent messages in one native call per 256."""
    items = _batch_args(keys, counters, plaintexts, aads)
    for i, (_, _, pt, ad) in enumerate(items):
        _length(f"plaintexts[{i}]", pt)
        _length(f"aads[{i}]", ad)
    return _run_batch(lib.dp_aead_seal_batch, items, lambda n: n + TAG_BYTES)


def open_batch(keys, counters, ciphertexts, aads=None) -> list[Optional[bytes]]:
    """Open many messages; an entry is None where authentication failed."""
    items = _batch_args(keys, counters, ciphertexts, aads)
    for i, (_, _, ct, ad) in enumerate(items):
        if len(ct) < TAG_BYTES:
            raise ValueError(f"ciphertexts[{i}] must be at least {TAG_BYTES} bytes, "
                             f"got {len(ct)}")
        _length(f"ciphertexts[{i}]", ct)
        _length(f"aads[{i}]", ad)
    return _run_batch(lib.dp_aead_open_batch, items, lambda n: n - TAG_BYTES)


# ---------------------------------------------------------------- BLAKE2s

def blake2s(data, key=None, digest_size: int = BLAKE2S_OUT_BYTES) -> bytes:
    """BLAKE2s (RFC 7693), optionally keyed (key up to 32 bytes)."""
    # bytes go to the native call as they are (cffi passes them to a
    # uint8_t *); only other buffers take the checked view. The handshake
    # code hashes and MACs bytes several times a message (and, under a
    # flood, for every cookie reply), where the view cost more than the hash.
    if type(data) is not bytes:
        data = _buffer("data", data)
    if key is not None and type(key) is not bytes:
        key = _buffer("key", key)
    if not isinstance(digest_size, int) or isinstance(digest_size, bool):
        raise TypeError(f"digest_size must be an int, not {type(digest_size).__name__}")
    if not 1 <= digest_size <= BLAKE2S_OUT_BYTES:
        raise ValueError(f"digest_size must be in 1..{BLAKE2S_OUT_BYTES}, got {digest_size}")
    if key is not None and len(key) > BLAKE2S_KEY_BYTES:
        raise ValueError(f"key must be at most {BLAKE2S_KEY_BYTES} bytes, got {len(key)}")
    out = ffi.new("uint8_t[]", digest_size)
    _check(lib.dp_blake2s(out, digest_size, data, len(data), ffi.NULL if key is None else key,
                          0 if key is None else len(key)), "blake2s")
    return ffi.buffer(out, digest_size)[:]


# ---------------------------------------------------------------- implementations

def _impl_names() -> dict[str, int]:
    return {ffi.string(lib.dp_crypto_impl_name(i)).decode(): i for i in range(lib.DP_IMPL_COUNT)}


def all_implementations(include_test: bool = False) -> list[str]:
    """Every implementation built in, whether or not this CPU runs it."""
    return [name for name, i in _impl_names().items()
            if include_test or i not in _TEST_ONLY_IMPLS]


def implementations(include_test: bool = False) -> list[str]:
    """The implementations this CPU can run, slowest first."""
    return [name for name, i in _impl_names().items()
            if lib.dp_crypto_impl_supported(i) and (include_test or i not in _TEST_ONLY_IMPLS)]


def active() -> str:
    return ffi.string(lib.dp_crypto_impl_name(lib.dp_crypto_impl_active())).decode()


def use(name: str) -> None:
    """Force an implementation for the whole process (tests, benchmarks)."""
    names = _impl_names()
    if name not in names:
        raise ValueError(f"unknown implementation {name!r}; known: {', '.join(names)}")
    if lib.dp_crypto_use(names[name]) == -lib.DP_ENOTSUP:
        raise UnsupportedImplementation(
            f"this CPU cannot run {name!r}; it runs: {', '.join(implementations(True))}")


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Run a block with one implementation, then restore the previous one."""
    previous = active()
    use(name)
    try:
        yield
    finally:
        use(previous)
