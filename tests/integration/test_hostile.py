"""Hostile input against a running exit node, with Debian's wireguard-go
as the honest client pinging through it: replayed and tampered data
packets, truncated, oversized and unknown messages, random datagrams and
handshake floods. Each must be dropped and counted under the right reason
(`dataplane show --json`: "drops" and "handshake"), the daemon must stay
up, and the honest client must keep its tunnel.

Every test runs on both backends. On the XDP backend the WAN program sees
every datagram first: what it refuses on size or type, and
handshake floods while the control plane is under load, are counted in its
per-reason counters ("xdp": wan_drop_*) and never reach the data path; the
rest is counted by the data path as on the socket backend. xdp_drop()
restates the WAN program's rules; where_counted() picks the counter.

The attacker sits in the client namespace on addresses of its own, sees
what reaches the exit node's port (a sniffer where it leaves) and knows
only public things: the exit node's public key, captured packets."""
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from typing import Optional

import pytest

from dataplane import noise
from dataplane._native import lib
from dataplane.interface import DEFAULT_MTU
from dataplane.wireguard_go import b64
from tests.integration.hostile_peer import (
    MSG_DATA, Attacker, Sniffer, counters, data_header, delta, flood_from_processes,
    mac1_of, settle, socket_in, status, udp4_datagram, udp_receive_errors, veth_name,
    with_macs, with_sender_index)
from tests.integration.tunnel import CLIENT_PORT, EXIT_PORT, OUTER, TunnelWorld

EXIT_V4, EXIT_V6 = (a.split("/")[0] for a in OUTER["exit"])
CLIENT_ENDPOINT = f"{OUTER['client'][0].split('/')[0]}:{CLIENT_PORT}"
ATTACKER_V4, ATTACKER_V6 = "10.201.0.66/24", "fd00:201::66/64"
EXIT_INNER, CLIENT_INNER = "10.202.0.1", "10.202.0.2"

INITIATION, RESPONSE, COOKIE_REPLY = (lib.DP_WG_MSG_INITIATION, lib.DP_WG_MSG_RESPONSE,
                                      lib.DP_WG_MSG_COOKIE_REPLY)
HANDSHAKE_SIZES = {INITIATION: lib.DP_WG_INITIATION_LEN, RESPONSE: lib.DP_WG_RESPONSE_LEN,
                   COOKIE_REPLY: lib.DP_WG_COOKIE_REPLY_LEN}
DATA_MIN = lib.DP_WG_DATA_MIN_LEN
# The longest data message an exit node with the default MTU can be sent:
# header and tag around at most MTU bytes of (padded) plaintext.
DATA_MAX = DATA_MIN + DEFAULT_MTU
REJECT_AFTER_MESSAGES = lib.DP_WG_REJECT_AFTER_MESSAGES

# What arriving datagrams can be counted as; the send-side drops (no_route,
# staged_full, ...) move with the exit node's own traffic and are left out.
RECEIVE_COUNTERS = ("malformed", "unknown_index", "bad_mac", "replay", "expired_key",
                    "not_allowed", "inner_malformed", "events_full", "handshake_bad_mac1",
                    "handshake_bad_mac2", "handshake_ratelimited", "handshake_invalid",
                    "handshake_replayed", "handshake_unknown_index",
                    # the XDP backend's WAN program
                    "wan_drop_trunc_wg", "wan_drop_bad_udp_len", "wan_drop_bad_ip_len",
                    "wan_drop_wg_bad_type", "wan_drop_wg_bad_size",
                    "wan_drop_ratelimited")
# IP and UDP headers in front of a datagram: a longer one than the link's
# MTU leaves in fragments.
LINK_MTU = 1500
IP_UDP_HEADERS = {4: 20 + 8, 6: 40 + 8}


def received(d: dict) -> dict:
    """The receive-side part of a counter delta."""
    return {k: n for k, n in d.items() if k in RECEIVE_COUNTERS}


def typed(word: int, length: int) -> bytes:
    """`length` bytes starting with a 32-bit little-endian type word (as
    much of it as fits), the rest random."""
    return (struct.pack("<I", word) + os.urandom(max(0, length - 4)))[:length]


def xdp_drop(msg: bytes, family: int) -> Optional[str]:
    """The WAN program's counter for a datagram it drops (sent over IPv4 or
    IPv6 with no options), or None when it reaches the data path: steered,
    or in fragments the kernel reassembles for the workers' sockets (a plain
    restatement of ebpf/wan.bpf.c's rules)."""
    if IP_UDP_HEADERS[family] + len(msg) > LINK_MTU:
        return None  # in fragments: passed, reassembled by the kernel for the workers' sockets
    if len(msg) < 4:
        return "wan_drop_trunc_wg"
    if msg[1:4] != bytes(3) or msg[0] not in (*HANDSHAKE_SIZES, MSG_DATA):
        return "wan_drop_wg_bad_type"
    if msg[0] == MSG_DATA:
        return "wan_drop_wg_bad_size" if len(msg) < DATA_MIN else None
    return "wan_drop_wg_bad_size" if len(msg) != HANDSHAKE_SIZES[msg[0]] else None


def where_counted(w: TunnelWorld, attacker: Attacker, msg: bytes, reason: str) -> str:
    """Where a datagram the data path would count under `reason` is counted
    on w's backend."""
    if w.backend == "xdp":
        return xdp_drop(msg, attacker.family) or reason
    return reason


def expected_counts(w: TunnelWorld, attacker: Attacker, cases) -> dict:
    """{counter: n} for (datagram, data path's reason) pairs."""
    return dict(Counter(where_counted(w, attacker, m, reason) for m, reason in cases))


@pytest.fixture(params=["socket", "xdp"])
def backend(request):
    return request.param


@pytest.fixture
def world(topo, tmp_path, backend):
    """A tunnel up on `backend`, its first handshake and pings captured on
    their way to the exit node (w.sniffed), and attackers on IPv4 and IPv6
    (w.attacker, w.attacker6)."""
    w = TunnelWorld(topo, tmp_path, backend=backend)
    assert w.status()["backend"] == backend
    with Sniffer(w.client_ns, EXIT_PORT, outgoing=True) as sniffed:
        r = w.ping(w.client_ns, EXIT_INNER, count=3)
    assert r.returncode == 0, r.stdout + r.stderr
    w.sniffed = sniffed
    assert len(sniffed.payloads(INITIATION)) == 1, "the client's handshake was not captured"
    w.attacker = Attacker(topo, w.client_ns, ATTACKER_V4, (EXIT_V4, EXIT_PORT))
    w.attacker6 = Attacker(topo, w.client_ns, ATTACKER_V6, (EXIT_V6, EXIT_PORT))
    yield w
    w.attacker.close()
    w.attacker6.close()


def assert_still_serving(w: TunnelWorld) -> None:
    """The daemon runs, logged no error, still knows the client where it
    is, and the client's tunnel carries a ping."""
    assert w.daemon.poll() is None, f"dataplane up exited {w.daemon.returncode}"
    r = w.ping(w.client_ns, EXIT_INNER, count=2)
    assert r.returncode == 0, "the honest client lost its tunnel: " + r.stdout + r.stderr
    assert w.exit_peer_dump()[2] == CLIENT_ENDPOINT, "an attacker moved the client's endpoint"
    log = w.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


def send_and_count(w: TunnelWorld, attacker: Attacker, cases: list) -> None:
    """Sends datagrams (paced: none lost in socket buffers), given as
    (datagram, the data path's drop reason) pairs, and checks that the
    receive-side counters moved by exactly what that makes on w's backend
    (where_counted)."""
    datagrams = [m for m, _ in cases]
    expected = expected_counts(w, attacker, cases)
    total = sum(expected.values())
    before, kernel_drops = counters(w.name), udp_receive_errors(w.topo, w.exit_ns)
    attacker.send(datagrams)
    d = settle(w.name, before, lambda d: sum(received(d).values()) >= total)
    assert udp_receive_errors(w.topo, w.exit_ns) == kernel_drops, "the kernel dropped some"
    assert received(d) == {k: n for k, n in expected.items() if n}


def forget_session(w: TunnelWorld) -> None:
    """wireguard-go drops its session (peer removed and added back): the
    next packet starts a new handshake."""
    exit_pub = bytes(w.exit_key.public_key())
    w.wg.wg("set", w.wg.ifname, "peer", b64(exit_pub), "remove")
    w.wg.set_peer(exit_pub, allowed_ips=["10.202.0.0/24", "fd00:202::/64"],
                  endpoint=f"{EXIT_V4}:{EXIT_PORT}", psk=w.psk.reveal())


def rotate_keys(w: TunnelWorld) -> None:
    before = counters(w.name)["handshakes_completed"]
    forget_session(w)
    r = w.ping(w.client_ns, EXIT_INNER, count=1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert counters(w.name)["handshakes_completed"] == before + 1


# ---------------------------------------------------------------- data packets

def test_replayed_data_packets_are_dropped_counted_and_never_delivered(world):
    w = world
    ping = w.topo.popen(w.client_ns, ["ping", "-c", "20", "-i", "0.1", EXIT_INNER],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with Sniffer(w.client_ns, EXIT_PORT, outgoing=True) as live:
        time.sleep(1.0)
    # this ping's echo requests, replayed while it runs: one delivered twice
    # would come back as a "DUP!" reply
    captured = w.sniffed.payloads(MSG_DATA) + live.payloads(MSG_DATA)
    assert len(captured) >= 8
    before = counters(w.name)
    sent = w.attacker.send(captured) + w.attacker6.send(captured) + w.attacker.send(captured)
    out, _ = ping.communicate(timeout=20)
    d = settle(w.name, before, lambda d: d.get("replay", 0) >= sent)
    assert received(d) == {"replay": sent}
    assert ping.returncode == 0 and " 0% packet loss" in out, out
    assert "DUP!" not in out, out
    assert_still_serving(w)


def test_data_replayed_after_key_rotation_is_replay_then_unknown_index(world):
    w = world
    old = w.sniffed.payloads(MSG_DATA)  # sent under the first session's keys
    assert old
    rotate_keys(w)
    # the first keypair is now the previous one: still held, and its replay
    # window remembers every counter
    send_and_count(w, w.attacker, [(m, "replay") for m in old])
    rotate_keys(w)
    # two handshakes later it is gone: its index is unknown
    send_and_count(w, w.attacker, [(m, "unknown_index") for m in old])
    assert_still_serving(w)


def _flip(msg: bytes, at: int) -> bytes:
    return msg[:at] + bytes([msg[at] ^ 0x01]) + msg[at + 1:]


def _counter(msg: bytes, counter: int) -> bytes:
    return msg[:8] + struct.pack("<Q", counter) + msg[16:]


def _index(msg: bytes, index: int) -> bytes:
    return msg[:4] + struct.pack("<I", index) + msg[8:]


# (what the attacker does to a captured data message, the drop reason)
TAMPERED = [
    ("a ciphertext byte flipped", lambda m: _flip(m, 16), "bad_mac"),
    ("a tag byte flipped", lambda m: _flip(m, len(m) - 1), "bad_mac"),
    ("the counter moved ahead (it is the nonce)", lambda m: _counter(m, 1 << 40), "bad_mac"),
    ("the counter just below the limit", lambda m: _counter(m, REJECT_AFTER_MESSAGES - 1),
     "bad_mac"),
    ("the counter at REJECT_AFTER_MESSAGES", lambda m: _counter(m, REJECT_AFTER_MESSAGES),
     "expired_key"),
    ("the counter at 2^64-1", lambda m: _counter(m, (1 << 64) - 1), "expired_key"),
    ("the receiver index off by one", lambda m: _index(m, data_header(m)[0] ^ 1),
     "unknown_index"),
    ("the receiver index's top bit flipped (same table slot)",
     lambda m: _index(m, data_header(m)[0] ^ 0x80000000), "unknown_index"),
    ("cut to header and tag", lambda m: m[:DATA_MIN], "bad_mac"),
    ("cut shorter than header and tag", lambda m: m[:DATA_MIN - 1], "malformed"),
    ("a block appended", lambda m: m + bytes(16), "bad_mac"),
    ("padded to 4000 bytes", lambda m: m + bytes(4000 - len(m)), "bad_mac"),
    ("a reserved type byte set", lambda m: m[:1] + b"\x01" + m[2:], "malformed"),
    ("random ciphertext of another length", lambda m: m[:16] + os.urandom(100), "bad_mac"),
    ("random ciphertext, no room for a tag", lambda m: m[:16] + os.urandom(15), "malformed"),
]


def test_tampered_data_packets_are_dropped_by_reason(world):
    w = world
    packets = [m for m in w.sniffed.payloads(MSG_DATA) if len(m) > DATA_MIN]
    assert packets
    for what, tamper, reason in TAMPERED:
        cases = [(tamper(m), reason) for m in packets]
        try:
            send_and_count(w, w.attacker, cases)
        except AssertionError as e:
            raise AssertionError(f"data message with {what}: {e}") from None
    # no forged counter moved the replay window: the client's next packets pass
    before = counters(w.name)
    assert_still_serving(w)
    assert received(delta(before, counters(w.name))) == {}


# ---------------------------------------------------------------- malformed messages

def malformed_messages() -> list:
    """Datagrams the data path must refuse on size or type alone."""
    out = [b"", b"\x01", b"\x04\x00", b"\x01\x00\x00"]  # shorter than the type word
    for mtype, size in HANDSHAKE_SIZES.items():
        out += [typed(mtype, n) for n in (4, 8, size // 2, size - 1)]  # truncated
        out += [typed(mtype, n) for n in (size + 1, size + 16, 1400, 4000)]  # oversized
    out += [typed(MSG_DATA, n) for n in (4, 16, DATA_MIN - 1)]  # no room for header and tag
    # unknown types, and known ones with reserved bytes set
    words = (0, 5, 6, 0x80, 0xFF, 0xFFFFFFFF, INITIATION | 1 << 8, RESPONSE | 1 << 16,
             COOKIE_REPLY | 0x80 << 24, MSG_DATA | 1 << 8, MSG_DATA | 1 << 24)
    sizes = sorted(set(HANDSHAKE_SIZES.values()) | {4, DATA_MIN, 100})
    out += [typed(word, n) for word in words for n in sizes]
    return out


def test_truncated_oversized_and_unknown_messages_are_malformed(world):
    w = world
    cases = [(m, "malformed") for m in malformed_messages()]
    send_and_count(w, w.attacker, cases)
    send_and_count(w, w.attacker6, cases)
    if w.backend == "xdp":
        # none of them gets past the WAN program but those that come in
        # fragments (the kernel reassembles them for the workers' sockets)
        fragmented = [m for m, _ in cases if IP_UDP_HEADERS[4] + len(m) > LINK_MTU]
        assert fragmented
        assert expected_counts(w, w.attacker, cases).get("malformed", 0) == len(fragmented)
    assert_still_serving(w)


def test_right_sized_garbage_is_counted_by_what_gives_it_away(world):
    w = world
    exit_pub = bytes(w.exit_key.public_key())
    cases = [  # (datagram, reason)
        (typed(INITIATION, HANDSHAKE_SIZES[INITIATION]), "handshake_bad_mac1"),
        (typed(RESPONSE, HANDSHAKE_SIZES[RESPONSE]), "handshake_bad_mac1"),
        # mac1 needs only our public key: the handshake itself must fail
        (with_macs(typed(INITIATION, HANDSHAKE_SIZES[INITIATION]), exit_pub),
         "handshake_invalid"),
        (with_macs(typed(RESPONSE, HANDSHAKE_SIZES[RESPONSE]), exit_pub),
         "handshake_unknown_index"),
        (typed(COOKIE_REPLY, HANDSHAKE_SIZES[COOKIE_REPLY]), "handshake_unknown_index"),
        (typed(MSG_DATA, DATA_MIN), "unknown_index"),
        (typed(MSG_DATA, 148), "unknown_index"),
        (typed(MSG_DATA, DATA_MAX), "unknown_index"),
        # longer than our MTU allows: a peer's MTU may be larger, so only the
        # index and then the tag can refuse it
        (typed(MSG_DATA, 4000), "unknown_index"),
        (typed(MSG_DATA, 65000), "unknown_index"),
    ]
    for attacker in (w.attacker, w.attacker6):
        send_and_count(w, attacker, cases)
    assert_still_serving(w)


def reference_verdict(msg: bytes) -> str:
    """What the exit node must count a random datagram as (a deliberately
    plain restatement of the rules; random MACs and indices never match)."""
    if len(msg) < 4:
        return "malformed"
    word = struct.unpack_from("<I", msg)[0]
    if word == MSG_DATA:
        return "unknown_index" if len(msg) >= DATA_MIN else "malformed"
    if HANDSHAKE_SIZES.get(word) != len(msg):
        return "malformed"
    return "handshake_unknown_index" if word == COOKIE_REPLY else "handshake_bad_mac1"


def random_datagrams(rng: random.Random, count: int) -> list:
    """Random lengths 0..1500 and random bytes, the type word drawn so that
    every class shows up: mostly the four types (some with reserved bytes
    set), a quarter at the exact size of their type."""
    out = []
    for _ in range(count):
        word = rng.choice([INITIATION, RESPONSE, COOKIE_REPLY, MSG_DATA, MSG_DATA,
                           rng.getrandbits(8), rng.getrandbits(32), MSG_DATA | 1 << 8])
        length = rng.randrange(0, 1501)
        if word in HANDSHAKE_SIZES and rng.random() < 0.25:
            length = HANDSHAKE_SIZES[word]
        out.append((struct.pack("<I", word) + rng.randbytes(max(0, length - 4)))[:length])
    return out


def test_random_datagrams_are_all_dropped_and_counted(world):
    w = world
    seed = int.from_bytes(os.urandom(4), "little")
    msgs = random_datagrams(random.Random(seed), 3000)
    assert len(set(map(reference_verdict, msgs))) == 4
    try:
        send_and_count(w, w.attacker, [(m, reference_verdict(m)) for m in msgs])
    except AssertionError as e:
        raise AssertionError(f"random datagrams (seed {seed}): {e}") from None
    assert_still_serving(w)


# ---------------------------------------------------------------- handshake floods

def unknown_initiations(exit_pub: bytes, count: int, first_index: int = 0x10000) -> list:
    """Initiations to the exit node from a key it does not know, with a
    correct mac1: distinct sender indices on a few distinct handshakes."""
    stranger = noise.Handshake(os.urandom(32), lambda peer: bytes(32))
    bases = [stranger.create_initiation(exit_pub, 0)[0] for _ in range(8)]
    return [with_sender_index(bases[i % len(bases)], first_index + i, exit_pub)
            for i in range(count)]


def wait_for_reply(attacker: Attacker, probe: bytes, timeout: float = 3) -> tuple[bytes, int]:
    """Sends probe until something comes back: (the reply, probes sent)."""
    deadline, sent = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        sent += attacker.send([probe])
        time.sleep(0.1)
        replies = attacker.received()
        if replies:
            return replies[0], sent
    raise AssertionError(f"nothing came back within {timeout} s")


def check_cookie_reply(reply: bytes, answered: bytes, exit_pub: bytes) -> bytes:
    """The cookie in the exit node's reply to the message `answered`."""
    assert len(reply) == lib.DP_WG_COOKIE_REPLY_LEN, len(reply)
    sender = struct.unpack_from("<I", answered, 4)[0]
    assert struct.unpack_from("<II", reply) == (COOKIE_REPLY, sender), reply[:8].hex()
    return noise.consume_cookie_reply(reply, exit_pub, mac1_of(answered))


def handshake_capacity() -> float:
    """Initiations per second this machine can take apart with the Python
    code the daemon runs (what a flood is measured against): the best of
    five 0.1 s windows. The first windows of a process come out at half
    the speed of later ones (3.6k against 6.2k a second here); a flood
    sized from them was under what the daemon could decrypt, which then
    rightly did not count as under load."""
    responder = noise.Handshake(os.urandom(32), lambda peer: None)
    msg = unknown_initiations(responder.public, 1)[0]
    best = 0.0
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.1:
            with pytest.raises(noise.HandshakeError):
                responder.consume_initiation(msg)
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    return best


# A flood over what the control plane can decrypt, so that it must go over
# to cookies, but under what it can answer with cookies, so that the ring
# does not overflow and the honest client's messages all get in. Long
# enough to cover the client's retry REKEY_TIMEOUT (+ jitter) after its
# cookie reply.
FLOOD_OVER_CAPACITY = 2
FLOOD_SECONDS = lib.DP_WG_REKEY_TIMEOUT + 1.2


def test_handshake_flood_gets_cookies_and_the_honest_client_gets_through(world):
    w = world
    exit_pub = bytes(w.exit_key.public_key())
    honest_init = w.sniffed.payloads(INITIATION)[0]
    strangers = unknown_initiations(exit_pub, 2000)

    # paced, not under load: each is taken apart fully and refused
    send_and_count(w, w.attacker, [(m, "handshake_invalid") for m in strangers[:20]])
    send_and_count(w, w.attacker, [(honest_init, "handshake_replayed")] * 20)

    flood = strangers + [honest_init] * 100
    random.shuffle(flood)
    rate = FLOOD_OVER_CAPACITY * handshake_capacity()
    before, kernel_drops = counters(w.name), udp_receive_errors(w.topo, w.exit_ns)
    flooded: dict = {}
    flooder = threading.Thread(target=lambda: flooded.update(n=flood_from_processes(
        w.client_ns, ATTACKER_V4.split("/")[0], (EXIT_V4, EXIT_PORT), flood, FLOOD_SECONDS,
        processes=1, rate=rate)))
    flooder.start()
    flood_end = time.monotonic() + FLOOD_SECONDS
    time.sleep(0.2)
    with Sniffer(w.client_ns, CLIENT_PORT, both_directions=True) as client_side:
        # the client starts a new session now, under load
        forget_session(w)
        rehandshake = w.topo.popen(w.client_ns, ["ping", "-c", "1", "-W", "9", EXIT_INNER],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # the attacker gets a cookie of its own (on the XDP backend from
        # another address than the flood's: the WAN program's per-source
        # limit holds that one, nothing from it reaches the control plane)...
        holder = w.attacker6 if w.backend == "xdp" else w.attacker
        probe = with_sender_index(strangers[0], 0x900000, exit_pub)
        reply, sent = wait_for_reply(holder, probe)
        cookie = check_cookie_reply(reply, probe, exit_pub)
        # ...and with it a right mac2: then the rate limit is what holds it
        with_cookie = [with_sender_index(m, 0xA00000 + i, exit_pub, cookie)
                       for i, m in enumerate(strangers[:800])]
        sent += holder.flood(with_cookie, 2.0, rate=400)
        out, _ = rehandshake.communicate(timeout=20)
        rehandshake_end = time.monotonic()
    flooder.join()
    sent += flooded["n"]

    # the client's way through: a cookie reply, then an initiation whose
    # mac2 is that cookie's, accepted while the flood still ran
    assert rehandshake.returncode == 0, out
    assert rehandshake_end < flood_end, "the client got through only after the flood"
    client_inits = client_side.sent(INITIATION)
    client_cookies = client_side.payloads(COOKIE_REPLY)
    assert client_cookies, "the client's initiation under load got no cookie reply"
    client_cookie = check_cookie_reply(client_cookies[0], client_inits[0], exit_pub)
    retry = client_inits[-1]
    mac2 = noise.mac(client_cookie, retry[:noise.INITIATION_MAC2_OFF])
    assert retry[noise.INITIATION_MAC2_OFF:] == mac2, "wireguard-go's mac2 is not from our cookie"

    d = settle(w.name, before, lambda d: sum(received(d).values()) >= sent, timeout=15)
    assert d["handshakes_completed"] == 1
    handled = received(d)
    # the per-source rate limit: in the data path's handshake queue, and on
    # the XDP backend first in the WAN program
    ratelimited = "wan_drop_ratelimited" if w.backend == "xdp" else "handshake_ratelimited"
    assert set(handled) <= {"events_full", "handshake_bad_mac2", "handshake_invalid",
                            "handshake_replayed", "handshake_ratelimited", ratelimited}, handled
    # every datagram is counted once: the attacker's, and the client's
    # initiations that carried no cookie yet
    lost_in_kernel = udp_receive_errors(w.topo, w.exit_ns) - kernel_drops
    assert sent - lost_in_kernel <= sum(handled.values()) <= sent + len(client_inits) - 1, (
        sent, lost_in_kernel, d)
    assert d["cookie_replies_sent"] == handled["handshake_bad_mac2"]
    assert handled.get(ratelimited, 0) > 0, d
    # under load the exit node answers with cookies instead of doing the DH
    # work: few initiations get decrypted. Without that, the control plane
    # would decrypt all it can, 1 / FLOOD_OVER_CAPACITY (50%) of the flood.
    # With it, some still are: until the queue is 1/8 full, again each time
    # it has drained and the second of load has passed (as the kernel's
    # under_load), and the rate limit's allowance for the cookie holder.
    # Those cycles made 0.4-2.2% in 8 runs here. (A flood sized from a
    # capacity measured too low, barely over what the daemon decrypts,
    # cycled far more: 27% and 33% in two runs.)
    assert handled.get("handshake_invalid", 0) < 0.15 * sent, d
    assert_still_serving(w)


def test_full_speed_flood_stalls_neither_the_control_plane_nor_the_tunnel(world):
    w = world
    exit_pub = bytes(w.exit_key.public_key())
    strangers = unknown_initiations(exit_pub, 2000)
    kernel_drops = udp_receive_errors(w.topo, w.exit_ns)
    # -D: each reply with the time it came, to tell when the tunnel moved
    ping = w.topo.popen(w.client_ns, ["ping", "-D", "-c", "40", "-i", "0.1", "-W", "1",
                                      EXIT_INNER],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    floods = []
    for round_ in range(2):
        before = counters(w.name)
        flood_start = time.time()
        sent = flood_from_processes(w.client_ns, ATTACKER_V4.split("/")[0],
                                    (EXIT_V4, EXIT_PORT), strangers, 1.0, processes=2)
        floods.append((flood_start, time.time()))
        flood_end = time.monotonic()
        # the backlog is one event ring, not what piled up during the flood
        try:
            status(w.name, timeout=1.0)
        except socket.timeout:
            raise AssertionError(f"round {round_}: the control plane did not answer within "
                                 f"1 s of a 1 s flood of {sent} initiations") from None
        d = settle(w.name, before, timeout=5)
        assert d.get("handshake_invalid", 0) <= 2048, (
            f"round {round_}: {d['handshake_invalid']} of {sent} initiations were decrypted "
            f"without a cookie check ({time.monotonic() - flood_end:.1f} s)")
        if w.backend == "xdp":
            # the WAN program's per-source rate limit held the flood: on from
            # the moment the control plane was under load (and for a while
            # after, so the second round meets it at once)
            assert d.get("wan_drop_ratelimited", 0) > 0.5 * sent, (sent, d)
            if round_ == 0:
                assert d.get("cookie_replies_sent", 0) > 0, d
        else:
            # a full event ring, and cookies for what got in
            assert d.get("events_full", 0) > 0 and d.get("cookie_replies_sent", 0) > 0, d
    # the data path does not wait on the control plane
    out, _ = ping.communicate(timeout=30)
    lost = 40 - ping_received(out)
    assert "DUP!" not in out, out
    replies = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    assert len(replies) == 40 - lost, out
    for start, end in floods:
        # the tunnel carried traffic while the flood was on, not only after
        assert any(start <= t <= end for t in replies), (floods, out)
    if w.backend == "socket" and udp_receive_errors(w.topo, w.exit_ns) > kernel_drops:
        # with no XDP filter in front, the kernel drops at a full socket
        # buffer whatever arrives, the client's datagrams among the flood's:
        # the two flooding processes share the machine's two cores with the
        # workers, which then cannot empty the buffer fast enough (2 and 4
        # of 12 pings lost in two CI runs). Not a stalled tunnel: replies
        # came during each flood (above), most pings got through.
        assert lost <= 20, out
    else:
        assert lost <= 2, out
    assert_still_serving(w)


def ping_received(out: str) -> int:
    found = re.search(r"(\d+) received", out)
    return int(found.group(1)) if found else 0


def test_handshakes_from_port_zero_under_load_are_counted_and_lose_nothing(world):
    w = world
    exit_pub = bytes(w.exit_key.public_key())
    strangers = unknown_initiations(exit_pub, 2000)
    raw = socket_in(w.client_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    attacker_ip = ATTACKER_V4.split("/")[0]
    raw_sent = []

    def from_port_zero() -> None:
        # no reply can go to port 0 (the kernel refuses to send there)
        for i in range(10):
            time.sleep(0.1)
            raw.sendto(udp4_datagram(attacker_ip, EXIT_V4, 0, EXIT_PORT, strangers[i]),
                       (EXIT_V4, 0))
            raw_sent.append(i)

    before, kernel_drops = counters(w.name), udp_receive_errors(w.topo, w.exit_ns)
    t = threading.Thread(target=from_port_zero)
    t.start()
    # the load that brings cookies
    sent = w.attacker.flood(strangers, 1.2, rate=FLOOD_OVER_CAPACITY * handshake_capacity())
    t.join()
    raw.close()
    sent += len(raw_sent)
    d = settle(w.name, before, lambda d: sum(received(d).values()) >= sent)
    lost_in_kernel = udp_receive_errors(w.topo, w.exit_ns) - kernel_drops
    assert sent - lost_in_kernel <= sum(received(d).values()) <= sent, (sent, d)
    assert "Traceback" not in w.log_path.read_text(), w.log_path.read_text()[-2000:]
    assert_still_serving(w)


class HandshakeNeverStarted(AssertionError):
    pass


def test_exit_node_still_starts_handshakes_during_a_flood(topo, tmp_path, backend):
    w = TunnelWorld(topo, tmp_path, exit_knows_client_endpoint=True, backend=backend)
    assert w.ping(w.client_ns, EXIT_INNER, count=1).returncode == 0
    topo.add_address(w.client_ns, veth_name(topo, w.client_ns), ATTACKER_V4)
    strangers = unknown_initiations(bytes(w.exit_key.public_key()), 2000)
    client = str(w.client_key.public_key())
    # a full ring at the moment the data path asks is a matter of timing: a
    # few rounds
    for round_ in range(5):
        flooder = threading.Thread(target=flood_from_processes, args=(
            w.client_ns, ATTACKER_V4.split("/")[0], (EXIT_V4, EXIT_PORT), strangers, 1.2, 2))
        flooder.start()
        time.sleep(0.3)
        with Sniffer(w.client_ns, CLIENT_PORT) as client_side:
            # the exit node loses its session with the client (the peer set
            # anew): its next packet to the client needs a handshake it starts
            w.exit_wg("set", w.name, "peer", client, "remove")
            topo.run(w.exit_ns, ["wg", "set", w.name, "peer", client, "preshared-key",
                                 "/dev/stdin", "allowed-ips", "10.202.0.2/32,fd00:202::2/128",
                                 "endpoint", CLIENT_ENDPOINT], input=w.psk.reveal_base64())
            w.ping(w.exit_ns, CLIENT_INNER, count=1, timeout=1)
        flooder.join()
        if not client_side.payloads(INITIATION):
            raise HandshakeNeverStarted(
                f"round {round_}: the exit node had a packet for the client and sent no "
                f"initiation within a second; drops {counters(w.name)}")
    # once the flood is over the handshake completes (a retry at the latest)
    r = w.ping(w.exit_ns, CLIENT_INNER, count=1, timeout=lib.DP_WG_REKEY_TIMEOUT + 3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_still_serving(w)
