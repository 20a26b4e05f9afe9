"""Datagrams the kernel joins with UDP GRO are split back by the receive
pass: a Python peer sends a run of equal-size data messages as one UDP GSO
send (UDP_SEGMENT), which crosses the veth whole and reaches our
GRO-enabled socket as one buffer; every message in it must be decrypted
and delivered. The socket backend's receive path: pinned to it (on the XDP
backend the WAN program takes the datagrams before the socket)."""
import os
import socket
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dataplane import noise
from dataplane.keys import PrivateKey
from dataplane.launch import start_daemon
from tests.integration.packets import icmp_echo
from tests.integration.test_handshake_interop import recv_echo, seal_data

UDP_SEGMENT = 103


def test_a_udp_gso_run_of_data_messages_is_split_and_delivered(topo, tmp_path):
    c, x = topo.namespace("c"), topo.namespace("x")
    topo.link(c, x, ["10.241.0.1/24"], ["10.241.0.2/24"])
    exit_key = PrivateKey.generate()
    peer_priv = os.urandom(32)
    peer_pub = X25519PrivateKey.from_private_bytes(peer_priv).public_key().public_bytes_raw()
    name = f"dpg{os.getpid() % 10000}"
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {exit_key.reveal_base64()}\nListenPort = 51820\n"
                    f"Address = 10.242.0.1/24\n\n[Peer]\nPublicKey = "
                    f"{noise_b64(peer_pub)}\nAllowedIPs = 10.242.0.2/32\n\n"
                    "[DataPlane]\nBackend = socket\n")
    conf.chmod(0o600)
    start_daemon(topo, x, conf)

    sock = topo.socket(c)
    sock.bind(("10.241.0.1", 0))
    hs = noise.Handshake(peer_priv, lambda p: bytes(32) if p == bytes(exit_key.public_key())
                         else None)
    init, state = hs.create_initiation(bytes(exit_key.public_key()), 0x51)
    sock.sendto(init, ("10.241.0.2", 51820))
    sock.settimeout(10)
    resp, addr = sock.recvfrom(4096)
    keys = hs.consume_response(resp, state)

    # 20 echo requests of equal size, sealed, in one UDP GSO send
    count = 20
    msgs = [seal_data(keys, i, icmp_echo("10.242.0.2", "10.242.0.1", 7, i, b"g" * 100))
            for i in range(count)]
    assert len({len(m) for m in msgs}) == 1
    sock.sendmsg([b"".join(msgs)], [(socket.SOL_UDP, UDP_SEGMENT,
                                     struct.pack("H", len(msgs[0])))], 0, addr)
    seqs = set()
    for _ in range(count):
        (src, dst, is_reply, ident, seq, payload), _ = recv_echo(sock, keys)
        assert (src, dst, is_reply, ident) == ("10.242.0.1", "10.242.0.2", True, 7)
        seqs.add(seq)
    assert seqs == set(range(count)), "some messages of the joined run were lost"


def noise_b64(key: bytes) -> str:
    import base64
    return base64.b64encode(key).decode()
