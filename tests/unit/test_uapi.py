"""The UAPI text protocol: framing and its limits, `set` parsing with
wireguard-go's errno values, the `get` reply byte for byte as wireguard-go
(and, for the AmneziaWG keys, amneziawg-go) writes it, round trips, the
daemon's handling of AmneziaWG keys on a real device, and `wg` itself
talking to a fake device built from these functions (when `wg` is installed
and /var/run/wireguard is ours to write)."""
import dataclasses
import errno
import io
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest
from hypothesis import given, settings, strategies as st

from dataplane import keys
from dataplane.config import Config, Endpoint, InterfaceConfig, parse_config
from dataplane.keys import PresharedKey, PrivateKey, PublicKey
from dataplane.obfuscation import PLAIN, HeaderRange, Obfuscation
from dataplane.uapi import (MAX_LINE_BYTES, AddAllowedIP, DeviceState, PeerState,
                            ReplaceAllowedIPs, ReplacePeers, RemovePeer, Request, RequestReader,
                            SelectPeer, SetEndpoint, SetFwmark, SetListenPort, SetObfuscation,
                            SetPersistentKeepalive, SetPresharedKey, SetPrivateKey,
                            SetProtocolVersion, UapiError, UpdateOnly, format_get, format_set,
                            format_status, merge_obfuscation, parse_get, parse_set, read_request)

PRIV_HEX = "a8dac1d8a70a751f0f699fb14ba1cff7b79cf4fbd8f09f44c6e4160f56d7c7b7"
PEER_HEX = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33"
PSK_HEX = "04" * 32
PEER2 = keys.public_key(bytes([9] * 32))
ZERO_HEX = "0" * 64


def net(text):
    return ipaddress.ip_network(text)


def uapi_error(fn, *args):
    with pytest.raises(UapiError) as e:
        fn(*args)
    return e.value


# ---------------------------------------------------------------- framing

def test_frames_get_and_set():
    assert read_request(b"get=1\n\n") == Request("get", ())
    req = read_request(b"set=1\nlisten_port=1\nfwmark=2\n\n")
    assert req == Request("set", ("listen_port=1", "fwmark=2"))
    assert read_request(b"") is None


def test_several_requests_in_one_feed_and_byte_by_byte():
    data = b"get=1\n\nset=1\nlisten_port=1\n\nget=1\n\n"
    expected = [Request("get"), Request("set", ("listen_port=1",)), Request("get")]
    assert RequestReader().feed(data) == expected
    reader, got = RequestReader(), []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
        assert reader.idle == (i + 1 in (7, 28, len(data)))
    assert got == expected
    reader.close()


@given(st.lists(st.integers(0, 60), max_size=8))
def test_any_split_frames_the_same(cuts):
    data = (b"set=1\nlisten_port=1\r\npublic_key=" + PEER_HEX.encode() +
            b"\nremove=true\n\nget=1\n\n")
    reader, got, last = RequestReader(), [], 0
    for cut in sorted(set(c for c in cuts if c < len(data))) + [len(data)]:
        got += reader.feed(data[last:cut])
        last = cut
    assert got == [Request("set", ("listen_port=1", f"public_key={PEER_HEX}", "remove=true")),
                   Request("get")]


def test_carriage_returns_are_dropped_as_go_scanner_does():
    assert read_request(b"set=1\nlisten_port=1\r\n\r\n") == Request("set", ("listen_port=1",))


def test_streams_read_one_request_and_no_further():
    for stream in (io.BytesIO(b"get=1\n\nset=1\nfwmark=1\n\n"),
                   io.StringIO("get=1\n\nset=1\nfwmark=1\n\n")):
        assert read_request(stream) == Request("get")
        assert read_request(stream) == Request("set", ("fwmark=1",))
        assert read_request(stream) is None


def test_request_repr_hides_the_lines():
    req = read_request(f"set=1\nprivate_key={PRIV_HEX}\n\n".encode())
    assert PRIV_HEX not in repr(req) and repr(req) == "Request('set', <1 lines>)"


@pytest.mark.parametrize("data,code,message", [
    (b"bogus=1\n\n", errno.EPROTO, "expected get=1 or set=1"),
    (b"\n", errno.EPROTO, "expected get=1 or set=1"),
    (b"get=1 \n\n", errno.EPROTO, "expected get=1 or set=1"),
    (b"get=2\n\n", errno.EPROTO, "expected get=1 or set=1"),
    (b"get=1\nx\n\n", errno.EINVAL, "get=1 takes no lines"),
    (b"set=1\nlisten_port=1\n", errno.EPROTO, "closed in the middle of a request"),
    (b"set=1", errno.EPROTO, "closed in the middle of a request"),
    (b"set=1\nlisten_port=\xff\n\n", errno.EPROTO, "not UTF-8"),
    (b"get=1\n\nget=1\n\n", errno.EPROTO, "holds 2 requests"),
    (b"set=1\n" + b"x" * (MAX_LINE_BYTES + 1) + b"\n\n", errno.EMSGSIZE,
     f"longer than {MAX_LINE_BYTES} bytes"),
    (b"set=1\n" + b"x" * 9000, errno.EMSGSIZE, f"longer than {MAX_LINE_BYTES} bytes"),
    (b"x" * 9000, errno.EMSGSIZE, f"longer than {MAX_LINE_BYTES} bytes"),
])
def test_framing_errors(data, code, message):
    err = uapi_error(read_request, data)
    assert err.errno == code and message in str(err)


def test_lines_fit_the_longest_signature_packet_awg_sends():
    # awg refuses I1..I5 values of 5 KiB or more
    line = "i1=" + "<b 0x" + "ab" * 2554 + ">  <t>"
    assert len(line) == MAX_LINE_BYTES == 3 + 5 * 1024 - 1
    assert read_request(f"set=1\n{line}\n\n".encode()).lines == (line,)
    assert parse_set([line]) == [SetObfuscation("i1", line[3:])]
    longer = line.replace("  ", "   ")
    assert uapi_error(read_request, f"set=1\n{longer}\n\n".encode()).errno == errno.EMSGSIZE
    assert "5120 characters" in str(uapi_error(parse_set, [longer]))


def test_request_size_limit():
    line = b"allowed_ip=10.0.0.0/8\n"
    big = b"set=1\n" + line * 100 + b"\n"
    assert len(read_request(big, max_request=len(big)).lines) == 100
    err = uapi_error(read_request, big, 1024, len(big) - 1)
    assert err.errno == errno.EMSGSIZE and "larger than" in str(err)
    # A stream that never ends its request is cut off too.
    err = uapi_error(read_request, io.BytesIO(b"set=1\n" + line * 10**5), 1024, 1 << 16)
    assert err.errno == errno.EMSGSIZE
    with pytest.raises(UapiError, match="longer than 64 bytes"):
        read_request(io.StringIO("set=1\n" + "x" * 100 + "\n\n"), 64)


def test_status_lines_are_negative_errnos():
    assert format_status() == "errno=0\n\n"
    assert format_status(errno.EINVAL) == "errno=-22\n\n"
    err = UapiError(errno.EPROTO, "bad")
    assert err.response() == "errno=-71\n\n"
    assert str(err) == "bad (errno 71, EPROTO)"


# ---------------------------------------------------------------- set

def test_parse_set_everything():
    lines = [f"private_key={PRIV_HEX}", "listen_port=51820", "fwmark=4294967295",
             "replace_peers=true",
             f"public_key={PEER_HEX.upper()}", "update_only=true", f"preshared_key={PSK_HEX}",
             "endpoint=[fe80::1%eth0]:51820", "persistent_keepalive_interval=65535",
             "replace_allowed_ips=true", "allowed_ip=10.1.2.3/24", "allowed_ip=::/0",
             "protocol_version=1",
             f"public_key={PEER2.hex()}", "remove=true",
             f"public_key={PEER2.hex()}", f"preshared_key={ZERO_HEX}",
             "endpoint=192.0.2.1:1", "persistent_keepalive_interval=0"]
    ops = parse_set(lines)
    assert ops == [
        SetPrivateKey(PrivateKey(bytes.fromhex(PRIV_HEX))), SetListenPort(51820),
        SetFwmark(2**32 - 1), ReplacePeers(),
        SelectPeer(PublicKey.from_hex(PEER_HEX)), UpdateOnly(),
        SetPresharedKey(PresharedKey(bytes.fromhex(PSK_HEX))),
        SetEndpoint(Endpoint("fe80::1%eth0", 51820)), SetPersistentKeepalive(65535),
        ReplaceAllowedIPs(), AddAllowedIP(net("10.1.2.0/24")), AddAllowedIP(net("::/0")),
        SetProtocolVersion(1),
        SelectPeer(PEER2), RemovePeer(),
        SelectPeer(PEER2), SetPresharedKey(None), SetEndpoint(Endpoint("192.0.2.1", 1)),
        SetPersistentKeepalive(0)]
    assert parse_set([f"private_key={ZERO_HEX}"]) == [SetPrivateKey(None)]
    assert parse_set([]) == []


CLIENT = Obfuscation.from_settings({
    "Jc": 4, "Jmin": 40, "Jmax": 70, "S1": 15, "S2": 18, "S3": 20, "S4": 8,
    "H1": "1000000-1000999", "H2": "2000000-2000999", "H3": "3000000-3000999",
    "H4": "4000000-4000999", "I1": "<b 0xc0ffee><r 12><t>"})
# What amneziawg-go v0.2.19 (and `awg set`) send for CLIENT, in its order.
CLIENT_LINES = ["jc=4", "jmin=40", "jmax=70", "s1=15", "s2=18", "s3=20", "s4=8",
                "h1=1000000-1000999", "h2=2000000-2000999", "h3=3000000-3000999",
                "h4=4000000-4000999", "i1=<b 0xc0ffee><r 12><t>"]


def test_parse_set_amneziawg_keys():
    ops = parse_set(["listen_port=1", *CLIENT_LINES, "i2=", "h4=4",
                     f"public_key={PEER_HEX}", "remove=true"])
    assert ops[0] == SetListenPort(1)
    assert ops[1:15] == [SetObfuscation(*line.split("=", 1)) for line in CLIENT_LINES] + \
        [SetObfuscation("i2", ""), SetObfuscation("h4", "4")]
    assert ops[15:] == [SelectPeer(PublicKey.from_hex(PEER_HEX)), RemovePeer()]
    # together, onto what a device holds; the last line of a key wins
    merged = merge_obfuscation(ops[:13], PLAIN)
    assert merged == CLIENT
    assert merge_obfuscation(ops, PLAIN).h4 == HeaderRange(4, 4)
    assert merge_obfuscation([SetObfuscation("s4", "")], CLIENT) == \
        Obfuscation.from_settings({"S4": 0}, base=CLIENT)
    assert merge_obfuscation([SetListenPort(1)], CLIENT) == CLIENT


@pytest.mark.parametrize("ops,message", [
    ([SetObfuscation("h2", "1000500")], "h2: 1000500 overlaps h1 = 1000000-1000999"),
    ([SetObfuscation("jmin", "80")], "jmin: 80 is above Jmax (70)"),
    ([SetObfuscation("jmax", "")], "jmax: Jc = 4 junk packets need a size"),
    ([SetObfuscation("h1", "5"), SetObfuscation("h2", "5")], "h2: 5 overlaps h1 = 5"),
])
def test_a_set_is_checked_whole_against_the_device(ops, message):
    err = uapi_error(merge_obfuscation, ops, CLIENT)
    assert err.errno == errno.EINVAL and str(err).startswith(message), str(err)


BAD_SET = [
    # (lines, errno, message)
    (["jc=-1"], errno.EINVAL, "jc: expected a count of junk packets 0..128 (0: none), got '-1'"),
    (["jc=129"], errno.EINVAL, "jc: expected a count of junk packets 0..128"),
    (["jmin=x"], errno.EINVAL, "jmin: expected a junk packet size in bytes 0..65507"),
    (["jmax=65508"], errno.EINVAL, "jmax: expected a junk packet size"),
    (["s1=65508"], errno.EINVAL, "s1: expected a padding in bytes 0..65507"),
    (["s4=-8"], errno.EINVAL, "s4: expected a padding"),
    (["h1=1-2-3"], errno.EINVAL, "h1: expected a type value N or a range A-B"),
    (["h3=4294967296"], errno.EINVAL, "h3: '4294967296': type values are 32-bit"),
    (["h4=9-1"], errno.EINVAL, "h4: '9-1': the range's start is above its end"),
    (["i1=<b 0xf>"], errno.EINVAL, "i1: <b 0xf>: <b> takes one value"),
    (["i5=<q>"], errno.EINVAL, "i5: unknown tag <q>"),
    (["i2=x<t>"], errno.EINVAL, "i2: text outside a tag: 'x'"),
    (["H1=5"], errno.EINVAL, "invalid UAPI device key 'H1'"),     # lower case only, as awg
    (["h5=5"], errno.EINVAL, "invalid UAPI device key 'h5'"),
    ([f"public_key={PEER_HEX}", "jc=4"], errno.EINVAL,
     "invalid UAPI peer key 'jc' (device keys come before the first public_key)"),
    (["listen_port=abc"], errno.EINVAL, "listen_port: 'abc' is not a number 0..65535"),
    (["listen_port=65536"], errno.EINVAL, "listen_port: '65536' is not a number"),
    (["listen_port=-1"], errno.EINVAL, "listen_port"),
    (["listen_port=+1"], errno.EINVAL, "listen_port"),
    (["listen_port= 1"], errno.EINVAL, "listen_port"),
    (["listen_port=\u0661"], errno.EINVAL, "listen_port"),     # a non-ASCII digit
    (["listen_port="], errno.EINVAL, "listen_port"),
    (["fwmark=4294967296"], errno.EINVAL, "fwmark: '4294967296' is not a number 0..4294967295"),
    (["fwmark=0x10"], errno.EINVAL, "fwmark"),
    (["private_key=abc"], errno.EINVAL, "private_key: not a valid hex key (3 characters"),
    ([f"private_key={PRIV_HEX}0"], errno.EINVAL, "private_key: not a valid hex key"),
    (["replace_peers=false"], errno.EINVAL, "replace_peers: the only value is true"),
    (["replace_peers=True"], errno.EINVAL, "replace_peers: the only value is true"),
    (["listen_port"], errno.EPROTO, "a line without '='"),
    ([""], errno.EPROTO, "an empty line inside the request"),
    (["bogus=1"], errno.EINVAL, "invalid UAPI device key 'bogus'"),
    (["remove=true"], errno.EINVAL,
     "invalid UAPI device key 'remove' (peer keys come after a public_key)"),
    ([f"public_key={PEER_HEX}", "listen_port=1"], errno.EINVAL,
     "invalid UAPI peer key 'listen_port' (device keys come before the first public_key)"),
    ([f"public_key={PEER_HEX}", "tx_bytes=0"], errno.EINVAL, "invalid UAPI peer key 'tx_bytes'"),
    ([f"public_key={ZERO_HEX}"], errno.EINVAL, "is a low-order Curve25519 point"),
    (["public_key=" + keys.LOW_ORDER_POINTS[2].hex()], errno.EINVAL, "low-order"),
    (["public_key=xyz"], errno.EINVAL, "public_key: not a valid hex key"),
    ([f"public_key={PEER_HEX}", "remove=1"], errno.EINVAL, "remove: the only value is true"),
    ([f"public_key={PEER_HEX}", "update_only=yes"], errno.EINVAL, "update_only"),
    ([f"public_key={PEER_HEX}", "replace_allowed_ips="], errno.EINVAL, "replace_allowed_ips"),
    ([f"public_key={PEER_HEX}", "preshared_key=00"], errno.EINVAL, "preshared_key: not a valid"),
    ([f"public_key={PEER_HEX}", "endpoint=192.0.2.1"], errno.EINVAL, "is not HOST:PORT"),
    ([f"public_key={PEER_HEX}", "endpoint=vpn.example.org:51820"], errno.EINVAL,
     "the host must be an IP address"),
    ([f"public_key={PEER_HEX}", "endpoint=::1:51820"], errno.EINVAL, "in brackets"),
    ([f"public_key={PEER_HEX}", "endpoint=[::1]:0"], errno.EINVAL, "the port must be 1..65535"),
    ([f"public_key={PEER_HEX}", "endpoint=[::1]:65536"], errno.EINVAL, "the port must be"),
    ([f"public_key={PEER_HEX}", "allowed_ip=10.0.0.1"], errno.EINVAL, "has no /length"),
    ([f"public_key={PEER_HEX}", "allowed_ip=10.0.0.0/33"], errno.EINVAL,
     "the prefix length must be 0..32"),
    ([f"public_key={PEER_HEX}", "allowed_ip=fd00::/129"], errno.EINVAL, "must be 0..128"),
    ([f"public_key={PEER_HEX}", "persistent_keepalive_interval=65536"], errno.EINVAL,
     "persistent_keepalive_interval"),
    ([f"public_key={PEER_HEX}", "protocol_version=2"], errno.EINVAL,
     "protocol_version: only version 1 exists"),
]


@pytest.mark.parametrize("lines,code,message", BAD_SET, ids=range(len(BAD_SET)))
def test_parse_set_errors(lines, code, message):
    err = uapi_error(parse_set, lines)
    assert err.errno == code
    assert message in str(err), str(err)


def test_parse_set_never_echoes_secrets():
    for line in (f"private_key={PRIV_HEX}00", f"private_key={PRIV_HEX[:-1]}g"):
        err = uapi_error(parse_set, [line])
        assert PRIV_HEX[:16] not in str(err)
    err = uapi_error(parse_set, [f"public_key={PEER_HEX}", f"preshared_key={PSK_HEX}0"])
    assert PSK_HEX[:16] not in str(err)
    ops = parse_set([f"private_key={PRIV_HEX}", f"public_key={PEER_HEX}",
                     f"preshared_key={PSK_HEX}"])
    assert PRIV_HEX not in repr(ops) and PSK_HEX not in repr(ops)
    with pytest.raises(TypeError, match="list of str lines"):
        parse_set("listen_port=1")


_prefixes = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network(t, strict=False)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network(t, strict=False)))
_numeric_endpoints = st.builds(
    Endpoint,
    st.one_of(st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
              st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))),
    st.integers(1, 65535))
_keys32 = st.binary(min_size=32, max_size=32)
_device_ops = st.one_of(
    st.one_of(st.none(), _keys32.filter(any).map(PrivateKey)).map(SetPrivateKey),
    st.integers(0, 65535).map(SetListenPort),
    st.integers(0, 2**32 - 1).map(SetFwmark),
    st.just(ReplacePeers()),
    st.sampled_from(CLIENT_LINES + ["i2=", "h1=7", "jc=0"]).map(
        lambda line: SetObfuscation(*line.split("=", 1))))
_peer_ops = st.one_of(
    st.just(RemovePeer()), st.just(UpdateOnly()), st.just(ReplaceAllowedIPs()),
    st.just(SetProtocolVersion(1)),
    st.one_of(st.none(), _keys32.filter(any).map(PresharedKey)).map(SetPresharedKey),
    _numeric_endpoints.map(SetEndpoint),
    st.integers(0, 65535).map(SetPersistentKeepalive),
    _prefixes.map(AddAllowedIP))
_peer_blocks = st.tuples(_keys32.map(keys.public_key).map(SelectPeer),
                         st.lists(_peer_ops, max_size=6))


@settings(max_examples=200)
@given(st.lists(_device_ops, max_size=5), st.lists(_peer_blocks, max_size=4))
def test_format_set_parse_set_round_trip(device, peers):
    ops = list(device)
    for select, rest in peers:
        ops += [select, *rest]
    text = format_set(ops)
    assert parse_set(read_request(text.encode()).lines) == ops


# ---------------------------------------------------------------- get

def test_format_get_matches_wireguard_go_byte_for_byte():
    """Captured from wireguard-go v0.0.20220316 after the set in
    test_parse_set_everything's first lines (it stores the private key
    clamped, so the last byte reads 77)."""
    state = DeviceState(
        private_key=PrivateKey(bytes.fromhex(PRIV_HEX)).clamped(),
        listen_port=51999,
        peers=(PeerState(public_key=PublicKey.from_hex(PEER_HEX),
                         endpoint=Endpoint("::1", 123), persistent_keepalive_interval=25,
                         allowed_ips=(net("10.1.2.0/24"), net("fd00::/64"))),))
    assert format_get(state) == (
        "private_key=a8dac1d8a70a751f0f699fb14ba1cff7b79cf4fbd8f09f44c6e4160f56d7c777\n"
        "listen_port=51999\n"
        "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n"
        "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
        "protocol_version=1\n"
        "endpoint=[::1]:123\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.1.2.0/24\n"
        "allowed_ip=fd00::/64\n"
        "errno=0\n"
        "\n")


def test_format_get_writes_amneziawg_keys_as_amneziawg_go_does():
    """The device lines of amneziawg-go v0.2.19's get after the set of
    CLIENT_LINES (its order: after fwmark, before the peers); h1..h4 it
    writes always, we leave out those at plain WireGuard's value."""
    state = DeviceState(listen_port=51820, fwmark=1, obfuscation=CLIENT,
                        peers=(PeerState(PEER2),))
    text = format_get(state)
    assert text.startswith("listen_port=51820\nfwmark=1\n" +
                           "".join(line + "\n" for line in CLIENT_LINES) +
                           f"public_key={PEER2.hex()}\n")
    assert parse_get(text) == state
    only_s1 = Obfuscation.from_settings({"S1": 5})
    assert format_get(DeviceState(obfuscation=only_s1)) == "s1=5\nerrno=0\n\n"
    # amneziawg-go's form of the same, with the default headers written out
    assert parse_get("s1=5\nh1=1\nh2=2\nh3=3\nh4=4\nerrno=0\n\n").obfuscation == only_s1


def test_parse_get_refuses_a_device_s_unreadable_amneziawg_values():
    for text in ("jc=x\nerrno=0\n\n", "h1=5-1\nerrno=0\n\n", "i1=<x>\nerrno=0\n\n"):
        assert uapi_error(parse_get, text).errno == errno.EPROTO


def test_format_get_device_fields():
    assert format_get(DeviceState()) == "errno=0\n\n"
    assert format_get(DeviceState(private_key=PrivateKey(bytes(32)))) == "errno=0\n\n"
    text = format_get(DeviceState(listen_port=1, fwmark=0x1234, peers=(PeerState(
        PEER2, PresharedKey(bytes.fromhex(PSK_HEX)), Endpoint("192.0.2.1", 51820),
        last_handshake_ns=1_700_000_000_123_456_789, tx_bytes=2**64 - 1, rx_bytes=5),)))
    assert text.startswith("listen_port=1\nfwmark=4660\n")
    for line in (f"preshared_key={PSK_HEX}", "endpoint=192.0.2.1:51820",
                 "last_handshake_time_sec=1700000000", "last_handshake_time_nsec=123456789",
                 f"tx_bytes={2**64 - 1}", "rx_bytes=5", "persistent_keepalive_interval=0"):
        assert f"\n{line}\n" in text
    assert "allowed_ip" not in text and text.endswith("\nerrno=0\n\n")


@pytest.mark.parametrize("state,message", [
    (DeviceState(listen_port=65536), "listen_port must be an int 0..65535"),
    (DeviceState(fwmark=-1), "fwmark must be"),
    (DeviceState(peers=(PeerState(PEER2, tx_bytes=2**64),)), "tx_bytes must be"),
    (DeviceState(peers=(PeerState(PEER2, last_handshake_ns=-1),)), "last_handshake_ns"),
    (DeviceState(peers=(PeerState(PEER2, endpoint=Endpoint("vpn.example.org", 1)),)),
     "not resolved"),
])
def test_format_get_checks_the_state(state, message):
    with pytest.raises(ValueError, match=message):
        format_get(state)


_peer_states = st.builds(
    PeerState,
    public_key=_keys32.map(keys.public_key),
    preshared_key=st.one_of(st.none(), _keys32.filter(any).map(PresharedKey)),
    endpoint=st.one_of(st.none(), _numeric_endpoints),
    last_handshake_ns=st.integers(0, 2**63 - 1),
    tx_bytes=st.integers(0, 2**64 - 1),
    rx_bytes=st.integers(0, 2**64 - 1),
    persistent_keepalive_interval=st.integers(0, 65535),
    allowed_ips=st.lists(_prefixes, max_size=5).map(tuple))
_profiles = st.one_of(st.just(PLAIN), st.just(CLIENT), st.builds(
    lambda pads, base, jc: Obfuscation.from_settings({
        **{f"s{n + 1}": p for n, p in enumerate(pads)},
        **{f"h{n + 1}": f"{base + 10 * n}-{base + 10 * n + 9}" for n in range(4)},
        "jc": jc, "jmin": 1, "jmax": 1000}, lower=True),
    st.lists(st.integers(0, 2000), min_size=4, max_size=4), st.integers(5, 2**32 - 41),
    st.integers(0, 128)))
_device_states = st.builds(
    DeviceState,
    private_key=st.one_of(st.none(), _keys32.filter(any).map(PrivateKey)),
    listen_port=st.integers(0, 65535),
    fwmark=st.integers(0, 2**32 - 1),
    obfuscation=_profiles,
    peers=st.lists(_peer_states, max_size=4).map(tuple))


@settings(max_examples=200)
@given(_device_states)
def test_format_get_parse_get_round_trip(state):
    assert parse_get(format_get(state)) == state


def test_parse_get_errors_and_unknown_keys():
    assert parse_get("bogus=4\nlisten_port=5\nerrno=0\n\n") == DeviceState(listen_port=5)
    # what a device holds is read as it is, also where this side would refuse it
    # (amneziawg-go takes jc without jmin and jmax)
    assert parse_get("jc=4\nerrno=0\n\n").obfuscation.jc == 4
    err = uapi_error(parse_get, "errno=-22\n\n")
    assert err.errno == errno.EINVAL
    assert uapi_error(parse_get, "listen_port=5\n\n").errno == errno.EPROTO
    assert uapi_error(parse_get, "errno=0\n").errno == errno.EPROTO
    assert uapi_error(parse_get, "errno=0\nlisten_port=1\n\n").errno == errno.EPROTO
    assert uapi_error(parse_get, "junk\nerrno=0\n\n").errno == errno.EPROTO


# ---------------------------------------------------------------- wg against a fake device

WG = shutil.which("wg")
SOCK_DIR = "/var/run/wireguard"


class FakeDevice:
    """A UAPI server made of this module's functions, on the socket `wg`
    looks for. Records every request and every parsed set."""

    def __init__(self, name, state):
        self.name, self.state = name, state
        self.path = f"{SOCK_DIR}/{name}.sock"
        self.requests, self.sets, self.errors = [], [], []
        self.set_errno = 0
        self.connections = 0
        self._stop = threading.Event()

    def __enter__(self):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        os.unlink(self.path)

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            self.connections += 1
            with conn:
                try:
                    self._handle(conn)
                except Exception as e:        # surfaced by the test, not lost in a thread
                    self.errors.append(e)

    def _handle(self, conn):
        conn.settimeout(5)
        reader = RequestReader()
        while True:
            data = conn.recv(65536)
            if not data:
                reader.close()
                return
            for req in reader.feed(data):
                self.requests.append(req)
                if req.operation == "get":
                    reply = format_get(self.state)
                else:
                    try:
                        self.sets.append(parse_set(req.lines))
                        reply = format_status(self.set_errno)
                    except UapiError as e:
                        reply = e.response()
                conn.sendall(reply.encode())

    def wg(self, *args, check=True, stdin=None):
        result = subprocess.run([WG, *[a.replace("NAME", self.name) for a in args]],
                                input=stdin, capture_output=True, text=True, timeout=20)
        if check:
            assert result.returncode == 0, result.stderr
        assert not self.errors, self.errors
        return result


def _can_serve():
    if WG is None:
        return "`wg` (wireguard-tools) is not installed"
    try:
        os.makedirs(SOCK_DIR, mode=0o755, exist_ok=True)
    except OSError as e:
        return f"cannot create {SOCK_DIR} ({e.strerror}); it needs root"
    if not os.access(SOCK_DIR, os.W_OK):
        return f"{SOCK_DIR} is not writable; it needs root"
    return None


SERVE_SKIP = _can_serve()
needs_fake_device = pytest.mark.skipif(SERVE_SKIP is not None, reason=SERVE_SKIP or "")

DEVICE_KEY = PrivateKey(bytes(range(32))).clamped()
PEER_PSK = PresharedKey(bytes([7] * 32))
STATE = DeviceState(
    private_key=DEVICE_KEY, listen_port=51820, fwmark=0x2a,
    peers=(PeerState(PublicKey.from_hex(PEER_HEX), PEER_PSK, Endpoint("2001:db8::1", 51820),
                     last_handshake_ns=1_700_000_000_500_000_000, tx_bytes=1000, rx_bytes=2000,
                     persistent_keepalive_interval=25,
                     allowed_ips=(net("10.0.0.2/32"), net("fd00::2/128"))),
           PeerState(PEER2, allowed_ips=(net("10.0.0.3/32"),))))


@pytest.fixture
def device():
    name = f"dpt{os.getpid() % 10**7}"
    with FakeDevice(name, STATE) as dev:
        yield dev


@needs_fake_device
def test_wg_show_dump_reads_our_get(device):
    lines = device.wg("show", "NAME", "dump").stdout.splitlines()
    assert lines[0].split("\t") == [DEVICE_KEY.reveal_base64(), str(DEVICE_KEY.public_key()),
                                    "51820", "0x2a"]
    assert lines[1].split("\t") == [str(PublicKey.from_hex(PEER_HEX)), PEER_PSK.reveal_base64(),
                                    "[2001:db8::1]:51820", "10.0.0.2/32,fd00::2/128",
                                    "1700000000", "2000", "1000", "25"]
    assert lines[2].split("\t") == [str(PEER2), "(none)", "(none)", "10.0.0.3/32", "0", "0",
                                    "0", "off"]
    assert device.requests == [Request("get")]
    assert device.connections == 2          # the liveness probe, then the get
    assert device.sets == []


@needs_fake_device
def test_stock_wg_skips_the_amneziawg_keys(device):
    """wireguard-tools v1.0.20210914 reads a get with every AmneziaWG key
    (a signature spec as long as awg sends one) as if they were not there:
    `wg show`, `dump` and `showconf` print what they print without them.
    (showconf then lacks them: `wg-quick save` would drop them.)"""
    def shown(*args) -> str:
        # `wg show` counts the handshake's age from now, in seconds: a
        # second may tick between the two calls
        return re.sub(r"latest handshake: .*", "latest handshake: -", device.wg(*args).stdout)
    plain = {args: shown(*args)
             for args in (("show", "NAME"), ("show", "NAME", "dump"), ("showconf", "NAME"))}
    assert "latest handshake: -" in plain[("show", "NAME")]
    long_i1 = "<b 0x" + "ab" * 2554 + ">  <t>"
    device.state = dataclasses.replace(STATE, obfuscation=Obfuscation.from_settings(
        {"I1": long_i1, "I5": "<rc 5>"}, base=CLIENT))
    assert "\ni1=<b 0xabab" in format_get(device.state)
    for args, text in plain.items():
        assert shown(*args) == text, args
    assert "Jc" not in plain[("showconf", "NAME")]


@needs_fake_device
def test_wg_showconf_reads_back_into_our_config(device):
    text = device.wg("showconf", "NAME").stdout
    cfg = parse_config(text, f"{device.name}.conf")
    assert cfg.interface.private_key == DEVICE_KEY
    assert cfg.interface.listen_port == 51820 and cfg.interface.fwmark == 0x2a
    assert [(p.public_key, p.preshared_key, p.endpoint, p.allowed_ips, p.persistent_keepalive)
            for p in cfg.peers] == \
        [(p.public_key, p.preshared_key, p.endpoint, p.allowed_ips,
          p.persistent_keepalive_interval) for p in STATE.peers]


def _setconf_ops(cfg):
    """What `wg setconf` sends for a parsed config (see the uapi docstring)."""
    i = cfg.interface
    ops = [SetPrivateKey(i.private_key), SetListenPort(i.listen_port or 0), SetFwmark(i.fwmark),
           ReplacePeers()]
    for p in cfg.peers:
        ops.append(SelectPeer(p.public_key))
        if p.preshared_key is not None:
            ops.append(SetPresharedKey(p.preshared_key))
        if p.endpoint is not None:
            ops.append(SetEndpoint(p.endpoint))
        if p.persistent_keepalive:
            ops.append(SetPersistentKeepalive(p.persistent_keepalive))
        ops.append(ReplaceAllowedIPs())
        ops += [AddAllowedIP(n) for n in p.allowed_ips]
    return ops


@needs_fake_device
def test_wg_setconf_of_our_file_parses_to_our_config(device, tmp_path):
    cfg = parse_config(f"""
[Interface]
PrivateKey = {DEVICE_KEY.reveal_base64()}
ListenPort = 51821
FwMark = 0x10
Address = 10.0.0.1/24

[Peer]
PublicKey = {PublicKey.from_hex(PEER_HEX)}
PresharedKey = {PEER_PSK.reveal_base64()}
AllowedIPs = 10.0.0.2/32, fd00::2/128
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PEER2}
AllowedIPs = 10.0.0.3/32, 10.1.0.0/16
Endpoint = 192.0.2.1:51820

[DataPlane]
Workers = 2
""", f"{device.name}.conf")
    path = tmp_path / "setconf.conf"
    # wg setconf takes neither wg-quick's keys nor our section.
    without_ours = cfg.to_wg_quick(include_dataplane=False)
    path.write_text("\n".join(l for l in without_ours.splitlines()
                              if not l.startswith("Address")) + "\n")
    device.wg("setconf", "NAME", str(path))
    assert device.sets == [_setconf_ops(cfg)]


@needs_fake_device
def test_wg_set_sends_what_the_docstring_says(device, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text(DEVICE_KEY.reveal_base64() + "\n")
    device.wg("set", "NAME", "listen-port", "1", "fwmark", "off", "private-key", str(keyfile),
              "peer", str(PEER2), "allowed-ips", "10.9.0.1/24,fd09::/64", "endpoint",
              "192.0.2.9:9", "persistent-keepalive", "off",
              "peer", str(PublicKey.from_hex(PEER_HEX)), "remove")
    device.wg("set", "NAME", "private-key", "/dev/null")
    assert device.sets == [
        [SetPrivateKey(DEVICE_KEY), SetListenPort(1), SetFwmark(0),
         SelectPeer(PEER2), SetEndpoint(Endpoint("192.0.2.9", 9)), SetPersistentKeepalive(0),
         ReplaceAllowedIPs(), AddAllowedIP(net("10.9.0.0/24")), AddAllowedIP(net("fd09::/64")),
         SelectPeer(PublicKey.from_hex(PEER_HEX)), RemovePeer()],
        [SetPrivateKey(None)]]


@needs_fake_device
def test_wg_syncconf_gets_then_removes_what_the_file_lacks(device, tmp_path):
    path = tmp_path / "sync.conf"
    path.write_text(f"[Interface]\nPrivateKey = {DEVICE_KEY.reveal_base64()}\n\n"
                    f"[Peer]\nPublicKey = {PublicKey.from_hex(PEER_HEX)}\n"
                    f"AllowedIPs = 10.0.0.2/32\n")
    device.wg("syncconf", "NAME", str(path))
    assert [r.operation for r in device.requests] == ["get", "set"]
    head = [SetPrivateKey(DEVICE_KEY), SetListenPort(0), SetFwmark(0),
            SelectPeer(PEER2), RemovePeer(), SelectPeer(PublicKey.from_hex(PEER_HEX))]
    tail = [ReplaceAllowedIPs(), AddAllowedIP(net("10.0.0.2/32"))]
    # Newer wireguard-tools also clear the preshared key and keepalive the
    # device has and the file lacks; Debian 12's v1.0.20210914 does not.
    assert device.sets in ([head + tail],
                           [head + [SetPresharedKey(None), SetPersistentKeepalive(0)] + tail])


@needs_fake_device
def test_wg_reports_our_errno(device):
    device.set_errno = errno.EADDRINUSE
    result = device.wg("set", "NAME", "listen-port", "1", check=False)
    assert result.returncode != 0
    assert os.strerror(errno.EADDRINUSE) in result.stderr


@needs_fake_device
def test_wg_reports_a_refused_set_line(device):
    # wg never sends a low-order key on its own account; our refusal shows as EINVAL.
    result = device.wg("set", "NAME", "peer", keys.format_base64_key(bytes(32)), check=False)
    assert result.returncode != 0
    assert os.strerror(errno.EINVAL) in result.stderr


# ---------------------------------------------------------------- the daemon's UAPI

@pytest.fixture
def daemon():
    """A Daemon serving UAPI requests for an Interface over a real native
    device (no root: inner packets go to /dev/null, UDP to loopback)."""
    from dataplane.daemon import Daemon
    from dataplane.device import Device
    from dataplane.interface import Interface
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    device = Device([null], [os.dup(udp.fileno())], [-1], 1420, max_peers=16)
    d = Daemon(Config("dpt0", InterfaceConfig(DEVICE_KEY)))
    d.iface = Interface("dpt0", DEVICE_KEY, device, udp.getsockname()[1])
    yield d
    device.close()
    udp.close()


def _request(d, text):
    return d.uapi_request(read_request(text.encode()))


def test_the_daemon_sets_and_gets_amneziawg_keys(daemon):
    assert _request(daemon, "set=1\n" + "".join(l + "\n" for l in CLIENT_LINES) + "\n") == \
        "errno=0\n\n"
    assert daemon.iface.obfuscation == CLIENT
    wire = daemon.iface.device.wire()
    assert wire["obfuscated"] and wire["padding"] == [15, 18, 20, 8]
    assert wire["header_min"] == [1000000, 2000000, 3000000, 4000000]
    got = _request(daemon, "get=1\n\n")
    assert "".join(l + "\n" for l in CLIENT_LINES) in got
    assert parse_get(got).obfuscation == CLIENT
    # a later set changes only the keys it names
    assert _request(daemon, "set=1\ns4=0\nh4=5000000\ni1=\n\n") == "errno=0\n\n"
    o = daemon.iface.obfuscation
    assert (o.s4, o.h4, o.i1, o.s1, o.h1) == (0, HeaderRange(5000000, 5000000), None, 15,
                                              CLIENT.h1)
    assert daemon.iface.device.wire()["padding"] == [15, 18, 20, 0]
    assert daemon.status()["obfuscation"] == o.as_json()
    assert daemon.status()["accept_plain_wireguard"] is False


@pytest.mark.parametrize("lines", [
    ["fwmark=7", "h2=1000500"],                       # overlaps the held h1
    ["fwmark=7", "jc=4", "jmin=9", "jmax=8"],
    ["fwmark=7", "jmax="],                            # jc = 4 held needs it
    ["fwmark=7", f"public_key={PEER_HEX}", "persistent_keepalive_interval=1", "s1=x"],
])
def test_a_refused_set_changes_nothing(daemon, lines):
    assert _request(daemon, "set=1\n" + "".join(l + "\n" for l in CLIENT_LINES) + "\n") == \
        "errno=0\n\n"
    before = _request(daemon, "get=1\n\n")
    assert _request(daemon, "set=1\n" + "".join(l + "\n" for l in lines) + "\n") == \
        "errno=-22\n\n"
    assert _request(daemon, "get=1\n\n") == before
    assert daemon.iface.obfuscation == CLIENT and daemon.iface.fwmark == 0
    assert not daemon.iface.peers


def test_with_plain_wireguard_accepted_a_set_keeps_the_profiles_apart(daemon):
    served = Obfuscation.from_settings({"h1": 5, "h2": 6, "h3": 7, "h4": 8, "s1": 10}, lower=True)
    daemon.set_obfuscation(served, True)
    assert daemon.iface.accept_plain
    assert _request(daemon, "set=1\nh4=4-100\n\n") == "errno=-22\n\n"
    assert daemon.iface.obfuscation == served
    assert _request(daemon, "set=1\nh4=9-100\n\n") == "errno=0\n\n"
    assert daemon.iface.obfuscation.h4 == HeaderRange(9, 100) and daemon.iface.accept_plain
    assert daemon.iface.device.wire()["accept_plain"]
