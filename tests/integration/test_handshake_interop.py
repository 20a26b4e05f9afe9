"""Our Noise_IKpsk2 handshake and transport crypto against Debian's
wireguard-go, in network namespaces: wireguard-go initiates to us and we
initiate to it, over outer IPv4 and IPv6, and an ICMP echo crosses the
tunnel each way. The packet path here is a few lines of Python on a UDP
socket; it checks the protocol, not the data plane's speed."""
import os
import socket
import struct
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane import crypto, noise
from dataplane.wireguard_go import WireGuardGo
from tests.integration.packets import icmp_echo, parse_icmp_echo

DATA_HDR = struct.Struct("<IIQ")
OUTER = {
    4: ("10.201.0.1/24", "10.201.0.2/24", socket.AF_INET),
    6: ("fd00:201::1/64", "fd00:201::2/64", socket.AF_INET6),
}
INNER = {4: ("10.202.0.1", "10.202.0.2", "10.202.0.0/24"),
         6: ("fd00:202::1", "fd00:202::2", "fd00:202::/64")}


def keypair():
    priv = os.urandom(32)
    return priv, X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def seal_data(keys, counter, packet):
    padded = packet + bytes(-len(packet) % 16)
    return (DATA_HDR.pack(noise.lib.DP_WG_MSG_DATA, keys.remote_index, counter)
            + crypto.seal(keys.send_key, counter, padded))


def open_data(keys, msg):
    mtype, receiver, counter = DATA_HDR.unpack_from(msg)
    assert mtype == noise.lib.DP_WG_MSG_DATA
    assert receiver == keys.local_index
    return crypto.open(keys.recv_key, counter, msg[DATA_HDR.size:])


def recv_echo(sock, keys, deadline=10.0):
    """Decrypts data messages until an ICMP echo arrives (skipping keepalives)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        msg, addr = sock.recvfrom(4096)
        if msg[0] != noise.lib.DP_WG_MSG_DATA:
            continue
        echo = parse_icmp_echo(open_data(keys, msg))
        if echo:
            return echo, addr
    raise AssertionError("no ICMP echo through the tunnel")


def world(topo, outer):
    c, s = topo.namespace("c"), topo.namespace("s")
    a_addr, b_addr, family = OUTER[outer]
    topo.link(c, s, [a_addr], [b_addr])
    sock = topo.socket(s, family)
    return c, s, a_addr.split("/")[0], b_addr.split("/")[0], sock


def endpoint(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@pytest.mark.parametrize("outer,inner", [(4, 4), (6, 6), (4, 6), (6, 4)])
def test_wireguard_go_initiates_and_pings_through_us(topo, outer, inner):
    c, s, c_ip, s_ip, sock = world(topo, outer)
    sock.bind((s_ip, 51820))
    our_priv, our_pub = keypair()
    their_priv, their_pub = keypair()
    psk = os.urandom(32)
    wgo = WireGuardGo(topo, c, f"wgi{os.getpid() % 10000}{outer}{inner}")
    wgo.start()
    wgo.configure(their_priv)
    inner_c, inner_s, inner_net = INNER[inner]
    wgo.set_peer(our_pub, allowed_ips=[inner_net], endpoint=endpoint(s_ip, 51820), psk=psk)
    wgo.up([f"{inner_c}/{inner_net.split('/')[1]}"])

    ping = topo.popen(c, ["ping", "-c", "1", "-W", "15", inner_s],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hs = noise.Handshake(our_priv, lambda p: psk if p == their_pub else None)
    sock.settimeout(10)
    msg, addr = sock.recvfrom(4096)
    assert len(msg) == noise.INITIATION_LEN and msg[0] == noise.MSG_INITIATION
    assert hs.check_mac1(msg)
    init = hs.consume_initiation(msg)
    assert init.peer_public == their_pub
    resp, keys = hs.create_response(init, 0x1234ABCD)
    sock.sendto(resp, addr)

    (src, dst, is_reply, ident, seq, payload), addr = recv_echo(sock, keys)
    assert (src, dst, is_reply) == (inner_c, inner_s, False)
    sock.sendto(seal_data(keys, 0, icmp_echo(dst, src, ident, seq, payload, reply=True)), addr)
    out, _ = ping.communicate(timeout=20)
    assert ping.returncode == 0, out.decode()

    peer = wgo.dump()[1]
    assert peer[0] == noise_b64(our_pub)
    assert int(peer[4]) > 0, "no handshake time on the wireguard-go side"
    assert int(peer[5]) > 0 and int(peer[6]) > 0, "no transfer counted by wireguard-go"


def noise_b64(key):
    import base64
    return base64.b64encode(key).decode()


@pytest.mark.parametrize("outer,inner", [(4, 4), (6, 6)])
def test_we_initiate_and_wireguard_go_answers_a_ping(topo, outer, inner):
    c, s, c_ip, s_ip, sock = world(topo, outer)
    our_priv, our_pub = keypair()
    their_priv, their_pub = keypair()
    wgo = WireGuardGo(topo, c, f"wgr{os.getpid() % 10000}{outer}{inner}")
    wgo.start()
    wgo.configure(their_priv, listen_port=51821)
    inner_c, inner_s, inner_net = INNER[inner]
    wgo.set_peer(our_pub, allowed_ips=[f"{inner_s}/{32 if inner == 4 else 128}"])
    wgo.up([f"{inner_c}/{inner_net.split('/')[1]}"])

    hs = noise.Handshake(our_priv, lambda p: bytes(32) if p == their_pub else None)
    init, state = hs.create_initiation(their_pub, 0x00C0FFEE)
    sock.sendto(init, (c_ip, 51821))
    sock.settimeout(10)
    resp, addr = sock.recvfrom(4096)
    keys = hs.consume_response(resp, state)
    assert keys.remote_index != 0 and keys.local_index == 0x00C0FFEE

    sock.sendto(seal_data(keys, 0, icmp_echo(inner_s, inner_c, 77, 1, b"hello")), addr)
    (src, dst, is_reply, ident, seq, payload), _ = recv_echo(sock, keys)
    assert (src, dst, is_reply, ident, seq, payload) == (inner_c, inner_s, True, 77, 1, b"hello")
    # wireguard-go learned our endpoint from the authenticated packets (roaming)
    peer = wgo.dump()[1]
    assert peer[2] == endpoint(s_ip, sock.getsockname()[1])


def test_wrong_preshared_key_gets_no_response(topo):
    c, s, c_ip, s_ip, sock = world(topo, 4)
    our_priv, our_pub = keypair()
    their_priv, their_pub = keypair()
    wgo = WireGuardGo(topo, c, f"wgp{os.getpid() % 10000}")
    wgo.start()
    wgo.configure(their_priv, listen_port=51822)
    wgo.set_peer(our_pub, allowed_ips=["10.202.0.2/32"], psk=os.urandom(32))
    wgo.up(["10.202.0.1/24"])
    hs = noise.Handshake(our_priv, lambda p: os.urandom(32))  # not the peer's PSK
    init, state = hs.create_initiation(their_pub, 1)
    sock.sendto(init, (c_ip, 51822))
    # wireguard-go answers (the PSK is mixed in only after the initiation),
    # but the response does not authenticate under another PSK
    sock.settimeout(10)
    resp, _ = sock.recvfrom(4096)
    with pytest.raises(noise.HandshakeError, match="decryption failed"):
        hs.consume_response(resp, state)
