"""Fuzz tests (hypothesis) for the parsers that face operators and control
planes: the interface file, the UAPI, the API's request bodies and the
handshake messages. Each gets arbitrary input and valid input with one
thing broken, and must either take it or refuse it with its own error
(ConfigError `FILE:LINE: ...`, an `errno=-N` reply, a 4xx naming the field,
HandshakeError); nothing refused may change state, and what is taken is
checked against what was meant: a generated file against the Config it was
written from, a `set` against a small reference model of a device, a
handshake message with one bit flipped against the receiver's checks.

Runs are reproducible (derandomize, no example database) and bounded
(max_examples per test; the file takes well under a minute on two cores).
No root needed: the UAPI and API run against a native device writing to
/dev/null and sending on loopback, as tests/unit/test_uapi.py and
api_world.py do. Bugs these tests found have a test of their own at the
end of each part."""
from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import json
import os
import re
import socket
import struct
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from dataplane import keys, noise
from dataplane.api import model
from dataplane.api.controller import Controller
from dataplane.api.model import ApiError
from dataplane.config import (BACKENDS, BUSY_POLL_MAX_US, REPLAY_WINDOW_MAX, REPLAY_WINDOW_MIN,
                              WG_QUICK_ONLY, Config, ConfigError, DataPlaneConfig, Endpoint,
                              InterfaceConfig, PeerConfig, load_config, parse_config)
from dataplane.keys import PresharedKey, PrivateKey
from dataplane.obfuscation import (KEYS as OBFUSCATION_KEYS, MAX_DATAGRAM, PLAIN, HeaderRange,
                                   Obfuscation)
from dataplane.uapi import (EINVAL, EIO, EMSGSIZE, EPROTO, AddAllowedIP, ReplaceAllowedIPs,
                            ReplacePeers, RemovePeer, Request, RequestReader, SelectPeer,
                            SetEndpoint, SetFwmark, SetListenPort, SetObfuscation,
                            SetPersistentKeepalive, SetPresharedKey, SetPrivateKey, UapiError,
                            UpdateOnly, format_set, parse_get, parse_set, read_request)

from .api_world import ApiWorld

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def is_wg_key(text: str) -> bool:
    """The reference for a key as `wg` writes it: base64 of 32 bytes that
    encodes back to the same text (so the padding bits are zero)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and b64(raw) == text


# Secrets as raw bytes: public keys are the X25519 of them.
OWN = PrivateKey(bytes(range(1, 33)))
SECRETS = [bytes([0x40 + i]) * 32 for i in range(8)]
POOL = [keys.public_key(s) for s in SECRETS]


# =============================================================== 1. the interface file

FILE = "dp0.conf"
SPACE = st.sampled_from(["", " ", "  ", "\t"])


COMMENT = st.sampled_from(["", "", "  # a note", "\t#"])


@functools.lru_cache(maxsize=None)
def spelled(key: str) -> st.SearchStrategy[str]:
    """A key in any case, as the parser takes it (one draw: a mask)."""
    return st.integers(0, 2**len(key) - 1).map(
        lambda mask: "".join(c.swapcase() if mask >> i & 1 else c for i, c in enumerate(key)))


def file_line(draw, key: str, value: str) -> str:
    return f"{draw(spelled(key))}{draw(SPACE)}={draw(SPACE)}{value}{draw(COMMENT)}"


def header_line(draw, name: str) -> str:
    return f"[{draw(st.sampled_from(['', ' ']))}{draw(spelled(name))}]"


def _v4(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(n)


def _v6(n: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(n)


ADDRESSES = st.one_of(st.integers(0, 2**32 - 1).map(_v4), st.integers(0, 2**128 - 1).map(_v6))


@st.composite
def prefix_text(draw, network) -> str:
    """`network` written with some of its host bits set (or none), with its
    length, or without it when it is a single host."""
    host_bits = network.max_prefixlen - network.prefixlen
    addr = network.network_address + draw(st.integers(0, 2**host_bits - 1))
    if host_bits == 0 and draw(st.booleans()):
        return str(addr)
    return f"{addr}/{network.prefixlen}"


@st.composite
def signature_chain(draw) -> str:
    tags = draw(st.lists(st.one_of(
        st.binary(min_size=1, max_size=6).map(lambda b: f"<b 0x{b.hex()}>"),
        st.tuples(st.sampled_from(["r", "rc", "rd"]), st.integers(0, 64))
        .map(lambda t: f"<{t[0]} {t[1]}>"),
        st.just("<t>")), min_size=1, max_size=4))
    return draw(st.sampled_from(["", " ", "  "])).join(tags)


@st.composite
def obfuscation_profile(draw) -> tuple[dict, Obfuscation]:
    """(Key -> value text, the Obfuscation it makes): a valid AmneziaWG
    profile; H1..H4 either unset or four disjoint ranges above 4."""
    text: dict[str, str] = {}
    values: dict[str, object] = {}
    jc = draw(st.integers(0, 128))
    if jc or draw(st.booleans()):
        jmin = draw(st.integers(1 if jc else 0, 500))
        jmax = draw(st.integers(max(jmin, 1 if jc else 0), 1400))
        text.update(Jc=str(jc), Jmin=str(jmin), Jmax=str(jmax))
        values.update(jc=jc, jmin=jmin, jmax=jmax)
    for n in range(1, 5):
        if draw(st.booleans()):
            s = draw(st.integers(0, 1000))
            text[f"S{n}"], values[f"s{n}"] = str(s), s
    if draw(st.booleans()):
        at = draw(st.integers(5, 2**32 - 5000))
        ranges = []
        for _ in range(4):
            span = draw(st.integers(0, 1000))
            ranges.append((at, at + span))
            at += span + 1 + draw(st.integers(0, 10))
        for n, (lo, hi) in enumerate(draw(st.permutations(ranges)), 1):
            written = str(lo) if lo == hi and draw(st.booleans()) else \
                f"{lo}{draw(st.sampled_from(['-', ' - ']))}{hi}"
            text[f"H{n}"], values[f"h{n}"] = written, HeaderRange(lo, hi)
    for n in range(1, 6):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            text[f"I{n}"] = ""                       # AmneziaVPN writes `I2 =`: unset
        elif choice >= 2:
            chain = draw(signature_chain())
            text[f"I{n}"], values[f"i{n}"] = chain, chain
    return text, Obfuscation(**values)


HOSTNAMES = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9](\.[a-z][a-z0-9]{0,6}){0,2}",
                          fullmatch=True)
IFNAMES = st.from_regex(r"[a-z][a-z0-9_.-]{0,14}", fullmatch=True)
IGNORED_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e,
                                       blacklist_characters="#"), max_size=30)


@st.composite
def endpoint_text(draw) -> tuple[str, Endpoint]:
    port = draw(st.integers(1, 65535))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        addr = draw(st.integers(0, 2**32 - 1).map(_v4))
        return f"{addr}:{port}", Endpoint(str(addr), port)
    if kind == 1:
        addr = draw(st.integers(0, 2**128 - 1).map(_v6))
        written = addr.exploded if draw(st.booleans()) else str(addr)
        return f"[{written}]:{port}", Endpoint(str(addr), port)
    host = draw(HOSTNAMES)
    return f"{host}:{port}", Endpoint(host, port)


@st.composite
def config_files(draw) -> tuple[str, Config]:
    """A valid file in varied spelling (key case, spaces, comments, numbers
    with leading zeros, host bits set, lists split over lines, sections in
    any order) and the Config it means, built without the parser."""
    def numeral(n: int) -> str:
        return draw(st.sampled_from([str(n), f"0{n}", f"00{n}"]))

    # -- [Interface]
    private = PrivateKey(draw(st.binary(min_size=32, max_size=32)))
    lines = [header_line(draw, "Interface"), file_line(draw, "PrivateKey", private.reveal_base64())]
    listen_port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    if listen_port is not None:
        lines.append(file_line(draw, "ListenPort", numeral(listen_port)))
    fwmark = draw(st.integers(0, 2**32 - 1))
    if fwmark or draw(st.booleans()):
        written = draw(st.sampled_from([str(fwmark), hex(fwmark)])) if fwmark else \
            draw(st.sampled_from(["0", "off", "OFF", "0x0"]))
        lines.append(file_line(draw, "FwMark", written))
    addresses = draw(st.lists(st.tuples(ADDRESSES, st.integers(0, 128)).map(
        lambda t: ipaddress.ip_interface((t[0], min(t[1], t[0].max_prefixlen)))),
        max_size=4, unique=True))
    cut = draw(st.integers(0, len(addresses)))
    for part in (addresses[:cut], addresses[cut:]):
        if part:
            lines.append(file_line(draw, "Address", ", ".join(str(a) for a in part)))
    mtu = draw(st.one_of(st.none(), st.integers(68, 65535)))
    if mtu is not None:
        lines.append(file_line(draw, "MTU", numeral(mtu)))
    obf_text, obf = draw(obfuscation_profile()) if draw(st.booleans()) else ({}, PLAIN)
    lines += [file_line(draw, k, v) for k, v in obf_text.items()]
    ignored = draw(st.lists(st.tuples(st.sampled_from(WG_QUICK_ONLY), IGNORED_VALUES),
                            max_size=3))
    lines += [file_line(draw, k, v) for k, v in ignored]
    blocks = [(lines, None)]

    # -- [Peer]s
    n_peers = draw(st.integers(0, 3))
    publics = draw(st.lists(st.sampled_from(POOL), min_size=n_peers, max_size=n_peers,
                            unique=True))
    assume(private.public_key() not in publics)
    routes = draw(st.lists(st.tuples(ADDRESSES, st.integers(0, 128)).map(
        lambda t: ipaddress.ip_network((t[0], min(t[1], t[0].max_prefixlen)), strict=False)),
        max_size=8, unique=True))
    for n, public in enumerate(publics):
        lines = [header_line(draw, "Peer"), file_line(draw, "PublicKey", str(public))]
        psk = None
        if draw(st.booleans()):
            raw = draw(st.one_of(st.just(bytes(32)), st.binary(min_size=32, max_size=32)))
            psk = PresharedKey(raw) if any(raw) else None    # all zeros: none, as `wg`
            lines.append(file_line(draw, "PresharedKey", b64(raw)))
        mine = [r for i, r in enumerate(routes) if i % n_peers == n]
        written = [draw(prefix_text(r)) for r in mine]
        if written and draw(st.booleans()):
            written.append(written[0])                       # listed twice: a warning
        if written or draw(st.booleans()):
            cut = draw(st.integers(0, len(written)))
            for part in (written[:cut], written[cut:]):
                if part or not written:
                    lines.append(file_line(draw, "AllowedIPs", ", ".join(part)))
        endpoint = None
        if draw(st.booleans()):
            text, endpoint = draw(endpoint_text())
            lines.append(file_line(draw, "Endpoint", text))
        keepalive = draw(st.integers(0, 65535))
        if keepalive or draw(st.booleans()):
            lines.append(file_line(draw, "PersistentKeepalive", numeral(keepalive) if keepalive
                                        else draw(st.sampled_from(["0", "off", "Off"]))))
        blocks.append((lines, PeerConfig(public, psk, tuple(mine), endpoint, keepalive)))

    # -- [DataPlane]
    d: dict[str, object] = {}
    lines = [header_line(draw, "DataPlane")]

    def maybe(key, field_name, values, text=str):
        if draw(st.booleans()):
            value = draw(values)
            d[field_name] = value
            lines.append(file_line(draw, key, text(value)))
    maybe("Backend", "backend", st.sampled_from(BACKENDS),
          lambda v: draw(st.sampled_from([v, v.upper()])))
    maybe("Workers", "workers", st.integers(1, 1024), numeral)
    maybe("Queues", "queues", st.integers(1, 1024), numeral)
    maybe("Interfaces", "interfaces", st.lists(IFNAMES, min_size=1, max_size=3, unique=True)
          .map(tuple), ", ".join)
    maybe("MaxPeers", "max_peers", st.integers(1, 2**19), numeral)
    if draw(st.booleans()):
        host = draw(st.one_of(st.integers(0, 2**32 - 1).map(_v4),
                              st.integers(0, 2**128 - 1).map(_v6)))
        port = draw(st.integers(1, 65535))
        d["api_listen"] = (str(host), port)
        lines.append(file_line(draw, "ApiListen", f"[{host}]:{port}" if host.version == 6
                                    else f"{host}:{port}"))
        for key, field_name in (("ApiCertificate", "api_certificate"),
                                ("ApiCertificateKey", "api_certificate_key"),
                                ("ApiClientCA", "api_client_ca")):
            d[field_name] = f"/etc/dataplane/{field_name}.pem"
            lines.append(file_line(draw, key, d[field_name]))
    maybe("ReplayWindow", "replay_window",
          st.sampled_from([1 << n for n in range(REPLAY_WINDOW_MIN.bit_length() - 1,
                                                  REPLAY_WINDOW_MAX.bit_length())]))
    if draw(st.booleans()):
        d["realtime_priority"] = draw(st.integers(1, 99))
        lines.append(file_line(draw, "RealtimePriority", str(d["realtime_priority"])))
    elif d.get("backend") != "socket":
        maybe("BusyPoll", "busy_poll_us", st.integers(0, BUSY_POLL_MAX_US), numeral)
    plain_ok = obf.headers != Obfuscation().headers or obf.profile_is_plain
    if plain_ok and draw(st.booleans()):
        accept = draw(st.booleans())
        d["accept_plain_wireguard"] = accept
        lines.append(file_line(draw, "AcceptPlainWireGuard", draw(st.sampled_from(
            ["yes", "true", "on", "1", "YES"] if accept else ["no", "false", "off", "0"]))))
    if len(lines) > 1 or draw(st.booleans()):
        blocks.append((lines, None))

    # -- the file
    blocks = draw(st.permutations(blocks))
    out = []
    for block, _ in blocks:
        out.append(draw(st.sampled_from(["", "", "# a comment", "   "])))
        out += block
    peers = [peer for _, peer in blocks if peer is not None]     # in the file's order
    text = "\n".join(out) + draw(st.sampled_from(["\n", "", "\n\n"]))
    expected = Config(
        "dp0",
        InterfaceConfig(private, listen_port, fwmark, tuple(addresses), mtu, obf,
                        tuple((k, v.strip()) for k, v in ignored)),
        tuple(peers), DataPlaneConfig(**d))
    return text, expected


def config_outcome(text: str, filename: str = FILE):
    """The parser's contract: a Config, or a ConfigError reading
    `FILE:LINE: reason` with a line of the file (only a missing
    [Interface], which no line holds, has none). Anything else raised
    fails the test."""
    try:
        return parse_config(text, filename)
    except ConfigError as e:
        check_config_error(e, text.count("\n") + 1, filename)
        return e


def check_config_error(e: ConfigError, n_lines: int, filename: str = FILE) -> None:
    assert e.filename == filename
    if e.line is None:
        assert e.reason == "no [Interface] section", e
        assert str(e) == f"{filename}: {e.reason}"
    else:
        assert 1 <= e.line <= n_lines, (str(e), n_lines)
        assert str(e) == f"{filename}:{e.line}: {e.reason}"


KNOWN_KEYS = (["PrivateKey", "ListenPort", "FwMark", "Address", "MTU", "PublicKey",
               "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive", "Backend",
               "Workers", "Queues", "Interfaces", "MaxPeers", "ApiListen", "ApiCertificate",
               "ApiCertificateKey", "ApiClientCA", "ReplayWindow", "BusyPoll",
               "RealtimePriority", "AcceptPlainWireGuard"]
              + list(OBFUSCATION_KEYS) + list(WG_QUICK_ONLY))
INTERESTING_VALUES = [
    "", "0", "1", "65535", "65536", "4294967295", "4294967296", "9" * 40, "-1", "off", "yes",
    "0x10", "0xffffffff1", OWN.reveal_base64(), str(POOL[0]), str(POOL[1]), b64(bytes(32)),
    b64(keys.LOW_ORDER_POINTS[2]), "10.0.0.1/24", "10.0.0.0/8", "::/0", "0.0.0.0/0",
    "fe80::1%eth0/64", "10.0.0.1/33", "1.2.3.4:51820", "[::1]:1", "[::1]", "host.example:5",
    "<b 0xc0ffee><r 16><t>", "<x>", "1-4", "5-3", "1000000-1000999", "auto", "socket",
    "eth0, eth1", "/etc/x.pem", "192.0.2.1:8443", "8192", "1024", "\t", "\x00", "\r",
    "\u2028", "é", "\ud800",
]
VALUES = st.one_of(st.sampled_from(INTERESTING_VALUES), st.text(max_size=30),
                   st.integers(-10, 10**12).map(str))
ANY_LINE = st.one_of(
    st.sampled_from(["[Interface]", "[Peer]", "[DataPlane]", "[ peer ]", "[Bogus]", "[Peer",
                     "[]", "[[Peer]]", "", "#", "=", "= x", "Key", "; semicolon"]),
    st.builds(lambda k, s, v: f"{k}{s}={s}{v}", st.sampled_from(KNOWN_KEYS).flatmap(spelled),
              SPACE, VALUES),
    st.text(max_size=40))


@fuzz(400)
@given(st.one_of(st.text(), st.lists(ANY_LINE, max_size=25).map("\n".join),
                 st.lists(ANY_LINE, max_size=25).map("\r\n".join)))
def test_config_arbitrary_text_parses_or_is_refused_with_file_and_line(text):
    config_outcome(text)


@fuzz(150)
@given(config_files())
def test_config_a_generated_file_parses_to_what_it_means_and_round_trips(generated):
    """Text -> Config against the Config the text was written from; then
    the writer (to_wg_quick) reads back to the same, and writes the same
    text again; CRLF line ends read the same; without [DataPlane] (what
    wg-quick/awg-quick take) the rest reads back unchanged."""
    text, expected = generated
    cfg = parse_config(text, FILE)
    assert cfg == expected
    written = cfg.to_wg_quick()
    again = parse_config(written, FILE)
    assert again == expected
    assert again.to_wg_quick() == written
    assert parse_config(text.replace("\n", "\r\n"), FILE) == expected
    stock = parse_config(cfg.to_wg_quick(include_dataplane=False), FILE)
    assert stock == dataclasses.replace(expected, dataplane=DataPlaneConfig())


MUTATIONS = ("replace", "duplicate", "delete", "swap", "nul", "truncate", "cr")


@fuzz(300)
@given(config_files(), st.sampled_from(MUTATIONS), st.data())
def test_config_a_valid_file_with_one_thing_broken(generated, mutation, data):
    """One line replaced by anything, duplicated, deleted, two lines swapped,
    a NUL put in a line, the text cut anywhere, a CR in a line: parsed or
    refused with FILE:LINE; a duplicated line is refused at it (or, for a
    [Peer] header, at the now empty section it leaves), a NUL at its line."""
    text, expected = generated
    lines = text.split("\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    if mutation == "replace":
        lines[i] = data.draw(ANY_LINE)
    elif mutation == "duplicate":
        lines.insert(i + 1, lines[i])
    elif mutation == "delete":
        del lines[i]
    elif mutation == "swap":
        j = data.draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif mutation == "nul":
        at = data.draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:at] + "\0" + lines[i][at:]
    elif mutation == "cr":
        at = data.draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:at] + "\r" + lines[i][at:]
    mutated = "\n".join(lines)
    if mutation == "truncate":
        mutated = text[:data.draw(st.integers(0, len(text)))]
    result = config_outcome(mutated)
    if mutation == "duplicate":
        if isinstance(result, ConfigError):
            assert result.line in (i + 1, i + 2), (str(result), i)
        else:   # a comment, a blank line, a repeatable key: nothing else changes
            assert (result.peers, result.dataplane) == (expected.peers, expected.dataplane)
            assert dataclasses.replace(result.interface, ignored=()) == \
                dataclasses.replace(expected.interface, ignored=())
    elif mutation == "nul":
        assert isinstance(result, ConfigError) and result.line == i + 1, result
        assert "NUL" in result.reason


NOT_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf",
                            b"\xf8\x88\x80\x80\x80", b"\x80", b"\xf4\x90\x80\x80"])


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conf")


@fuzz(40)
@given(config_files(), NOT_UTF8, st.data())
def test_config_bytes_that_are_not_utf8_are_refused_at_their_line(conf_dir, generated, junk,
                                                                  data):
    text, _ = generated
    lines = text.encode().split(b"\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    at = data.draw(st.integers(0, len(lines[i])))
    lines[i] = lines[i][:at] + junk + lines[i][at:]
    path = conf_dir / FILE
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.line == i + 1 and e.value.reason == "not UTF-8 text"
    assert str(e.value) == f"{path}:{i + 1}: not UTF-8 text"


# -- each key with a bad value, at a known line

BASE_LINES = ["[Interface]", f"PrivateKey = {OWN.reveal_base64()}", "",
              "[Peer]", f"PublicKey = {POOL[0]}", "", "[DataPlane]", ""]
SLOT = {"Interface": 3, "Peer": 6, "DataPlane": 8}     # the line a bad key goes on
REPLACES = {"PrivateKey": 2, "PublicKey": 5}
SECTION_OF = {**{k: "Interface" for k in ("PrivateKey", "ListenPort", "FwMark", "Address",
                                          "MTU", *OBFUSCATION_KEYS)},
              **{k: "Peer" for k in ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint",
                                     "PersistentKeepalive")}}
PLAIN_TEXT = st.text(max_size=40).filter(lambda t: not {"\n", "#", "\0"} & set(t))


def outside(lo: int, hi: int) -> st.SearchStrategy[str]:
    """Decimal text that is not a number lo..hi: out of range (up to
    thousands of digits), signed, hex, spaced, non-ASCII digits, words."""
    out = [st.integers(hi + 1, hi + 10**12).map(str),
           st.integers(20, 4000).map(lambda n: "9" * n),
           st.sampled_from(["-1", "+1", "1.0", "1e3", "1 2", "1_0", "\u0661\u0662", "\uff11",
                            "0x10", "one", "--", "٣"])]
    if lo > 0:
        out.append(st.integers(0, lo - 1).map(str))
    return st.one_of(*out)


BAD_KEYS = st.one_of(
    PLAIN_TEXT,
    st.binary(min_size=31, max_size=33).map(b64),
    st.binary(min_size=32, max_size=32).map(lambda r: b64(r)[:-1]),            # no padding
    st.binary(min_size=32, max_size=32).map(lambda r: b64(r)[:42] + "B="),     # padding bits
    st.binary(min_size=32, max_size=32).map(lambda r: r.hex()),                # UAPI's hex
    st.binary(min_size=32, max_size=32).map(lambda r: base64.urlsafe_b64encode(r).decode()),
).filter(lambda t: t.strip() and not is_wg_key(t.strip()))
BAD_PREFIXES = st.one_of(st.sampled_from([
    "10.0.0.1/33", "10.0.0.256/24", "fe80::1%eth0/64", "1.2.3.4/ 24", "/24", "10.0.0.01/8",
    "::/129", "10.0.0.0/-1", "10.0.0.0/0x8", "10.0.0.0/8/8", "10.0.0.0 /8", "1.2.3/24",
    "10.0.0.0/8,,10.1.0.0/16", "10.0.0.0/8,", "::ffff:1.2.3.4.5/128", "10.0.0.0/\u0668",
    "[::1]/128"]), st.integers(20, 4000).map(lambda n: "10.0.0.0/" + "9" * n),
    PLAIN_TEXT.filter(lambda t: t.strip() and "," not in t).map(lambda t: "x" + t))
BAD_ENDPOINTS = st.one_of(st.sampled_from([
    "1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "2001:db8::1:51820", "[2001:db8::1]",
    "[::1]:", "[::1]x:5", "999.1.1.1:5", "1.2.3:5", "-bad-.example:5", "a..b:5", ":5",
    "[not-v6]:5", "[::1:5", "host:port", "h" * 64 + ":5", "1.2.3.4:-1", "1.2.3.4: 5"]),
    st.integers(20, 4000).map(lambda n: "1.2.3.4:" + "9" * n))
BAD_OBFUSCATION = {
    "Jc": outside(0, 128), "H1": st.sampled_from(["5-3", "1-2-3", "4294967296", "a", "-5",
                                                  "5-", "0x5", "1 2"]),
    "I1": st.sampled_from(["<x>", "<b 0xabc>", "text", f"<r {MAX_DATAGRAM + 1}>", "<t 1>",
                           "<b>", "<r -1>", "<", "<>", "<r 16> junk", "<b 0xzz>",
                           "<r 60000><r 6000>", "<" * 6000]),
}
BAD_VALUES = {
    "PrivateKey": BAD_KEYS, "PublicKey": BAD_KEYS, "PresharedKey": BAD_KEYS,
    "ListenPort": outside(0, 65535),
    "FwMark": st.one_of(outside(0, 2**32 - 1),
                        st.sampled_from(["0x100000000", "0x", "0xg", "0X10", "on"])),
    "MTU": outside(68, 65535), "Address": BAD_PREFIXES, "AllowedIPs": BAD_PREFIXES,
    "Endpoint": BAD_ENDPOINTS,
    "PersistentKeepalive": st.one_of(outside(0, 65535), st.just("on")),
    "Backend": PLAIN_TEXT.filter(lambda t: t.strip() and t.strip().lower() not in BACKENDS),
    "Workers": outside(1, 1024), "Queues": outside(1, 1024), "MaxPeers": outside(1, 2**19),
    "Interfaces": st.sampled_from(["a/b", "a:b", "a b", "x" * 16, ".", "..", "eth0, eth0",
                                   "eth0,,eth1", "\u00e4" * 8, "eth0,"]),
    "ApiListen": st.sampled_from(["192.0.2.1", "host:8443", "192.0.2.1:0", "192.0.2.1:65536",
                                  "[::1]8443", "[::1]:", "192.0.2.300:1", ":8443",
                                  "[::1]:" + "9" * 30]),
    "ApiCertificate": PLAIN_TEXT.filter(lambda t: t.strip() and not t.strip().startswith("/")),
    "ReplayWindow": st.one_of(outside(REPLAY_WINDOW_MIN, REPLAY_WINDOW_MAX),
                              st.sampled_from(["1000", "3072", "0"])),
    "BusyPoll": outside(0, BUSY_POLL_MAX_US),
    "RealtimePriority": outside(1, 99),
    "AcceptPlainWireGuard": PLAIN_TEXT.filter(
        lambda t: t.strip() and t.strip().lower() not in
        ("yes", "no", "true", "false", "on", "off", "1", "0")),
    **{k: BAD_OBFUSCATION["Jc"] for k in ("Jc",)},
    **{k: outside(0, MAX_DATAGRAM) for k in ("Jmin", "Jmax", "S1", "S2", "S3", "S4")},
    **{k: BAD_OBFUSCATION["H1"] for k in ("H1", "H2", "H3", "H4")},
    **{k: BAD_OBFUSCATION["I1"] for k in ("I1", "I2", "I3", "I4", "I5")},
}
BAD_VALUES["ApiCertificateKey"] = BAD_VALUES["ApiClientCA"] = BAD_VALUES["ApiCertificate"]


def file_with(key_line: str, key: str) -> tuple[str, int]:
    lines = list(BASE_LINES)
    at = REPLACES.get(key) or SLOT[SECTION_OF.get(key, "DataPlane")]
    lines[at - 1] = key_line
    return "\n".join(lines) + "\n", at


@fuzz(500)
@given(st.sampled_from(sorted(BAD_VALUES)).flatmap(
    lambda k: st.tuples(st.just(k), spelled(k), BAD_VALUES[k])), SPACE)
def test_config_a_bad_value_is_refused_at_its_line_naming_the_key(case, space):
    """Every key with a value it cannot take (bad base64 keys, CIDRs,
    endpoints, numbers out of range or of thousands of digits, ...): a
    ConfigError at that line whose reason starts with the key as the
    documentation spells it, and that never repeats a would-be key."""
    key, written_key, value = case
    text, at = file_with(f"{written_key}{space}={space}{value}", key)
    with pytest.raises(ConfigError) as e:
        parse_config(text, FILE)
    check_config_error(e.value, text.count("\n") + 1)
    assert e.value.line == at, str(e.value)
    assert e.value.reason.startswith(f"{key}:"), str(e.value)
    if key in ("PrivateKey", "PublicKey", "PresharedKey") and len(value.strip()) >= 8:
        assert value.strip() not in str(e.value)


@fuzz(100)
@given(st.sampled_from(["Interface", "Peer", "DataPlane"]),
       st.one_of(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,30}", fullmatch=True),
                 PLAIN_TEXT.filter(lambda t: "=" not in t and t.strip()
                                   and not t.strip().startswith("["))),
       st.binary(min_size=32, max_size=32))
def test_config_an_unknown_key_is_refused_at_its_line_and_a_pasted_key_not_quoted(
        section, key_text, raw):
    """An unknown key (or a key pasted where a line belongs: base64 with its
    '=') is refused at its line; the error quotes a short word only."""
    known = {k.lower() for k, s in SECTION_OF.items() if s == section} if section != "DataPlane" \
        else {k.lower() for k in KNOWN_KEYS if k not in SECTION_OF}
    if section == "Interface":
        known |= {k.lower() for k in WG_QUICK_ONLY}
    assume(key_text.strip().lower() not in known)
    for line, secret in ((f"{key_text} = 1", None), (b64(raw), b64(raw))):
        text, at = file_with(line, {"Interface": "MTU", "Peer": "Endpoint",
                                    "DataPlane": "Workers"}[section])
        with pytest.raises(ConfigError) as e:
            parse_config(text, FILE)
        assert e.value.line == at, str(e.value)
        assert "unknown key" in e.value.reason
        if secret is not None:
            assert secret[:-1] not in str(e.value)
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,23}", key_text.strip()):
            assert "(not shown)" in e.value.reason


@pytest.mark.parametrize("key", ["ListenPort", "FwMark", "MTU", "PersistentKeepalive",
                                 "Workers", "ReplayWindow", "AllowedIPs", "Endpoint"])
def test_config_a_number_of_thousands_of_digits_is_refused_naming_the_key(key):
    huge = "9" * 5000
    value = {"AllowedIPs": f"10.0.0.0/{huge}", "Endpoint": f"192.0.2.1:{huge}"}.get(key, huge)
    text, at = file_with(f"{key} = {value}", key)
    with pytest.raises(ConfigError) as e:
        parse_config(text, FILE)
    assert e.value.line == at and e.value.reason.startswith(f"{key}:"), str(e.value)[:120]


# =============================================================== 2. the UAPI

LOW_ORDER_HEX = keys.LOW_ORDER_POINTS[2].hex()
ZERO_HEX = "0" * 64
PREFIXES = ["10.0.0.0/24", "10.0.0.1/32", "10.0.1.0/24", "10.0.0.0/8", "0.0.0.0/0",
            "fd00::/64", "fd00::1/128", "::/0", "10.0.0.7/24"]
OBFUSCATION_LINES = ["jc=3", "jmin=10", "jmax=20", "jc=0", "jmin=", "s1=7", "s2=0", "s4=",
                     "h1=100-200", "h2=5", "h3=300000-300010", "h4=7000", "h4=", "h1=1",
                     "i1=<t>", "i2=<b 0xc0ffee><r 4>", "i1=", "jmax=5", "h2=150"]


@st.composite
def uapi_bad_line(draw) -> str:
    keys_ = ["private_key", "listen_port", "fwmark", "replace_peers", "public_key", "remove",
             "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
             "replace_allowed_ips", "allowed_ip", "protocol_version", "jc", "s1", "h1", "i1",
             "last_handshake_time_sec", "errno", "PUBLIC_KEY", ""]
    return draw(st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(keys_),
                  st.one_of(st.text(max_size=20), st.sampled_from(
                      ["", "true ", "TRUE", "1", "2", "-1", "65536", "4294967296", "9" * 40,
                       LOW_ORDER_HEX, ZERO_HEX[:-1], "g" * 64, "10.0.0.1", "10.0.0.1/33",
                       "[::1]", "1.2.3.4:0", "h.example:5", "<x>", "5-3", " 1"]))),
        st.text(max_size=20).filter(lambda t: "\n" not in t),
        st.just("")))


@st.composite
def uapi_set_lines(draw, port: int) -> list[str]:
    """A `set` a client might send, often with one line broken: device
    lines, then peers (from a pool, some held already) with their lines."""
    def device_line():
        return draw(st.one_of(
            st.integers(0, 2**32 - 1).map(lambda n: f"fwmark={n}"),
            st.sampled_from(SECRETS[:2] + [OWN.reveal(), bytes(32), bytes([7]) * 32])
            .map(lambda s: f"private_key={s.hex()}"),
            st.just(f"listen_port={port}"),               # the port held: no socket opened
            st.just("replace_peers=true"),
            st.sampled_from(OBFUSCATION_LINES)))

    def peer_line():
        return draw(st.one_of(
            st.sampled_from(["remove=true", "update_only=true", "replace_allowed_ips=true",
                             "protocol_version=1", f"preshared_key={ZERO_HEX}"]),
            st.binary(min_size=32, max_size=32).map(lambda b: f"preshared_key={b.hex()}"),
            st.integers(1, 65535).map(lambda p: f"endpoint=127.0.0.1:{p}"),
            st.integers(1, 65535).map(lambda p: f"endpoint=[::1]:{p}"),
            st.integers(0, 3).map(lambda n: f"persistent_keepalive_interval={n}"),
            st.sampled_from(PREFIXES).map(lambda p: f"allowed_ip={p}")))

    lines = [device_line() for _ in range(draw(st.integers(0, 4)))]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"public_key={draw(st.sampled_from(POOL)).hex()}")
        lines += [peer_line() for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):                     # one line broken, or one bad line put in
        at = draw(st.integers(0, len(lines)))
        bad = draw(uapi_bad_line())
        if at < len(lines) and draw(st.booleans()):
            lines[at] = bad
        else:
            lines.insert(at, bad)
    return lines


@fuzz(200)
@given(st.one_of(st.lists(uapi_bad_line(), max_size=10),
                 uapi_set_lines(51820)))
def test_uapi_parse_set_gives_operations_or_an_errno(lines):
    """Lines framed as a `set=1` request: the framer and parse_set give
    operations or a UapiError (EPROTO for a line without '=' or an empty
    one, EINVAL for the rest); no other exception. Accepted operations
    survive format_set -> framer -> parse_set unchanged, and a refusal
    never quotes a private or preshared key's hex."""
    data = ("set=1\n" + "".join(l + "\n" for l in lines) + "\n").encode("utf-8", "surrogatepass")
    try:
        req = read_request(data)
        ops = parse_set(req.lines)
    except UapiError as e:
        assert e.errno in (EINVAL, EPROTO), e
        for line in lines:
            key, _, value = line.partition("=")
            if key in ("private_key", "preshared_key") and len(value) >= 16:
                assert value not in str(e)
        return
    assert parse_set(read_request(format_set(ops).encode()).lines) == ops


@fuzz(200)
@given(st.one_of(st.binary(max_size=200),
                 st.lists(st.sampled_from([b"get=1\n", b"set=1\n", b"\n", b"\r\n", b"x=1\n",
                                           b"listen_port=1\r\n", b"\xff\n", b"a" * 20,
                                           b"set=1", b"get=1 \n"]), max_size=12)
                 .map(b"".join)),
       st.lists(st.integers(0, 200), max_size=6))
def test_uapi_framer_gives_requests_or_an_errno_however_the_bytes_arrive(data, cuts):
    """Any bytes, in any pieces, through a framer with small limits:
    requests or a UapiError (EPROTO, EINVAL, EMSGSIZE); the same requests
    and the same errno whether the bytes come at once or in pieces."""
    def run(pieces):
        reader, got = RequestReader(max_line=24, max_request=64), []
        try:
            for piece in pieces:
                got += reader.feed(piece)
            reader.close()
        except UapiError as e:
            assert e.errno in (EPROTO, EINVAL, EMSGSIZE), e
            return None, e.errno
        return got, 0
    whole = run([data])
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    split = run([data[a:b] for a, b in zip(bounds, bounds[1:])])
    assert split[1] == whole[1]
    if whole[1] == 0:
        assert split[0] == whole[0]


@pytest.mark.parametrize("line,op", [
    ("listen_port=" + "9" * 5000, None), ("fwmark=" + "9" * 5000, None),
    ("fwmark=" + "0" * 5000 + "1", SetFwmark(1)),                   # Go's ParseUint takes it
    ("listen_port=" + "0" * 30 + "65535", SetListenPort(65535)),
])
def test_uapi_numbers_of_thousands_of_digits(line, op):
    """A number line fits MAX_LINE_BYTES with thousands of digits: an
    errno, never int()'s own ValueError (fixed in uapi._uint)."""
    if op is None:
        with pytest.raises(UapiError) as e:
            parse_set([line])
        assert e.value.errno == EINVAL
    else:
        assert parse_set([line]) == [op]


# -- against a device: a reference model of what a `set` leaves

DEVICE_KEY = PrivateKey(bytes(range(32))).clamped()
SEED = ["fwmark=42", "jc=4", "jmin=40", "jmax=70", "s1=15", "s2=18", "s3=20", "s4=8",
        "h1=1000000-1000999", "h2=2000000-2000999", "h3=3000000-3000999", "h4=4000000-4000999",
        f"public_key={POOL[0].hex()}", f"preshared_key={'04' * 32}", "endpoint=127.0.0.1:9",
        "allowed_ip=10.0.0.0/24", "allowed_ip=fd00::/64",
        f"public_key={POOL[1].hex()}", "allowed_ip=10.0.1.0/24"]


@contextlib.contextmanager
def uapi_daemon(max_peers: int = 16):
    """A Daemon answering UAPI requests for an Interface over a native
    device (no root: inner packets to /dev/null, UDP on loopback)."""
    from dataplane.daemon import Daemon
    from dataplane.device import Device
    from dataplane.interface import Interface
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    device = Device([null], [os.dup(udp.fileno())], [-1], 1420, max_peers=max_peers)
    d = Daemon(Config("dpfz0", InterfaceConfig(DEVICE_KEY)))
    d.iface = Interface("dpfz0", PrivateKey(DEVICE_KEY.reveal()), device, udp.getsockname()[1])
    try:
        yield d
    finally:
        for s in d.sockets:
            s.close()
        device.close()
        udp.close()


def uapi(d, operation: str, lines=()) -> str:
    return d.uapi_request(Request(operation, tuple(lines)))


def model_state(text: str) -> dict:
    """What a device holds, as the model compares it: the `get` reply's
    settings (not its counters); peers by key, allowed IPs as a set."""
    s = parse_get(text)
    return {"private_key": s.private_key, "fwmark": s.fwmark, "obfuscation": s.obfuscation,
            "peers": {p.public_key: {"psk": p.preshared_key, "endpoint": p.endpoint,
                                     "keepalive": p.persistent_keepalive_interval,
                                     "allowed": set(p.allowed_ips)} for p in s.peers}}


def model_apply(state: dict, ops: list) -> dict:
    """The reference: a `set` applied to `state` as WireGuard's UAPI
    documents it (device keys, then each peer's lines; an allowed IP moves
    from whoever held it; our own key is no peer)."""
    state = {"private_key": state["private_key"], "fwmark": state["fwmark"],
             "obfuscation": state["obfuscation"],
             "peers": {k: {**v, "allowed": set(v["allowed"])} for k, v in state["peers"].items()}}
    peers = state["peers"]
    settings_ = {op.key: op.value for op in ops if isinstance(op, SetObfuscation)}
    if settings_:
        state["obfuscation"] = Obfuscation.from_settings(settings_, base=state["obfuscation"],
                                                         lower=True)
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, SetPrivateKey):
            state["private_key"] = op.private_key
            if op.private_key is not None:
                peers.pop(op.private_key.public_key(), None)
        elif isinstance(op, SetFwmark):
            state["fwmark"] = op.fwmark
        elif isinstance(op, ReplacePeers):
            peers.clear()
        elif isinstance(op, SelectPeer):
            j = i + 1
            while j < len(ops) and not isinstance(ops[j], SelectPeer):
                j += 1
            block, key, i = ops[i + 1:j], op.public_key, j
            own = state["private_key"]
            if any(isinstance(o, RemovePeer) for o in block):
                peers.pop(key, None)
                continue
            if any(isinstance(o, UpdateOnly) for o in block) and key not in peers or \
                    own is not None and key == own.public_key():
                continue
            peer = peers.setdefault(key, {"psk": None, "endpoint": None, "keepalive": 0,
                                          "allowed": set()})
            for o in block:
                if isinstance(o, SetPresharedKey):
                    peer["psk"] = o.preshared_key
                elif isinstance(o, SetEndpoint):
                    peer["endpoint"] = o.endpoint
                elif isinstance(o, SetPersistentKeepalive):
                    peer["keepalive"] = o.interval
                elif isinstance(o, ReplaceAllowedIPs):
                    peer["allowed"].clear()
                elif isinstance(o, AddAllowedIP):
                    for other in peers.values():
                        other["allowed"].discard(o.network)
                    peer["allowed"].add(o.network)
            continue
        i += 1
    return state


@fuzz(150)
@given(st.data())
def test_uapi_a_set_does_what_the_model_says_or_changes_nothing(data):
    """A device holding a profile and two peers gets a generated `set`
    (often with one line broken). The reply is `errno=0` or `errno=-N`,
    never EIO (which the daemon answers for an exception it did not
    expect); a refused set leaves the `get` reply as it was, byte for byte;
    an applied one leaves what the reference model says."""
    with uapi_daemon() as d:
        assert uapi(d, "set", SEED) == "errno=0\n\n"
        lines = data.draw(uapi_set_lines(d.iface.listen_port))
        before = uapi(d, "get")
        reply = uapi(d, "set", lines)
        after = uapi(d, "get")
        assert re.fullmatch(r"errno=(0|-[1-9][0-9]*)\n\n", reply), reply
        assert reply != f"errno={-EIO}\n\n"
        if reply != "errno=0\n\n":
            assert after == before
            return
        assert model_state(after) == model_apply(model_state(before), parse_set(lines))


def test_uapi_a_set_refused_for_lack_of_room_changes_nothing():
    with uapi_daemon(max_peers=4) as d:
        before = uapi(d, "get")
        lines = ["fwmark=5"]
        for n, key in enumerate(POOL[:5]):              # one more than there is room for
            lines += [f"public_key={key.hex()}", f"allowed_ip=10.0.{n}.0/24"]
        reply = uapi(d, "set", lines)
        assert reply != "errno=0\n\n"
        assert uapi(d, "get") == before


def test_uapi_a_listen_port_in_use_is_eaddrinuse_and_changes_nothing():
    with uapi_daemon() as d, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        before = uapi(d, "get")
        reply = uapi(d, "set", ["fwmark=9", "s1=10", f"listen_port={busy.getsockname()[1]}"])
        assert reply == f"errno={-errno.EADDRINUSE}\n\n"
        assert uapi(d, "get") == before


# =============================================================== 3. the API's request bodies

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, 0.5,
                     -0.0, 1e308, 180, 180.0001, "", "on_receive", "now", "10.0.0.2/32",
                     "::/0", "10.0.0.1/33", "127.0.0.1:51820", "[::1]:1", "[::1]", "1-4", "5-3",
                     "<t>", "<x>", str(POOL[0]), b64(bytes(32)), b64(keys.LOW_ORDER_POINTS[0]),
                     "put_peer", "delete_peer", "put_session", "delete_session"]))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=10)
KEYS_B64 = st.one_of(st.sampled_from([str(k) for k in POOL]),
                     st.binary(min_size=32, max_size=32).map(b64))


@st.composite
def session_body(draw) -> dict:
    body = {"receiver_index": draw(st.integers(1, 2**32 - 1)),
            "sender_index": draw(st.integers(0, 2**32 - 1)),
            "send_key": draw(KEYS_B64), "receive_key": draw(KEYS_B64)}
    for name, values in (("lifetime", st.one_of(st.integers(1, 180), st.floats(0.001, 180))),
                         ("activate", st.sampled_from(["on_receive", "now"])),
                         ("generation", st.integers(0, 2**63 - 1))):
        if draw(st.booleans()):
            body[name] = draw(values)
    return body


@st.composite
def peer_body(draw, with_key: bool = False) -> dict:
    body = {"allowed_ips": draw(st.lists(st.sampled_from(PREFIXES + ["10.9.0.1"]), max_size=3))}
    if with_key:
        body["public_key"] = draw(KEYS_B64)
    for name, values in (("preshared_key", st.one_of(st.none(), KEYS_B64)),
                         ("endpoint", st.sampled_from([None, "127.0.0.1:51820", "[::1]:9"])),
                         ("persistent_keepalive", st.integers(0, 65535)),
                         ("generation", st.integers(0, 50)),
                         ("replace", st.booleans()),
                         ("session", session_body())):
        if draw(st.booleans()):
            body[name] = draw(values)
    return body


@st.composite
def patch_body(draw) -> dict:
    body = {}
    for name, values in (("private_key", st.one_of(st.none(), KEYS_B64)),
                         ("listen_port", st.integers(0, 65535)),
                         ("fwmark", st.integers(0, 2**32 - 1)),
                         ("generation", st.integers(0, 50)),
                         ("accept_plain_wireguard", st.one_of(st.none(), st.booleans())),
                         ("obfuscation", st.dictionaries(
                             st.sampled_from(model.OBFUSCATION_FIELDS),
                             st.one_of(st.none(), st.integers(0, 200),
                                       st.sampled_from(["100-200", "<t>", "7", ""])),
                             max_size=4))):
        if draw(st.booleans()):
            body[name] = draw(values)
    return body


@st.composite
def bulk_body(draw) -> dict:
    op = draw(st.sampled_from(model.BULK_OPS))
    body = {"op": op, "public_key": draw(KEYS_B64)}
    if op == "put_peer":
        body.update(draw(peer_body()))
    elif op == "put_session":
        body.update(draw(session_body()))
    elif draw(st.booleans()):
        body["generation"] = draw(st.integers(0, 50))
    return body


@st.composite
def mutated(draw, valid: st.SearchStrategy) -> object:
    """A valid body with fields replaced by any JSON, removed or added, or
    (now and then) any JSON value instead."""
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON)
    body = draw(valid)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        action = draw(st.integers(0, 4))
        if action <= 2 and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(JSON)
        elif action == 3 and body:
            del body[draw(st.sampled_from(sorted(body)))]
        else:
            body[draw(st.text(max_size=12))] = draw(JSON)
    return body


SECRET_FIELDS = ("public_key", "preshared_key", "private_key", "send_key", "receive_key",
                 "endpoint")


def check_api_error(e: ApiError, body: object, known: tuple[str, ...]) -> None:
    """A refusal as the API documents it: 4xx, naming the field (a known
    one, or the unknown key given), the message starting with it, and no
    key or endpoint of the body quoted back."""
    assert 400 <= e.status < 500, (e.status, e.message)
    assert e.field is not None, e.message
    assert e.message.startswith(f"{e.field}:"), (e.field, e.message)
    assert e.body()["field"] == e.field
    if not (isinstance(body, dict) and e.field in body):
        assert re.split(r"[.\[]", e.field)[0] in known + ("body",), e.field
    for value in _secret_values(body):
        assert value not in e.message, (value, e.message)


def _secret_values(body: object):
    if isinstance(body, dict):
        for k, v in body.items():
            if k in SECRET_FIELDS and isinstance(v, str) and len(v) >= 12:
                yield v
            yield from _secret_values(v)


MODELS = {
    "peer": (lambda b: model.peer(b, POOL[0]), mutated(peer_body(with_key=False)),
             model.PEER_FIELDS),
    "peer without a key in the path": (model.peer, mutated(peer_body(with_key=True)),
                                       model.PEER_FIELDS),
    "session": (model.session, mutated(session_body()), model.SESSION_FIELDS),
    "interface patch": (model.interface_patch, mutated(patch_body()), model.INTERFACE_FIELDS),
    "obfuscation": (model.obfuscation_settings, mutated(patch_body().map(
        lambda b: b.get("obfuscation", {}))), ("obfuscation",)),
    "bulk line": (lambda b: model.bulk_line(b, 1), mutated(bulk_body()),
                  ("op",) + model.PEER_FIELDS + model.SESSION_FIELDS),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_api_model_takes_a_body_or_refuses_it_naming_the_field(name):
    parse, bodies, known = MODELS[name]

    @fuzz(200)
    @given(bodies)
    def run(body):
        try:
            parse(body)
        except ApiError as e:
            check_api_error(e, body, known)
    run()


# -- over HTTP, against a native device: never a 500, nothing changed by a refusal

@pytest.fixture(scope="module")
def world():
    w = ApiWorld(max_peers=2048)
    yield w
    w.close()


def api_state(w: ApiWorld) -> tuple:
    """What requests can change, without counters and clocks."""
    _, iface = w.client.request("GET", "/v1/interface")
    _, listing = w.client.request("GET", "/v1/peers")
    peers = []
    for p in listing["peers"]:
        session = dict(p["session"] or {})
        session.pop("expired", None)
        peers.append((p["public_key"], p["has_preshared_key"], tuple(p["allowed_ips"]),
                      p["endpoint"], p["persistent_keepalive"], p["generation"], p["managed"],
                      tuple(sorted(session.items()))))
    return iface, sorted(peers)


BODY_WIDE = ("not JSON", "the batch is empty")


def http_outcome(w: ApiWorld, method: str, path: str, body: bytes,
                 content_type: str = "application/json") -> None:
    before = api_state(w)
    status, answer = w.client.request(method, path, body, content_type=content_type,
                                      ok=range(100, 600))
    assert status in (200, 201, 204) or 400 <= status < 500, (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and answer.get("error"), answer
        assert "field" in answer or any(w_ in answer["error"] for w_ in BODY_WIDE), answer
        assert api_state(w) == before


def _json_bytes(value) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@fuzz(120)
@given(st.sampled_from(POOL[:4]), mutated(peer_body(with_key=False)))
def test_api_http_put_peer(world, key, body):
    http_outcome(world, "PUT", f"/v1/peers/{urllib.parse.quote(str(key), safe='')}",
                 _json_bytes(body))


@fuzz(100)
@given(st.sampled_from(POOL[:4]), mutated(session_body()))
def test_api_http_put_session(world, key, body):
    http_outcome(world, "PUT", f"/v1/peers/{urllib.parse.quote(str(key), safe='')}/session",
                 _json_bytes(body))


@fuzz(100)
@given(mutated(patch_body()))
def test_api_http_patch_interface(world, body):
    http_outcome(world, "PATCH", "/v1/interface", _json_bytes(body))


@st.composite
def bulk_lines(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b""                                   # blank lines are skipped
    if kind == 1:
        return draw(st.binary(max_size=12)).replace(b"\n", b"")
    # one bad line refuses the batch: most lines are valid, for batches that apply
    return _json_bytes(draw(mutated(bulk_body()) if kind < 5 else bulk_body()))


@fuzz(100)
@given(st.lists(bulk_lines(), min_size=1, max_size=4))
def test_api_http_bulk(world, lines):
    http_outcome(world, "POST", "/v1/bulk", b"\n".join(lines) + b"\n",
                 content_type="application/x-ndjson")


@fuzz(60)
@given(st.text(min_size=1, max_size=60))
def test_api_http_any_key_in_the_path(world, text):
    assume(text not in (".", ".."))             # path segments a URL resolves away
    status, answer = world.client.request(
        "GET", f"/v1/peers/{urllib.parse.quote(text.encode('utf-8', 'surrogatepass'), safe='')}",
        ok=range(100, 600))
    if "{" in text or "}" in text:      # aiohttp's {public_key} segment excludes braces:
        assert status == 404, (status, answer)      # no route, before the API is asked
        return
    assert status == 200 or (400 <= status < 500 and answer.get("field") == "public_key"), \
        (status, answer)


def test_api_patch_listen_port_in_use_is_a_client_error():
    with uapi_daemon() as d, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        ctrl = Controller(d.iface, lambda a, r: None, lambda: {}, d._api_listen_port,
                          d._apply_fwmark)
        with pytest.raises(ApiError) as e:
            ctrl.patch_interface(model.interface_patch({"listen_port": busy.getsockname()[1]}))
        assert 400 <= e.value.status < 500 and e.value.field == "listen_port"


# =============================================================== 4. handshake messages

COOKIE = bytes(range(16))


class Pair:
    """Two identities that know each other, a valid initiation (with mac2,
    as under load), the response to it and a cookie reply to the
    initiation; and the receiver's checks for each."""

    def __init__(self, a_secret: bytes, b_secret: bytes, psk: bytes, index: int, tau: bytes):
        self.a_pub, self.b_pub = keys.public_key(a_secret), keys.public_key(b_secret)
        self.a = noise.Handshake(a_secret, lambda p: psk if p == self.b_pub else None)
        self.b = noise.Handshake(b_secret, lambda p: psk if p == self.a_pub else None)
        self.initiation, self.state = self.a.create_initiation(self.b_pub, index, COOKIE)
        self.response, _ = self.b.create_response(self.b.consume_initiation(self.initiation),
                                                  index ^ 0x5A5A5A5A, COOKIE)
        self.tau = tau
        self.cookie_reply = noise.create_cookie_reply(tau, index, self.state.mac1, self.b_pub)

    @staticmethod
    def _kind(msg: bytes):
        found = PLAIN.classify(msg)        # the model of the data path's classifier
        return found[0] if found is not None and found[1] == 0 else None

    def takes_initiation(self, msg: bytes, under_load: bool = True) -> bool:
        """As Interface._handshake_message: classified, mac1, (under load)
        mac2, then consumed."""
        if self._kind(msg) != noise.MSG_INITIATION or not self.b.check_mac1(msg):
            return False
        if under_load and not noise.check_mac2(msg, COOKIE):
            return False
        try:
            self.b.consume_initiation(msg)
        except noise.HandshakeError:
            return False
        return True

    def takes_response(self, msg: bytes, under_load: bool = True) -> bool:
        if self._kind(msg) != noise.MSG_RESPONSE or not self.a.check_mac1(msg):
            return False
        if under_load and not noise.check_mac2(msg, COOKIE):
            return False
        try:
            self.a.consume_response(msg, self.state)
        except noise.HandshakeError:
            return False
        return True

    def takes_cookie_reply(self, msg: bytes) -> bool:
        """As Interface._cookie_reply: classified, the receiver index names
        the pending handshake, then decrypted."""
        if self._kind(msg) != noise.MSG_COOKIE_REPLY or \
                struct.unpack_from("<I", msg, 4)[0] != self.state.sender_index:
            return False
        try:
            return noise.consume_cookie_reply(msg, self.b_pub, self.state.mac1) == self.tau
        except noise.HandshakeError:
            return False


PAIRS = st.builds(Pair, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
                  st.one_of(st.just(bytes(32)), st.binary(min_size=32, max_size=32)),
                  st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16))
FIXED = Pair(SECRETS[0], SECRETS[1], bytes(32), 0x01020304, bytes(16))


def flip(msg: bytes, bit: int) -> bytes:
    out = bytearray(msg)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def refused(fn, *args) -> None:
    """The module's error, nothing else, and no result."""
    with pytest.raises(noise.HandshakeError):
        fn(*args)


@fuzz(300)
@given(st.one_of(st.binary(max_size=200),
                 st.sampled_from([noise.INITIATION_LEN, noise.RESPONSE_LEN,
                                  noise.COOKIE_REPLY_LEN]).flatmap(
                     lambda n: st.binary(min_size=n, max_size=n)),
                 st.tuples(st.sampled_from(keys.LOW_ORDER_POINTS), st.binary(min_size=108,
                                                                           max_size=108))
                 .map(lambda t: struct.pack("<II", 1, 7) + t[0] + t[1])))
def test_noise_random_bytes_are_refused(data):
    """Random bytes (random messages of the exact sizes, an initiation
    with a low-order ephemeral): HandshakeError or False, never a crash."""
    p = FIXED
    assert p.b.check_mac1(data) in (True, False) and noise.check_mac2(data, COOKIE) in (True,
                                                                                       False)
    refused(p.b.consume_initiation, data)
    refused(p.a.consume_response, data, p.state)
    refused(noise.consume_cookie_reply, data, p.b_pub, p.state.mac1)
    assert not (p.takes_initiation(data) or p.takes_response(data)
                or p.takes_cookie_reply(data))


@fuzz(100)
@given(PAIRS, st.sampled_from(["initiation", "response", "cookie_reply"]),
       st.one_of(st.integers(-200, -1), st.binary(min_size=1, max_size=64)))
def test_noise_truncated_or_extended_messages_are_refused(p, kind, change):
    msg = getattr(p, kind)
    assert getattr(p, f"takes_{kind}")(msg)                 # the message itself is valid
    bad = msg[:change] if isinstance(change, int) else msg + change
    assert not getattr(p, f"takes_{kind}")(bad)
    consume = {"initiation": lambda m: p.b.consume_initiation(m),
               "response": lambda m: p.a.consume_response(m, p.state),
               "cookie_reply": lambda m: noise.consume_cookie_reply(m, p.b_pub, p.state.mac1)}
    refused(consume[kind], bad)


@fuzz(150)
@given(PAIRS, st.sampled_from(["initiation", "response", "cookie_reply"]), st.data())
def test_noise_a_valid_message_with_one_bit_flipped_is_never_taken(p, kind, data):
    msg = getattr(p, kind)
    takes = getattr(p, f"takes_{kind}")
    assert takes(msg)
    assert not takes(flip(msg, data.draw(st.integers(0, 8 * len(msg) - 1))))


def test_noise_every_single_bit_flip_of_each_message_is_refused():
    """All of them, for one pair: the receiver under load refuses every
    flipped message; without load (mac2 unchecked, as in WireGuard) only
    flips in mac2 pass, and the consuming functions alone refuse every flip
    their own checks cover: the AEAD parts, and for a response its mac1."""
    p = FIXED
    mac2 = {"initiation": range(8 * noise.INITIATION_MAC2_OFF, 8 * noise.INITIATION_LEN),
            "response": range(8 * noise.RESPONSE_MAC2_OFF, 8 * noise.RESPONSE_LEN)}
    for kind in ("initiation", "response", "cookie_reply"):
        msg, takes = getattr(p, kind), getattr(p, f"takes_{kind}")
        for bit in range(8 * len(msg)):
            bad = flip(msg, bit)
            assert not takes(bad), (kind, bit)
            if kind != "cookie_reply":
                assert takes(bad, under_load=False) == (bit in mac2[kind]), (kind, bit)
    for bit in range(8 * 8, 8 * noise.INITIATION_MAC1_OFF):          # ephemeral, static, time
        refused(p.b.consume_initiation, flip(p.initiation, bit))
    for bit in range(8 * noise.RESPONSE_MAC2_OFF):
        refused(p.a.consume_response, flip(p.response, bit), p.state)
    for bit in range(8 * 8, 8 * noise.COOKIE_REPLY_LEN):              # nonce, cookie, tag
        refused(noise.consume_cookie_reply, flip(p.cookie_reply, bit), p.b_pub, p.state.mac1)
