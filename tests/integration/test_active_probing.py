"""Active probing: a censor that suspects an address sends it what a
WireGuard or AmneziaWG server would answer, and watches for any reply.
An exit node with an AmneziaWG profile, serving a real amneziawg-go client,
is probed from another address with thousands of datagrams on both
backends: plain WireGuard messages (with a MAC1 for the server's real
public key, as a censor who learnt it would compute), messages of the
right sizes under wrong headers, initiations of the right shape whose MAC1
is wrong, transport-shaped datagrams for indices nobody holds, random
bytes, and replays of the client's own initiation and transport messages.
Not one datagram comes back, each probe is a counted drop under its reason
(in the WAN program or the workers), and the client's tunnel is untouched:
its endpoint did not move to the prober, and it still pings."""
import secrets
import struct
import time

import pytest

from dataplane import noise
from dataplane.obfuscation import INITIATION, TRANSPORT
from dataplane.topology import socket_in
from tests.integration import dpi
from tests.integration.awg_world import (EXIT_PORT, RANGES, AwgWorld, Client,
                                         needs_amneziawg_go, server_side)
from tests.integration.hostile_peer import counters, delta, udp_receive_errors, with_macs

PROFILE = server_side(RANGES)
N = 400          # probes of each kind
PROBER_PORT = 41999


@pytest.fixture(autouse=True, params=["socket", "xdp"])
def backend(request):
    needs_amneziawg_go()
    return request.param


def header_outside() -> int:
    """A 32-bit value in none of the profile's header ranges."""
    while True:
        v = secrets.randbits(32)
        if v > 4 and not any(v in r for r in PROFILE.headers):
            return v


def plain_initiation(exit_public: bytes) -> bytes:
    msg = bytearray(secrets.token_bytes(noise.INITIATION_LEN))
    struct.pack_into("<I", msg, 0, noise.MSG_INITIATION)
    return with_macs(bytes(msg), exit_public)


def kind_of(d: bytes):
    got = PROFILE.classify(d)
    return got[0] if got else None


def junk(make) -> bytes:
    """make() until it is junk to the profile (random bytes where a header
    is read fall in H4's range by chance: 2.3% of values for RANGES)."""
    while True:
        d = make()
        if kind_of(d) is None:
            return d


def probes(exit_public: bytes, replays_init: list, replays_data: list) -> dict[str, list]:
    p = PROFILE
    out: dict[str, list] = {}
    # plain WireGuard, as a censor's scanner sends it: an initiation with a
    # good MAC1 (anyone with the public key computes one) or a bad one, a
    # keepalive-sized transport message, a cookie-reply-sized one
    out["plain"] = (
        [junk(lambda: plain_initiation(exit_public)) for _ in range(N // 2)]
        + [junk(lambda: struct.pack("<I", 1) + secrets.token_bytes(144)) for _ in range(N // 4)]
        + [struct.pack("<IIQ", 4, secrets.randbits(32), i) + bytes(16) for i in range(N // 8)]
        + [junk(lambda: struct.pack("<I", 3) + secrets.token_bytes(60)) for _ in range(N // 8)])
    # the profile's sizes under headers outside its ranges
    sizes = (148 + p.s1, 92 + p.s2, 64 + p.s3)

    def wrong_header(i: int) -> bytes:
        n, pad = sizes[i % 3], p.paddings[i % 3]
        return (secrets.token_bytes(pad) + struct.pack("<I", header_outside())
                + secrets.token_bytes(n - pad - 4))
    out["wrong_header"] = [junk(lambda: wrong_header(i)) for i in range(N)]
    # an initiation of the profile's shape whose MAC1 is wrong: the worker
    # checks MAC1 before anything else, and answers nothing
    out["bad_mac1"] = [secrets.token_bytes(p.s1) + struct.pack("<I", p.h1.draw())
                       + secrets.token_bytes(144) for _ in range(N)]
    # transport-shaped, for receiver indices nobody holds
    out["unknown_index"] = [secrets.token_bytes(p.s4) + struct.pack("<I", p.h4.draw())
                            + secrets.token_bytes(12 + 16 + 16 * (i % 8)) for i in range(N)]
    # random bytes of random sizes
    out["random"] = [junk(lambda: secrets.token_bytes(1 + secrets.randbelow(1400)))
                     for _ in range(N)]
    # the client's own messages, captured and sent again from elsewhere
    out["replayed_initiation"] = replays_init * (N // 4 // len(replays_init) + 1)
    out["replayed_transport"] = replays_data * (N // len(replays_data) + 1)
    return out


def test_probes_get_no_reply_and_counted_drops(topo, tmp_path, backend):
    client = Client("amneziawg-go", RANGES)
    world = AwgWorld(topo, tmp_path, backend, PROFILE, [client])
    exit_public = bytes(world.exit_key.public_key())
    # the client's handshake and some traffic, captured on its link
    pcap = tmp_path / "client.pcap"
    with dpi.Capture(topo, client.ns, client.veth, pcap):
        r = world.ping(client.ns, "10.230.0.1", count=5)
        assert r.returncode == 0, (r.stdout, world.log_path.read_text()[-2000:])
    grams = [d.payload for d in dpi.read_udp(pcap) if d.dst[1] == EXIT_PORT]
    inits = [g for g in grams if kind_of(g) == INITIATION]
    # after the initiation: a junk packet before it may read as transport
    # by chance (its bytes at S4 in H4)
    first = next((i for i, g in enumerate(grams) if kind_of(g) == INITIATION), len(grams))
    data = [g for g in grams[first + 1:] if kind_of(g) == TRANSPORT]
    assert len(inits) == 1 and len(data) >= 5, [len(g) for g in grams]
    endpoint_before = world.exit_dump()[0][2]
    assert endpoint_before.startswith(client.outer[0]), endpoint_before

    # the prober: an address of its own on the client's link
    prober_ip = "10.231.0.99"
    topo.run(client.ns, ["ip", "addr", "add", f"{prober_ip}/24", "dev", client.veth])
    sock = socket_in(client.ns)
    sock.bind((prober_ip, PROBER_PORT))
    sock.setblocking(False)
    kinds = probes(exit_public, inits, data)
    before = counters(world.name)
    kernel_before = udp_receive_errors(topo, world.exit_ns)
    target = (client.exit_outer[0], EXIT_PORT)
    sent = 0
    order = [(k, d) for k, ds in kinds.items() for d in ds]
    rng = secrets.SystemRandom()
    rng.shuffle(order)
    for i, (kind, d) in enumerate(order):
        sock.sendto(d, target)
        sent += 1
        if i % 50 == 49:
            # a prober's pace, not a flood: the handshake path stays out of
            # its under-load mode, where a cookie reply would be the answer
            time.sleep(0.01)
    time.sleep(1.0)
    replies = []
    while True:
        try:
            replies.append(sock.recvfrom(65536))
        except BlockingIOError:
            break
    sock.close()
    assert replies == [], f"{len(replies)} replies to {sent} probes: {replies[:3]}"
    assert udp_receive_errors(topo, world.exit_ns) == kernel_before, "the kernel dropped some"

    d = delta(before, counters(world.name))
    n = {k: len(v) for k, v in kinds.items()}
    junk = n["plain"] + n["wrong_header"] + n["random"]
    if backend == "xdp":
        assert d.get("wan_drop_junk", 0) == junk, (n, d)
        assert d.get("junk", 0) == 0, d
    else:
        assert d.get("junk", 0) == junk, (n, d)
    assert d.get("handshake_bad_mac1", 0) == n["bad_mac1"], (n, d)
    assert d.get("unknown_index", 0) == n["unknown_index"], (n, d)
    assert d.get("handshake_replayed", 0) == n["replayed_initiation"], (n, d)
    assert d.get("replay", 0) == n["replayed_transport"], (n, d)
    assert d.get("cookie_replies_sent", 0) == 0 and d.get("handshake_ratelimited", 0) == 0, d
    assert sum(d.values()) == sent, (sent, n, d)

    # the client's session is untouched
    assert world.exit_dump()[0][2] == endpoint_before
    assert world.ping(client.ns, "10.230.0.1").returncode == 0
    assert world.daemon.poll() is None
    assert world.down() == 0
