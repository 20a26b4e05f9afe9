"""Python side of the native load generator (native/loadgen): emulated
WireGuard peers whose sessions come from our Noise handshake, and the
threads that run the C sender and receiver loops.

    peers = EmulatedPeers(100)
    peers.handshake(sock, dut_public)          # real handshakes, any WireGuard
    sender = Sender(sock, peers, sizes=[1420], ...)
    receiver = Receiver(sink, None, plain=True)

With an AmneziaWG profile (`obfuscation=`, dataplane.obfuscation) the
peers speak it as AmneziaWG clients do: signature and junk datagrams
before every initiation, padded handshake messages with headers from the
profile's ranges, and (in C) S4 random bytes and an H4 header on every
transport message; the receiver takes only transport messages of the
profile.

Keys of the emulated peers live in the native table (locked memory, wiped
when closed); Python drops its copies as soon as they are installed.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from dataplane import crypto, noise
from dataplane._native import ffi, lib
from dataplane.keys import PrivateKey
from dataplane.obfuscation import (COOKIE_REPLY, INITIATION, PLAIN, PLAIN_HEADERS, RESPONSE,
                                   TRANSPORT, Obfuscation)

BURST: int = lib.DP_LG_BURST
MAX_FLOWS: int = lib.DP_LG_MAX_FLOWS
INNER_MIN: int = lib.DP_LG_INNER_MIN
INNER_MAX: int = lib.DP_LG_INNER_MAX
HIST_BUCKETS: int = lib.DP_LG_HIST_BUCKETS
INDEX_BASE = 0x4C470000  # receiver indices of emulated peers: INDEX_BASE + i

# Simple IMIX (7:4:1 of small, medium and large packets), with the small
# one at our smallest packet and the large one at the tunnel's MTU.
IMIX = (64,) * 7 + (576,) * 4 + (1420,)


class LoadGenError(Exception):
    pass


def _ip4(addr: str) -> int:
    """IPv4 address as the uint32 C wants (network byte order in memory)."""
    return struct.unpack("=I", ipaddress.IPv4Address(addr).packed)[0]


def wire_fields(obfuscation: Obfuscation) -> dict:
    """The transport profile (S4, H4) as the C configs' wire_* fields."""
    h4 = obfuscation.header(TRANSPORT)
    if h4.lo == h4.hi == 0:
        # 0..0 is the C side's "plain" (type 4)
        raise ValueError("H4 = 0: the load generator cannot send a transport header of 0")
    if obfuscation.s4 > lib.DP_LG_WIRE_PADDING_MAX:
        raise ValueError(f"S4 = {obfuscation.s4}: the load generator pads at most "
                         f"{lib.DP_LG_WIRE_PADDING_MAX} bytes")
    return {"wire_padding": obfuscation.s4, "wire_header_min": h4.lo,
            "wire_header_max": h4.hi}


def _transport_obfuscated(obfuscation: Obfuscation) -> bool:
    return bool(obfuscation.s4) or obfuscation.header(TRANSPORT) != PLAIN_HEADERS[3]


class EmulatedPeers:
    """n peers with their own static keys; inner address of peer i is
    `first_inner + i`."""

    def __init__(self, n: int, first_inner: str = "10.200.0.2"):
        if not 1 <= n <= 1 << 20:
            raise ValueError(f"peers must be 1..{1 << 20}, not {n}")
        self.n = n
        self.table = lib.dp_lg_peers_new(n, INDEX_BASE)
        if self.table == ffi.NULL:
            raise MemoryError(f"cannot allocate a table of {n} emulated peers")
        first = ipaddress.IPv4Address(first_inner)
        self.inner = [str(first + i) for i in range(n)]
        self.keys = [PrivateKey.generate() for _ in range(n)]
        self.handshake_at: Optional[float] = None
        self._staged: list = []
        for i in range(n):
            lib.dp_lg_peer_set(self.table, i, ffi.NULL, ffi.NULL, 0, 0, _ip4(self.inner[i]))

    def public_keys(self) -> list[str]:
        return [str(k.public_key()) for k in self.keys]

    def set_plain(self, addresses: Sequence[str]) -> None:
        """No sessions (the no-tunnel ceiling): peer i is just an address."""
        for i in range(self.n):
            lib.dp_lg_peer_set(self.table, i, ffi.NULL, ffi.NULL, 0, 0,
                               _ip4(addresses[i % len(addresses)]))

    def handshake(self, sock: socket.socket, dut_public: bytes, window: int = 16,
                  timeout: float = 5.0, attempts: int = 5,
                  progress=None, obfuscation: Obfuscation = PLAIN) -> None:
        """A real Noise_IKpsk2 handshake for every peer through `sock`
        (connected to the tunnel under test), `window` at a time; cookie
        replies are honoured (a loaded responder asks for them). Then one
        keepalive per peer, so the responder confirms its keypair and may
        send to us at once. With an AmneziaWG profile, every initiation
        is preceded by the profile's signature and junk datagrams, and
        what comes back is taken only if it fits the profile."""
        obf = obfuscation
        states: dict[int, tuple] = {}   # peer -> (noise.Handshake, InitiatorState, sent_at, tries)
        cookies: dict[int, bytes] = {}
        pending = list(range(self.n - 1, -1, -1))
        done = 0
        sock.settimeout(0.05)
        try:
            def start(i: int, tries: int) -> None:
                hs = noise.Handshake(self.keys[i].reveal(), lambda _pub: bytes(32))
                msg, st = hs.create_initiation(dut_public, INDEX_BASE + i, cookies.get(i),
                                               header=obf.draw_header(INITIATION))
                for datagram in obf.preamble():
                    sock.send(datagram)
                sock.send(obf.wrap(INITIATION, msg))
                states[i] = (hs, st, time.monotonic(), tries)

            while pending or states:
                while pending and len(states) < window:
                    start(pending.pop(), 1)
                try:
                    datagram = sock.recv(65536)
                except socket.timeout:
                    datagram = b""
                now = time.monotonic()
                # by the profile's sizes and headers; anything else is not
                # for us (transport messages of earlier sessions, junk)
                kind, off = obf.classify(datagram) or (None, 0)
                if kind in (RESPONSE, COOKIE_REPLY):
                    msg = datagram[off:]
                    idx = struct.unpack_from("<I", msg, 8 if kind == RESPONSE else 4)[0]
                    i = idx - INDEX_BASE
                    if i in states and kind == RESPONSE:
                        hs, st, sent, tries = states[i]
                        try:
                            keys = hs.consume_response(msg, st, expect=obf.header(RESPONSE))
                        except noise.HandshakeError:
                            continue  # not from the DUT: the timeout retries it
                        del states[i]
                        lib.dp_lg_peer_set(self.table, i, keys.send_key, keys.recv_key,
                                           keys.remote_index, 1, _ip4(self.inner[i]))
                        keepalive = struct.pack("<IIQ", obf.draw_header(TRANSPORT),
                                                keys.remote_index, 0)
                        sock.send(obf.wrap(TRANSPORT, keepalive
                                           + crypto.seal(keys.send_key, 0, b"")))
                        keys.send_key = keys.recv_key = b""
                        done += 1
                        if progress and done % 500 == 0:
                            progress(done, self.n)
                    elif i in states and kind == COOKIE_REPLY:
                        hs, st, _, tries = states.pop(i)
                        try:
                            cookies[i] = noise.consume_cookie_reply(msg, dut_public, st.mac1)
                        except noise.HandshakeError:
                            pass
                        start(i, tries)
                for i, (_hs, _st, sent, tries) in list(states.items()):
                    if now - sent > timeout:
                        if tries >= attempts:
                            raise LoadGenError(f"emulated peer {i}: no handshake response "
                                               f"after {attempts} tries")
                        start(i, tries + 1)
        finally:
            sock.settimeout(None)
        self.handshake_at = time.monotonic()

    def session_ops(self, activate: str = "now", lifetime: Optional[float] = None,
                    generation: Optional[int] = None, taken: Optional[set] = None,
                    put_peer: bool = True, stage: bool = False) -> list[dict]:
        """New sessions for every peer, made here as a control plane makes
        them, and set in the generator's table: the control-plane API's
        bulk operations (`put_peer` with the peer's inner /32 and its
        session, or `put_session` alone) that give the tunnel under test
        the other half. The generator may send with them once the batch is
        applied. `taken`: receiver indices not to use (grows). With
        `stage`, the generator keeps sending with its current keys until
        use_staged() (a client switching once its control plane told it)."""
        taken = taken if taken is not None else set()
        ops = []
        self._staged = []
        for i in range(self.n):
            send, recv = os.urandom(32), os.urandom(32)
            index = 0
            while index == 0 or index in taken:
                index = secrets.randbits(32)
            taken.add(index)
            if stage:
                self._staged.append((i, send, recv, index))
            else:
                lib.dp_lg_peer_set(self.table, i, send, recv, index, 0, _ip4(self.inner[i]))
            sess = {"receiver_index": index, "sender_index": INDEX_BASE + i,
                    "send_key": base64.b64encode(recv).decode(),
                    "receive_key": base64.b64encode(send).decode(), "activate": activate}
            if lifetime is not None:
                sess["lifetime"] = lifetime
            if generation is not None:
                sess["generation"] = generation
            key = str(self.keys[i].public_key())
            if put_peer:
                ops.append({"op": "put_peer", "public_key": key,
                            "allowed_ips": [f"{self.inner[i]}/32"], "session": sess})
            else:
                ops.append({"op": "put_session", "public_key": key, **sess})
        return ops

    def use_staged(self) -> None:
        """Send with the sessions session_ops(stage=True) made (not while
        a Sender runs)."""
        for i, send, recv, index in self._staged:
            lib.dp_lg_peer_set(self.table, i, send, recv, index, 0, _ip4(self.inner[i]))
        self._staged = []

    def counter(self, i: int) -> int:
        return lib.dp_lg_peer_counter(self.table, i)

    def close(self) -> None:
        if self.table is not None:
            lib.dp_lg_peers_free(self.table)
            self.table = None
        for k in self.keys:
            k.wipe()

    def __enter__(self) -> "EmulatedPeers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SendResult:
    packets: int
    bytes: int
    errors: int
    seconds: float
    cpu_seconds: float


@dataclass
class RecvResult:
    packets: int = 0
    bytes: int = 0
    rejected: int = 0
    foreign: int = 0
    reordered: int = 0
    duplicates: int = 0
    cpu_seconds: float = 0.0
    hist: list = field(default_factory=list)  # (bucket low ns, count) where count > 0
    lat_count: int = 0
    lat_sum_ns: int = 0
    lat_max_ns: int = 0

    def percentile_us(self, q: float) -> Optional[float]:
        """Latency below which a fraction q of packets fell (bucket lower
        bound, within 1/32 of the value)."""
        if not self.lat_count:
            return None
        rank = q * self.lat_count
        seen = 0
        for low, count in self.hist:
            seen += count
            if seen >= rank:
                return low / 1000
        return self.hist[-1][0] / 1000

    def merge(self, other: "RecvResult") -> "RecvResult":
        hist: dict[int, int] = {}
        for low, count in self.hist + other.hist:
            hist[low] = hist.get(low, 0) + count
        return RecvResult(
            self.packets + other.packets, self.bytes + other.bytes,
            self.rejected + other.rejected, self.foreign + other.foreign,
            self.reordered + other.reordered, self.duplicates + other.duplicates,
            self.cpu_seconds + other.cpu_seconds, sorted(hist.items()),
            self.lat_count + other.lat_count, self.lat_sum_ns + other.lat_sum_ns,
            max(self.lat_max_ns, other.lat_max_ns))


class _Thread(threading.Thread):
    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.error, self.result = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by join_result
            self.error = e

    def join_result(self, timeout: Optional[float] = None):
        self.join(timeout)
        if self.is_alive():
            raise LoadGenError("a load generator thread did not stop")
        if self.error:
            raise self.error
        return self.result


class Sender:
    """dp_lg_send in a thread. Sealed: inner packets from each peer's
    address to dst; plain: UDP payloads to each peer's address."""

    def __init__(self, sock: socket.socket, peers: EmulatedPeers, *, sealed: bool,
                 sizes: Sequence[int], dst: str = "0.0.0.0", src_port: int = 0,
                 dst_port: int = 9, flow: int = 0, mtu: int = 1420, rate: int = 0,
                 seconds: float = 1.0, cpu: int = -1, obfuscation: Obfuscation = PLAIN):
        """obfuscation: sealed, the AmneziaWG profile whose S4 and H4 every
        transport message gets."""
        if not sealed and _transport_obfuscated(obfuscation):
            raise ValueError("an AmneziaWG profile applies to sealed messages only")
        for s in sizes:
            if not INNER_MIN <= s <= INNER_MAX:
                raise ValueError(f"inner packet size {s} is not in {INNER_MIN}..{INNER_MAX}")
        self.sock, self.peers = sock, peers
        self.sizes = ffi.new("uint16_t[]", list(sizes))
        self.cfg = ffi.new("struct dp_lg_send_config *", {
            "fd": sock.fileno(), "mode": lib.DP_LG_MODE_SEALED if sealed else lib.DP_LG_MODE_PLAIN,
            "cpu": cpu, "flow": flow, "dst_addr": _ip4(dst), "src_port": src_port,
            "dst_port": dst_port, "sizes": self.sizes, "n_sizes": len(sizes), "mtu": mtu,
            "rate_pps": int(rate), "duration_ns": int(seconds * 1e9),
            **wire_fields(obfuscation)})
        self.stop_flag = ffi.new("int *", 0)
        self.stats = ffi.new("struct dp_lg_send_stats *")
        self.thread = _Thread(self._run)

    def _run(self) -> SendResult:
        table = self.peers.table if self.peers is not None else ffi.NULL
        if lib.dp_lg_send(self.cfg, table, self.stop_flag, self.stats) != 0:
            raise LoadGenError("dp_lg_send refused its configuration")
        st = self.stats
        return SendResult(st.packets, st.bytes, st.send_errors, st.ns / 1e9, st.cpu_ns / 1e9)

    def start(self) -> "Sender":
        self.thread.start()
        return self

    def stop(self) -> None:
        lib.dp_lg_stop(self.stop_flag)

    def join(self, timeout: Optional[float] = None) -> SendResult:
        return self.thread.join_result(timeout)


class JunkSender(Sender):
    """A junk flood: datagrams of random bytes through a connected socket,
    their lengths taken in turn from `sizes` (1..INNER_MAX; a shuffled set
    of random lengths makes random sizes), as fast as it can or at `rate`.
    SendResult counts datagrams and their bytes."""

    def __init__(self, sock: socket.socket, *, sizes: Sequence[int], rate: int = 0,
                 seconds: float = 1.0, cpu: int = -1):
        for s in sizes:
            if not 1 <= s <= INNER_MAX:
                raise ValueError(f"junk datagram length {s} is not in 1..{INNER_MAX}")
        if not 1 <= len(sizes) <= lib.DP_LG_MAX_SIZES:
            raise ValueError(f"1..{lib.DP_LG_MAX_SIZES} junk lengths, not {len(sizes)}")
        self.sock, self.peers = sock, None
        self.sizes = ffi.new("uint16_t[]", list(sizes))
        self.cfg = ffi.new("struct dp_lg_send_config *", {
            "fd": sock.fileno(), "mode": lib.DP_LG_MODE_JUNK, "cpu": cpu, "sizes": self.sizes,
            "n_sizes": len(sizes), "rate_pps": int(rate), "duration_ns": int(seconds * 1e9)})
        self.stop_flag = ffi.new("int *", 0)
        self.stats = ffi.new("struct dp_lg_send_stats *")
        self.thread = _Thread(self._run)


def junk_sizes(lo: int = 16, hi: int = 1400, n: int = lib.DP_LG_MAX_SIZES) -> list[int]:
    """n random datagram lengths in lo..hi, for a JunkSender."""
    return [lo + secrets.randbelow(hi - lo + 1) for _ in range(n)]


class Receiver:
    """dp_lg_recv in a thread, until stop()."""

    def __init__(self, sock: socket.socket, peers: Optional[EmulatedPeers], *, sealed: bool,
                 cpu: int = -1, poll_us: int = 0, obfuscation: Obfuscation = PLAIN):
        """poll_us 0 waits on the socket for every datagram; otherwise the
        receiver never sleeps on the socket (whose wakeups the delivering
        CPU pays) and checks it every poll_us microseconds when idle.
        obfuscation: sealed, the AmneziaWG profile (S4, H4) to accept;
        other datagrams count as foreign."""
        if not 0 <= poll_us <= 1_000_000:
            raise ValueError("poll_us must be 0..1000000")
        if not sealed and _transport_obfuscated(obfuscation):
            raise ValueError("an AmneziaWG profile applies to sealed messages only")
        self.sock, self.peers = sock, peers
        self.cfg = ffi.new("struct dp_lg_recv_config *", {
            "fd": sock.fileno(), "mode": lib.DP_LG_MODE_SEALED if sealed else lib.DP_LG_MODE_PLAIN,
            "cpu": cpu, "poll_ns": poll_us * 1000, **wire_fields(obfuscation)})
        self.stop_flag = ffi.new("int *", 0)
        self.stats = ffi.new("struct dp_lg_recv_stats *")
        self.thread = _Thread(self._run)

    def _run(self) -> RecvResult:
        table = self.peers.table if self.peers else ffi.NULL
        if lib.dp_lg_recv(self.cfg, table, self.stop_flag, self.stats) != 0:
            raise LoadGenError("dp_lg_recv refused its configuration")
        st = self.stats
        hist = [(lib.dp_lg_bucket_low(b), st.hist[b]) for b in range(HIST_BUCKETS) if st.hist[b]]
        return RecvResult(st.packets, st.bytes, st.rejected, st.foreign, st.reordered,
                          st.duplicates, st.cpu_ns / 1e9, hist, st.lat_count, st.lat_sum_ns,
                          st.lat_max_ns)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def settle(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until nothing has arrived for `quiet` seconds (at most
        `limit`): what is still on its way through the DUT lands."""
        deadline = time.monotonic() + limit
        last, since = lib.dp_lg_recv_packets(self.stats), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = lib.dp_lg_recv_packets(self.stats)  # a count only grows
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def stop(self) -> RecvResult:
        lib.dp_lg_stop(self.stop_flag)
        return self.thread.join_result(5)
