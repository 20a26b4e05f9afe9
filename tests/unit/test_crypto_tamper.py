"""Every single-bit change to tag, ciphertext or AAD is rejected, and the
output buffer is left zeroed, on every implementation."""
import pytest

from dataplane import crypto

KEY = bytes(range(1, 33))
COUNTER = 0x0102030405060708
AAD = b"header-of-13b"


def _flips(data: bytes):
    for bit in range(len(data) * 8):
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        yield bytes(b)


@pytest.mark.parametrize("length", [0, 1, 64, 77])
def test_every_flipped_bit_is_rejected_and_output_zeroed(impl, length):
    pt = bytes((i * 37 + 5) % 256 for i in range(length))
    sealed = crypto.seal(KEY, COUNTER, pt, AAD)
    rejected = 0
    for bad in _flips(sealed):
        out = bytearray(b"\xa5" * max(length, 1))
        with pytest.raises(crypto.AuthenticationError):
            crypto.open_into(out, KEY, COUNTER, bad, AAD)
        assert out[:length] == bytes(length), "output not zeroed after a failed open"
        rejected += 1
    for bad_aad in _flips(AAD):
        with pytest.raises(crypto.AuthenticationError):
            crypto.open(KEY, COUNTER, sealed, bad_aad)
        rejected += 1
    assert rejected == (len(sealed) + len(AAD)) * 8
    # and the untouched message still opens
    assert crypto.open(KEY, COUNTER, sealed, AAD) == pt


def test_wrong_key_counter_or_truncation_is_rejected(impl):
    sealed = crypto.seal(KEY, COUNTER, b"payload" * 20, AAD)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open(bytes(32), COUNTER, sealed, AAD)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open(KEY, COUNTER + 1, sealed, AAD)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open(KEY, COUNTER, sealed[:-1], AAD)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open(KEY, COUNTER, sealed + b"\0", AAD)


def test_failed_in_place_open_zeroes_the_ciphertext_buffer(impl):
    buf = bytearray(crypto.seal(KEY, COUNTER, b"secret data " * 10))
    buf[-1] ^= 0x80
    with pytest.raises(crypto.AuthenticationError):
        crypto.open_into(buf, KEY, COUNTER, buf)
    assert bytes(buf[:-crypto.TAG_BYTES]) == bytes(len(buf) - crypto.TAG_BYTES)


def test_batch_open_zeroes_only_failed_outputs(impl):
    pts = [b"a" * 100, b"b" * 64, b"c" * 3]
    keys = [KEY] * 3
    sealed = crypto.seal_batch(keys, [1, 2, 3], pts)
    sealed[1] = sealed[1][:-1] + bytes([sealed[1][-1] ^ 1])
    assert crypto.open_batch(keys, [1, 2, 3], sealed) == [pts[0], None, pts[2]]


def test_batch_open_in_place_and_apart_with_bad_tags(impl):
    """One batch mixes messages opened in place (MACed, then decrypted) and
    into a buffer of their own (decrypted in the pass that makes the MAC
    key): the good ones of both kinds open, the bad ones of both kinds
    leave their output zeroed, and a bad one opened in place leaves no
    plaintext behind either."""
    from dataplane._native import ffi, lib

    n = 12
    keys = [bytes([k + 1]) * 32 for k in range(n)]
    pts = [bytes((i * 7 + k) % 256 for i in range(size))
           for k, size in enumerate([1404, 0, 64, 1, 1500, 77, 1404, 16, 600, 63, 1420, 2])]
    sealed = crypto.seal_batch(keys, list(range(n)), pts)
    bad = {1, 2, 5, 8, 11}
    in_place = {0, 2, 4, 5, 9, 11}
    msgs = ffi.new("struct dp_aead_msg[]", n)
    keep = []
    for k in range(n):
        ct = bytearray(sealed[k])
        if k in bad:
            ct[(k * 13) % len(ct)] ^= 0x10
        src = ffi.new("uint8_t[]", bytes(ct))
        dst = src if k in in_place else ffi.new("uint8_t[]", b"\xa5" * max(len(pts[k]), 1))
        key = ffi.new("uint8_t[]", keys[k])
        keep += [src, dst, key]
        msgs[k] = {"key": key, "counter": k, "ad": ffi.NULL, "ad_len": 0, "len": len(ct),
                   "src": src, "dst": dst}
    assert lib.dp_aead_open_batch(msgs, n) == n - len(bad)
    for k in range(n):
        out = bytes(ffi.buffer(msgs[k].dst, len(pts[k])))
        if k in bad:
            assert msgs[k].status == -lib.DP_EAUTH, k
            assert out == bytes(len(pts[k])), f"message {k}: output not zeroed"
        else:
            assert msgs[k].status == 0, k
            assert out == pts[k], f"message {k} did not open to its plaintext"


@pytest.mark.parametrize("length", [1, 10, 64, 100, 1420])
def test_open_into_its_own_tag_or_header(impl, length):
    """A dst over the message's own tag (dst = src + len) or over its AD
    (a header decrypted over itself) still opens: the MAC reads them
    before anything is written there."""
    from dataplane._native import ffi, lib

    pt = bytes((i * 11 + 3) % 256 for i in range(length))
    nonce = bytes(4) + COUNTER.to_bytes(8, "little")
    sealed = crypto.seal(KEY, COUNTER, pt, AAD)
    key, n = ffi.new("uint8_t[]", KEY), ffi.new("uint8_t[]", nonce)
    # the tag: plaintext written from src + len on
    buf = ffi.new("uint8_t[]", sealed + bytes(length))
    assert lib.dp_aead_open(buf + length, buf, len(sealed), AAD, len(AAD), n, key) == 0
    assert bytes(ffi.buffer(buf + length, length)) == pt
    # the header: AD first, ciphertext after it, plaintext over the AD
    hdr = ffi.new("uint8_t[]", AAD + sealed)
    ct = hdr + len(AAD)
    assert lib.dp_aead_open(hdr, ct, len(sealed), hdr, len(AAD), n, key) == 0
    assert bytes(ffi.buffer(hdr, length)) == pt
