"""Known-answer tests: RFC 8439, Wycheproof, the XChaCha20 draft, BLAKE2s.
Every test runs on every implementation (the impl fixture)."""
import pytest

from dataplane import crypto
from dataplane._native import ffi, lib
from tests.vectors import load_json, wycheproof

SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
             b"tip for the future, sunscreen would be it.")


def chacha20(impl_name, key, nonce, counter, data):
    """Raw ChaCha20 of one stream on one implementation (test hook)."""
    impl = crypto.all_implementations(include_test=True).index(impl_name)
    out = ffi.new("uint8_t[]", max(len(data), 1))
    src = ffi.new("const uint8_t *[1]", [ffi.from_buffer(data) if data else ffi.NULL])
    dst = ffi.new("uint8_t *[1]", [out])
    assert lib.dp_test_chacha20(impl, 1, dst, src, ffi.new("size_t[1]", [len(data)]), key,
                                nonce, ffi.new("uint32_t[1]", [counter])) == 0
    return bytes(ffi.buffer(out, len(data)))


def test_rfc8439_a1_keystream_block_zero(impl):
    ks = chacha20(impl, bytes(32), bytes(12), 0, bytes(64))
    assert ks.hex() == ("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
                        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586")


def test_rfc8439_2_4_2_encryption(impl):
    ct = chacha20(impl, bytes(range(32)), bytes.fromhex("000000000000004a00000000"), 1, SUNSCREEN)
    assert ct.hex() == (
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab"
        "8f593dabcd62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e"
        "52bc514d16ccf806818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d")


def test_rfc8439_2_8_2_aead(impl):
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    expected = bytes.fromhex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712"
        "82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58"
        "fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691")
    assert crypto.seal_with_nonce(key, nonce, SUNSCREEN, aad) == expected
    assert crypto.open_with_nonce(key, nonce, expected, aad) == SUNSCREEN


def test_rfc8439_a5_aead_decryption(impl):
    key = bytes.fromhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
    nonce = bytes.fromhex("000000000102030405060708")
    aad = bytes.fromhex("f33388860000000000004e91")
    ct = bytes.fromhex(
        "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43ee"
        "a09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b9481"
        "14ad176e008d33bd60f982b1ff37c8559797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0"
        "f9f6157b53c867e4b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
        "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a0bb2316053fa7699"
        "1955ebd63159434ecebb4e466dae5a1073a6727627097a1049e617d91d361094fa68f0ff77987130"
        "305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b02709b"
        "eead9d67890cbb22392336fea1851f38")
    pt = crypto.open_with_nonce(key, nonce, ct, aad)
    assert len(pt) == len(ct) - 16
    assert pt.startswith(b"Internet-Drafts are draft documents valid for a maximum of six months")
    assert pt.endswith(b"/\xe2\x80\x9cwork in progress./\xe2\x80\x9d")


def test_hchacha20_draft_xchacha_2_2_1():
    out = ffi.new("uint8_t[32]")
    lib.dp_test_hchacha20(out, bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927"))
    assert bytes(out).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


CHACHA_CASES = wycheproof("chacha20_poly1305_test.json")
XCHACHA_CASES = wycheproof("xchacha20_poly1305_test.json")


def test_wycheproof_counts():
    assert len(CHACHA_CASES) == 325
    assert len(XCHACHA_CASES) == 315


def _check_wycheproof(cases, seal, open_, nonce_bytes):
    checked = 0
    for c in cases:
        sealed = c["ct"] + c["tag"]
        if len(c["iv"]) != nonce_bytes:
            assert c["result"] == "invalid"
            with pytest.raises(ValueError, match="nonce"):
                seal(c["key"], c["iv"], c["msg"], c["aad"])
            with pytest.raises(ValueError, match="nonce"):
                open_(c["key"], c["iv"], sealed, c["aad"])
        elif c["result"] == "valid":
            assert seal(c["key"], c["iv"], c["msg"], c["aad"]) == sealed, c["tcId"]
            assert open_(c["key"], c["iv"], sealed, c["aad"]) == c["msg"], c["tcId"]
        else:
            assert c["result"] == "invalid", c["tcId"]
            with pytest.raises(crypto.AuthenticationError):
                open_(c["key"], c["iv"], sealed, c["aad"])
        checked += 1
    return checked


def test_wycheproof_chacha20_poly1305(impl):
    assert _check_wycheproof(CHACHA_CASES, crypto.seal_with_nonce, crypto.open_with_nonce,
                             crypto.NONCE_BYTES) == 325


def test_wycheproof_xchacha20_poly1305(impl):
    assert _check_wycheproof(XCHACHA_CASES, crypto.xseal, crypto.xopen,
                             crypto.XNONCE_BYTES) == 315


def test_wycheproof_chacha20_poly1305_as_one_batch(impl):
    """The same vectors through the batch API in one call (mixed lengths,
    keys and AAD): only those whose nonce has WireGuard's form (4 zero
    bytes + counter) can go through, so re-seal the others' plaintexts
    under a counter nonce and compare with the one-shot path."""
    valid = [c for c in CHACHA_CASES if c["result"] == "valid"]
    keys = [c["key"] for c in valid]
    counters = [int.from_bytes(c["iv"][4:], "little") for c in valid]
    sealed = crypto.seal_batch(keys, counters, [c["msg"] for c in valid], [c["aad"] for c in valid])
    for c, counter, s in zip(valid, counters, sealed):
        assert s == crypto.seal(c["key"], counter, c["msg"], c["aad"])
        if c["iv"][:4] == bytes(4):
            assert s == c["ct"] + c["tag"], c["tcId"]
    opened = crypto.open_batch(keys, counters, sealed, [c["aad"] for c in valid])
    assert opened == [c["msg"] for c in valid]


@pytest.mark.parametrize("case", load_json("blake2s_kat.json")["tests"],
                         ids=lambda c: c["comment"])
def test_blake2s_known_answers(case):
    key = bytes.fromhex(case["key"]) or None
    assert crypto.blake2s(bytes.fromhex(case["in"]), key=key,
                          digest_size=case["outlen"]).hex() == case["out"]
