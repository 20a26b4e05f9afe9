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
