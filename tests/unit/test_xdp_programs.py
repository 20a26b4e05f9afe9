"""The XDP programs of ebpf/ on packet fixtures, and their loader.

Table-driven: each case is an input frame, the expected verdict and the
expected counter deltas, run through the kernel's BPF_PROG_TEST_RUN (no NIC
involved); the frame must come out unchanged.

Test runs see no AF_XDP socket: the programs' bpf_redirect_map(&xsks, queue,
XDP_PASS) falls back to XDP_PASS. A steered frame therefore shows as verdict
PASS with steer_<type> and steer_no_socket counted, and steering is asserted
through those counters.

Attachment runs in a throwaway network namespace with a veth pair; the
process owning the bpf_link is tests/data/xdp/attach_helper.py, run inside
the namespace, so that it can detach, exit, or be killed with SIGKILL.

BPF needs root (CAP_BPF, CAP_NET_ADMIN); CI runs as root. The objects are
compiled into a temporary directory with ebpf/build.py for the session, so
the tests always run the current sources.
"""
import contextlib
import errno
import importlib.util
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataplane import xdp
from dataplane.xdp import Verdict
from tests.integration.packets import checksum

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "xdp"
PORT = 51820

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: loading XDP programs and BPF_PROG_TEST_RUN need CAP_BPF and "
           "CAP_NET_ADMIN, attaching needs network namespaces (CI runs as root)")


def _load_build_module():
    spec = importlib.util.spec_from_file_location("ebpf_build", ROOT / "ebpf" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ebpf_build = _load_build_module()


@pytest.fixture(scope="session")
def objects(tmp_path_factory):
    """{"wan": path, "inner": path, "foreign_pass": path}, freshly built."""
    out = tmp_path_factory.mktemp("bpf")
    built = {p.name[: -len(".bpf.o")]: p for p in ebpf_build.build(out)}
    built["foreign_pass"] = ebpf_build.compile_one(FIXTURES / "foreign_pass.bpf.c",
                                                   out / "foreign_pass.bpf.o")
    return built


@contextlib.contextmanager
def load_wan(path, **settings):
    """The WAN program, with the fixtures' destinations (DST4, DST6) as
    this host's addresses, as the daemon writes them."""
    with xdp.XdpProgram.load(path, **settings) as program:
        program.set_local([ipaddress.ip_address(DST4), ipaddress.ip_address(DST6)])
        yield program


@pytest.fixture
def wan(objects):
    """The WAN program with default settings: a fresh one per test, so no
    rate-limit state carries over."""
    with load_wan(objects["wan"], listen_port=PORT) as program:
        yield program


# ------------------------------------------------------------ packet makers

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8
TCP, UDP, ICMP, ICMPV6, ESP, NO_NEXT = 6, 17, 1, 58, 50, 59
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS = 0, 43, 44, 60
IPV4_DF, IPV4_MF = 0x4000, 0x2000
SRC4, DST4 = "192.0.2.1", "198.51.100.1"
SRC6, DST6 = "2001:db8:1:2::1", "2001:db8:ffff::1"


def eth(payload: bytes, ethertype: int, vlans=()) -> bytes:
    """Ethernet frame; vlans: TPIDs of tags to put in front of the type."""
    header = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    for i, tpid in enumerate(vlans):
        header += struct.pack("!HH", tpid, 100 + i)
    return header + struct.pack("!H", ethertype) + payload


def ipv4(payload: bytes, proto: int = UDP, src: str = SRC4, dst: str = DST4,
         options: bytes = b"", frag: int = IPV4_DF, total_len=None, ihl=None,
         version: int = 4) -> bytes:
    assert len(options) % 4 == 0
    ihl = (20 + len(options)) // 4 if ihl is None else ihl
    total_len = 20 + len(options) + len(payload) if total_len is None else total_len
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total_len, 0x1234, frag, 64,
                         proto, 0, ipaddress.IPv4Address(src).packed,
                         ipaddress.IPv4Address(dst).packed) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(payload: bytes, nexthdr: int = UDP, src: str = SRC6, dst: str = DST6,
         payload_len=None, version: int = 6) -> bytes:
    payload_len = len(payload) if payload_len is None else payload_len
    return struct.pack("!IHBB16s16s", version << 28, payload_len, nexthdr, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def ext_header(nexthdr: int, units: int = 0) -> bytes:
    """Hop-by-hop / routing / destination options header of (units + 1) * 8
    bytes, padded with one PadN option."""
    pad = (units + 1) * 8 - 2
    return bytes([nexthdr, units, 1, pad - 2]) + bytes(pad - 2)


def frag_header(nexthdr: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, offset << 3 | int(more), 0xABCD)


def ext_chain(exts, proto: int, payload: bytes):
    """(first next-header value, bytes) for extension headers in front of
    payload. exts: (HOPOPTS|ROUTING|DSTOPTS, units) or (FRAGMENT, (offset, more))."""
    nexthdr, data = proto, payload
    for kind, arg in reversed(exts):
        data = (frag_header(nexthdr, *arg) if kind == FRAGMENT else ext_header(nexthdr, arg)) + data
        nexthdr = kind
    return nexthdr, data


def udp(payload: bytes, dport: int = PORT, sport: int = 40000, length=None) -> bytes:
    length = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", sport, dport, length, 0) + payload


def tcp(dport: int = 22) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def wg(msg_type: int, size: int, reserved: bytes = b"\0\0\0") -> bytes:
    """A WireGuard message of `size` bytes: type, three reserved bytes, filler."""
    return (bytes([msg_type]) + reserved + b"\x5a" * max(size - 4, 0))[:size]


def v4(payload: bytes, dport: int = PORT, vlans=(), udp_len=None, **ip) -> bytes:
    return eth(ipv4(udp(payload, dport, length=udp_len), **ip), ETH_P_IP, vlans)


def v6(payload: bytes, dport: int = PORT, vlans=(), exts=(), udp_len=None, **ip) -> bytes:
    nexthdr, data = ext_chain(exts, UDP, udp(payload, dport, length=udp_len))
    return eth(ipv6(data, nexthdr, **ip), ETH_P_IPV6, vlans)


INITIATION, RESPONSE, COOKIE_REPLY, DATA = 1, 2, 3, 4
SIZES = {INITIATION: 148, RESPONSE: 92, COOKIE_REPLY: 64}
NAMES = {INITIATION: "initiation", RESPONSE: "response", COOKIE_REPLY: "cookie_reply",
         DATA: "data"}


def steered(kind: str) -> dict:
    return {f"steer_{kind}": 1, "steer_no_socket": 1}


# --------------------------------------------------------------- the table

@dataclass
class Case:
    name: str
    frame: bytes
    verdict: Verdict
    counters: dict = field(default_factory=dict)


def pass_case(name, frame, counter):
    return Case(name, frame, Verdict.PASS, {counter: 1})


def drop_case(name, frame, counter):
    return Case(name, frame, Verdict.DROP, {counter: 1})


def steer_case(name, frame, kind):
    return Case(name, frame, Verdict.PASS, steered(kind))


OPTIONS_4 = bytes([148, 4, 0, 0])                # router alert (RFC 2113)
OPTIONS_40 = b"\x01" * 39 + b"\x00"             # 39 NOPs and end of options: IHL 15

CASES = [
    # Each message type, right size, both families.
    *[steer_case(f"ipv4-{NAMES[t]}", v4(wg(t, n)), NAMES[t]) for t, n in SIZES.items()],
    *[steer_case(f"ipv6-{NAMES[t]}", v6(wg(t, n)), NAMES[t]) for t, n in SIZES.items()],
    steer_case("ipv4-data-keepalive", v4(wg(DATA, 32)), "data"),
    steer_case("ipv4-data-1420", v4(wg(DATA, 1420)), "data"),
    steer_case("ipv6-data-keepalive", v6(wg(DATA, 32)), "data"),
    steer_case("ipv6-data-1420", v6(wg(DATA, 1420)), "data"),
    # To the port, but for an address not this host's (it routes them):
    # the kernel's to forward, whatever they hold.
    pass_case("ipv4-data-routed-through", v4(wg(DATA, 64), dst="198.51.100.2"), "pass_not_local"),
    pass_case("ipv4-initiation-routed-through", v4(wg(INITIATION, 148), dst="203.0.113.9"),
              "pass_not_local"),
    pass_case("ipv4-garbage-routed-through", v4(b"\xff" * 3, dst="203.0.113.9"),
              "pass_not_local"),
    pass_case("ipv6-data-routed-through", v6(wg(DATA, 64), dst="2001:db8:ffff::2"),
              "pass_not_local"),
    pass_case("ipv6-first-fragment-routed-through",
              v6(wg(DATA, 64), dst="2001:db8:ffff::2", exts=[(FRAGMENT, (0, True))]),
              "pass_not_local"),
    # VLAN: one tag of either kind; a second tag is not parsed.
    steer_case("vlan-8021q-ipv4-data", v4(wg(DATA, 64), vlans=[ETH_P_8021Q]), "data"),
    steer_case("vlan-8021ad-ipv6-initiation", v6(wg(INITIATION, 148), vlans=[ETH_P_8021AD]),
            "initiation"),
    pass_case("vlan-two-tags", v4(wg(DATA, 64), vlans=[ETH_P_8021AD, ETH_P_8021Q]), "pass_not_ip"),
    drop_case("vlan-tag-cut-short", eth(b"", ETH_P_8021Q)[:16], "drop_trunc_eth"),
    # IPv4 options.
    steer_case("ipv4-options-4-bytes", v4(wg(DATA, 48), options=OPTIONS_4), "data"),
    steer_case("ipv4-options-40-bytes", v4(wg(INITIATION, 148), options=OPTIONS_40), "initiation"),
    steer_case("vlan-ipv4-options", v4(wg(RESPONSE, 92), vlans=[ETH_P_8021Q], options=OPTIONS_4),
            "response"),
    # IPv6 extension headers.
    steer_case("ipv6-hop-by-hop", v6(wg(DATA, 48), exts=[(HOPOPTS, 0)]), "data"),
    steer_case("ipv6-hop-by-hop-routing-dstopts",
            v6(wg(DATA, 48), exts=[(HOPOPTS, 1), (ROUTING, 0), (DSTOPTS, 2)]), "data"),
    steer_case("ipv6-six-extension-headers",
            v6(wg(INITIATION, 148), exts=[(HOPOPTS, 0)] + [(DSTOPTS, 0)] * 5), "initiation"),
    pass_case("ipv6-seven-extension-headers",
           v6(wg(INITIATION, 148), exts=[(HOPOPTS, 0)] + [(DSTOPTS, 0)] * 6), "pass_ext_limit"),
    pass_case("ipv6-esp-after-hop-by-hop",
           eth(ipv6(ext_header(ESP) + bytes(32), HOPOPTS), ETH_P_IPV6), "pass_not_udp"),
    pass_case("ipv6-no-next-header", eth(ipv6(b"", NO_NEXT), ETH_P_IPV6), "pass_not_udp"),
    # Fragments: all passed, the kernel reassembles them for the daemon's
    # UDP socket (first ones to the port counted apart).
    pass_case("ipv4-first-fragment", v4(wg(DATA, 1400)[:800], udp_len=8 + 1400, frag=IPV4_MF),
           "pass_first_fragment"),
    pass_case("ipv4-middle-fragment", eth(ipv4(bytes(800), frag=IPV4_MF | 100), ETH_P_IP),
           "pass_fragment"),
    pass_case("ipv4-last-fragment", eth(ipv4(bytes(600), frag=200), ETH_P_IP), "pass_fragment"),
    pass_case("ipv4-tcp-fragment", eth(ipv4(bytes(600), proto=TCP, frag=200), ETH_P_IP),
           "pass_fragment"),
    pass_case("ipv4-first-fragment-other-port",
           v4(bytes(800), dport=53, udp_len=1408, frag=IPV4_MF), "pass_other_port"),
    steer_case("ipv4-df-set", v4(wg(DATA, 32), frag=IPV4_DF), "data"),
    steer_case("ipv4-no-flags", v4(wg(DATA, 32), frag=0), "data"),
    pass_case("ipv6-first-fragment",
           v6(wg(DATA, 1400)[:800], udp_len=8 + 1400, exts=[(FRAGMENT, (0, True))]),
           "pass_first_fragment"),
    pass_case("ipv6-atomic-fragment", v6(wg(DATA, 64), exts=[(FRAGMENT, (0, False))]),
           "pass_first_fragment"),
    pass_case("ipv6-non-first-fragment",
           eth(ipv6(frag_header(UDP, 100, True) + bytes(800), FRAGMENT), ETH_P_IPV6),
           "pass_fragment"),
    pass_case("ipv6-non-first-fragment-dstopts-next",
           eth(ipv6(frag_header(DSTOPTS, 100) + bytes(800), FRAGMENT), ETH_P_IPV6),
           "pass_fragment"),
    pass_case("ipv6-first-fragment-other-port",
           v6(bytes(800), dport=53, udp_len=1408, exts=[(FRAGMENT, (0, True))]),
           "pass_other_port"),
    # Truncated headers at every layer (ethernet itself: BPF_PROG_TEST_RUN
    # refuses frames shorter than 14 bytes, so only the VLAN tag above).
    drop_case("ipv4-header-cut-short", eth(ipv4(b""), ETH_P_IP)[:14 + 19], "drop_trunc_ipv4"),
    drop_case("ipv4-options-cut-short", eth(ipv4(b"", options=OPTIONS_40), ETH_P_IP)[:14 + 24],
            "drop_trunc_ipv4"),
    drop_case("ipv6-header-cut-short", eth(ipv6(b""), ETH_P_IPV6)[:14 + 39], "drop_trunc_ipv6"),
    drop_case("ipv6-hop-by-hop-cut-short",
            eth(ipv6(ext_header(UDP, 1)[:12], HOPOPTS), ETH_P_IPV6), "drop_trunc_ipv6"),
    drop_case("ipv6-fragment-header-cut-short",
            eth(ipv6(frag_header(UDP)[:4], FRAGMENT), ETH_P_IPV6), "drop_trunc_ipv6"),
    drop_case("ipv4-udp-cut-short", eth(ipv4(udp(b"")[:6]), ETH_P_IP), "drop_trunc_udp"),
    drop_case("ipv4-udp-cut-short-after-options", eth(ipv4(udp(b"")[:7], options=OPTIONS_4),
                                                    ETH_P_IP), "drop_trunc_udp"),
    drop_case("ipv6-udp-cut-short", eth(ipv6(udp(b"")[:4]), ETH_P_IPV6), "drop_trunc_udp"),
    drop_case("ipv6-udp-cut-short-after-ext",
            eth(ipv6(ext_header(UDP) + udp(b"")[:4], HOPOPTS), ETH_P_IPV6), "drop_trunc_udp"),
    drop_case("ipv4-wg-empty", v4(b""), "drop_trunc_wg"),
    drop_case("ipv4-wg-3-bytes", v4(b"\x04\x00\x00"), "drop_trunc_wg"),
    drop_case("ipv6-wg-1-byte", v6(b"\x01"), "drop_trunc_wg"),
    drop_case("ipv4-wg-empty-ethernet-padded", v4(b"") + bytes(60 - 42), "drop_trunc_wg"),
    # Headers that do not parse.
    drop_case("ipv4-version-5", eth(ipv4(udp(wg(DATA, 32)), version=5), ETH_P_IP),
            "drop_bad_ip_header"),
    drop_case("ipv4-ihl-4", eth(ipv4(udp(wg(DATA, 32)), ihl=4), ETH_P_IP), "drop_bad_ip_header"),
    drop_case("ipv6-version-4", eth(ipv6(udp(wg(DATA, 32)), version=4), ETH_P_IPV6),
            "drop_bad_ip_header"),
    # Lengths, to the port.
    drop_case("ipv4-total-length-past-frame", v4(wg(DATA, 32), total_len=20 + 8 + 32 + 1),
            "drop_bad_ip_len"),
    drop_case("ipv4-total-length-short-of-udp", v4(wg(DATA, 32), total_len=20 + 7),
            "drop_bad_ip_len"),
    drop_case("ipv4-options-total-length-short-of-udp",
            v4(wg(DATA, 32), options=OPTIONS_4, total_len=24 + 4), "drop_bad_ip_len"),
    drop_case("ipv6-payload-length-past-frame", v6(wg(DATA, 32), payload_len=8 + 32 + 1),
            "drop_bad_ip_len"),
    drop_case("ipv6-payload-length-zero", v6(wg(DATA, 32), payload_len=0), "drop_bad_ip_len"),
    drop_case("ipv6-payload-length-short-of-udp-after-ext",
            v6(wg(DATA, 32), exts=[(HOPOPTS, 0)], payload_len=8 + 7), "drop_bad_ip_len"),
    drop_case("ipv4-udp-length-7", v4(wg(DATA, 32), udp_len=7), "drop_bad_udp_len"),
    drop_case("ipv4-udp-length-0", v4(wg(DATA, 32), udp_len=0), "drop_bad_udp_len"),
    drop_case("ipv4-udp-length-past-ip", v4(wg(DATA, 32), udp_len=8 + 33), "drop_bad_udp_len"),
    drop_case("ipv6-udp-length-past-ip", v6(wg(DATA, 32), udp_len=8 + 33), "drop_bad_udp_len"),
    drop_case("ipv6-udp-length-past-ip-after-ext",
            v6(wg(DATA, 32), exts=[(DSTOPTS, 1)], udp_len=8 + 33), "drop_bad_udp_len"),
    steer_case("ipv4-udp-shorter-than-ip-payload",
            eth(ipv4(udp(wg(DATA, 32)) + bytes(4)), ETH_P_IP), "data"),
    steer_case("ipv4-frame-longer-than-ip", v4(wg(DATA, 32)) + bytes(8), "data"),
    steer_case("ipv6-frame-longer-than-ip", v6(wg(DATA, 32)) + bytes(8), "data"),
    # Bad lengths to other ports are the kernel's business.
    pass_case("ipv4-total-length-past-frame-other-port",
           v4(bytes(32), dport=53, total_len=200), "pass_other_port"),
    pass_case("ipv6-payload-length-zero-other-port", v6(bytes(32), dport=53, payload_len=0),
           "pass_other_port"),
    # Not UDP, not IP, other ports: the kernel's, untouched.
    pass_case("ipv4-tcp-22", eth(ipv4(tcp(22), proto=TCP), ETH_P_IP), "pass_not_udp"),
    pass_case("ipv6-tcp-22", eth(ipv6(tcp(22), TCP), ETH_P_IPV6), "pass_not_udp"),
    pass_case("vlan-ipv4-tcp-22", eth(ipv4(tcp(22), proto=TCP), ETH_P_IP, [ETH_P_8021Q]),
           "pass_not_udp"),
    pass_case("ipv4-icmp", eth(ipv4(bytes([8, 0, 0, 0, 0, 1, 0, 1]), proto=ICMP), ETH_P_IP),
           "pass_not_udp"),
    pass_case("ipv6-icmpv6", eth(ipv6(bytes([128, 0, 0, 0, 0, 1, 0, 1]), ICMPV6), ETH_P_IPV6),
           "pass_not_udp"),
    pass_case("ipv4-tcp-to-the-listen-port", eth(ipv4(tcp(PORT), proto=TCP), ETH_P_IP),
           "pass_not_udp"),
    pass_case("arp", eth(bytes.fromhex("0001080006040001") + bytes(20), ETH_P_ARP), "pass_not_ip"),
    pass_case("ethernet-header-only", eth(b"", 0x88CC), "pass_not_ip"),
    pass_case("ipv4-udp-53", v4(bytes(40), dport=53), "pass_other_port"),
    pass_case("ipv6-udp-53", v6(bytes(40), dport=53), "pass_other_port"),
    pass_case("ipv4-udp-next-port", v4(wg(DATA, 32), dport=PORT + 1), "pass_other_port"),
    pass_case("ipv4-udp-from-the-listen-port",
           eth(ipv4(struct.pack("!HHHH", PORT, 53, 8 + 32, 0) + wg(DATA, 32)), ETH_P_IP),
           "pass_other_port"),
    # Each handshake type one byte short and one long; data too short.
    *[drop_case(f"ipv4-{NAMES[t]}-{n + d}-bytes", v4(wg(t, n + d)), "drop_wg_bad_size")
      for t, n in SIZES.items() for d in (-1, 1)],
    *[drop_case(f"ipv6-{NAMES[t]}-{n + d}-bytes", v6(wg(t, n + d)), "drop_wg_bad_size")
      for t, n in SIZES.items() for d in (-1, 1)],
    drop_case("ipv4-initiation-as-big-as-a-response", v4(wg(INITIATION, 92)), "drop_wg_bad_size"),
    drop_case("ipv4-data-31-bytes", v4(wg(DATA, 31)), "drop_wg_bad_size"),
    drop_case("ipv6-data-16-bytes", v6(wg(DATA, 16)), "drop_wg_bad_size"),
    # Unknown types and non-zero reserved bytes.
    *[drop_case(f"ipv4-type-{t}", v4(wg(t, 148)), "drop_wg_bad_type") for t in (0, 5, 255)],
    drop_case("ipv6-type-0", v6(wg(0, 32)), "drop_wg_bad_type"),
    drop_case("ipv4-initiation-reserved-byte-set", v4(wg(INITIATION, 148, b"\0\0\1")),
            "drop_wg_bad_type"),
    drop_case("ipv4-data-reserved-byte-set", v4(wg(DATA, 32, b"\1\0\0")), "drop_wg_bad_type"),
    drop_case("ipv4-type-as-big-endian-word", v4(b"\0\0\0\x04" + bytes(28)), "drop_wg_bad_type"),
]


def run(program, frame: bytes, repeat: int = 1):
    """(verdict, frame out, counter deltas without the zeros)."""
    before = program.counters()
    verdict, out = program.test_run(frame, repeat)
    after = program.counters()
    return verdict, out, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_case_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


@needs_root
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_wan_program(wan, case):
    verdict, out, delta = run(wan, case.frame)
    assert (verdict, delta) == (case.verdict, case.counters)
    assert out == case.frame, "the WAN program must not change frames"
    # Every frame lands in exactly one pass/steer/drop counter.
    assert sum(v for k, v in delta.items() if k != "steer_no_socket") == 1


@needs_root
def test_the_local_addresses_follow_what_the_control_plane_writes(objects):
    """The set is replaced as a whole (what stays never goes missing);
    with it empty every datagram to the port is the kernel's."""
    a4, b4, a6 = (ipaddress.ip_address(x) for x in (DST4, "198.51.100.2", DST6))
    to_a4, to_b4, to_a6 = v4(wg(DATA, 64)), v4(wg(DATA, 64), dst=str(b4)), v6(wg(DATA, 64))
    with xdp.XdpProgram.load(objects["wan"], listen_port=PORT) as program:
        # at load: none, so nothing is steered
        assert set(run(program, to_a4)[2]) == {"pass_not_local"}
        program.set_local([a4, a6])
        assert "steer_data" in run(program, to_a4)[2] and "steer_data" in run(program, to_a6)[2]
        assert set(run(program, to_b4)[2]) == {"pass_not_local"}
        program.set_local([b4, a6])  # a4 goes, b4 comes
        assert set(run(program, to_a4)[2]) == {"pass_not_local"}
        assert "steer_data" in run(program, to_b4)[2] and "steer_data" in run(program, to_a6)[2]
        program.set_local([])
        assert all(set(run(program, f)[2]) == {"pass_not_local"} for f in (to_a4, to_b4, to_a6))
        with pytest.raises(xdp.XdpError, match="the map holds 1024"):
            program.set_local([ipaddress.ip_address(f"10.{i >> 8}.{i & 255}.1")
                               for i in range(1025)])
    with xdp.XdpProgram.load(objects["inner"]) as inner:
        with pytest.raises(xdp.XdpError, match="no address map"):
            inner.set_local([a4])


# ---------------------------------------------------------- rate limiting

def initiation_from(src: str) -> bytes:
    if ":" in src:
        return v6(wg(INITIATION, 148), src=src)
    return v4(wg(INITIATION, 148), src=src)


@needs_root
def test_sixth_initiation_in_a_burst_is_dropped_with_default_settings(wan):
    # Default: 20 per second, burst 5 (as Linux WireGuard's ratelimiter).
    # Six back-to-back runs inside the kernel take microseconds; a token
    # comes back only after 50 ms.
    verdict, _, delta = run(wan, initiation_from("192.0.2.10"), repeat=6)
    assert verdict == Verdict.DROP
    assert delta == {"steer_initiation": 5, "steer_no_socket": 5, "drop_ratelimited": 1}


@needs_root
def test_the_limit_rests_while_the_control_plane_is_not_under_load(wan):
    # The daemon rests the limit when its control plane has room (the
    # kernel's WireGuard limits only under load): then clients behind one
    # address do not wait on each other; under load it applies again.
    frame = initiation_from("192.0.2.12")
    wan.set_ratelimit_rest(True)
    verdict, _, delta = run(wan, frame, repeat=50)
    assert verdict == Verdict.PASS
    assert delta == {"steer_initiation": 50, "steer_no_socket": 50}
    wan.set_ratelimit_rest(False)
    verdict, _, delta = run(wan, initiation_from("192.0.2.13"), repeat=6)
    assert verdict == Verdict.DROP and delta["drop_ratelimited"] == 1


@needs_root
def test_tokens_come_back_at_the_rate(wan):
    frame = initiation_from("192.0.2.11")
    run(wan, frame, repeat=6)
    time.sleep(0.2)  # 4 tokens at 20 per second
    verdict, _, delta = run(wan, frame)
    assert (verdict, delta) == (Verdict.PASS, steered("initiation"))


@pytest.fixture
def slow_wan(objects):
    """One handshake per second after a burst of 5: separate test runs from
    Python stay well inside one token's time."""
    with load_wan(objects["wan"], listen_port=PORT, rate=1, burst=5) as program:
        yield program


@needs_root
def test_sixth_initiation_within_a_second_dropped_another_source_unaffected(slow_wan):
    for i in range(5):
        verdict, _, delta = run(slow_wan, initiation_from("192.0.2.20"))
        assert (verdict, delta) == (Verdict.PASS, steered("initiation")), f"initiation {i + 1}"
    verdict, _, delta = run(slow_wan, initiation_from("192.0.2.20"))
    assert (verdict, delta) == (Verdict.DROP, {"drop_ratelimited": 1})
    verdict, _, delta = run(slow_wan, initiation_from("192.0.2.21"))
    assert (verdict, delta) == (Verdict.PASS, steered("initiation"))


@needs_root
def test_all_handshake_types_share_the_bucket_and_data_is_never_limited(slow_wan):
    src = "192.0.2.30"
    frames = [v4(wg(t, SIZES[t]), src=src) for t in (INITIATION, RESPONSE, COOKIE_REPLY,
                                                     INITIATION, RESPONSE)]
    for frame in frames:
        assert run(slow_wan, frame)[0] == Verdict.PASS
    for t in (INITIATION, RESPONSE, COOKIE_REPLY):
        verdict, _, delta = run(slow_wan, v4(wg(t, SIZES[t]), src=src))
        assert (verdict, delta) == (Verdict.DROP, {"drop_ratelimited": 1}), NAMES[t]
    verdict, _, delta = run(slow_wan, v4(wg(DATA, 32), src=src), repeat=100)
    assert (verdict, delta) == (Verdict.PASS, {"steer_data": 100, "steer_no_socket": 100})


@needs_root
def test_ipv6_sources_in_one_slash_64_share_a_bucket(slow_wan):
    for i in range(5):
        assert run(slow_wan, initiation_from(f"2001:db8:1:2::{i + 1:x}"))[0] == Verdict.PASS
    verdict, _, delta = run(slow_wan, initiation_from("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    assert (verdict, delta) == (Verdict.DROP, {"drop_ratelimited": 1})
    verdict, _, delta = run(slow_wan, initiation_from("2001:db8:1:3::1"))
    assert (verdict, delta) == (Verdict.PASS, steered("initiation"))
    # An IPv4 address whose bytes start like that prefix is another source.
    verdict, _, delta = run(slow_wan, initiation_from("32.1.13.184"))
    assert (verdict, delta) == (Verdict.PASS, steered("initiation"))


@needs_root
def test_burst_setting(objects):
    with load_wan(objects["wan"], listen_port=PORT, rate=1, burst=2) as program:
        verdict, _, delta = run(program, initiation_from("192.0.2.40"), repeat=3)
    assert (verdict, delta["steer_initiation"], delta["drop_ratelimited"]) == (Verdict.DROP, 2, 1)


@needs_root
def test_rate_limit_off(objects):
    with load_wan(objects["wan"], listen_port=PORT, ratelimit=False) as program:
        verdict, _, delta = run(program, initiation_from("192.0.2.50"), repeat=50)
    assert (verdict, delta) == (Verdict.PASS, {"steer_initiation": 50, "steer_no_socket": 50})


@needs_root
def test_listen_port_is_a_setting(objects):
    with load_wan(objects["wan"], listen_port=443) as program:
        assert run(program, v4(wg(DATA, 32), dport=443))[2] == steered("data")
        assert run(program, v4(wg(DATA, 32), dport=PORT))[2] == {"pass_other_port": 1}


# ------------------------------------------------------------ inner program

@needs_root
@pytest.mark.parametrize("frame", [
    v4(wg(DATA, 32)),
    eth(ipv4(tcp(22), proto=TCP), ETH_P_IP),
    eth(bytes.fromhex("0001080006040001") + bytes(20), ETH_P_ARP),
    bytes(14),
], ids=["udp", "tcp", "arp", "zeros"])
def test_inner_program_steers_everything(objects, frame):
    with xdp.XdpProgram.load(objects["inner"]) as inner:
        assert inner.name == "dp_xdp_inner"
        verdict, out, delta = run(inner, frame)
    assert (verdict, out, delta) == (Verdict.PASS, frame, {"steer": 1, "steer_no_socket": 1})


# ------------------------------------------- forwarding ceiling's program


@needs_root
@pytest.mark.parametrize("frame,steer", [
    (v4(b"plain payload", dport=40001), True),
    (v6(b"plain payload", dport=40001), True),
    (v4(wg(DATA, 32), vlans=[ETH_P_8021Q]), True),
    (eth(ipv4(tcp(22), proto=TCP), ETH_P_IP), False),
    (eth(bytes.fromhex("0001080006040001") + bytes(20), ETH_P_ARP), False),
    (eth(ipv4(udp(b"x" * 16), frag=0x2000), ETH_P_IP), False),
    (eth(ipv4(udp(b"x" * 16), frag=0x0003), ETH_P_IP), False),
    (eth(bytes(10), ETH_P_IP), False),
    (bytes(14), False),
], ids=["udp4", "udp6", "vlan", "tcp", "arp", "first-fragment", "later-fragment", "short-ip",
        "zeros"])
def test_forward_program_steers_udp_only(objects, frame, steer):
    """The bench's xsk-forward program: UDP to AF_XDP, everything else
    (and anything it cannot parse) to the kernel, unchanged."""
    with xdp.XdpProgram.load(objects["forward"]) as fwd:
        assert fwd.name == "dp_xdp_forward"
        assert fwd.counter_names == ("steer", "steer_no_socket", "pass")
        verdict, out, delta = run(fwd, frame)
    expected = {"steer": 1, "steer_no_socket": 1} if steer else {"pass": 1}
    assert (verdict, out, delta) == (Verdict.PASS, frame, expected)


# ------------------------------------------------------------------ loader

def test_object_path_names_the_build_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(xdp, "BPF_DIR", tmp_path)
    with pytest.raises(xdp.XdpObjectNotBuilt, match="ebpf/build.py"):
        xdp.object_path("wan")
    (tmp_path / "wan.bpf.o").write_bytes(b"")
    assert xdp.object_path("wan") == xdp.object_path("wan.bpf.o") == tmp_path / "wan.bpf.o"
    with pytest.raises(ValueError):
        xdp.object_path("../wan")


@pytest.mark.parametrize("kwargs, error", [
    ({"listen_port": 0}, ValueError),
    ({"listen_port": 65536}, ValueError),
    ({"listen_port": "51820"}, TypeError),
    ({"listen_port": PORT, "rate": 0}, ValueError),
    ({"listen_port": PORT, "burst": 0}, ValueError),
    ({"listen_port": PORT, "rate": 10**9 + 1}, ValueError),
])
def test_load_checks_settings(kwargs, error):
    with pytest.raises(error):
        xdp.XdpProgram.load("/nonexistent/wan.bpf.o", **kwargs)


@needs_root
def test_counter_names_come_from_c(wan, objects):
    names = wan.counter_names
    assert len(names) == len(set(names)) == len(wan.counters())
    assert {"pass_not_ip", "steer_data", "steer_no_socket", "drop_trunc_eth",
            "drop_ratelimited"} <= set(names)
    assert all(n.startswith(("pass_", "steer_", "drop_")) for n in names)
    with xdp.XdpProgram.load(objects["inner"]) as inner:
        assert inner.counter_names == ("steer", "steer_no_socket")


@needs_root
def test_load_errors_say_what_failed(objects, tmp_path):
    with pytest.raises(xdp.XdpLoadError, match="needs settings") as e:
        xdp.XdpProgram.load(objects["wan"])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(xdp.XdpLoadError, match="takes no settings"):
        xdp.XdpProgram.load(objects["inner"], listen_port=PORT)
    with pytest.raises(xdp.XdpLoadError, match="ebpf/build.py") as e:
        xdp.XdpProgram.load(tmp_path / "missing.bpf.o", listen_port=PORT)
    assert e.value.errno == errno.ENOENT
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an ELF file" * 10)
    with pytest.raises(xdp.XdpLoadError, match="junk.bpf.o"):
        xdp.XdpProgram.load(junk, listen_port=PORT)
    with pytest.raises(xdp.XdpLoadError, match="none of ours"):
        xdp.XdpProgram.load(objects["foreign_pass"])


@needs_root
def test_xskmap_refuses_what_is_not_an_af_xdp_socket(wan):
    import socket

    assert wan.max_queues == 64 and wan.xsk_map_fd >= 0
    with pytest.raises(xdp.XskMapError, match="queue 64") as e:
        wan.set_xsk(64, 0)
    assert e.value.errno == errno.EINVAL
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(xdp.XskMapError, match="not an AF_XDP socket"):
            wan.set_xsk(0, s.fileno())
    with open(os.devnull) as f:
        with pytest.raises(xdp.XskMapError, match="not an AF_XDP socket"):
            wan.set_xsk(0, f.fileno())
    wan.clear_xsk(0)  # nothing there: fine
    with pytest.raises(xdp.XskMapError):
        wan.clear_xsk(64)


@needs_root
def test_test_run_argument_checks_and_close(objects):
    program = xdp.XdpProgram.load(objects["wan"], listen_port=PORT)
    with pytest.raises(ValueError, match="at least 14 bytes"):
        program.test_run(bytes(13))
    with pytest.raises(TypeError):
        program.test_run("not bytes")
    assert "dp_xdp_wan" in repr(program)
    program.close()
    program.close()
    with pytest.raises(ValueError, match="closed"):
        program.counters()


# ------------------------------------------ attachment in a network namespace

_names = itertools.count()


def sh(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Netns:
    name: str
    veth: str
    peer: str

    def xdp_prog_id(self, dev=None):
        """Id of the XDP program `ip link` lists on dev, or None."""
        out = sh("ip", "-n", self.name, "-d", "link", "show", "dev", dev or self.veth).stdout
        match = re.search(r"prog/xdp id (\d+)", out)
        return int(match.group(1)) if match else None

    def legacy_attach(self, obj: Path, dev=None):
        """Attach through netlink, without a link (as `ip` and old tools do):
        it outlives the process that attached it."""
        proc = sh("ip", "-n", self.name, "link", "set", "dev", dev or self.veth, "xdpdrv",
                  "obj", str(obj), "sec", "xdp", check=False)
        if proc.returncode != 0:
            pytest.skip(f"ip cannot attach an XDP object here: {proc.stderr.strip()}")


@pytest.fixture
def netns():
    assert shutil.which("ip"), "ip (iproute2) is missing: run ./scripts/setup.sh"
    n = f"{os.getpid() % 100000}{next(_names)}"
    ns = Netns(f"dpxdp{n}", f"dxa{n}", f"dxb{n}")
    sh("ip", "netns", "add", ns.name)
    try:
        sh("ip", "-n", ns.name, "link", "add", ns.veth, "type", "veth", "peer", "name", ns.peer)
        sh("ip", "-n", ns.name, "link", "set", ns.veth, "up")
        sh("ip", "-n", ns.name, "link", "set", ns.peer, "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


class Helper:
    """tests/data/xdp/attach_helper.py running inside the namespace."""

    def __init__(self, netns: Netns):
        # dataplane from this checkout, unless PYTHONPATH names another.
        path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, str(FIXTURES / "attach_helper.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, env=env)

    def __call__(self, op: str, timeout: float = 30, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"attach helper gave no answer to {op}: "
                                 f"{self.proc.stderr.read().strip()}")
        return json.loads(line)

    def ok(self, op: str, **args) -> dict:
        reply = self(op, **args)
        assert reply["ok"], reply
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def helper(netns):
    h = Helper(netns)
    yield h
    h.close()


def wait_detached(netns: Netns, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while netns.xdp_prog_id() is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    return netns.xdp_prog_id()


@needs_root
def test_attach_with_a_link_and_detach(objects, netns, helper):
    loaded = helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    attached = helper.ok("attach", dev=netns.veth)
    assert attached["mode"] == "native"
    assert netns.xdp_prog_id() == loaded["prog_id"]
    again = helper("attach", dev=netns.veth)
    assert (again["ok"], again["errno"]) == (False, errno.EBUSY), again
    assert "already attached" in again["message"]
    helper.ok("detach")
    assert netns.xdp_prog_id() is None
    helper.ok("detach")  # not attached: a no-op
    # Attach again after detach, then a clean exit also detaches.
    helper.ok("attach", dev=netns.veth)
    assert netns.xdp_prog_id() == loaded["prog_id"]
    helper.ok("exit")
    helper.proc.wait(timeout=10)
    assert wait_detached(netns) is None


@needs_root
def test_killed_owner_leaves_the_interface_without_xdp(objects, netns, helper):
    helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    helper.ok("attach", dev=netns.veth)
    assert netns.xdp_prog_id() is not None
    helper.proc.send_signal(signal.SIGKILL)
    helper.proc.wait(timeout=10)
    assert wait_detached(netns) is None


@needs_root
def test_stale_program_of_ours_is_replaced(objects, netns, helper):
    netns.legacy_attach(objects["wan"])
    stale = netns.xdp_prog_id()
    assert stale is not None
    loaded = helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    helper.ok("attach", dev=netns.veth)
    assert netns.xdp_prog_id() == loaded["prog_id"] != stale
    helper.ok("detach")
    assert netns.xdp_prog_id() is None


@needs_root
def test_remove_stale(objects, netns, helper):
    assert helper.ok("remove_stale", dev=netns.veth)["removed"] == 0
    netns.legacy_attach(objects["inner"])
    assert netns.xdp_prog_id() is not None
    assert helper.ok("remove_stale", dev=netns.veth)["removed"] == 1
    assert netns.xdp_prog_id() is None
    # Ours, but held by a live link: not stale.
    helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    helper.ok("attach", dev=netns.veth)
    other = Helper(netns)
    try:
        reply = other("remove_stale", dev=netns.veth)
    finally:
        other.close()
    assert (reply["ok"], reply["errno"]) == (False, errno.EBUSY), reply
    assert "bpf_link" in reply["message"]
    assert netns.xdp_prog_id() is not None


@needs_root
def test_foreign_program_is_left_alone(objects, netns, helper):
    netns.legacy_attach(objects["foreign_pass"])
    foreign = netns.xdp_prog_id()
    helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    reply = helper("attach", dev=netns.veth)
    assert (reply["ok"], reply["error"], reply["errno"]) == (False, "XdpAttachError", errno.EBUSY)
    assert "foreign_pass" in reply["message"] and "not ours" in reply["message"]
    assert netns.xdp_prog_id() == foreign


@needs_root
def test_no_native_xdp_is_refused_and_nothing_stays_attached(objects, netns, helper):
    # The namespace's loopback driver has no native XDP, only generic.
    helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    reply = helper("attach", dev="lo")
    assert (reply["ok"], reply["errno"]) == (False, errno.EOPNOTSUPP), reply
    assert "generic mode" in reply["message"]
    assert netns.xdp_prog_id("lo") is None
    assert helper.ok("attach", dev="lo", allow_generic=True)["mode"] == "generic"
    assert netns.xdp_prog_id("lo") is not None
    helper.ok("detach")
    assert netns.xdp_prog_id("lo") is None


@needs_root
def test_attach_to_a_missing_interface(objects, netns, helper):
    helper.ok("load", path=str(objects["wan"]), listen_port=PORT)
    reply = helper("attach", dev="nosuchdev0")
    assert not reply["ok"] and reply["error"] == "XdpAttachError"
    assert "nosuchdev0" in reply["message"]
