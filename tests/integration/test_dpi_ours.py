"""What a censor's DPI sees of our own tunnel, on both backends, captured on
the client's link from before the first packet: plain, our exit node is
labelled WireGuard by nDPI (by its packets, not its port) and by tshark, so
the eye is open; with an AmneziaWG profile, by neither, whichever side
initiates, and the capture holds the protocol that hides it: our signature
packets and junk before our initiation, padded handshake messages, and
transport padded by S4 under H4 headers, with no plain WireGuard type field
anywhere.

test_dpi_reference.py shows the same eye on wireguard-go and amneziawg-go."""
import shutil
import struct

import pytest

from tests.integration import dpi
from tests.integration.awg_world import (EXIT_PORT, RANGES, AwgWorld, Client,
                                         needs_amneziawg_go, server_side)

PLAIN_TYPES = {struct.pack("<I", t) for t in (1, 2, 3, 4)}


@pytest.fixture(autouse=True, params=["socket", "xdp"])
def backend(request):
    for tool in ("tcpdump", "ndpiReader", "tshark"):
        assert shutil.which(tool), f"{tool} is missing: run ./scripts/setup.sh"
    return request.param


def header(payload: bytes, offset: int) -> int:
    return struct.unpack_from("<I", payload, offset)[0]


def captured(world: AwgWorld, client: Client, pcap, we_initiate: bool):
    """Pings both ways (the first from the side that initiates), small and
    large, captured on the client's link (not a TCP stream: tcpdump would
    drop some of it, and then cannot be trusted with the rest)."""
    with dpi.Capture(world.topo, client.ns, client.veth, pcap):
        first, second = (world.exit_ns, client.inner[0]), (client.ns, "10.230.0.1")
        if not we_initiate:
            first, second = second, first
        for ns, dst in (first, second):
            r = world.ping(ns, dst)
            assert r.returncode == 0, (ns, dst, r.stdout, world.log_path.read_text()[-2000:])
        big = world.topo.run(client.ns, ["ping", "-c", "20", "-i", "0.02", "-s", "1200",
                                         "10.230.0.1"], check=False)
        assert big.returncode == 0, big.stdout
    return dpi.read_udp(pcap)


def test_our_plain_tunnel_is_labelled_wireguard(topo, tmp_path, backend):
    from dataplane.obfuscation import PLAIN
    client = Client("wireguard-go", None)
    world = AwgWorld(topo, tmp_path, backend, PLAIN, [client])
    pcap = tmp_path / "plain.pcap"
    grams = captured(world, client, pcap, we_initiate=False)
    seen = dpi.classify(pcap)
    ours = [f for f in dpi.ndpi_wireguard(seen.ndpi) if f"{EXIT_PORT}" in f.a + f.b]
    assert ours, f"{pcap}: {seen}"
    assert dpi.tshark_wireguard(seen.tshark) == len(grams), f"{pcap}: {seen}"
    exit_ip = client.exit_outer[0]
    assert {len(d.payload) for d in grams if d.src[0] == exit_ip} >= {92, 32 + 96}, \
        "plain WireGuard: a 92-byte response, a ping's reply in 128 bytes"
    world.down()


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "they-initiate"])
def test_our_obfuscated_tunnel_is_labelled_wireguard_by_neither(topo, tmp_path, backend,
                                                                  we_initiate):
    needs_amneziawg_go()
    client = Client("amneziawg-go", RANGES)
    # initiating, the exit node holds the whole client profile (J and I are
    # the initiator's); answering, S and H are enough
    exit_obf = RANGES if we_initiate else server_side(RANGES)
    world = AwgWorld(topo, tmp_path, backend, exit_obf, [client], exit_initiates=we_initiate)
    pcap = tmp_path / "obfuscated.pcap"
    grams = captured(world, client, pcap, we_initiate)
    seen = dpi.classify(pcap)
    assert seen.ndpi and len(seen.tshark) == len(grams), f"{pcap}: {seen}"
    assert not dpi.ndpi_wireguard(seen.ndpi, by_dpi_only=False), f"{pcap}: {seen}"
    assert not seen.tshark_says_wireguard, f"{pcap}: {seen}"

    exit_ip = client.exit_outer[0]
    ours = [d.payload for d in grams if d.src[0] == exit_ip]
    theirs = [d.payload for d in grams if d.src[0] != exit_ip]
    sizes = [len(p) for p in ours]
    assert not any(p[:4] in PLAIN_TYPES for p in ours + theirs), \
        f"{pcap}: a datagram starts with a plain WireGuard type"
    p = RANGES
    if we_initiate:
        signatures = p.signature_packets()
        init = next((i for i, d in enumerate(ours)
                     if len(d) == 148 + p.s1 and header(d, p.s1) in p.h1), None)
        assert init == len(signatures) + p.jc, f"{pcap}: our initiation at {init}: {sizes}"
        i1 = bytes.fromhex("c0ffee17")
        assert ours[0].startswith(i1) and len(ours[0]) == 4 + 12 + 4, ours[0].hex()
        assert len(ours[1]) == 28 and ours[1][:20].isalpha() and ours[1][20:].isdigit(), ours[1]
        assert len(ours[2]) == 64, sizes
        junk = sizes[len(signatures):init]
        assert all(p.jmin <= n <= p.jmax for n in junk), f"{pcap}: junk sizes {junk}"
        # the next ones are fresh (random bytes, random sizes)
        assert len(set(ours[len(signatures):init])) == p.jc
    else:
        assert any(len(d) == 92 + p.s2 and header(d, p.s2) in p.h2 for d in ours), \
            f"{pcap}: no {92 + p.s2}-byte response from us: {sizes}"
        assert not any(len(d) == 148 + p.s1 for d in ours), "we sent no initiation"
    after = ours[init + 1:] if we_initiate else ours  # junk may fall in H4 by chance
    transport = [d for d in after if len(d) >= 32 + p.s4 and header(d, p.s4) in p.h4
                 and len(d) not in (148 + p.s1, 92 + p.s2)]
    assert len(transport) >= 10, f"{pcap}: {len(transport)} transport messages: {sizes}"
    # each: S4 random bytes, then a header drawn from H4 and the rest of a
    # transport message (16 bytes of header, the padded inner packet and
    # its tag)
    assert all((len(d) - p.s4 - 32) % 16 == 0 for d in transport), \
        [len(d) for d in transport]
    assert len({header(d, p.s4) for d in transport}) > len(transport) // 2, \
        "headers are drawn afresh from H4's range"
    assert len({d[:p.s4] for d in transport}) == len(transport), "padding is random"
    world.down()
