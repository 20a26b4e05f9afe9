"""Scenarios of the kernel's WireGuard netns selftest
(tools/testing/selftests/wireguard/netns.sh), ported to `dataplane up` as
the hub with wireguard-go and `dataplane up` spokes: the MTU and padding
edge, an allowed IP moving to another peer, a private key change followed
by an immediate handshake, thousands of allowed IPs on one peer, low-order
public keys, `wg showconf` | `wg setconf`, and removing a peer."""
import ipaddress
import os
import select
import socket
import subprocess
import time

import pytest

from dataplane.keys import LOW_ORDER_POINTS, PrivateKey, PublicKey
from dataplane.wireguard_go import UAPI_DIR
from tests.integration.scenarios import HUB_INNER, HUB_PORT, INNER_ROUTES, Hub, hub_outer
from tests.integration.tunnel import DATAPLANE

IPV4_OVERHEAD = 20 + 8           # IPv4 + ICMP echo headers
IPV6_OVERHEAD = 40 + 8
WG_DATA_OVERHEAD = 16 + 16       # data message header + Poly1305 tag
WG_PADDING = 16                  # whitepaper 5.4.6
INITIATION_LEN = 148
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2     # <linux/in.h>; Python's socket lacks them

# The seven encodings the kernel's selftest uses, and each with bit 255 set
# (X25519 ignores that bit, so they are the same points).
LOW_ORDER_KEYS = [PublicKey(p) for p in LOW_ORDER_POINTS] + \
                 [PublicKey(p[:31] + bytes([p[31] | 0x80])) for p in LOW_ORDER_POINTS]


def passed(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 0 and " 0% packet loss" in r.stdout


def why(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}: {r.stdout[-600:]}{r.stderr[-600:]}"


def link_mtu(topo, ns: str, name: str) -> int:
    words = topo.run(ns, ["ip", "-o", "link", "show", name]).stdout.split()
    return int(words[words.index("mtu") + 1])


def padded_wire_len(inner: int, mtu: int) -> int:
    """What one inner packet costs on the wire: padded to 16 bytes, but not
    past the MTU, plus header and tag."""
    return min(-(-inner // WG_PADDING) * WG_PADDING, max(inner, mtu)) + WG_DATA_OVERHEAD


# ---------------------------------------------------------------- MTU and padding

@pytest.mark.parametrize("mtu", [None, 1280], ids=["default-1420", "mtu-1280"])
def test_largest_packet_that_fits_passes_and_one_byte_more_fails_locally(topo, tmp_path, mtu):
    hub = Hub(topo, tmp_path, mtu=mtu)
    spoke = hub.spokes[0]
    want = mtu or 1420
    assert link_mtu(topo, hub.ns, hub.name) == want
    topo.set_up(spoke.ns, spoke.iface.name, mtu=want)
    assert passed(hub.iface.ping(spoke.inner[0], count=1)), "no tunnel at all"
    for (dst_hub, dst_spoke), overhead in zip(zip(HUB_INNER, spoke.inner),
                                              (IPV4_OVERHEAD, IPV6_OVERHEAD)):
        largest = want - overhead
        r = hub.iface.ping(dst_spoke, size=largest, df=True)
        assert passed(r), f"{largest} bytes of ping from the hub: {why(r)}"
        r = spoke.iface.ping(dst_hub, size=largest, df=True)
        assert passed(r), f"{largest} bytes of ping to the hub: {why(r)}"
        _, sent = hub.iface.transfer(spoke.public_key)
        r = hub.iface.ping(dst_spoke, size=largest + 1, df=True, count=1)
        assert r.returncode != 0, f"{largest + 1} bytes passed an MTU of {want}"
        assert "message too long" in (r.stdout + r.stderr).lower(), why(r)
        assert hub.iface.transfer(spoke.public_key)[1] == sent, \
            "a packet over the MTU went out on the wire"
    assert hub.drops()["too_big"] == 0


def test_padding_is_to_16_bytes_and_never_past_the_mtu(topo, tmp_path):
    """Byte counters of one ping each way, as the selftest checks them: the
    hub pads what it sends and accepts wireguard-go's padding."""
    hub = Hub(topo, tmp_path)
    spoke = hub.spokes[0]
    assert passed(hub.iface.ping(spoke.inner[0], count=1))
    # inner lengths: 84 pads to 96; 1408 is a multiple of 16; 1409 and
    # 1418 would pad past 1420 and stop at it; 1420 is the MTU itself
    cases = [(spoke.inner[0], 84), (spoke.inner[0], 1408), (spoke.inner[0], 1409),
             (spoke.inner[0], 1420), (spoke.inner[1], 1418), (spoke.inner[1], 100)]
    for dst, inner in cases:
        overhead = IPV4_OVERHEAD if ipaddress.ip_address(dst).version == 4 else IPV6_OVERHEAD
        rx, tx = hub.iface.transfer(spoke.public_key)
        r = hub.iface.ping(dst, count=1, size=inner - overhead, df=True)
        assert passed(r), f"inner {inner} bytes: {why(r)}"
        rx2, tx2 = hub.iface.transfer(spoke.public_key)
        want = padded_wire_len(inner, 1420)
        assert (tx2 - tx, rx2 - rx) == (want, want), \
            f"inner {inner} bytes to {dst}: sent {tx2 - tx}, received {rx2 - rx}, want {want}"


def udp_one_way(topo, src_ns: str, dst_ns: str, dst: str, ip_len: int) -> bool:
    """One IPv4 UDP datagram of ip_len bytes in all, sent with DF from
    src_ns to dst in dst_ns: did it arrive whole?"""
    receiver, sender = topo.socket(dst_ns), topo.socket(src_ns)
    with receiver, sender:
        receiver.bind((dst, 0))
        sender.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        size = ip_len - 28                            # IPv4 and UDP headers
        payload = (bytes(range(256)) * (size // 256 + 1))[:size]
        sender.sendto(payload, receiver.getsockname())
        ready, _, _ = select.select([receiver], [], [], 2)
        return bool(ready) and receiver.recv(65536) == payload


def nonzero(drops: dict) -> dict:
    return {k: n for k, n in drops.items() if n}


def test_packets_from_a_peer_with_a_larger_mtu_are_accepted(topo, tmp_path):
    # The socket backend: its TUN takes packets over its MTU. The XDP
    # backend hands decrypted packets to the kernel through a veth, which
    # drops frames over the receiving end's MTU (the interface's): there a
    # peer's packets must fit our MTU.
    hub = Hub(topo, tmp_path, mtu=1280, backend="socket")
    spoke = hub.spokes[0]
    assert link_mtu(topo, spoke.ns, spoke.iface.name) == 1420
    assert passed(spoke.iface.ping(HUB_INNER[0], count=1))
    assert udp_one_way(topo, spoke.ns, hub.ns, HUB_INNER[0], 1280), "even 1280 bytes are lost"
    assert udp_one_way(topo, spoke.ns, hub.ns, HUB_INNER[0], 1420), \
        f"a 1420-byte packet from the spoke was lost; hub drops: {nonzero(hub.drops())}"


def test_link_mtu_raised_at_runtime_carries_full_packets(topo, tmp_path):
    hub = Hub(topo, tmp_path)
    spoke = hub.spokes[0]
    assert passed(hub.iface.ping(spoke.inner[0], count=1))
    # the outer link takes the bigger datagrams unfragmented
    topo.set_up(spoke.ns, spoke.veth[0], mtu=1600)
    topo.set_up(hub.ns, spoke.veth[1], mtu=1600)
    topo.set_up(hub.ns, hub.name, mtu=1500)
    topo.set_up(spoke.ns, spoke.iface.name, mtu=1500)
    assert udp_one_way(topo, hub.ns, spoke.ns, spoke.inner[0], 1420), "even 1420 bytes are lost"
    assert udp_one_way(topo, hub.ns, spoke.ns, spoke.inner[0], 1500), \
        f"a 1500-byte packet from the hub was lost; hub drops: {nonzero(hub.drops())}"


# ---------------------------------------------------------------- allowed IPs

def test_allowed_ip_moved_to_another_peer_takes_its_traffic(topo, tmp_path):
    hub = Hub(topo, tmp_path, kinds=("go", "dataplane"))
    a, b = hub.spokes
    service = ("10.220.0.100", "fd00:220::100")       # an address both spokes hold
    for s in (a, b):
        for addr, plen in zip(service, (32, 128)):
            topo.add_address(s.ns, s.iface.name, f"{addr}/{plen}")

    def own(s):
        return f"{s.inner[0]}/32,{s.inner[1]}/128"

    hub.iface.wg("set", hub.name, "peer", str(a.public_key), "allowed-ips",
                 f"{own(a)},{service[0]}/32,{service[1]}/128")
    for addr in service:
        before = (a.iface.transfer(hub.public_key)[0], b.iface.transfer(hub.public_key)[0])
        r = hub.iface.ping(addr)
        assert passed(r), why(r)
        assert a.iface.transfer(hub.public_key)[0] > before[0], f"{addr} did not reach A"
        assert b.iface.transfer(hub.public_key)[0] == before[1], f"{addr} reached B"

    # one `wg set` on B moves the prefixes: a prefix has one peer
    hub.iface.wg("set", hub.name, "peer", str(b.public_key), "allowed-ips",
                 f"{own(b)},{service[0]}/32,{service[1]}/128")
    listed = dict(line.split("\t") for line in
                  hub.iface.wg("show", hub.name, "allowed-ips").stdout.splitlines())
    assert set(listed[str(a.public_key)].split()) == {f"{a.inner[0]}/32", f"{a.inner[1]}/128"}
    assert set(listed[str(b.public_key)].split()) == {
        f"{b.inner[0]}/32", f"{b.inner[1]}/128", f"{service[0]}/32", f"{service[1]}/128"}
    for addr in service:
        before = (a.iface.transfer(hub.public_key)[0], b.iface.transfer(hub.public_key)[0])
        r = hub.iface.ping(addr)
        assert passed(r), why(r)
        assert b.iface.transfer(hub.public_key)[0] > before[1], f"{addr} did not move to B"
        assert a.iface.transfer(hub.public_key)[0] == before[0], f"{addr} still reaches A"
        # from that source, B is believed and A is not
        hub_addr = HUB_INNER[0] if "." in addr else HUB_INNER[1]
        r = b.iface.ping(hub_addr, source=addr)
        assert passed(r), f"B from {addr}: {why(r)}"
        not_allowed = hub.drops()["not_allowed"]
        r = a.iface.ping(hub_addr, source=addr, timeout=1)
        assert r.returncode != 0, f"A's packets from {addr} were still accepted"
        assert hub.drops()["not_allowed"] >= not_allowed + 2
    # A's own addresses are untouched
    assert passed(a.iface.ping(HUB_INNER[0]))


def test_thousands_of_allowed_ips_on_one_peer(topo, tmp_path):
    hub = Hub(topo, tmp_path)
    spoke = hub.spokes[0]
    count = 1024                 # per family; routes make each `wg set` take seconds
    many4 = [f"10.230.{i // 256}.{i % 256}/32" for i in range(count)]
    many6 = [str(ipaddress.ip_network(f"fd00:230::{i:x}/128")) for i in range(count)]
    own = [f"{spoke.inner[0]}/32", f"{spoke.inner[1]}/128"]
    hub.iface.wg("set", hub.name, "peer", str(spoke.public_key), "allowed-ips",
                 ",".join(own + many4 + many6))
    out = hub.iface.wg("show", hub.name, "allowed-ips").stdout
    key, _, listed = out.strip().partition("\t")
    assert key == str(spoke.public_key)
    listed = listed.split()
    assert len(listed) == len(set(listed)) == 2 * count + 2
    assert set(listed) == set(own + many4 + many6)

    # the last of them routes through the tunnel, both families
    far = (many4[-1].split("/")[0], many6[-1].split("/")[0])
    for addr, plen in zip(far, (32, 128)):
        topo.add_address(spoke.ns, spoke.iface.name, f"{addr}/{plen}")
    for addr in far:
        r = hub.iface.ping(addr)
        assert passed(r), f"to {addr}: {why(r)}"
    r = spoke.iface.ping(HUB_INNER[0], source=far[0])
    assert passed(r), f"from {far[0]}: {why(r)}"

    # and all go again, routes with them
    hub.iface.wg("set", hub.name, "peer", str(spoke.public_key), "allowed-ips", ",".join(own))
    out = hub.iface.wg("show", hub.name, "allowed-ips").stdout
    assert set(out.strip().split("\t")[1].split()) == set(own)
    routes = topo.run(hub.ns, ["ip", "-4", "route", "show", "dev", hub.name]).stdout
    assert "10.230." not in routes, routes[:500]
    for addr in far:
        assert hub.iface.ping(addr, count=1, timeout=1).returncode != 0, f"{addr} still routes"
    assert passed(hub.iface.ping(spoke.inner[0]))


# ---------------------------------------------------------------- keys

@pytest.mark.parametrize("kind", ["go", "dataplane"])
def test_private_key_change_then_immediate_handshake(topo, tmp_path, kind):
    hub = Hub(topo, tmp_path, kinds=(kind,))
    spoke = hub.spokes[0]
    assert passed(spoke.iface.ping(HUB_INNER[0], count=1))
    old = hub.public_key
    new_key = PrivateKey.generate()
    hub.iface.wg("set", hub.name, "private-key", str(hub.key_file(new_key)))
    assert hub.iface.wg("show", hub.name, "public-key").stdout.strip() == \
        str(new_key.public_key())

    # the spoke still holds the old session: the hub no longer knows it
    unknown = hub.drops()["unknown_index"]
    r = spoke.iface.ping(HUB_INNER[0], timeout=1)
    assert r.returncode != 0, "a session of the old private key still works"
    assert hub.drops()["unknown_index"] > unknown

    # the spoke learns the new key; traffic from the hub handshakes at once
    psk = tmp_path / "psk"
    psk.write_text(hub.psk.reveal_base64() + "\n")
    spoke.iface.wg("set", spoke.iface.name,
                   "peer", str(new_key.public_key()), "preshared-key", str(psk),
                   "allowed-ips", ",".join(INNER_ROUTES),
                   "endpoint", f"{hub_outer(spoke.index)[0]}:{HUB_PORT}",
                   "peer", str(old), "remove")
    r = hub.iface.ping(spoke.inner[0], count=1, timeout=2)
    assert passed(r), f"no traffic right after the key change: {why(r)}"
    assert int(hub.iface.peer_dump(spoke.public_key)[4]) >= int(time.time()) - 5
    r = spoke.iface.ping(HUB_INNER[1])
    assert passed(r), why(r)


def test_low_order_public_key_in_the_config_is_refused(topo, tmp_path):
    ns = topo.namespace("low")
    ups = []
    for n, key in enumerate(LOW_ORDER_KEYS):    # all at once: each is a Python start-up
        name = f"dplo{os.getpid() % 1000}x{n}"
        conf = tmp_path / f"{name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate().reveal_base64()}\n"
                        f"ListenPort = 0\n\n[Peer]\nPublicKey = {key}\n"
                        f"Endpoint = 127.0.0.1:1111\nPersistentKeepalive = 1\n")
        conf.chmod(0o600)
        proc = topo.popen(ns, [DATAPLANE, "up", str(conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
        ups.append((key, name, conf, proc))
    for key, name, conf, proc in ups:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, f"{key}: exit {proc.returncode}: {err}"
        assert f"{conf}:6: PublicKey:" in err and "low-order" in err, f"{key}: {err}"
        assert not (UAPI_DIR / f"{name}.sock").exists()
        assert topo.run(ns, ["ip", "link", "show", name], check=False).returncode != 0


def test_low_order_public_key_by_wg_set_is_refused_and_nothing_is_sent(topo, tmp_path):
    hub = Hub(topo, tmp_path, kinds=())
    low_order, control = topo.socket(hub.ns), topo.socket(hub.ns)
    with low_order, control:
        low_order.bind(("127.0.0.1", 0))
        control.bind(("127.0.0.1", 0))
        for key in LOW_ORDER_KEYS:
            r = hub.iface.wg("set", hub.name, "peer", str(key), "persistent-keepalive", "1",
                             "endpoint", f"127.0.0.1:{low_order.getsockname()[1]}", check=False)
            assert r.returncode != 0, f"{key} was taken"
            assert "Invalid argument" in r.stderr, r.stderr
        assert "low-order" in hub.iface.log_path.read_text(), "the daemon did not say why"
        addconf = tmp_path / "addconf.conf"
        addconf.write_text(f"[Peer]\nPublicKey = {LOW_ORDER_KEYS[0]}\n"
                           f"Endpoint = 127.0.0.1:{low_order.getsockname()[1]}\n")
        assert hub.iface.wg("addconf", hub.name, str(addconf), check=False).returncode != 0
        assert hub.iface.wg("show", hub.name, "peers").stdout == ""
        # the same request for an ordinary key sends an initiation at once:
        # the listener would have seen one
        hub.iface.wg("set", hub.name, "peer", str(PrivateKey.generate().public_key()),
                     "persistent-keepalive", "1",
                     "endpoint", f"127.0.0.1:{control.getsockname()[1]}")
        ready, _, _ = select.select([control], [], [], 3)
        assert ready, "the control peer got no initiation"
        msg = control.recv(2048)
        assert (msg[0], len(msg)) == (1, INITIATION_LEN)
        ready, _, _ = select.select([low_order], [], [], 0.5)
        assert not ready, "a packet went to a low-order peer's endpoint"


# ---------------------------------------------------------------- configuration

def test_showconf_through_setconf_keeps_connectivity(topo, tmp_path):
    hub = Hub(topo, tmp_path, kinds=("dataplane", "go"))
    for s in hub.spokes:
        assert passed(s.iface.ping(HUB_INNER[0], count=1))
    before = hub.iface.wg("showconf", hub.name).stdout
    saved = tmp_path / "saved.conf"
    saved.write_text(before)
    hub.iface.wg("setconf", hub.name, str(saved))
    after = hub.iface.wg("showconf", hub.name).stdout
    assert sorted(after.splitlines()) == sorted(before.splitlines())
    # setconf replaces the peers, so sessions start over: the hub, which
    # knows the endpoints, handshakes anew on its first packet
    for s in hub.spokes:
        for dst in s.inner:
            r = hub.iface.ping(dst)
            assert passed(r), f"hub to {dst}: {why(r)}"
        r = s.iface.ping(HUB_INNER[1])
        assert passed(r), f"spoke {s.index} to the hub: {why(r)}"


def test_removed_peer_loses_its_traffic_at_once(topo, tmp_path):
    hub = Hub(topo, tmp_path, kinds=("go", "go"))
    a, b = hub.spokes
    for s in hub.spokes:
        assert passed(s.iface.ping(HUB_INNER[0], count=1))
    hub.iface.wg("set", hub.name, "peer", str(a.public_key), "remove")
    assert hub.iface.wg("show", hub.name, "peers").stdout.split() == [str(b.public_key)]
    drops = hub.drops()
    r = a.iface.ping(HUB_INNER[0], timeout=1)
    assert r.returncode != 0, "the removed peer still gets through"
    r = hub.iface.ping(a.inner[0], timeout=1)
    assert r.returncode != 0, "traffic still goes to the removed peer"
    after = hub.drops()
    assert after["unknown_index"] >= drops["unknown_index"] + 2
    assert after["no_route"] >= drops["no_route"] + 2
    r = b.iface.ping(HUB_INNER[0])
    assert passed(r), f"the other peer suffered: {why(r)}"
