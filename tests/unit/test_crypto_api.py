"""Argument checking of the Python surface: clear TypeError/ValueError
naming the argument, never a crash; implementation selection."""
import pytest

from dataplane import crypto
from dataplane._native import lib

KEY = bytes(32)


@pytest.mark.parametrize("fn", [crypto.seal, crypto.open])
def test_key_length_and_type(fn):
    msg = bytes(32)
    with pytest.raises(ValueError, match=r"key must be 32 bytes, got 31"):
        fn(bytes(31), 0, msg)
    with pytest.raises(TypeError, match=r"key must be bytes-like"):
        fn("k" * 32, 0, msg)
    with pytest.raises(TypeError, match=r"key must be bytes-like"):
        fn(None, 0, msg)


@pytest.mark.parametrize("counter,exc", [(-1, ValueError), (2**64, ValueError),
                                         (1.0, TypeError), (True, TypeError), ("1", TypeError)])
def test_counter_checked(counter, exc):
    with pytest.raises(exc, match="counter"):
        crypto.seal(KEY, counter, b"")


def test_plaintext_aad_and_ciphertext_checked():
    with pytest.raises(TypeError, match="plaintext"):
        crypto.seal(KEY, 0, "text")
    with pytest.raises(TypeError, match="aad"):
        crypto.seal(KEY, 0, b"", aad=42)
    with pytest.raises(ValueError, match=r"ciphertext must be at least 16 bytes"):
        crypto.open(KEY, 0, bytes(15))
    with pytest.raises(ValueError, match="nonce must be 24 bytes"):
        crypto.xseal(KEY, bytes(12), b"")
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        crypto.open_with_nonce(KEY, bytes(8), bytes(16))


def test_empty_plaintext_is_just_a_tag():
    sealed = crypto.seal(KEY, 7, b"")
    assert len(sealed) == crypto.TAG_BYTES
    assert crypto.open(KEY, 7, sealed) == b""


def test_out_buffers_checked():
    with pytest.raises(ValueError, match="out must hold at least 26 bytes"):
        crypto.seal_into(bytearray(25), KEY, 0, bytes(10))
    with pytest.raises(TypeError, match="writable"):
        crypto.seal_into(bytes(26), KEY, 0, bytes(10))
    buf = bytearray(64)
    with pytest.raises(ValueError, match="overlap"):
        crypto.seal_into(memoryview(buf)[1:], KEY, 0, memoryview(buf)[:20])


def test_batch_arguments_checked():
    with pytest.raises(ValueError, match="same length"):
        crypto.seal_batch([KEY, KEY], [0], [b"", b""])
    with pytest.raises(TypeError, match="keys must be a list"):
        crypto.seal_batch(KEY, [0], [b""])
    with pytest.raises(ValueError, match=r"keys\[1\] must be 32 bytes"):
        crypto.seal_batch([KEY, bytes(3)], [0, 0], [b"", b""])
    with pytest.raises(ValueError, match=r"counters\[0\]"):
        crypto.seal_batch([KEY], [-5], [b""])
    with pytest.raises(ValueError, match=r"ciphertexts\[0\] must be at least 16"):
        crypto.open_batch([KEY], [0], [b"short"])
    assert crypto.seal_batch([], [], []) == []


def test_native_batch_refuses_bad_messages_without_touching_others():
    from dataplane._native import ffi
    msgs = ffi.new("struct dp_aead_msg[3]")
    out = [ffi.new("uint8_t[64]") for _ in range(3)]
    for m, o in zip(msgs, out):
        m.key, m.counter, m.len, m.dst = ffi.from_buffer(KEY), 1, 0, o
    msgs[1].key = ffi.NULL                 # bad: no key
    assert lib.dp_aead_seal_batch(msgs, 3) == 2
    assert [m.status for m in msgs] == [0, -lib.DP_EINVAL, 0]
    assert lib.dp_aead_seal_batch(msgs, lib.DP_AEAD_BATCH_MAX + 1) == -lib.DP_EINVAL
    msgs[0].len = 5                         # open: shorter than a tag
    msgs[1].key = ffi.from_buffer(KEY)
    zeros = ffi.new("uint8_t[16]")
    msgs[1].src, msgs[1].len = zeros, 16    # a tag of zeros, no ciphertext
    assert lib.dp_aead_open_batch(msgs, 2) == 0
    assert msgs[0].status == -lib.DP_EINVAL
    assert msgs[1].status == -lib.DP_EAUTH  # a zero "tag" does not verify


def test_blake2s_arguments_checked():
    with pytest.raises(ValueError, match=r"digest_size must be in 1..32, got 0"):
        crypto.blake2s(b"", digest_size=0)
    with pytest.raises(ValueError, match=r"digest_size must be in 1..32, got 33"):
        crypto.blake2s(b"", digest_size=33)
    with pytest.raises(ValueError, match=r"key must be at most 32 bytes, got 33"):
        crypto.blake2s(b"", key=bytes(33))
    with pytest.raises(TypeError, match="data"):
        crypto.blake2s("abc")
    assert len(crypto.blake2s(b"x", digest_size=16)) == 16


def test_implementation_selection():
    names = crypto.implementations()
    assert names[0] == "portable"
    assert "avx512-on-avx2" not in names
    assert set(names) <= set(crypto.all_implementations())
    with pytest.raises(ValueError, match="unknown implementation 'sse9'"):
        crypto.use("sse9")
    before = crypto.active()
    assert before == names[-1], "the default is the best implementation the CPU runs"
    with crypto.using("portable"):
        assert crypto.active() == "portable"
    assert crypto.active() == before
    for name in crypto.all_implementations(include_test=True):
        if name not in crypto.implementations(include_test=True):
            with pytest.raises(crypto.UnsupportedImplementation, match=name):
                crypto.use(name)
            assert crypto.active() == before


def test_sizes_come_from_c():
    assert crypto.KEY_BYTES == lib.DP_CHACHA20POLY1305_KEY_BYTES == 32
    assert crypto.TAG_BYTES == lib.DP_CHACHA20POLY1305_TAG_BYTES == 16
    assert crypto.XNONCE_BYTES == 24
