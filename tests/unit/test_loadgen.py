"""The native load generator (native/loadgen) on loopback UDP: what it sends
is well-formed WireGuard (opened here with our Python AEAD, not with its own
receiver), its receiver counts, times and checks what arrives, and bad
messages are rejected and counted, not taken."""
import ipaddress
import os
import socket
import struct
import time

import pytest

from dataplane import crypto
from dataplane._native import ffi, lib
from dataplane.bench.loadgen import (HIST_BUCKETS, IMIX, INDEX_BASE, EmulatedPeers,
                                     JunkSender, Receiver, RecvResult, Sender, _ip4, junk_sizes)
from dataplane.obfuscation import PLAIN, TRANSPORT, HeaderRange, Obfuscation

SINK_ADDR = "10.9.8.7"


def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    return a, b


def session_tables(n, send_keys, recv_keys=None):
    """A sending table whose peer i addresses receiver index INDEX_BASE + i,
    and a receiving table that holds the same keys for those indices."""
    tx, rx = EmulatedPeers(n, "10.200.0.2"), EmulatedPeers(n, "10.200.0.2")
    for i in range(n):
        addr = _ip4(tx.inner[i])
        assert lib.dp_lg_peer_set(tx.table, i, send_keys[i], ffi.NULL, INDEX_BASE + i, 1,
                                  addr) == 0
        key = (recv_keys or send_keys)[i]
        assert lib.dp_lg_peer_set(rx.table, i, ffi.NULL, key, 0, 0, addr) == 0
    return tx, rx


def test_histogram_buckets_are_ordered_and_bound_their_values():
    lows = [lib.dp_lg_bucket_low(b) for b in range(HIST_BUCKETS)]
    assert lows == sorted(lows) and len(set(lows)) == HIST_BUCKETS
    for ns in [0, 1, 63, 64, 65, 100, 1000, 12345, 10**6, 123456789, 10**12]:
        b = lib.dp_lg_bucket(ns)
        assert lows[b] <= ns
        if b + 1 < HIST_BUCKETS:
            assert ns < lows[b + 1]
            assert lows[b + 1] - lows[b] <= max(1, ns // 32 + 1)  # within 1/32
    assert lib.dp_lg_bucket(2**63) == HIST_BUCKETS - 1


def test_percentiles_from_a_histogram():
    r = RecvResult(hist=[(1000, 50), (2000, 49), (9000, 1)], lat_count=100)
    assert r.percentile_us(0.5) == 1.0
    assert r.percentile_us(0.99) == 2.0
    assert r.percentile_us(0.999) == 9.0
    assert RecvResult().percentile_us(0.5) is None
    merged = r.merge(RecvResult(hist=[(1000, 10)], lat_count=10, packets=10))
    assert merged.lat_count == 110 and dict(merged.hist)[1000] == 60 and merged.packets == 10


def test_sealed_messages_open_with_the_session_key_and_carry_an_inner_packet():
    keys = [os.urandom(32) for _ in range(3)]
    tx, _rx = session_tables(3, keys)
    a, b = udp_pair()
    try:
        sizes = [64, 100, 1420]
        s = Sender(a, tx, sealed=True, sizes=sizes, dst=SINK_ADDR, src_port=1234,
                   dst_port=5678, flow=7, mtu=1420, rate=2000, seconds=0.05).start()
        sent = s.join(10)
        assert sent.packets >= 20 and sent.errors == 0
        b.settimeout(1)
        seen_counters = {0: [], 1: [], 2: []}
        for k in range(sent.packets):
            msg = b.recv(4096)
            mtype, index, counter = struct.unpack_from("<IIQ", msg)
            assert mtype == 4
            peer = index - INDEX_BASE
            assert peer == k % 3, "peers are used round-robin"
            seen_counters[peer].append(counter)
            inner = crypto.open(keys[peer], counter, msg[16:])
            size = sizes[k % 3]
            # padded to 16 bytes, but not beyond the MTU
            assert len(inner) == min(-(-size // 16) * 16, 1420)
            assert inner[0] == 0x45 and struct.unpack_from("!H", inner, 2)[0] == size
            assert inner[12:16] == ipaddress.IPv4Address(tx.inner[peer]).packed
            assert inner[16:20] == ipaddress.IPv4Address(SINK_ADDR).packed
            sport, dport, ulen = struct.unpack_from("!HHH", inner, 20)
            assert (sport, dport, ulen) == (1234, 5678, size - 20)
            magic, flow, seq = struct.unpack_from("<IIQ", inner, 28)
            assert (magic, flow, seq) == (lib.DP_LG_PAYLOAD_MAGIC, 7, k)
            assert inner[size:] == bytes(len(inner) - size)
        for peer, counters in seen_counters.items():
            assert counters == list(range(1, 1 + len(counters))), "counters start at 1, no gaps"
            assert tx.counter(peer) == 1 + len(counters)
    finally:
        a.close(), b.close()
        tx.close(), _rx.close()


@pytest.mark.parametrize("sizes,poll_us", [([64], 0), ([1420], 0), (list(IMIX), 0),
                                           ([64], 100), (list(IMIX), 1000)])
def test_receiver_counts_every_sealed_packet_with_its_latency(sizes, poll_us):
    """Waiting on the socket (poll_us 0) or looking at it every poll_us
    without ever waiting on it, the receiver counts every packet."""
    keys = [os.urandom(32) for _ in range(4)]
    tx, rx = session_tables(4, keys)
    a, b = udp_pair()
    try:
        recv = Receiver(b, rx, sealed=True, poll_us=poll_us).start()
        sent = Sender(a, tx, sealed=True, sizes=sizes, dst=SINK_ADDR, rate=5000,
                      seconds=0.2).start().join(10)
        time.sleep(0.2)
        got = recv.stop()
        assert sent.packets > 500
        assert got.packets == sent.packets, (got, sent)
        assert got.bytes == sent.bytes
        assert got.rejected == got.duplicates == got.reordered == 0
        assert got.lat_count == got.packets == sum(c for _, c in got.hist)
        assert 0 < got.percentile_us(0.5) < 1e6
        if poll_us >= 1000:
            # it naps a millisecond between looks instead of waiting on the
            # socket: packets every 200 us wait half a nap on the median
            assert got.percentile_us(0.5) > 200, got.percentile_us(0.5)
    finally:
        a.close(), b.close()
        tx.close(), rx.close()


def test_receiver_rejects_wrong_keys_unknown_indices_and_foreign_datagrams():
    keys = [os.urandom(32) for _ in range(2)]
    tx, rx = session_tables(2, keys, recv_keys=[keys[0], os.urandom(32)])
    a, b = udp_pair()
    try:
        recv = Receiver(b, rx, sealed=True).start()
        sent = Sender(a, tx, sealed=True, sizes=[200], rate=2000, seconds=0.1).start().join(10)
        a.send(struct.pack("<IIQ", 4, INDEX_BASE + 99, 1) + bytes(64))  # unknown index
        a.send(b"\x01" + bytes(147))                                   # a handshake initiation
        a.send(struct.pack("<IIQ", 4, INDEX_BASE, 0) + bytes(16))      # keepalive-sized
        time.sleep(0.2)
        got = recv.stop()
        half = sent.packets // 2
        assert got.packets == sent.packets - half          # peer 1's key is wrong
        assert got.rejected == half + 1                    # ... and the unknown index
        assert got.foreign == 2
    finally:
        a.close(), b.close()
        tx.close(), rx.close()


def test_plain_mode_sends_to_each_peer_address_and_detects_duplicates():
    peers = EmulatedPeers(1)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    peers.set_plain(["127.0.0.1"])
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        recv = Receiver(sink, None, sealed=False).start()
        sent = Sender(src, peers, sealed=False, sizes=[64, 1000], dst_port=sink.getsockname()[1],
                      flow=3, rate=2000, seconds=0.1).start().join(10)
        # a replayed payload: the same flow and sequence number again
        replay = struct.pack("<IIQQ", lib.DP_LG_PAYLOAD_MAGIC, 3, 0, 0) + bytes(8)
        src.sendto(replay, sink.getsockname())
        time.sleep(0.2)
        got = recv.stop()
        assert got.packets == sent.packets and got.bytes == sent.bytes
        assert got.duplicates == 1
    finally:
        src.close(), sink.close()
        peers.close()


def test_bad_configurations_are_refused():
    peers = EmulatedPeers(1)
    try:
        with pytest.raises(ValueError):
            Sender(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), peers, sealed=True,
                   sizes=[40])
        cfg = ffi.new("struct dp_lg_send_config *", {"fd": -1, "sizes": ffi.NULL})
        assert lib.dp_lg_send(cfg, peers.table, ffi.NULL, ffi.new("struct dp_lg_send_stats *")) == -1
        assert lib.dp_lg_peer_set(peers.table, 1, ffi.NULL, ffi.NULL, 0, 0, 0) == -1
        with pytest.raises(ValueError):
            EmulatedPeers(0)
        for bad in (-1, 1_000_001):
            with pytest.raises(ValueError):
                Receiver(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), None, sealed=False,
                         poll_us=bad)
    finally:
        peers.close()


# ---------------------------------------------------------------- AmneziaWG profiles

def _profile(s4, h4):
    """A transport profile alone (built directly: H4 may overlap the plain
    H1..H3, which a whole profile's check refuses)."""
    return Obfuscation(s4=s4, h4=HeaderRange.parse(h4))


@pytest.mark.parametrize("s4,h4", [(8, "1000-1999"), (1, "77"), (15, "5-4294967295"),
                                   (100, "0-4294967295"), (0, "123456-123460")])
def test_sealed_messages_with_a_profile_are_padded_and_headed_from_its_range(s4, h4):
    """Every transport message gets S4 random bytes in front and a type
    field drawn from H4: the Python model of the receiver (classify) takes
    each as a transport message at offset S4, and it opens."""
    obf = _profile(s4, h4)
    keys = [os.urandom(32) for _ in range(2)]
    tx, _rx = session_tables(2, keys)
    a, b = udp_pair()
    try:
        sizes = [64, 1420, 100]
        sent = Sender(a, tx, sealed=True, sizes=sizes, dst=SINK_ADDR, mtu=1420, rate=4000,
                      seconds=0.1, obfuscation=obf).start().join(10)
        assert sent.packets >= 100 and sent.errors == 0
        b.settimeout(1)
        headers, pads = set(), set()
        for k in range(sent.packets):
            datagram = b.recv(65536)
            size = sizes[k % 3]
            assert len(datagram) == s4 + 32 + min(-(-size // 16) * 16, 1420)
            assert obf.classify(datagram) == (TRANSPORT, s4)
            header, index, counter = struct.unpack_from("<IIQ", datagram, s4)
            assert header in obf.h4
            headers.add(header)
            pads.add(datagram[:s4])
            peer = index - INDEX_BASE
            inner = crypto.open(keys[peer], counter, datagram[s4 + 16:])
            assert struct.unpack_from("!H", inner, 2)[0] == size
        if obf.h4.hi - obf.h4.lo > 1000:
            assert len(headers) > sent.packets * 0.9, "a fresh header for every message"
        if s4 >= 8:
            assert len(pads) == sent.packets, "fresh padding for every message"
    finally:
        a.close(), b.close()
        tx.close(), _rx.close()


@pytest.mark.parametrize("sizes,poll_us", [([64], 0), (list(IMIX), 100)])
def test_receiver_with_the_senders_profile_opens_everything(sizes, poll_us):
    obf = _profile(15, "200000-299999")
    keys = [os.urandom(32) for _ in range(3)]
    tx, rx = session_tables(3, keys)
    a, b = udp_pair()
    try:
        recv = Receiver(b, rx, sealed=True, poll_us=poll_us, obfuscation=obf).start()
        sent = Sender(a, tx, sealed=True, sizes=sizes, dst=SINK_ADDR, rate=5000, seconds=0.2,
                      obfuscation=obf).start().join(10)
        # the profile's keepalive, a plain message and one whose header is
        # out of range: none is ours
        a.send(os.urandom(15) + struct.pack("<IIQ", 200000, INDEX_BASE, 0) + bytes(16))
        a.send(struct.pack("<IIQ", 4, INDEX_BASE, 0) + bytes(64))
        a.send(os.urandom(15) + struct.pack("<IIQ", 300000, INDEX_BASE, 0) + bytes(64))
        time.sleep(0.2)
        got = recv.stop()
        assert sent.packets > 500
        assert got.packets == sent.packets and got.bytes == sent.bytes, (got, sent)
        assert got.rejected == got.duplicates == 0
        assert got.foreign == 3
    finally:
        a.close(), b.close()
        tx.close(), rx.close()


@pytest.mark.parametrize("rx_profile", [
    {"S4": 8, "H4": "1000-1999"},        # the padding differs
    {"S4": 15, "H4": "2000-2999"},       # the header range differs
    {"S4": 15, "H4": "1000-1499"},       # part of the range
    {},                                  # plain WireGuard
])
def test_receiver_with_another_profile_takes_nothing(rx_profile):
    """A mismatched profile on the receiving end: every datagram is foreign
    (not rejected: it is not even taken for a transport message)."""
    tx_obf = _profile(15, "1000-1999")
    rx_obf = Obfuscation.from_settings(rx_profile)
    keys = [os.urandom(32)]
    tx, rx = session_tables(1, keys)
    a, b = udp_pair()
    try:
        recv = Receiver(b, rx, sealed=True, obfuscation=rx_obf).start()
        sent = Sender(a, tx, sealed=True, sizes=[64, 1420], rate=5000, seconds=0.1,
                      obfuscation=tx_obf).start().join(10)
        time.sleep(0.2)
        got = recv.stop()
        assert sent.packets > 200
        if rx_profile.get("H4") == "1000-1499":
            # about half the headers fall in its range; S4 matches, so those open
            assert 0.3 * sent.packets < got.packets < 0.7 * sent.packets, (got, sent)
            assert got.packets + got.foreign == sent.packets
        else:
            assert got.packets == 0 and got.rejected == 0, got
            assert got.foreign == sent.packets, (got, sent)
    finally:
        a.close(), b.close()
        tx.close(), rx.close()


def test_plain_profile_sends_what_it_sent_before():
    """All wire fields 0 is plain WireGuard: type 4, no padding."""
    keys = [os.urandom(32)]
    tx, _rx = session_tables(1, keys)
    a, b = udp_pair()
    try:
        sent = Sender(a, tx, sealed=True, sizes=[64], rate=2000, seconds=0.02,
                      obfuscation=PLAIN).start().join(10)
        assert Sender(a, tx, sealed=True, sizes=[64]).cfg.wire_header_max == 4
        b.settimeout(1)
        for _ in range(sent.packets):
            datagram = b.recv(4096)
            assert len(datagram) == 32 + 64 and datagram[:4] == b"\x04\0\0\0"
    finally:
        a.close(), b.close()
        tx.close(), _rx.close()


def test_bad_wire_profiles_are_refused():
    peers = EmulatedPeers(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sizes = ffi.new("uint16_t[]", [64])

    def send_cfg(**wire):
        return ffi.new("struct dp_lg_send_config *", {
            "fd": sock.fileno(), "mode": lib.DP_LG_MODE_SEALED, "sizes": sizes,
            "n_sizes": 1, "mtu": 1420, "duration_ns": 1, "cpu": -1, **wire})

    def recv_cfg(mode=lib.DP_LG_MODE_SEALED, **wire):
        return ffi.new("struct dp_lg_recv_config *", {"fd": sock.fileno(), "mode": mode,
                                                       "cpu": -1, **wire})
    stats = ffi.new("struct dp_lg_send_stats *")
    rstats = ffi.new("struct dp_lg_recv_stats *")
    stop = ffi.new("int *", 1)
    try:
        # a range upside down; padding beyond the most; a message that no
        # longer fits a datagram with its padding
        for wire in ({"wire_header_min": 9, "wire_header_max": 8},
                     {"wire_padding": lib.DP_LG_WIRE_PADDING_MAX + 1},
                     {"wire_padding": lib.DP_LG_WIRE_PADDING_MAX}):
            assert lib.dp_lg_send(send_cfg(**wire), peers.table, stop, stats) == -1, wire
        # the largest padding that fits a 64-byte packet's message goes
        ok = 65507 - 32 - 64
        assert lib.dp_lg_send(send_cfg(wire_padding=ok), peers.table, stop, stats) == 0
        assert lib.dp_lg_recv(recv_cfg(wire_header_min=9, wire_header_max=8), peers.table,
                              stop, rstats) == -1
        assert lib.dp_lg_recv(recv_cfg(wire_padding=lib.DP_LG_WIRE_PADDING_MAX + 1),
                              peers.table, stop, rstats) == -1
        # plain mode (the kernel's UDP) has no wire profile
        assert lib.dp_lg_recv(recv_cfg(lib.DP_LG_MODE_PLAIN, wire_padding=8), ffi.NULL, stop,
                              rstats) == -1
        assert lib.dp_lg_recv(recv_cfg(lib.DP_LG_MODE_PLAIN), ffi.NULL, stop, rstats) == 0
        with pytest.raises(ValueError, match="sealed messages only"):
            Sender(sock, peers, sealed=False, sizes=[64], obfuscation=_profile(8, "1000"))
        with pytest.raises(ValueError, match="sealed messages only"):
            Receiver(sock, None, sealed=False, obfuscation=_profile(0, "1000"))
        with pytest.raises(ValueError, match="H4 = 0"):
            Sender(sock, peers, sealed=True, sizes=[64], obfuscation=_profile(8, "0"))
    finally:
        sock.close()
        peers.close()


def test_junk_sender_sends_random_datagrams_of_the_given_lengths():
    """A junk flood: random bytes, lengths in turn from the list, nothing a
    receiver takes for a message of ours or of a profile."""
    a, b = udp_pair()
    try:
        sizes = junk_sizes(1, 1400, 64)
        assert all(1 <= s <= 1400 for s in sizes) and len(set(sizes)) > 10
        sent = JunkSender(a, sizes=sizes, rate=5000, seconds=0.05).start().join(10)
        assert sent.packets > 100 and sent.errors == 0
        assert sent.bytes == sum(sizes[k % 64] for k in range(sent.packets))
        b.settimeout(1)
        got = [b.recv(4096) for _ in range(sent.packets)]
        assert [len(d) for d in got] == [sizes[k % 64] for k in range(sent.packets)]
        heads = {d[:16] for d in got if len(d) >= 16}
        assert len(heads) == sum(1 for d in got if len(d) >= 16), "fresh bytes every datagram"
        obf = Obfuscation.from_settings({"S4": 8, "H4": "1000-1999"})
        assert not [d for d in got if obf.classify(d) or PLAIN.classify(d)]
        with pytest.raises(ValueError):
            JunkSender(a, sizes=[0])
        with pytest.raises(ValueError):
            JunkSender(a, sizes=[100] * 65)
    finally:
        a.close(), b.close()
