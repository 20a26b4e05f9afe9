"""Our exit node as an AmneziaWG 2.0 endpoint, against amneziawg-go
(AmneziaWG's reference implementation, built from ../shared): as the
client's server and as the initiator toward it, with two parameter sets,
on both backends; mismatched profiles get nothing; plain WireGuard and
AmneziaWG clients on one port with AcceptPlainWireGuard."""
import time

import pytest

from dataplane.obfuscation import Obfuscation
from tests.integration.awg_world import (FIXED, RANGES, AwgWorld, Client, needs_amneziawg_go,
                                         server_side)


@pytest.fixture(autouse=True, params=["socket", "xdp"])
def backend(request):
    needs_amneziawg_go()
    return request.param


def wait_handshake(world, n_peers=1, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dump = world.exit_dump()
        if sum(1 for line in dump if line[4] != "0") >= n_peers:
            return dump
        time.sleep(0.1)
    raise AssertionError(f"no handshake: {world.exit_dump()}\n{world.log_path.read_text()[-2000:]}")


@pytest.mark.parametrize("profile", [FIXED, RANGES], ids=["fixed-headers", "header-ranges"])
def test_amneziawg_go_client_handshake_ping_iperf(topo, tmp_path, backend, profile):
    client = Client("amneziawg-go", profile)
    world = AwgWorld(topo, tmp_path, backend, server_side(profile), [client])
    assert world.status()["backend"] == backend
    for dst in ("10.230.0.1", "fd00:230::1"):
        r = world.ping(client.ns, dst)
        assert r.returncode == 0, (dst, r.stdout, world.log_path.read_text()[-2000:])
    wait_handshake(world)
    for dst in client.inner:  # and back, from the exit node
        assert world.ping(world.exit_ns, dst).returncode == 0, dst
    assert world.iperf3(client, seconds=2) > 20e6
    assert world.iperf3(client, seconds=2, reverse=True) > 20e6
    drops = world.drops()
    # nothing of the tunnel's own traffic was mistrusted; what the workers
    # took for junk is the client's junk and signature packets alone, a
    # whole number of preambles (on xdp none reach them)
    # (random bytes fall in a wide H4 by chance: 2.3% of them for RANGES,
    # which the workers then drop as unknown_index)
    preamble = profile.jc + len(profile.signature_packets())
    stray = drops.get("junk", 0) + drops.get("unknown_index", 0)
    assert drops.get("bad_mac", 0) == 0 and drops.get("malformed", 0) == 0, drops
    if backend == "xdp":
        assert drops.get("junk", 0) == 0, drops
        assert drops.get("unknown_index", 0) <= preamble, drops
    else:
        assert stray >= preamble and stray % preamble == 0, drops
    # the responder's side: confirmed by the client's first data
    assert world.status()["handshake"]["handshakes_completed"] >= 1
    if backend == "xdp":
        xdp = world.xdp_counters()
        assert xdp["wan_steer_obfuscated"] > 1000
        assert xdp["wan_steer_initiation"] >= 1 and xdp["wan_steer_data"] > 1000
        # the client's junk (Jc per initiation) and its signature packets
        # died in XDP; with the server's profile (S, H only) its I1..I5 are
        # junk too
        assert xdp["wan_drop_junk"] + drops.get("unknown_index", 0) >= preamble
    assert world.down() == 0


def test_cookie_reply_and_expiry_rehandshake_with_an_amneziawg_go_client(topo, tmp_path, backend):
    """S3/H3: under load our answer to the client's initiation is a cookie
    reply in its profile; amneziawg-go takes it and retries with MAC2,
    which gets through. Then, past REJECT_AFTER_TIME, our side (which only
    answered so far) starts the handshake when it has traffic for it."""
    client = Client("amneziawg-go", RANGES)
    world = AwgWorld(topo, tmp_path, backend, server_side(RANGES), [client], test_clock=True)
    world.hold_under_load(30)
    r = world.ping(client.ns, "10.230.0.1", count=1, timeout=15)
    assert r.returncode == 0, (r.stdout, world.log_path.read_text()[-2000:])
    hs = world.status()["handshake"]
    assert hs["cookie_replies_sent"] >= 1 and hs["handshake_bad_mac2"] >= 1, hs
    assert hs["handshakes_completed"] >= 1, hs
    before = hs["handshakes_completed"]
    world.advance_clock(181)
    r = world.ping(world.exit_ns, client.inner[0], count=3, timeout=8)
    assert r.returncode == 0, (r.stdout, world.log_path.read_text()[-2000:])
    assert world.status()["handshake"]["handshakes_completed"] > before
    assert world.ping(client.ns, "fd00:230::1").returncode == 0
    assert world.drops().get("bad_mac", 0) == 0


def test_junk_and_signatures_are_counted_drops_on_the_socket_backend(topo, tmp_path, backend):
    if backend != "socket":
        pytest.skip("the XDP backend drops them before the workers (test above)")
    client = Client("amneziawg-go", RANGES)
    world = AwgWorld(topo, tmp_path, backend, server_side(RANGES), [client])
    assert world.ping(client.ns, "10.230.0.1").returncode == 0
    # the socket backend's workers see the junk: one junk drop for each
    time.sleep(0.3)
    # (or, for the few whose bytes at S4 fall in H4, an unknown index)
    drops = world.drops()
    assert drops.get("junk", 0) + drops.get("unknown_index", 0) >= \
        RANGES.jc + len(RANGES.signature_packets()), drops


def test_signature_packets_of_the_servers_own_profile_are_told_apart(topo, tmp_path, backend):
    if backend != "xdp":
        pytest.skip("the XDP program counts them apart")
    client = Client("amneziawg-go", RANGES)
    world = AwgWorld(topo, tmp_path, backend, RANGES, [client])  # the client's whole file
    assert world.ping(client.ns, "10.230.0.1").returncode == 0
    xdp = world.xdp_counters()
    # I1 starts with fixed bytes: recognised; I2 and I3 too, by size alone
    # (unless their bytes at S4 fall in H4: I2's letters never do)
    stray = world.drops().get("unknown_index", 0)
    assert xdp["wan_drop_signature"] >= 1, xdp
    assert xdp["wan_drop_signature"] + xdp["wan_drop_junk"] + stray >= RANGES.jc + 3, xdp


def test_we_initiate_toward_amneziawg_go_and_rekey(topo, tmp_path, backend):
    client = Client("amneziawg-go", RANGES)
    # the exit node's file has the whole client profile: it sends I1..I3
    # and Jc junk before each initiation, as AmneziaWG clients do
    world = AwgWorld(topo, tmp_path, backend, RANGES, [client], exit_initiates=True,
                     test_clock=True)
    r = world.ping(world.exit_ns, client.inner[0], count=3)
    assert r.returncode == 0, (r.stdout, world.log_path.read_text()[-2000:])
    status = world.status()
    assert status["handshake"]["handshakes_completed"] == 1
    got = client.proc.get()
    assert got["peers"][0]["last_handshake_time_sec"] > 0
    # rekey: past REKEY_AFTER_TIME our side, the initiator, starts a new
    # handshake in the same profile when it next sends
    world.advance_clock(125)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        world.ping(world.exit_ns, client.inner[0], count=1, timeout=1)
        if world.status()["handshake"]["handshakes_completed"] >= 2:
            break
    assert world.status()["handshake"]["handshakes_completed"] >= 2
    assert world.ping(world.exit_ns, client.inner[1]).returncode == 0
    assert world.ping(client.ns, "fd00:230::1").returncode == 0


@pytest.mark.parametrize("mismatch", ["s1", "h1", "h4", "s4", "plain"])
def test_mismatched_profiles_get_no_reply_and_counted_drops(topo, tmp_path, backend, mismatch):
    other = {"s1": {"S1": "18"}, "h1": {"H1": "500000000-500000099"},
             "h4": {"H4": "600000000-600000009"}, "s4": {"S4": "14"}, "plain": None}[mismatch]
    if other is None:
        client_obf = Obfuscation()
    else:
        client_obf = Obfuscation.from_settings(other, base=RANGES)
    client = Client("amneziawg-go", client_obf)
    world = AwgWorld(topo, tmp_path, backend, server_side(RANGES), [client])
    r = world.ping(client.ns, "10.230.0.1", count=2, timeout=2)
    time.sleep(0.5)
    got = client.proc.get()["peers"][0]
    assert world.daemon.poll() is None, "the daemon must not die"
    status = world.status()
    if mismatch in ("s4", "h4"):
        # the handshake works (S1..S3, H1..H3 agree) but its transport
        # messages are junk to us: the keypair is never confirmed
        assert r.returncode != 0
        drops = status["drops"]
        junk = status["xdp"]["wan_drop_junk"] if backend == "xdp" else drops.get("junk", 0)
        assert junk + drops.get("unknown_index", 0) >= 2, (junk, drops)
        return
    assert r.returncode != 0
    assert got["rx_bytes"] == 0, "not one byte may come back"
    assert status["handshake"]["handshake_bad_mac1"] == 0
    # at least the client's first initiation (a plain client sends no junk
    # and retries only after 5 s)
    # (or, by the chance of its bytes at S4 falling in H4, as an unknown index)
    drops = status["drops"]
    if backend == "xdp":
        assert status["xdp"]["wan_drop_junk"] + drops.get("unknown_index", 0) >= 1
        assert status["xdp"]["wan_steer_initiation"] == 0
    else:
        assert drops.get("junk", 0) + drops.get("unknown_index", 0) >= 1, drops


def test_plain_and_amneziawg_clients_on_one_port(topo, tmp_path, backend):
    awg = Client("amneziawg-go", RANGES)
    plain = Client("wireguard-go", None)
    world = AwgWorld(topo, tmp_path, backend, server_side(RANGES), [awg, plain],
                     accept_plain=True)
    for c in (awg, plain):
        for dst in ("10.230.0.1", "fd00:230::1"):
            r = world.ping(c.ns, dst)
            assert r.returncode == 0, (c.kind, dst, r.stdout, world.status(),
                                       world.log_path.read_text()[-2000:])
    wait_handshake(world, n_peers=2)
    # each gets our traffic in its own profile: the ping back works only so
    for c in (awg, plain):
        assert world.ping(world.exit_ns, c.inner[0]).returncode == 0, c.kind
    assert world.iperf3(plain, seconds=1) > 10e6
    assert world.iperf3(awg, seconds=1) > 10e6
    status = world.status()
    assert status["accept_plain_wireguard"] is True
    assert status["drops"].get("bad_mac", 0) == 0, status["drops"]
    # the AmneziaWG client's junk and signature packets, and nothing of the
    # plain client's: on socket the workers drop them as junk; on xdp they
    # die in the WAN program, but for those whose random bytes at S4 fall
    # in H4 (1 in 43 each): those read as transport with an unknown index
    preamble = RANGES.jc + len(RANGES.signature_packets())
    drops = status["drops"]
    seen = drops.get("junk", 0) + drops.get("unknown_index", 0)
    if backend == "xdp":
        assert drops.get("junk", 0) == 0, drops
        seen += status["xdp"]["wan_drop_junk"] + status["xdp"]["wan_drop_signature"]
    assert seen % preamble == 0 and seen > 0, (drops, status.get("xdp"))
    if backend == "xdp":
        xdp = status["xdp"]
        # both kinds of initiation were steered; only the obfuscated ones counted so
        assert xdp["wan_steer_initiation"] >= 2
        assert 0 < xdp["wan_steer_obfuscated"] < xdp["wan_steer_data"]
