"""Key text forms, public keys, low-order points, and secrets that stay out
of repr/str; `wg` itself as the reference where it is installed."""
import base64
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings, strategies as st

from dataplane import keys
from dataplane.keys import PresharedKey, PrivateKey, PublicKey

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="`wg` (wireguard-tools) is not installed")

# RFC 7748 section 6.1, Alice.
RFC_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")

# The low-order list as libsodium spells it (bit 255 clear).
LIBSODIUM_BLOCKLIST = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
]
LOW_ORDER_ALL = [bytes.fromhex(h) for h in LIBSODIUM_BLOCKLIST] + \
    [bytes.fromhex(h)[:31] + bytes([bytes.fromhex(h)[31] | 0x80]) for h in LIBSODIUM_BLOCKLIST]

key_bytes = st.binary(min_size=32, max_size=32)


# ---------------------------------------------------------------- base64 and hex

@given(key_bytes)
def test_base64_round_trip_matches_standard_base64(raw):
    text = keys.format_base64_key(raw)
    assert text == base64.b64encode(raw).decode()
    assert len(text) == keys.KEY_BASE64_CHARS and text.endswith("=")
    assert keys.parse_base64_key(text) == raw


@given(key_bytes)
def test_hex_round_trip_lowercase_out_either_case_in(raw):
    text = keys.format_hex_key(raw)
    assert text == raw.hex() and text == text.lower()
    assert keys.parse_hex_key(text) == raw
    assert keys.parse_hex_key(text.upper()) == raw


GOOD = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize("text,reason", [
    ("", "the value is empty"),
    (base64.b64encode(bytes(31)).decode(), "decodes to 31 bytes"),
    (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
    (base64.b64encode(bytes(64)).decode(), "decodes to 64 bytes"),
    (GOOD[:-1], "the '=' padding is missing"),
    (GOOD[:-2] + "B=", "non-zero padding bits"),     # 'B' sets a bit past the 256th
    (GOOD[:10] + "*" + GOOD[11:], "outside the base64 alphabet"),
    (GOOD[:10] + " " + GOOD[11:], "outside the base64 alphabet"),
    (GOOD[:10] + "é" + GOOD[11:], "outside the base64 alphabet"),
    (base64.urlsafe_b64encode(bytes([0xFB] * 32)).decode(), "outside the base64 alphabet"),
])
def test_bad_base64_keys_name_the_field_and_reason(text, reason):
    with pytest.raises(ValueError) as e:
        keys.parse_base64_key(text, "PublicKey")
    message = str(e.value)
    assert message.startswith("PublicKey: not a valid base64 key (")
    assert reason in message
    if len(text) > 8:
        assert text not in message, "the value (maybe a private key) must not be echoed"


@settings(max_examples=300)
@given(st.text(min_size=20, max_size=60))
def test_any_text_parses_canonically_or_raises_value_error(text):
    try:
        raw = keys.parse_base64_key(text, "PrivateKey")
    except ValueError as e:
        assert str(e).startswith("PrivateKey: ")
        assert text not in str(e)
    else:
        assert keys.format_base64_key(raw) == text   # one spelling per key, as wg


@pytest.mark.parametrize("text,reason", [
    ("0" * 63, "63 characters where a key has 64"),
    ("0" * 65, "65 characters"),
    ("g" + "0" * 63, "not hex digits"),
    ("0x" + "0" * 62, "not hex digits"),
])
def test_bad_hex_keys(text, reason):
    with pytest.raises(ValueError, match=f"^private_key: not a valid hex key.*{reason}"):
        keys.parse_hex_key(text, "private_key")


def test_type_errors():
    with pytest.raises(TypeError, match="PublicKey must be a str"):
        keys.parse_base64_key(b"x" * 44, "PublicKey")
    with pytest.raises(TypeError, match="key must be bytes-like"):
        keys.format_base64_key("x" * 32)
    with pytest.raises(ValueError, match="key must be 32 bytes, got 31"):
        keys.format_hex_key(bytes(31))


# ---------------------------------------------------------------- key pairs

def test_public_key_rfc7748_vector():
    assert keys.public_key(RFC_PRIVATE) == RFC_PUBLIC
    assert PrivateKey(RFC_PRIVATE).public_key() == RFC_PUBLIC
    assert isinstance(keys.public_key(RFC_PRIVATE), PublicKey)


@given(key_bytes)
def test_clamping_does_not_change_the_public_key(raw):
    assert keys.public_key(raw) == keys.public_key(keys.clamp(raw))
    clamped = keys.clamp(raw)
    assert clamped[0] & 7 == 0 and clamped[31] & 0x80 == 0 and clamped[31] & 0x40
    assert keys.clamp(clamped) == clamped


def test_generated_keys_are_clamped_and_fresh():
    a, b = keys.generate_private_key(), keys.generate_private_key()
    assert a != b
    assert keys.clamp(a.reveal()) == a.reveal()
    assert PrivateKey(RFC_PRIVATE).clamped().reveal() == keys.clamp(RFC_PRIVATE)
    psk = keys.generate_preshared_key()
    assert isinstance(psk, PresharedKey) and not psk.is_zero()


def test_public_key_type():
    pub = PublicKey(RFC_PUBLIC)
    assert pub == RFC_PUBLIC and hash(pub) == hash(RFC_PUBLIC)
    assert str(pub) == f"{pub}" == base64.b64encode(RFC_PUBLIC).decode()
    assert repr(pub) == f"PublicKey({str(pub)!r})"
    assert PublicKey.from_base64(str(pub)) == pub
    assert PublicKey.from_hex(RFC_PUBLIC.hex().upper()) == pub
    with pytest.raises(ValueError, match="public key must be 32 bytes"):
        PublicKey(bytes(31))
    with pytest.raises(TypeError):
        PublicKey(PrivateKey(RFC_PRIVATE))          # a secret is not a public key
    with pytest.raises(TypeError, match="PrivateKey or bytes"):
        keys.public_key(PresharedKey(RFC_PRIVATE))


# ---------------------------------------------------------------- low order

def test_low_order_list_is_libsodiums():
    assert [p.hex() for p in keys.LOW_ORDER_POINTS] == LIBSODIUM_BLOCKLIST


@pytest.mark.parametrize("point", LOW_ORDER_ALL, ids=lambda p: p.hex()[:8] + "..." + p.hex()[-2:])
def test_every_low_order_encoding_is_rejected(point):
    assert keys.is_low_order(point)
    assert PublicKey(point).is_low_order()
    # ...and cryptography agrees: X25519 with it gives all zeros.
    with pytest.raises(ValueError):
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(point))


@settings(max_examples=200)
@given(key_bytes)
def test_real_public_keys_are_not_low_order(raw):
    assert not keys.is_low_order(keys.public_key(raw))


@given(key_bytes)
def test_low_order_check_matches_the_exchange(raw):
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
        zero = False
    except ValueError:
        zero = True
    assert keys.is_low_order(raw) == zero


# ---------------------------------------------------------------- secrets

@pytest.mark.parametrize("cls", [PrivateKey, PresharedKey, keys.Secret])
def test_secrets_are_redacted(cls):
    secret = cls(RFC_PRIVATE)
    forms = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>80}",
             "%s %r" % (secret, secret), repr([secret]), repr({"k": secret})]
    for form in forms:
        assert "<redacted>" in form
        for leak in (RFC_PRIVATE.hex(), base64.b64encode(RFC_PRIVATE).decode(),
                     RFC_PRIVATE.hex()[:16], base64.b64encode(RFC_PRIVATE).decode()[:12]):
            assert leak not in form
    assert secret.reveal() == RFC_PRIVATE
    assert secret.reveal_hex() == RFC_PRIVATE.hex()
    assert secret.reveal_base64() == base64.b64encode(RFC_PRIVATE).decode()


def test_private_key_repr_names_its_public_key():
    assert repr(PrivateKey(RFC_PRIVATE)) == \
        f"PrivateKey(<redacted>, public_key={str(PublicKey(RFC_PUBLIC))!r})"


def test_secret_equality_hash_and_wipe():
    a, b = PrivateKey(RFC_PRIVATE), PrivateKey(bytearray(RFC_PRIVATE))
    assert a == b and hash(a) == hash(b)
    assert a != PresharedKey(RFC_PRIVATE)           # same bytes, different kind
    assert a != RFC_PRIVATE
    b.wipe()
    assert b.is_zero() and b != a
    with pytest.raises(TypeError, match="not a PrivateKey"):
        keys.format_base64_key(a)                    # no accidental reveal
    with pytest.raises(ValueError, match="PresharedKey: not a valid base64 key"):
        PresharedKey.from_base64("nope")


# ---------------------------------------------------------------- wg as the reference

def _wg(*args, stdin=""):
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()


@needs_wg
def test_wg_pubkey_agrees():
    for _ in range(5):
        private = keys.generate_private_key()
        assert _wg("pubkey", stdin=private.reveal_base64() + "\n") == str(private.public_key())
    # An unclamped key: wg clamps, X25519 clamps; same answer.
    assert _wg("pubkey", stdin=base64.b64encode(RFC_PRIVATE).decode()) == \
        str(PublicKey(RFC_PUBLIC))


@needs_wg
def test_wg_genkey_and_genpsk_parse():
    private = PrivateKey.from_base64(_wg("genkey"))
    assert keys.clamp(private.reveal()) == private.reveal()
    assert not PresharedKey.from_base64(_wg("genpsk")).is_zero()


@needs_wg
def test_wg_rejects_what_we_reject():
    """`wg pubkey` is the reference parser: non-canonical padding bits and a
    missing '=' fail there too."""
    for bad in (GOOD[:-2] + "B=", GOOD[:-1], base64.b64encode(bytes(31)).decode()):
        result = subprocess.run([WG, "pubkey"], input=bad + "\n", capture_output=True,
                                text=True, timeout=10)
        assert result.returncode != 0, bad
        with pytest.raises(ValueError):
            keys.parse_base64_key(bad)
