"""Differential tests against independent implementations: cryptography
(OpenSSL) for ChaCha20, Poly1305 and ChaCha20-Poly1305, hashlib for BLAKE2s.
Each runs on every implementation."""
import hashlib

import pytest

from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import crypto
from dataplane._native import ffi, lib

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

keys = st.binary(min_size=32, max_size=32)
counters = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 2, 2**64 - 1]),
                     st.integers(0, 2**64 - 1))
# Lengths around block and lane boundaries are where multi-buffer code breaks.
lengths = st.one_of(st.integers(0, 9216), st.sampled_from(
    [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513,
     1023, 1024, 1025, 1420, 2047, 2048, 4095, 4096, 9216]))


def wg_nonce(counter):
    return b"\0\0\0\0" + counter.to_bytes(8, "little")


def oracle_seal(key, counter, pt, aad):
    return ChaCha20Poly1305(key).encrypt(wg_nonce(counter), pt, aad)


@SETTINGS
@given(key=keys, counter=counters, length=lengths, aad=st.binary(max_size=300), data=st.data())
def test_seal_open_match_openssl(impl, key, counter, length, aad, data):
    pt = data.draw(st.binary(min_size=length, max_size=length))
    sealed = crypto.seal(key, counter, pt, aad)
    assert sealed == oracle_seal(key, counter, pt, aad)
    assert crypto.open(key, counter, sealed, aad) == pt


@SETTINGS
@given(key=keys, counter=counters, length=lengths, offset=st.integers(1, 63), data=st.data())
def test_in_place_and_unaligned(impl, key, counter, length, offset, data):
    pt = data.draw(st.binary(min_size=length, max_size=length))
    # in place: plaintext and output share one buffer at an odd offset
    buf = bytearray(offset + length + crypto.TAG_BYTES)
    buf[offset:offset + length] = pt
    view = memoryview(buf)
    n = crypto.seal_into(view[offset:], key, counter, view[offset:offset + length])
    assert n == length + crypto.TAG_BYTES
    assert bytes(buf[offset:]) == oracle_seal(key, counter, pt, b"")
    assert bytes(buf[:offset]) == bytes(offset)  # nothing written before the output
    n = crypto.open_into(view[offset:], key, counter, view[offset:])
    assert n == length
    assert bytes(buf[offset:offset + length]) == pt


@SETTINGS
@given(key=keys, nonce=st.binary(min_size=24, max_size=24), length=lengths,
       aad=st.binary(max_size=64), data=st.data())
def test_xchacha_roundtrip_and_subkey(impl, key, nonce, length, aad, data):
    """XChaCha20-Poly1305 = ChaCha20-Poly1305 under HChaCha20(key, nonce[:16])."""
    pt = data.draw(st.binary(min_size=length, max_size=length))
    sub = ffi.new("uint8_t[32]")
    lib.dp_test_hchacha20(sub, key, nonce[:16])
    sealed = crypto.xseal(key, nonce, pt, aad)
    assert sealed == ChaCha20Poly1305(bytes(sub)).encrypt(b"\0" * 4 + nonce[16:], pt, aad)
    assert crypto.xopen(key, nonce, sealed, aad) == pt


batch_items = st.lists(st.tuples(keys, counters, st.one_of(st.integers(0, 200), lengths),
                                 st.binary(max_size=40)), min_size=1, max_size=64)


@SETTINGS
@given(items=batch_items, data=st.data())
def test_batches_of_mixed_lengths(impl, items, data):
    pts = [data.draw(st.binary(min_size=n, max_size=n)) for _, _, n, _ in items]
    ks = [k for k, _, _, _ in items]
    cs = [c for _, c, _, _ in items]
    ads = [a for _, _, _, a in items]
    sealed = crypto.seal_batch(ks, cs, pts, ads)
    assert sealed == [oracle_seal(k, c, p, a) for k, c, p, a in zip(ks, cs, pts, ads)]
    # corrupt some, open all: exactly the corrupted ones fail
    bad = set(data.draw(st.sets(st.integers(0, len(items) - 1))))
    tampered = [bytes([s[0] ^ 1]) + s[1:] if i in bad else s for i, s in enumerate(sealed)]
    opened = crypto.open_batch(ks, cs, tampered, ads)
    assert opened == [None if i in bad else p for i, p in enumerate(pts)]


# Where an implementation hands a call to another kernel (avx512 and
# avx512-ifma: ChaCha20 with 8 blocks or fewer in all, a key block per
# message included, goes to the AVX2 kernel; avx512: Poly1305 for up to 4
# messages all under 32 blocks, the length block included, to the 4-lane
# AVX2 one; avx512-ifma: Poly1305 for up to 4 messages to 4 lanes of
# IFMA), on both sides of each line.
@pytest.mark.parametrize("lengths", [
    [448], [449], [192, 192], [193, 192], [0] * 4, [1] * 8, [1] * 9,
    [480], [481], [480] * 4, [480] * 5, [481, 0, 0, 0], [64] * 4, [64] * 5,
    [1420], [1420] * 4, [1420] * 5, [1420, 1, 700, 2000], [2000, 1, 700, 1420, 64],
], ids=lambda ls: "+".join(map(str, ls)))
def test_batches_at_the_kernel_choice_boundaries(impl, lengths):
    ks = [bytes([7 * i + 1]) * 32 for i in range(len(lengths))]
    cs = [2**32 - 1 + i for i in range(len(lengths))]
    pts = [bytes((i + j) % 256 for j in range(n)) for i, n in enumerate(lengths)]
    sealed = crypto.seal_batch(ks, cs, pts)
    assert sealed == [oracle_seal(k, c, p, b"") for k, c, p in zip(ks, cs, pts)]
    tampered = [s[:-1] + bytes([s[-1] ^ 0x80]) for s in sealed]
    assert crypto.open_batch(ks, cs, sealed) == pts
    assert crypto.open_batch(ks, cs, tampered) == [None] * len(pts)


def test_batch_larger_than_native_limit(impl):
    n = crypto.BATCH_MAX + 37
    ks = [bytes([i % 256]) * 32 for i in range(n)]
    cs = list(range(n))
    pts = [bytes([i % 251]) * (i % 300) for i in range(n)]
    sealed = crypto.seal_batch(ks, cs, pts)
    assert sealed == [oracle_seal(k, c, p, b"") for k, c, p in zip(ks, cs, pts)]
    assert crypto.open_batch(ks, cs, sealed) == pts


def _impl_index(name):
    return crypto.all_implementations(include_test=True).index(name)


@SETTINGS
@given(streams=st.lists(st.tuples(keys, st.binary(min_size=12, max_size=12),
                                  st.integers(0, 2**32 - 1), st.integers(0, 2000),
                                  st.booleans()), min_size=1, max_size=40))
def test_raw_chacha20_streams_match_openssl(impl, streams):
    """The multi-buffer kernel on independent streams, including counters
    that wrap the 32-bit block counter."""
    n = len(streams)
    srcs = [bytes((i * 7 + j) % 256 for j in range(length)) if has_src else None
            for i, (_, _, _, length, has_src) in enumerate(streams)]
    outs = [ffi.new("uint8_t[]", max(length, 1)) for _, _, _, length, _ in streams]
    src_ptrs = ffi.new("const uint8_t *[]", [ffi.from_buffer(s) if s else ffi.NULL for s in srcs])
    rc = lib.dp_test_chacha20(_impl_index(impl), n, ffi.new("uint8_t *[]", outs), src_ptrs,
                              ffi.new("size_t[]", [s[3] for s in streams]),
                              b"".join(s[0] for s in streams), b"".join(s[1] for s in streams),
                              ffi.new("uint32_t[]", [s[2] for s in streams]))
    assert rc == 0
    for (key, nonce, counter, length, _), src, out in zip(streams, srcs, outs):
        if counter + (length + 63) // 64 > 2**32:
            continue  # OpenSSL carries into the nonce; RFC 8439 leaves this undefined
        enc = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce),
                     None).encryptor()
        expected = enc.update(src if src is not None else bytes(length))
        assert bytes(ffi.buffer(out, length)) == expected


@SETTINGS
@given(jobs=st.lists(st.tuples(keys, st.integers(0, 600)), min_size=1, max_size=70),
       pattern=st.sampled_from(["random", "ones", "zeros"]), data=st.data())
def test_raw_poly1305_matches_openssl(impl, jobs, pattern, data):
    """The multi-buffer Poly1305 on whole-block messages, with the extreme
    limb values all-ones blocks give."""
    msgs = []
    for _, blocks in jobs:
        if pattern == "random":
            msgs.append(data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks)))
        else:
            msgs.append((b"\xff" if pattern == "ones" else b"\0") * 16 * blocks)
    tags = ffi.new("uint8_t[]", 16 * len(jobs))
    ptrs = ffi.new("const uint8_t *[]", [ffi.from_buffer(m) for m in msgs])
    rc = lib.dp_test_poly1305(_impl_index(impl), len(jobs), ptrs,
                              ffi.new("size_t[]", [len(m) for m in msgs]),
                              b"".join(k for k, _ in jobs), tags)
    assert rc == 0
    for i, ((key, _), msg) in enumerate(zip(jobs, msgs)):
        assert bytes(tags[16 * i:16 * i + 16]) == poly1305.Poly1305.generate_tag(key, msg)


@pytest.mark.parametrize("jobs", [1, 2, 8, 9, 32])
@pytest.mark.parametrize("blocks", [1, 31, 32, 89, 600])
def test_raw_poly1305_largest_limbs(impl, jobs, blocks):
    """All-ones keys (the largest r clamping leaves, and its powers in the
    long-message path) on all-ones blocks: the largest limbs every lane
    carries, where a carry left out or a bound too tight shows."""
    key = b"\xff" * 32
    msg = b"\xff" * 16 * blocks
    tags = ffi.new("uint8_t[]", 16 * jobs)
    ptrs = ffi.new("const uint8_t *[]", [ffi.from_buffer(msg)] * jobs)
    rc = lib.dp_test_poly1305(_impl_index(impl), jobs, ptrs,
                              ffi.new("size_t[]", [len(msg)] * jobs), key * jobs, tags)
    assert rc == 0
    want = poly1305.Poly1305.generate_tag(key, msg)
    assert [bytes(tags[16 * i:16 * i + 16]) for i in range(jobs)] == [want] * jobs


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1000), key=st.one_of(st.none(), st.binary(max_size=32)),
       digest_size=st.integers(1, 32))
def test_blake2s_matches_hashlib(data, key, digest_size):
    ref = hashlib.blake2s(data, key=key or b"", digest_size=digest_size).digest()
    # bytes take a short way into the native code, other buffers the checked one
    assert crypto.blake2s(data, key=key, digest_size=digest_size) == ref
    assert crypto.blake2s(bytearray(data), key=None if key is None else memoryview(key),
                          digest_size=digest_size) == ref
