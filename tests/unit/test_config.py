"""The interface file: good files, bad files (each with its line and reason),
round trips, prefix canonicalization against integer arithmetic, secrets
kept out of repr/str/logs/errors, and `wg-quick strip` as a reference."""
import base64
import dataclasses
import ipaddress
import logging
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from dataplane import keys
from dataplane.config import (Config, ConfigError, DataPlaneConfig, Endpoint, InterfaceConfig,
                              PeerConfig, interface_name, load_config, parse_config,
                              parse_prefix)
from dataplane.keys import PresharedKey, PrivateKey
from dataplane.obfuscation import PLAIN, HeaderRange, Obfuscation

SERVER = PrivateKey(bytes(range(1, 33)))
SERVER_B64 = SERVER.reveal_base64()
PEER1 = keys.public_key(bytes([2] * 32))
PEER2 = keys.public_key(bytes([3] * 32))
PSK = PresharedKey(bytes([4] * 32))
PSK_B64 = PSK.reveal_base64()
SECRETS = [SERVER_B64, SERVER.reveal_hex(), PSK_B64, PSK.reveal_hex()]

FULL = f"""\
# An exit node
[Interface]
PrivateKey = {SERVER_B64}
ListenPort = 51820
FwMark = 0x1234
Address = 10.8.0.1/24, fd08::1/64
Address = 192.0.2.1
MTU = 1420
DNS = 1.1.1.1, example.org
PostUp = iptables -A FORWARD -i %i -j ACCEPT

[Peer]
PublicKey = {PEER1}
PresharedKey = {PSK_B64}
AllowedIPs = 10.8.0.2/32, fd08::2/128
AllowedIPs = 10.9.0.0/16
Endpoint = [2001:db8::7]:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PEER2}
AllowedIPs = 10.8.0.3/32
Endpoint = vpn.example.org:51820

[DataPlane]
Backend = xdp
Workers = 2
Queues = 4
Interfaces = eth0, eth1
"""


def parse(text, filename="wg0.conf"):
    return parse_config(text, filename)


def conf(*lines):
    return "\n".join(lines) + "\n"


def iface(*extra):
    return ["[Interface]", f"PrivateKey = {SERVER_B64}", *extra]


def peer(*extra, key=PEER1):
    return ["", "[Peer]", f"PublicKey = {key}", *extra]


def net(text):
    return ipaddress.ip_network(text)


# ---------------------------------------------------------------- good files

def test_full_file():
    cfg = parse(FULL)
    assert cfg.name == "wg0"
    i = cfg.interface
    assert i.private_key == SERVER and i.public_key == SERVER.public_key()
    assert i.listen_port == 51820 and i.fwmark == 0x1234 and i.mtu == 1420
    assert i.addresses == (ipaddress.ip_interface("10.8.0.1/24"),
                           ipaddress.ip_interface("fd08::1/64"),
                           ipaddress.ip_interface("192.0.2.1/32"))
    assert i.ignored == (("DNS", "1.1.1.1, example.org"),
                         ("PostUp", "iptables -A FORWARD -i %i -j ACCEPT"))
    p1, p2 = cfg.peers
    assert p1 == PeerConfig(PEER1, PSK, (net("10.8.0.2/32"), net("fd08::2/128"),
                                         net("10.9.0.0/16")),
                            Endpoint("2001:db8::7", 51820), 25)
    assert p2 == PeerConfig(PEER2, None, (net("10.8.0.3/32"),),
                            Endpoint("vpn.example.org", 51820), 0)
    assert p2.endpoint.address is None
    assert p1.endpoint.address == ipaddress.ip_address("2001:db8::7")
    assert cfg.dataplane == DataPlaneConfig("xdp", 2, 4, ("eth0", "eth1"))
    assert cfg.warnings == (
        "wg0.conf:9: DNS: dataplane does not apply this wg-quick setting; ignored",
        "wg0.conf:10: PostUp: dataplane does not run wg-quick hooks; ignored")


def test_minimal_file_defaults():
    cfg = parse(conf(*iface()))
    assert cfg.interface == InterfaceConfig(SERVER)
    assert cfg.peers == () and cfg.dataplane == DataPlaneConfig() and cfg.warnings == ()
    assert cfg.dataplane.backend == "auto"


GOOD_CASES = [
    # (lines, check)
    (["[interface]", f"privatekey={SERVER_B64}", "LISTENPORT\t=  0"],
     lambda c: c.interface.listen_port == 0),
    (iface("ListenPort = 51820   # the port", "   # only a comment", "", "\t"),
     lambda c: c.interface.listen_port == 51820),
    (iface("FwMark = off"), lambda c: c.interface.fwmark == 0),
    (iface("FwMark = 4096"), lambda c: c.interface.fwmark == 4096),
    (iface("FwMark = 0xFFFFFFFF"), lambda c: c.interface.fwmark == 0xFFFFFFFF),
    (iface("MTU = 68"), lambda c: c.interface.mtu == 68),
    (iface("Address = fd00::1, 10.0.0.1/8"),
     lambda c: [str(a) for a in c.interface.addresses] == ["fd00::1/128", "10.0.0.1/8"]),
    (iface("Table = off", "SaveConfig = true", "PreUp = x", "PreDown = y", "PostDown = z",
           "DNS ="),
     lambda c: [k for k, _ in c.interface.ignored] ==
     ["Table", "SaveConfig", "PreUp", "PreDown", "PostDown", "DNS"] and len(c.warnings) == 6),
    (iface() + peer("AllowedIPs ="), lambda c: c.peers[0].allowed_ips == ()),
    (iface() + peer("AllowedIPs = 10.0.0.7, 2001:DB8::7"),
     lambda c: c.peers[0].allowed_ips == (net("10.0.0.7/32"), net("2001:db8::7/128"))),
    (iface() + peer("AllowedIPs = 0.0.0.0/0, ::/0"),
     lambda c: c.peers[0].allowed_ips == (net("0.0.0.0/0"), net("::/0"))),
    (iface() + peer("PersistentKeepalive = off"), lambda c: c.peers[0].persistent_keepalive == 0),
    (iface() + peer("PersistentKeepalive = OFF"), lambda c: c.peers[0].persistent_keepalive == 0),
    (iface() + peer("PersistentKeepalive = 65535"),
     lambda c: c.peers[0].persistent_keepalive == 65535),
    (iface() + peer("PresharedKey = " + "A" * 43 + "="),   # zeros: no preshared key, as wg
     lambda c: c.peers[0].preshared_key is None),
    (iface() + peer("Endpoint = 192.0.2.7:1"),
     lambda c: c.peers[0].endpoint == Endpoint("192.0.2.7", 1)),
    (iface() + peer("Endpoint = [2001:DB8:0::7]:65535"),
     lambda c: str(c.peers[0].endpoint) == "[2001:db8::7]:65535"),
    (iface() + peer("Endpoint = [fe80::1%eth0]:51820"),
     lambda c: str(c.peers[0].endpoint) == "[fe80::1%eth0]:51820"),
    (iface() + peer("Endpoint = localhost:51820"),
     lambda c: c.peers[0].endpoint == Endpoint("localhost", 51820)),
    (iface() + peer("Endpoint = exit-1.example.org.:51820"),
     lambda c: c.peers[0].endpoint.host == "exit-1.example.org."),
    (iface() + ["[DataPlane]", "backend = SOCKET", "interfaces = enp1s0f0"],
     lambda c: c.dataplane == DataPlaneConfig("socket", None, None, ("enp1s0f0",))),
    (["[DataPlane]", "Workers = 1024", "[Peer]", f"PublicKey = {PEER1}", *iface()],
     lambda c: c.dataplane.workers == 1024 and len(c.peers) == 1),       # any section order
    ([l + "\r" for l in iface("ListenPort = 7")],                          # CRLF
     lambda c: c.interface.listen_port == 7),
    (iface() + ["[DataPlane]", "MaxPeers = 100000"],
     lambda c: c.dataplane.max_peers == 100000 and "MaxPeers = 100000" in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "ReplayWindow = 2048"],
     lambda c: c.dataplane.replay_window == 2048 and "ReplayWindow = 2048" in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "replaywindow = 1024"],
     lambda c: c.dataplane.replay_window == 1024),
    (iface(),                                             # the kernel's window by default
     lambda c: c.dataplane.replay_window == 8192 and "ReplayWindow" not in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "BusyPoll = 50"],
     lambda c: c.dataplane.busy_poll_us == 50 and "BusyPoll = 50" in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "Backend = xdp", "busypoll = 100000"],
     lambda c: c.dataplane.busy_poll_us == 100000),
    (iface() + ["[DataPlane]", "BusyPoll = off"],          # off, as 0, is the default
     lambda c: c.dataplane.busy_poll_us == 0 and "BusyPoll" not in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "Backend = socket", "BusyPoll = 0"],
     lambda c: c.dataplane.busy_poll_us == 0),
    (iface(),
     lambda c: c.dataplane.busy_poll_us == 0),
    (iface() + ["[DataPlane]", "RealtimePriority = 1"],
     lambda c: c.dataplane.realtime_priority == 1 and "RealtimePriority = 1" in c.to_wg_quick()),
    (iface() + ["[DataPlane]", "Backend = socket", "realtimepriority = 99"],
     lambda c: c.dataplane.realtime_priority == 99),
    (iface() + ["[DataPlane]", "RealtimePriority = off"],  # off is the default
     lambda c: c.dataplane.realtime_priority == 0 and "Realtime" not in c.to_wg_quick()),
    (iface(),
     lambda c: c.dataplane.realtime_priority == 0),
    # AmneziaWG: any case, empty values unset, written back
    (iface("jc = 4", "JMIN = 40", "jMax = 70", "s4 = 8", "h4 = 4000000-4000999", "I2 ="),
     lambda c: (c.interface.obfuscation.jc, c.interface.obfuscation.jmax,
                c.interface.obfuscation.s4, c.interface.obfuscation.h4,
                c.interface.obfuscation.i2) == (4, 70, 8, HeaderRange(4000000, 4000999), None)
     and "H4 = 4000000-4000999" in c.to_wg_quick() and "I2" not in c.to_wg_quick()),
    (iface("I1 = <b 0xc0ffee> <r 16>   # a comment"),
     lambda c: c.interface.obfuscation.i1 == "<b 0xc0ffee> <r 16>"),
    (iface("Jc = 0"), lambda c: c.interface.obfuscation == PLAIN),
    (iface("H1 = 1", "H2 = 2", "H3 = 3", "H4 = 4", "S1 = 0"),     # plain, spelled out
     lambda c: c.interface.obfuscation == PLAIN and "H1" not in c.to_wg_quick()),
    (iface(), lambda c: c.interface.obfuscation == PLAIN and
     not c.dataplane.accept_plain_wireguard),
    *[(iface("S1 = 10", "H1 = 5", "H2 = 6", "H3 = 7", "H4 = 8") +
       ["[DataPlane]", f"AcceptPlainWireGuard = {word}"],
       lambda c, want=want: c.dataplane.accept_plain_wireguard is want and
       ("AcceptPlainWireGuard = yes" in c.to_wg_quick()) is want)
      for word, want in [("yes", True), ("YES", True), ("true", True), ("on", True),
                         ("1", True), ("no", False), ("false", False), ("Off", False),
                         ("0", False)]],
]


@pytest.mark.parametrize("lines,check", GOOD_CASES, ids=range(len(GOOD_CASES)))
def test_good_files(lines, check):
    assert check(parse(conf(*lines)))


def test_host_bits_are_masked_with_a_warning(caplog):
    text = conf(*iface(), *peer("AllowedIPs = 10.0.0.1/24, fd00::1/64, 10.0.0.0/24"))
    with caplog.at_level(logging.WARNING, logger="dataplane.config"):
        cfg = parse(text)
    assert cfg.peers[0].allowed_ips == (net("10.0.0.0/24"), net("fd00::/64"))
    assert cfg.warnings == (
        "wg0.conf:6: AllowedIPs: 10.0.0.1/24 has host bits set; using 10.0.0.0/24, as wg does",
        "wg0.conf:6: AllowedIPs: fd00::1/64 has host bits set; using fd00::/64, as wg does",
        "wg0.conf:6: AllowedIPs: 10.0.0.0/24 is listed twice for this peer")
    assert [r.getMessage() for r in caplog.records] == list(cfg.warnings)


# An AmneziaVPN client's export, as the app writes it (AmneziaWG 2.0: header
# ranges, all four paddings, a DNS-like I1; I2..I5 left empty).
DNS_LIKE_I1 = ("<b 0x858000010001000000000669636c6f756403636f6d0000010001c00c000100010000105a"
               "00044d583737><r 16><t>")
AMNEZIAVPN_CLIENT = f"""\
[Interface]
Address = 10.8.1.2/32
DNS = 1.1.1.1, 1.0.0.1
PrivateKey = {SERVER_B64}
Jc = 4
Jmin = 40
Jmax = 70
S1 = 15
S2 = 18
S3 = 20
S4 = 8
H1 = 1000000-1000999
H2 = 2000000-2000999
H3 = 3000000-3000999
H4 = 4000000-4000999
I1 = {DNS_LIKE_I1}
I2 = \nI3 = \nI4 = \nI5 = \n
[Peer]
PublicKey = {PEER1}
PresharedKey = {PSK_B64}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = 203.0.113.5:51820
PersistentKeepalive = 25
"""


def test_an_amneziavpn_client_file_works_as_it_is():
    cfg = parse(AMNEZIAVPN_CLIENT, "awg0.conf")
    obf = cfg.interface.obfuscation
    assert obf == Obfuscation.from_settings({
        "Jc": 4, "Jmin": 40, "Jmax": 70, "S1": 15, "S2": 18, "S3": 20, "S4": 8,
        "H1": "1000000-1000999", "H2": "2000000-2000999", "H3": "3000000-3000999",
        "H4": "4000000-4000999", "I1": DNS_LIKE_I1})
    (signature,) = obf.signature_packets()
    assert len(signature) == 42 + 16 + 4 and signature.startswith(bytes.fromhex("8580000100"))
    assert cfg.interface.addresses == (ipaddress.ip_interface("10.8.1.2/32"),)
    assert cfg.peers[0].allowed_ips == (net("0.0.0.0/0"), net("::/0"))
    assert cfg.warnings == ("awg0.conf:3: DNS: dataplane does not apply this wg-quick setting; "
                            "ignored",)
    # written back, it reads as the same; the empty keys are left out
    text = cfg.to_wg_quick()
    assert parse(text, "awg0.conf") == cfg
    assert "I2" not in text and "S3 = 20" in text and "H2 = 2000000-2000999" in text


def test_accept_plain_wireguard_without_a_profile_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dataplane.config"):
        cfg = parse(conf(*iface("Jc = 4", "Jmin = 1", "Jmax = 2"), "[DataPlane]", "Workers = 1",
                         "AcceptPlainWireGuard = yes"))
    assert cfg.dataplane.accept_plain_wireguard
    assert cfg.warnings == ("wg0.conf:8: AcceptPlainWireGuard: no S1..S4 or H1..H4 is set, so "
                            "the interface speaks plain WireGuard anyway",)
    assert [r.getMessage() for r in caplog.records] == list(cfg.warnings)


def test_a_profile_that_plain_wireguard_can_share_a_port_with():
    cfg = parse(conf(*iface("S1 = 15", "S2 = 18", "S4 = 8", "H1 = 5", "H2 = 6", "H3 = 7",
                            "H4 = 8-1000"), "[DataPlane]", "AcceptPlainWireGuard = yes"))
    assert cfg.dataplane.accept_plain_wireguard and cfg.warnings == ()
    assert cfg.interface.obfuscation.h4 == HeaderRange(8, 1000)


# ---------------------------------------------------------------- bad files

LOW = keys.format_base64_key(bytes(32))
SHORT = base64.b64encode(bytes(31)).decode()
OWN = str(SERVER.public_key())

BAD_CASES = [
    # (lines, line, reason)
    (iface("ListenPort = 65536"), 3,
     "ListenPort: expected a port 0..65535 (0 picks one at random), got '65536'"),
    (iface("ListenPort = -1"), 3, "ListenPort: expected a port 0..65535 (0 picks one at "),
    (iface("ListenPort = wireguard"), 3, "ListenPort: expected a port 0..65535 (0 picks one"),
    (iface("ListenPort = 1", "ListenPort = 2"), 4,
     "ListenPort: given twice in this [Interface] (first at line 3)"),
    (iface("PrivateKey = " + SERVER_B64), 3,
     "PrivateKey: given twice in this [Interface] (first at line 2)"),
    (["[Interface]", "PrivateKey = " + SHORT], 2,
     "PrivateKey: not a valid base64 key (decodes to 31 bytes)"),
    (["[Interface]", "PrivateKey = " + SERVER_B64[:-1]], 2,
     "PrivateKey: not a valid base64 key (the '=' padding is missing)"),
    (iface("MTU = 67"), 3, "MTU: expected an MTU 68..65535, got '67'"),
    (iface("MTU = 1420.0"), 3, "MTU: expected an MTU 68..65535, got '1420.0'"),
    (iface("FwMark = 0x100000000"), 3,
     "FwMark: expected off or a mark 0..0xffffffff (decimal or 0x hex), got '0x100000000'"),
    (iface("FwMark = -1"), 3, "FwMark: expected off or a mark 0..0xffffffff"),
    (iface("Address = 10.0.0.256/24"), 3,
     "Address: '10.0.0.256/24': '10.0.0.256' is not an IPv4 or IPv6 address"),
    (iface("Address = 10.0.0.1/33"), 3, "Address: '10.0.0.1/33': the prefix length must be 0..32"),
    (iface("Address = 10.0.0.1/24,"), 3, "Address: empty entry in the comma-separated list"),
    (iface("Address = 10.0.0.1/24", "Address = 10.0.0.1/24"), 4,
     "Address: 10.0.0.1/24 is listed twice"),
    (iface("Foo = bar"), 3, "Foo: unknown key in [Interface]"),
    (iface("PublicKey = " + str(PEER1)), 3,
     "PublicKey: unknown key in [Interface]; it belongs in [Peer]"),
    (iface("Workers = 2"), 3, "Workers: unknown key in [Interface]; it belongs in [DataPlane]"),
    (iface("ListenPort"), 3, "expected `Key = Value` or a [Section] header"),
    (iface("= 5"), 3, "expected `Key = Value`"),
    (iface("ListenPort ="), 3, "ListenPort: empty value"),
    (iface("[Interface]"), 3, "[Interface] appears twice (first at line 1)"),
    (["PrivateKey = " + SERVER_B64], 1, "PrivateKey: comes before any section"),
    (iface() + ["[DataPlane]", "MaxPeers = 0"], 4, "MaxPeers"),
    (iface() + ["[DataPlane]", "MaxPeers = 99999999"], 4, "MaxPeers"),
    (iface() + ["[DataPlane]", "ReplayWindow = 3000"], 4,
     "ReplayWindow: expected a window in bits, a power of two from 1024 to 8192 "
     "(1024, 2048, 4096, 8192; 8192 as the kernel's WireGuard), got '3000'"),
    (iface() + ["[DataPlane]", "ReplayWindow = 512"], 4, "power of two from 1024 to 8192"),
    (iface() + ["[DataPlane]", "ReplayWindow = 16384"], 4, "power of two from 1024 to 8192"),
    (iface() + ["[DataPlane]", "ReplayWindow = 2k"], 4, "got '2k'"),
    (iface() + ["[DataPlane]", "BusyPoll = 100001"], 4,
     "BusyPoll: expected off or microseconds 0..100000, got '100001'"),
    (iface() + ["[DataPlane]", "BusyPoll = -1"], 4, "got '-1'"),
    (iface() + ["[DataPlane]", "BusyPoll = 50us"], 4, "got '50us'"),
    (iface() + ["[DataPlane]", "Backend = socket", "BusyPoll = 50"], 5,
     "BusyPoll: only the xdp backend busy-polls (its AF_XDP sockets); this file says "
     "Backend = socket"),
    (iface() + ["[DataPlane]", "BusyPoll = 50", "Backend = socket"], 4, "Backend = socket"),
    (iface() + ["[DataPlane]", "RealtimePriority = 0"], 4,
     "RealtimePriority: expected off or a SCHED_FIFO priority 1..99, got '0'"),
    (iface() + ["[DataPlane]", "RealtimePriority = 100"], 4, "1..99, got '100'"),
    (iface() + ["[DataPlane]", "RealtimePriority = fifo"], 4, "got 'fifo'"),
    (iface() + ["[DataPlane]", "BusyPoll = 50", "RealtimePriority = 1"], 5,
     "RealtimePriority: not with BusyPoll: a real-time worker that polls keeps the kernel's "
     "receive threads, which feed it, off its CPU for every polling window"),
    (iface("[Wat]"), 3, "unknown section [Wat]; expected [Interface], [Peer] or [DataPlane]"),
    (["[Interface", "PrivateKey = " + SERVER_B64], 1, "a section header looks like [Peer]"),
    (["[Peer]", f"PublicKey = {PEER1}"], None, "no [Interface] section"),
    (["# nothing"], None, "no [Interface] section"),
    (["", "[Interface]", "ListenPort = 1"], 2, "[Interface] has no PrivateKey"),
    (iface("", "[Peer]", "AllowedIPs = 10.0.0.1/32"), 4, "[Peer] has no PublicKey"),
    (iface() + peer() + peer(), 8, "PublicKey: this peer is already defined at line 5"),
    (iface() + peer(key=LOW), 5, "PublicKey: a low-order Curve25519 point"),
    (iface() + peer(key=OWN), 5, "PublicKey: this is the interface's own public key"),
    (iface() + peer(key=SHORT), 5, "PublicKey: not a valid base64 key (decodes to 31 bytes)"),
    (iface() + peer("AllowedIPs = 10.0.0.2/32") +
     peer("AllowedIPs = 10.0.0.0/24, 10.0.0.2/32", key=PEER2), 10,
     "AllowedIPs: 10.0.0.2/32 is already routed to the peer at line 4"),
    (iface() + peer("AllowedIPs = 10.0.0.0/33"), 6,
     "AllowedIPs: '10.0.0.0/33': the prefix length must be 0..32"),
    (iface() + peer("AllowedIPs = 10.0.0.0/255.255.255.0"), 6,
     "AllowedIPs: '10.0.0.0/255.255.255.0': the prefix length must be 0..32"),
    (iface() + peer("AllowedIPs = 010.0.0.1/32"), 6,
     "AllowedIPs: '010.0.0.1/32': '010.0.0.1' is not an IPv4 or IPv6 address"),
    (iface() + peer("AllowedIPs = fe80::1%eth0/128"), 6, "cannot carry an IPv6 zone"),
    (iface() + peer("AllowedIPs = 10.0.0.1/ 24"), 6, "the prefix length must be 0..32"),
    (iface() + peer("AllowedIPs = 10.0.0.1,,10.0.0.2"), 6, "empty entry"),
    (iface() + peer("Endpoint = 2001:db8::1:51820"), 6, "write an IPv6 endpoint in brackets"),
    (iface() + peer("Endpoint = [2001:db8::1]"), 6, "has no :port after the ']'"),
    (iface() + peer("Endpoint = [2001:db8::1:51820"), 6, "'[' without a matching ']'"),
    (iface() + peer("Endpoint = [192.0.2.1]:51820"), 6, "brackets hold an IPv6 address"),
    (iface() + peer("Endpoint = vpn.example.org"), 6, "is not HOST:PORT"),
    (iface() + peer("Endpoint = 192.0.2.1:"), 6, "is not HOST:PORT"),
    (iface() + peer("Endpoint = 192.0.2.1:0"), 6,
     "Endpoint: '192.0.2.1:0': the port must be 1..65535"),
    (iface() + peer("Endpoint = 192.0.2.1:65536"), 6,
     "Endpoint: '192.0.2.1:65536': the port must be 1..65535"),
    (iface() + peer("Endpoint = 192.0.2:51820"), 6, "'192.0.2' is not a valid IPv4 address"),
    (iface() + peer("Endpoint = bad_host!:51820"), 6, "neither an IP address nor a valid host"),
    (iface() + peer("Endpoint = -bad.example:51820"), 6, "neither an IP address nor a valid"),
    (iface() + peer("PersistentKeepalive = 65536"), 6,
     "PersistentKeepalive: expected off or seconds 0..65535, got '65536'"),
    (iface() + peer("PersistentKeepalive = on"), 6,
     "PersistentKeepalive: expected off or seconds 0..65535, got 'on'"),
    (iface() + peer("PresharedKey = " + SHORT), 6, "PresharedKey: not a valid base64 key"),
    (iface() + peer("Address = 10.0.0.1"), 6,
     "Address: unknown key in [Peer]; it belongs in [Interface]"),
    (iface() + peer("DNS = 1.1.1.1"), 6, "DNS: unknown key in [Peer]; it belongs in [Interface]"),
    (iface() + ["[DataPlane]", "Backend = dpdk"], 4,
     "Backend: expected one of auto, xdp, socket, got 'dpdk'"),
    (iface() + ["[DataPlane]", "Workers = 0"], 4, "Workers: expected a count 1..1024, got '0'"),
    (iface() + ["[DataPlane]", "Queues = 1025"], 4, "Queues: expected a count 1..1024, got '1025'"),
    (iface() + ["[DataPlane]", "Queues = two"], 4, "Queues: expected a count 1..1024, got 'two'"),
    (iface() + ["[DataPlane]", "Interfaces = eth0, eth0"], 4, "Interfaces: eth0 is listed twice"),
    (iface() + ["[DataPlane]", "Interfaces = eth/0"], 4,
     "Interfaces: 'eth/0' is not a valid interface name"),
    (iface() + ["[DataPlane]", "Interfaces = sixteen-chars-xx"], 4, "not a valid interface name"),
    (iface() + ["[DataPlane]", "Interfaces = eth0,"], 4, "empty entry"),
    (iface() + ["[DataPlane]", "PrivateKey = " + SERVER_B64], 4,
     "PrivateKey: unknown key in [DataPlane]; it belongs in [Interface]"),
    (iface() + ["[DataPlane]", "[DataPlane]"], 4, "[DataPlane] appears twice (first at line 3)"),
    (iface("Table = off\0"), 3, "NUL byte"),
    # AmneziaWG: one key's value at its line, with the key as the file spells it
    (iface("Jc = many"), 3, "Jc: expected a count of junk packets 0..128 (0: none), got 'many'"),
    (iface("jmin = -1"), 3, "Jmin: expected a junk packet size in bytes 0..65507, got '-1'"),
    (iface("S2 = 65508"), 3, "S2: expected a padding in bytes 0..65507, got '65508'"),
    (iface("H1 = 5-4"), 3, "H1: '5-4': the range's start is above its end"),
    (iface("H3 = 0x10"), 3, "H3: expected a type value N or a range A-B of 0..4294967295"),
    (iface("I1 = <b 0xabc>"), 3, "I1: <b 0xabc>: <b> takes one value, an even number of hex"),
    (iface("I5 = <z 3>"), 3, "I5: unknown tag <z>"),
    (iface("I2 = text<t>"), 3, "I2: text outside a tag: 'text'"),
    (iface("S1 = 1", "S1 = 2"), 4, "S1: given twice in this [Interface] (first at line 3)"),
    (iface() + peer("S1 = 5"), 6, "S1: unknown key in [Peer]; it belongs in [Interface]"),
    (iface() + ["[DataPlane]", "H1 = 5"], 4, "H1: unknown key in [DataPlane]; it belongs in"),
    # between keys: at the line of the key named
    (iface("H1 = 100-200", "S4 = 8", "H2 = 150-300"), 5,
     "H2: 150-300 overlaps H1 = 100-200: a receiver could not tell the message kinds apart"),
    (iface("S1 = 5", "H3 = 2"), 4, "H3: 2 overlaps H2 = 2 (the default)"),
    (iface("Jc = 4", "Jmin = 80", "Jmax = 70"), 4, "Jmin: 80 is above Jmax (70)"),
    (iface("Jmin = 40", "Jc = 4"), 4, "Jmax: Jc = 4 junk packets need a size: set Jmax"),
    (iface("Jc = 4", "H3 = 3-300", "S1 = 5", "Jmax = 3", "Jmin = 40"), 7, "Jmin: 40 is above Jmax"),
    (iface("H3 = 0-1000"), 3, "H3: 0-1000 overlaps H1 = 1 (the default)"),
    (iface("Jmax = 40", "Jc = 4"), 4, "Jmin: Jc = 4 junk packets need a size"),  # Jc's line
    (iface("S1 = 65360"), 3, "S1: 65360 bytes of padding on a initiation message"),
    # AcceptPlainWireGuard
    (iface() + ["[DataPlane]", "AcceptPlainWireGuard = maybe"], 4,
     "AcceptPlainWireGuard: expected yes or no (true/false, on/off, 1/0), got 'maybe'"),
    (iface() + ["[DataPlane]", "AcceptPlainWireGuard ="], 4, "AcceptPlainWireGuard: empty value"),
    (iface("S1 = 10", "H1 = 20", "H2 = 21", "H3 = 0-9", "H4 = 22") +
     ["[DataPlane]", "AcceptPlainWireGuard = yes"], 6,
     "H3: 0-9 includes 1, 2, 3 and 4, plain WireGuard message types: with "
     "AcceptPlainWireGuard the two profiles could not be told apart"),
    (iface("S1 = 10", "S4 = 4") + ["", "[DataPlane]", "Workers = 1",
                                   "AcceptPlainWireGuard = on"], 8,
     "H1: 1 (the default) includes 1, a plain WireGuard message type: with "
     "AcceptPlainWireGuard"),
]


@pytest.mark.parametrize("lines,line,reason", BAD_CASES, ids=range(len(BAD_CASES)))
def test_bad_files(lines, line, reason):
    with pytest.raises(ConfigError) as e:
        parse(conf(*lines))
    err = e.value
    assert err.filename == "wg0.conf"
    assert err.line == line, str(err)
    assert reason in err.reason, str(err)
    where = f"wg0.conf:{line}" if line is not None else "wg0.conf"
    assert str(err) == f"{where}: {err.reason}"


def test_error_message_reads_as_documented():
    text = conf(*iface(), "", "", "[Peer]", "# the laptop", f"PublicKey = {SHORT}")
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert str(e.value).startswith(
        "wg0.conf:7: PublicKey: not a valid base64 key (decodes to 31 bytes)")


@pytest.mark.parametrize("filename", [
    "wg0", "wg0.cfg", ".conf", "sixteen-chars-xx.conf", "wg 0.conf", "wg:0.conf", "wg%0.conf",
    "/etc/wireguard/", "..conf", "...conf"])
def test_interface_name_comes_from_the_file_name(filename):
    with pytest.raises(ConfigError) as e:
        parse(conf(*iface()), filename)
    assert e.value.line is None
    assert "the file name must be an interface name and .conf" in str(e.value)
    assert str(e.value).startswith(f"{filename}: ")


@pytest.mark.parametrize("filename,name", [
    ("wg0.conf", "wg0"), ("/etc/dataplane/exit-1.conf", "exit-1"),
    ("fifteen-chars-x.conf", "fifteen-chars-x"), ("a_b=c+d.e.conf", "a_b=c+d.e")])
def test_valid_interface_names(filename, name):
    assert interface_name(filename) == name
    assert parse(conf(*iface()), filename).name == name


def test_load_config(tmp_path):
    path = tmp_path / "dp7.conf"
    path.write_text(FULL)
    assert load_config(path) == parse(FULL, "dp7.conf")
    path.write_bytes(conf(*iface()).encode() + b"DNS = \xff\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:3: not UTF-8 text"
    with pytest.raises(TypeError, match="text must be a str"):
        parse_config(b"[Interface]", "wg0.conf")


# ---------------------------------------------------------------- secrets stay secret

def _assert_no_secret(text):
    for secret in SECRETS:
        assert secret not in text
        assert secret[:16] not in text


def test_private_and_preshared_keys_absent_from_repr_str_and_logs(caplog):
    with caplog.at_level(logging.DEBUG):
        cfg = parse(FULL)
        _ = parse(conf(*iface("DNS = 1.1.1.1"), *peer("AllowedIPs = 10.0.0.1/8")))
    for text in (repr(cfg), str(cfg), repr(cfg.interface), str(cfg.peers), repr(cfg.peers[0]),
                 "\n".join(cfg.warnings), caplog.text, f"{cfg}"):
        _assert_no_secret(text)
    assert "PrivateKey(<redacted>" in repr(cfg)
    assert "PresharedKey(<redacted>)" in repr(cfg)
    assert SERVER_B64 in cfg.to_wg_quick()       # the one place it is written, on purpose


@pytest.mark.parametrize("line", [
    f"PrivateKey = {SERVER_B64}x",
    f"PrivateKey = {SERVER_B64[:20]} {SERVER_B64[20:]}",
    f"PrivteKey = {SERVER_B64}",
    f"{SERVER_B64}",
    f"{SERVER_B64[:-1]}",
    f"PresharedKey = {PSK_B64}",               # in [Interface]: unknown there
])
def test_errors_do_not_repeat_secrets(line):
    with pytest.raises(ConfigError) as e:
        parse(conf("[Interface]", line, f"PrivateKey = {SERVER_B64}"))
    _assert_no_secret(str(e.value))


# ---------------------------------------------------------------- round trips

def test_round_trip_full():
    cfg = parse(FULL)
    text = cfg.to_wg_quick()
    again = parse(text)
    assert again == cfg
    assert again.to_wg_quick() == text
    assert "[DataPlane]" in text and "Backend = xdp" in text and "FwMark = 0x1234" in text
    plain = cfg.to_wg_quick(include_dataplane=False)
    assert "[DataPlane]" not in plain
    assert parse(plain) == dataclasses.replace(cfg, dataplane=DataPlaneConfig())


def test_round_trip_writes_what_wg_showconf_writes():
    cfg = parse(conf(*iface("ListenPort = 51820"),
                     *peer("AllowedIPs = 10.0.0.2/32, fd00::2/128", "Endpoint = [::1]:51820",
                           "PersistentKeepalive = 25")))
    assert cfg.to_wg_quick() == conf(
        "[Interface]", f"PrivateKey = {SERVER_B64}", "ListenPort = 51820", "",
        "[Peer]", f"PublicKey = {PEER1}", "AllowedIPs = 10.0.0.2/32, fd00::2/128",
        "Endpoint = [::1]:51820", "PersistentKeepalive = 25")


def _networks():
    v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network(t, strict=False))
    v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network(t, strict=False))
    return st.one_of(v4, v6)


def _interfaces():
    v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(ipaddress.IPv4Interface)
    v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(ipaddress.IPv6Interface)
    return st.one_of(v4, v6)


_hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9]{0,8}){0,3}",
                           fullmatch=True)
_endpoints = st.builds(
    Endpoint,
    st.one_of(st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
              st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
              _hostnames),
    st.integers(1, 65535))
_ifnames = st.from_regex(r"[a-z][a-z0-9._-]{0,14}", fullmatch=True)
_ignored = st.tuples(st.sampled_from(["DNS", "Table", "PreUp", "PostUp", "PreDown", "PostDown",
                                      "SaveConfig"]),
                     st.from_regex(r"([!-\"$-~]([ !-\"$-~]*[!-\"$-~])?)?", fullmatch=True))


@st.composite
def configs(draw):
    private = PrivateKey(draw(st.binary(min_size=32, max_size=32)))
    peer_secrets = draw(st.lists(st.binary(min_size=32, max_size=32), max_size=4,
                                 unique=True))
    publics = [keys.public_key(s) for s in peer_secrets]
    assume(private.public_key() not in publics)
    routes = draw(st.lists(_networks(), max_size=12, unique=True))
    peers = []
    for n, public in enumerate(publics):
        mine = tuple(r for i, r in enumerate(routes) if i % len(publics) == n)
        peers.append(PeerConfig(
            public_key=public,
            preshared_key=draw(st.one_of(st.none(), st.binary(min_size=32, max_size=32)
                                         .filter(any).map(PresharedKey))),
            allowed_ips=mine,
            endpoint=draw(st.one_of(st.none(), _endpoints)),
            persistent_keepalive=draw(st.integers(0, 65535))))
    interface = InterfaceConfig(
        private_key=private,
        listen_port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        fwmark=draw(st.integers(0, 2**32 - 1)),
        addresses=tuple(draw(st.lists(_interfaces(), max_size=4, unique=True))),
        mtu=draw(st.one_of(st.none(), st.integers(68, 65535))),
        ignored=tuple(draw(st.lists(_ignored, max_size=3))))
    dataplane = DataPlaneConfig(
        backend=draw(st.sampled_from(["auto", "xdp", "socket"])),
        workers=draw(st.one_of(st.none(), st.integers(1, 1024))),
        queues=draw(st.one_of(st.none(), st.integers(1, 1024))),
        interfaces=tuple(draw(st.lists(_ifnames, max_size=3, unique=True))),
        replay_window=draw(st.sampled_from([1024, 2048, 4096, 8192])),
        busy_poll_us=draw(st.integers(0, 100000)))
    if dataplane.backend == "socket":
        dataplane = dataclasses.replace(dataplane, busy_poll_us=0)
    if draw(st.booleans()):
        # an AmneziaWG profile, served beside plain WireGuard or not
        lo = draw(st.integers(5, 2**31))
        spans = draw(st.lists(st.integers(0, 1000), min_size=4, max_size=4))
        headers, at = {}, lo
        for n, span in enumerate(spans):
            headers[f"H{n + 1}"] = f"{at}-{at + span}" if span else str(at)
            at += span + 1 + draw(st.integers(0, 10))
        obf = Obfuscation.from_settings({
            **headers, **{f"S{n}": draw(st.integers(0, 1000)) for n in range(1, 5)},
            "Jc": draw(st.integers(0, 128)), "Jmin": 10, "Jmax": draw(st.integers(10, 1400)),
            "I1": draw(st.sampled_from([None, "<t>", "<b 0xc0ffee> <r 16><t>",
                                        "<rc 5><rd 3>"]))})
        interface = dataclasses.replace(interface, obfuscation=obf)
        dataplane = dataclasses.replace(dataplane, accept_plain_wireguard=draw(st.booleans()))
    return Config("dp0", interface, tuple(peers), dataplane)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_round_trip_any_config(cfg):
    text = cfg.to_wg_quick()
    again = parse_config(text, "dp0.conf")
    assert again == cfg
    assert again.to_wg_quick() == text


# ---------------------------------------------------------------- prefixes

@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_prefix_canonicalization_matches_integer_masking(value, length):
    _check_prefix(ipaddress.IPv4Address(value), length, 32)


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_prefix_canonicalization_matches_integer_masking(value, length):
    _check_prefix(ipaddress.IPv6Address(value), length, 128)


def _check_prefix(addr, length, bits):
    """The slow reference: clear the low (bits - length) bits of the integer."""
    mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    network_int = int(addr) & mask
    parsed = parse_prefix(f"{addr}/{length}")
    assert int(parsed.network.network_address) == network_int
    assert parsed.network.prefixlen == length
    assert parsed.masked == (network_int != int(addr))
    # The canonical text reads back as itself, with nothing to mask.
    again = parse_prefix(str(parsed.network))
    assert again == (parsed.network, False)
    assert parse_prefix(str(addr)).network.prefixlen == bits   # no length: one host


def test_prefix_requires_length_when_asked():
    with pytest.raises(ValueError, match="allowed_ip: '10.0.0.1' has no /length"):
        parse_prefix("10.0.0.1", "allowed_ip", require_length=True)


# ---------------------------------------------------------------- wg-quick as a reference

WG_QUICK = shutil.which("wg-quick")


@pytest.mark.skipif(WG_QUICK is None, reason="`wg-quick` (wireguard-tools) is not installed")
@pytest.mark.skipif(os.geteuid() != 0,
                    reason="wg-quick re-executes itself through sudo when not root")
def test_wg_quick_strip_takes_our_file(tmp_path):
    """wg-quick reads our file (without [DataPlane], which is ours) and
    strips its own keys; what is left is what `wg setconf` gets, and it
    parses back to the same keys and peers."""
    cfg = parse(FULL.replace("vpn.example.org", "192.0.2.9"), "dpstrip0.conf")
    path = tmp_path / "dpstrip0.conf"
    path.write_text(cfg.to_wg_quick(include_dataplane=False))
    path.chmod(0o600)
    tmp_path.chmod(0o700)
    result = subprocess.run([WG_QUICK, "strip", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    stripped = result.stdout
    for gone in ("Address", "MTU", "DNS", "PostUp"):
        assert gone not in stripped
    again = parse(stripped, "dpstrip0.conf")
    expected = dataclasses.replace(
        cfg, dataplane=DataPlaneConfig(),
        interface=dataclasses.replace(cfg.interface, addresses=(), mtu=None, ignored=()))
    assert again == expected
