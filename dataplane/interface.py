"""One WireGuard interface: the protocol engine around the native device.

The native device moves data packets. This module does everything else a
WireGuard implementation does, from Python, driven by the device's events
and a timer tick: handshakes as initiator and responder (dataplane.noise),
cookies and rate limiting under load, keypair rotation, the timers of the
whitepaper (section 6), and the model behind the UAPI (`wg`).

Nothing here logs keys or peer endpoints.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from dataplane import config as cfg
from dataplane import noise
from dataplane.device import Device, DeviceError, Endpoint, PeerStats, peer_stats_of
from dataplane.keys import PresharedKey, PrivateKey, PublicKey, is_low_order
from dataplane.obfuscation import COOKIE_REPLY, INITIATION, PLAIN, RESPONSE, Obfuscation
from dataplane._native import lib

log = logging.getLogger("dataplane")

NS = 1_000_000_000
REKEY_TIMEOUT_NS = lib.DP_WG_REKEY_TIMEOUT * NS
REKEY_ATTEMPT_NS = lib.DP_WG_REKEY_ATTEMPT_TIME * NS
KEEPALIVE_NS = lib.DP_WG_KEEPALIVE_TIMEOUT * NS
REJECT_AFTER_NS = lib.DP_WG_REJECT_AFTER_TIME * NS
COOKIE_SECRET_MAX_AGE_NS = lib.DP_WG_COOKIE_SECRET_MAX_AGE * NS
# A cookie from a reply is good for COOKIE_SECRET_MAX_AGE less a margin
# for latency (the kernel's COOKIE_SECRET_LATENCY).
COOKIE_VALID_NS = COOKIE_SECRET_MAX_AGE_NS - 5 * NS
# Keys are wiped when no handshake happened for this long (whitepaper 6.3).
ZERO_KEYS_NS = 3 * REJECT_AFTER_NS
REKEY_JITTER_NS = NS // 3
# One accepted initiation per peer per this interval (flood protection).
INITIATION_MIN_INTERVAL_NS = NS // lib.DP_WG_INITIATIONS_PER_SECOND
# The control plane counts as under load while the event ring is this full,
# and for a second after (the kernel's MAX_QUEUED_INCOMING_HANDSHAKES / 8).
UNDER_LOAD_FRACTION = 1 / 8
UNDER_LOAD_HOLD_NS = NS
DEFAULT_MTU = 1420
MAX_PEERS = 1024  # room for peers when the config does not say (at least)


def prefix_key(net) -> tuple[int, bytes, int]:
    """(IP version, network address bytes, prefix length) of a network."""
    return net.version, net.network_address.packed, net.prefixlen


def table_sizes(configured_peers: int, max_peers: Optional[int] = None) -> tuple[int, int]:
    """(max_peers, index_table_log2) for a device: MaxPeers if set, else
    room for the configured peers and a quarter more (at least MAX_PEERS);
    and a receiver index table of four entries a peer, so that it holds two
    indices a peer (a current and a next or previous keypair, or a
    handshake in flight; at most half the entries are used, which keeps
    probes short). Keypair memory is not sized here: it grows with the
    keypairs installed."""
    if max_peers is None:
        max_peers = max(MAX_PEERS, 1 << (configured_peers * 5 // 4 - 1).bit_length())
    index_log2 = min(lib.DP_DEVICE_INDEX_LOG2_MAX, max(12, (4 * max_peers - 1).bit_length()))
    return max_peers, index_log2


@dataclass(slots=True)
class Peer:
    id: int
    public_key: PublicKey
    preshared_key: Optional[PresharedKey] = None
    persistent_keepalive: int = 0
    # handshake state
    pending: Optional[noise.InitiatorState] = None
    attempt_started_ns: int = 0        # first initiation of the current attempt
    last_initiation_ns: int = 0        # last initiation we sent
    next_retry_ns: int = 0
    last_timestamp: bytes = b""        # greatest TAI64N accepted from the peer
    last_initiation_consumed_ns: int = -(1 << 62)
    cookie: Optional[bytes] = None
    cookie_ns: int = 0
    last_handshake_ns: int = 0         # monotonic, of the last completed handshake
    last_handshake_wall_ns: int = 0    # Unix time, for `wg show`
    last_keepalive_sent_ns: int = 0
    prefixes: set = field(default_factory=set)  # allowed IPs, as prefix_key() tuples
    # Sessions come from a control plane (the API): we never initiate a
    # handshake for this peer; a rekey is asked of the control plane.
    managed: bool = False
    # the profile (DP_WIRE_*) of its last handshake, which our rekeys and
    # replies use; None: none yet (the interface's own profile)
    wire: Optional[int] = None

    def psk(self) -> bytes:
        return self.preshared_key.reveal() if self.preshared_key else bytes(32)

    def __repr__(self) -> str:
        return f"Peer(id={self.id}, public_key={self.public_key})"


class RateLimiter:
    """Token buckets per source (IPv4 address, IPv6 /64), as the kernel's
    ratelimiter: DP_WG_INITIATIONS_PER_SECOND with a burst of
    DP_WG_INITIATIONS_BURST."""

    RATE = lib.DP_WG_INITIATIONS_PER_SECOND
    BURST = lib.DP_WG_INITIATIONS_BURST
    MAX_ENTRIES = 1 << 16

    def __init__(self, clock: Callable[[], int]):
        self.clock = clock
        self.buckets: dict[bytes, tuple[float, int]] = {}

    @staticmethod
    def key(ep: Endpoint) -> bytes:
        packed = ep.address.packed
        return packed if ep.address.version == 4 else packed[:8]

    def allow(self, ep: Endpoint) -> bool:
        now = self.clock()
        k = self.key(ep)
        tokens, last = self.buckets.get(k, (float(self.BURST), now))
        tokens = min(float(self.BURST), tokens + (now - last) * self.RATE / NS)
        if tokens < 1:
            self.buckets[k] = (tokens, now)
            return False
        if len(self.buckets) >= self.MAX_ENTRIES and k not in self.buckets:
            self.gc()
        self.buckets[k] = (tokens - 1, now)
        return True

    def gc(self) -> None:
        now = self.clock()
        self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < NS}


def endpoint_bytes(ep: Endpoint) -> bytes:
    """The source address as the cookie MAC covers it: IP then port."""
    return ep.address.packed + struct.pack(">H", ep.port)


def resolve(endpoint: cfg.Endpoint) -> Endpoint:
    """A configured endpoint to an address (host names resolved now)."""
    if endpoint.address is not None:
        return Endpoint(endpoint.address, endpoint.port)
    infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError("a peer's endpoint host name does not resolve")
    return Endpoint(ipaddress.ip_address(infos[0][4][0]), endpoint.port)


class Interface:
    """The protocol state of one interface and its native device.

    `clock` is the data path's clock (CLOCK_MONOTONIC in ns, which tests can
    move forward), so that both sides age keypairs alike."""

    def __init__(self, name: str, private_key: PrivateKey, device: Device, listen_port: int,
                 clock: Callable[[], int] = lib.dp_device_now_ns,
                 wallclock: Callable[[], int] = time.time_ns):
        self.name = name
        self.device = device
        self.listen_port = listen_port
        self.fwmark = 0
        self.clock = clock
        self.wallclock = wallclock
        self.peers: dict[bytes, Peer] = {}
        # counts additions and removals of peers (for listings kept in order)
        self.peers_version = 0
        self.by_id: dict[int, Peer] = {}
        self.pending_by_index: dict[int, Peer] = {}
        self._next_id = 0
        self.ratelimiter = RateLimiter(clock)
        self.cookie_secret = os.urandom(32)
        self.cookie_secret_ns = clock()
        self.under_load_until = 0
        # the XDP backend's outer routes (the daemon resolves them)
        self.on_need_route: Optional[Callable[[Endpoint], None]] = None
        # a managed peer needs a new session (the API tells its control plane)
        self.on_rekey_needed: Optional[Callable[[Peer], None]] = None
        # who holds each allowed IP (the trie's exact prefixes, for the API's
        # conflict check and listings without a native walk)
        self.prefix_owner: dict[tuple[int, bytes, int], Peer] = {}
        # ids of peers with a persistent keepalive (the tick looks at them)
        self.keepalive_ids: set[int] = set()
        # per peer id: when its one-way spell of data in / data out began
        # (0: none), kept by tick (_spells)
        self._rx_spell: Optional[np.ndarray] = None
        self._tx_spell: Optional[np.ndarray] = None
        self.counters = {"handshake_bad_mac1": 0, "handshake_bad_mac2": 0,
                         "handshake_ratelimited": 0, "handshake_invalid": 0,
                         "handshake_replayed": 0, "handshake_unknown_index": 0,
                         "cookie_replies_sent": 0, "handshakes_completed": 0,
                         "keypairs_refused": 0}
        self._refused_logged_ns = -(1 << 62)  # when keypairs_refused was last logged
        # AmneziaWG: the wire profile, and plain WireGuard on the same port too
        self.obfuscation: Obfuscation = PLAIN
        self.accept_plain = False
        self.set_private_key(private_key)

    # ---------------------------------------------------------------- model

    def set_private_key(self, key: Optional[PrivateKey]) -> None:
        """A new identity voids every session; the same key again changes
        nothing (as in the kernel, so `wg syncconf` keeps sessions)."""
        if key is not None and key.is_zero():
            key = None
        current = getattr(self, "private_key", None)
        if current is not None and key is not None and current == key:
            return
        if current is not None and current is not key:
            current.wipe()  # the identity retired: its key goes from memory
        self.private_key = key if key is not None and not key.is_zero() else None
        # TAI64N timestamps are wall-clock time: peers refuse any initiation
        # not newer than the last one they saw from us, across our restarts
        # and the machine's reboots.
        self.handshake = (noise.Handshake(self.private_key.reveal(), self._psk_for,
                                          self.wallclock)
                          if self.private_key else None)
        if self.private_key is not None:
            ours = self.private_key.public_key()
            if ours in self.peers:  # a peer with our own key cannot be talked to
                self.remove_peer(ours)
        # Sessions of the old identity are void: wipe them; traffic starts a
        # new handshake at once.
        for peer in self.peers.values():
            self._drop_session(peer)

    def set_obfuscation(self, obf: Obfuscation, accept_plain: bool = False) -> None:
        """The wire profile (checked by the caller), in the workers at once.
        Sessions keep the profile of the handshake that made them; peers
        move to the new one at their next handshake."""
        self.obfuscation = obf
        # kept as asked (a plain profile accepts plain WireGuard anyway), so
        # that AcceptPlainWireGuard survives a move to a plain profile and back
        self.accept_plain = bool(accept_plain)
        self.device.set_wire(obf, self.accept_plain and not obf.profile_is_plain)

    def default_wire(self) -> int:
        """The profile of a peer that has not completed a handshake yet:
        the interface's own."""
        return lib.DP_WIRE_PLAIN if self.obfuscation.profile_is_plain else \
            lib.DP_WIRE_OBFUSCATED

    def profile(self, wire: int) -> Obfuscation:
        """The settings that a message of profile `wire` is read and
        written by."""
        return self.obfuscation if wire == lib.DP_WIRE_OBFUSCATED else PLAIN

    def _psk_for(self, public: bytes) -> Optional[bytes]:
        peer = self.peers.get(public)
        return peer.psk() if peer else None

    def add_peer(self, public_key: PublicKey, checked: bool = False) -> Peer:
        """The peer with this key, added if new. `checked`: the caller has
        already refused low-order keys."""
        if not checked and is_low_order(public_key):
            raise ValueError("a low-order public key cannot complete a handshake")
        if public_key in self.peers:
            return self.peers[public_key]
        # Round-robin over the ids, so that a removed peer's id is not given
        # to the next new peer while its last packets may be in flight.
        free = None
        for k in range(self.device.max_peers):
            candidate = (self._next_id + k) % self.device.max_peers
            if candidate not in self.by_id:
                free = candidate
                break
        if free is None:
            raise OSError(f"no room for another peer (at most {self.device.max_peers})")
        self._next_id = free + 1
        self.device.peer_add(free)
        self.peers_version += 1
        peer = Peer(free, PublicKey(public_key))
        self.peers[peer.public_key] = peer
        self.by_id[free] = peer
        return peer

    def reserve_ids(self, n: int) -> list[int]:
        """n free peer ids, taken round-robin as add_peer takes them, for
        peers the caller adds to the device and to peers/by_id itself
        (OSError if there is no room)."""
        if len(self.by_id) + n > self.device.max_peers:
            raise OSError(f"no room for {n} more peers (at most {self.device.max_peers})")
        out, by_id, size = [], self.by_id, self.device.max_peers
        candidate = self._next_id % size
        while len(out) < n:
            if candidate not in by_id:
                out.append(candidate)
            candidate = (candidate + 1) % size
        if out:
            self._next_id = out[-1] + 1
        return out

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.forget_peer(public_key)
        if peer is not None:
            self.device.peer_remove(peer.id)  # allowed IPs and keys go with it, wiped

    def forget_peer(self, public_key: bytes) -> Optional[Peer]:
        """The protocol side of removing a peer (the device's is the
        caller's); the peer, or None if there was none."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return None
        self.peers_version += 1
        del self.by_id[peer.id]
        self.keepalive_ids.discard(peer.id)
        if self._rx_spell is not None and peer.id < len(self._rx_spell):
            self._rx_spell[peer.id] = self._tx_spell[peer.id] = 0
        self._cancel_pending(peer)
        self._forget_prefixes(peer)
        return peer

    def set_persistent_keepalive(self, peer: Peer, interval: int) -> None:
        peer.persistent_keepalive = interval
        if interval:
            self.keepalive_ids.add(peer.id)
        else:
            self.keepalive_ids.discard(peer.id)

    def set_endpoint(self, peer: Peer, endpoint: Optional[Endpoint]) -> None:
        self.device.set_endpoint(peer.id, endpoint)

    def replace_allowed_ips(self, peer: Peer, networks) -> None:
        self.clear_allowed_ips(peer)
        for net in networks:
            self.add_allowed_ip(peer, net)

    def add_allowed_ip(self, peer: Peer, net) -> None:
        self.add_allowed_prefix(peer, prefix_key(net))

    def add_allowed_prefix(self, peer: Peer, key: tuple[int, bytes, int]) -> None:
        """As WireGuard: a prefix another peer held moves to this one."""
        self.device.allowed_ip_add_packed(peer.id, *key)
        old = self.prefix_owner.get(key)
        if old is not None and old is not peer:
            old.prefixes.discard(key)
        self.prefix_owner[key] = peer
        peer.prefixes.add(key)

    def clear_allowed_ips(self, peer: Peer) -> None:
        self.device.allowed_ips_remove_peer(peer.id)
        self._forget_prefixes(peer)

    def _forget_prefixes(self, peer: Peer) -> None:
        for key in peer.prefixes:
            if self.prefix_owner.get(key) is peer:
                del self.prefix_owner[key]
        peer.prefixes.clear()

    def install_session(self, peer: Peer, receiver_index: int, sender_index: int,
                        send_key: bytes, recv_key: bytes, lifetime_ns: int,
                        activate_now: bool, claimed: bool = False,
                        now: Optional[int] = None, wall_ns: Optional[int] = None) -> None:
        """A keypair a control plane derived, used like a handshake's: it
        expires `lifetime_ns` from now (at most REJECT_AFTER_TIME). With
        `activate_now` it is current at once (as an initiator's); otherwise
        it is next and becomes current when the peer first uses it (as a
        responder's), so the keys it replaces keep working meanwhile."""
        now = self.clock() if now is None else now
        if not claimed:  # else the caller claimed receiver_index already
            self.device.index_claim(receiver_index)
        try:
            # the data path ages keypairs in unsigned arithmetic: within
            # REJECT_AFTER_TIME of boot the creation time wraps around, and
            # still ages right
            self.device.keypair_install(peer.id, receiver_index, sender_index, send_key,
                                        recv_key, activate_now,
                                        (now - (REJECT_AFTER_NS - lifetime_ns)) % (1 << 64),
                                        self.default_wire())
        except BaseException:
            self.device.index_release(receiver_index)
            raise
        self.device.rearm(peer.id)
        self.adopt_session(peer, activate_now, now, wall_ns)

    def adopt_session(self, peer: Peer, activate_now: bool, now: int,
                      wall_ns: Optional[int] = None, cancel_pending: bool = True) -> None:
        """The protocol side of a pushed session the device has installed:
        the peer is the control plane's from now on (no handshakes of our
        own: one in flight is cancelled, unless the caller does that
        later), and one activated now counts as a handshake."""
        if cancel_pending:
            self._cancel_pending(peer)
        peer.managed = True
        if activate_now:
            peer.last_handshake_ns = now
            peer.last_handshake_wall_ns = self.wallclock() if wall_ns is None else wall_ns
            peer.attempt_started_ns = 0

    def drop_sessions(self, peer: Peer) -> None:
        """Every keypair of the peer wiped at once."""
        self._drop_session(peer)
        self.device.rearm(peer.id)

    def _drop_session(self, peer: Peer) -> None:
        self._cancel_pending(peer)
        self.device.clear_keypairs(peer.id)

    def _cancel_pending(self, peer: Peer) -> None:
        if peer.pending is not None:
            self.pending_by_index.pop(peer.pending.sender_index, None)
            self.device.index_release(peer.pending.sender_index)
            peer.pending = None

    # ---------------------------------------------------------------- events

    def under_load(self) -> bool:
        return self.clock() < self.under_load_until

    def _note_load(self) -> None:
        """Load is judged from the ring before a batch is taken out of it
        (the kernel judges from its queue): taking events out must not make
        a flood look like quiet."""
        if self.device.event_load() >= UNDER_LOAD_FRACTION:
            self.under_load_until = self.clock() + UNDER_LOAD_HOLD_NS

    def handle_events(self) -> bool:
        """Handles one batch of events; True when more are waiting (the
        caller comes back after letting other work run)."""
        self._note_load()
        for ev in self.device.events():
            try:
                self._event(ev)
            except DeviceError as e:
                if e.errno not in (errno.ENOMEM, errno.ENOSPC):
                    raise
                # a handshake that authenticated, but its keys have no room
                # (locked memory, or the keypair limit): the operator must
                # hear of it (once every 10 s), the peer will try again
                self.counters["keypairs_refused"] += 1
                now = self.clock()
                if now - self._refused_logged_ns >= 10 * NS:
                    self._refused_logged_ns = now
                    log.error("%s: a handshake could not be completed: %s (%d so far)", self.name,
                              e.strerror, self.counters["keypairs_refused"])
            except (OSError, ValueError, KeyError) as e:
                # one bad message must not cost the rest of the batch
                self.counters["handshake_invalid"] += 1
                log.debug("%s: event dropped: %s", self.name, e)
        return self.device.event_backlog() > 0

    def _event(self, ev) -> None:
        if ev.type == lib.DP_EVENT_HANDSHAKE:
            self._handshake_message(ev.data, ev.endpoint, ev.message or ev.data[0], ev.wire)
        elif ev.type == lib.DP_EVENT_NEED_HANDSHAKE:
            peer = self.by_id.get(ev.peer_id)
            if peer is not None:
                self.initiate(peer)
        elif ev.type == lib.DP_EVENT_KEYPAIR_CONFIRMED:
            peer = self.by_id.get(ev.peer_id)
            if peer is not None:
                self._handshake_complete(peer)
        elif ev.type == lib.DP_EVENT_NEED_ROUTE:
            if self.on_need_route is not None and ev.endpoint is not None:
                self.on_need_route(ev.endpoint)

    def _handshake_message(self, msg: bytes, src: Endpoint, kind: int,
                           wire: int = lib.DP_WIRE_PLAIN) -> None:
        """A handshake message of kind `kind`, as the data path classified
        it by profile `wire`, without its padding."""
        if self.handshake is None or src is None or src.port == 0:
            self.counters["handshake_invalid"] += 1  # nothing we could answer
            return
        mtype = kind
        if mtype == noise.MSG_COOKIE_REPLY:
            self._cookie_reply(msg)
            return
        if not self.handshake.check_mac1(msg):
            self.counters["handshake_bad_mac1"] += 1
            return
        if self.under_load():
            tau = noise.mac(self._cookie_secret(), endpoint_bytes(src))
            if not noise.check_mac2(msg, tau):
                self.counters["handshake_bad_mac2"] += 1
                self._send_cookie_reply(msg, src, tau, mtype, wire)
                return
            if not self.ratelimiter.allow(src):
                self.counters["handshake_ratelimited"] += 1
                return
        try:
            if mtype == noise.MSG_INITIATION:
                self._initiation(msg, src, wire)
            elif mtype == noise.MSG_RESPONSE:
                self._response(msg, src, wire)
        except noise.HandshakeError:
            self.counters["handshake_invalid"] += 1

    def _cookie_secret(self) -> bytes:
        if self.clock() - self.cookie_secret_ns >= COOKIE_SECRET_MAX_AGE_NS:
            self.cookie_secret = os.urandom(32)
            self.cookie_secret_ns = self.clock()
        return self.cookie_secret

    def _send_cookie_reply(self, msg: bytes, src: Endpoint, tau: bytes, kind: int,
                           wire: int) -> None:
        """tau: MAC(cookie secret, src), the cookie src is to use; the
        reply goes in the profile the message came in."""
        sender = struct.unpack_from("<I", msg, 4)[0]
        mac1_off = (noise.INITIATION_MAC1_OFF if kind == noise.MSG_INITIATION
                    else noise.RESPONSE_MAC1_OFF)
        obf = self.profile(wire)
        reply = noise.create_cookie_reply(tau, sender, msg[mac1_off:mac1_off + noise.MAC_LEN],
                                          self.handshake.public,
                                          header=obf.draw_header(COOKIE_REPLY))
        self.device.send_to(src, obf.wrap(COOKIE_REPLY, reply))
        self.counters["cookie_replies_sent"] += 1

    def _cookie_reply(self, msg: bytes) -> None:
        receiver = struct.unpack_from("<I", msg, 4)[0]
        peer = self.pending_by_index.get(receiver)
        if peer is None or peer.pending is None:
            self.counters["handshake_unknown_index"] += 1
            return
        try:
            peer.cookie = noise.consume_cookie_reply(msg, peer.public_key, peer.pending.mac1)
            peer.cookie_ns = self.clock()
        except noise.HandshakeError:
            self.counters["handshake_invalid"] += 1

    def _valid_cookie(self, peer: Peer) -> Optional[bytes]:
        if peer.cookie and self.clock() - peer.cookie_ns < COOKIE_VALID_NS:
            return peer.cookie
        return None

    def _initiation(self, msg: bytes, src: Endpoint, wire: int = lib.DP_WIRE_PLAIN) -> None:
        obf = self.profile(wire)
        init = self.handshake.consume_initiation(msg, expect=obf.header(INITIATION))
        peer = self.peers[init.peer_public]
        now = self.clock()
        # Replayed or flooding initiations (whitepaper 5.1): the timestamp
        # must grow, and one per INITIATION_MIN_INTERVAL.
        if init.timestamp <= peer.last_timestamp or \
                now - peer.last_initiation_consumed_ns < INITIATION_MIN_INTERVAL_NS:
            self.counters["handshake_replayed"] += 1
            return
        peer.last_timestamp = init.timestamp
        peer.last_initiation_consumed_ns = now
        index = self.device.index_reserve()
        try:
            resp, keys = self.handshake.create_response(init, index, self._valid_cookie(peer),
                                                        header=obf.draw_header(RESPONSE))
            self.device.keypair_install(peer.id, index, keys.remote_index, keys.send_key,
                                        keys.recv_key, False, now, wire)
        except BaseException:
            self.device.index_release(index)
            raise
        peer.wire = wire
        self.set_endpoint(peer, src)
        self.device.send_to(src, obf.wrap(RESPONSE, resp))

    def _response(self, msg: bytes, src: Endpoint, wire: int = lib.DP_WIRE_PLAIN) -> None:
        receiver = struct.unpack_from("<I", msg, 8)[0]
        peer = self.pending_by_index.get(receiver)
        if peer is None or peer.pending is None:
            self.counters["handshake_unknown_index"] += 1
            return
        keys = self.handshake.consume_response(msg, peer.pending,
                                               expect=self.profile(wire).header(RESPONSE))
        state, peer.pending = peer.pending, None
        del self.pending_by_index[receiver]
        had_staged = self.device.stats(peer.id).staged > 0
        self.set_endpoint(peer, src)
        self.device.keypair_install(peer.id, state.sender_index, keys.remote_index, keys.send_key,
                                    keys.recv_key, True, self.clock(), wire)
        peer.wire = wire
        self._handshake_complete(peer)
        if not had_staged:
            # confirms the session to the responder at once (as the kernel does)
            self.device.keepalive(peer.id)

    def _handshake_complete(self, peer: Peer) -> None:
        peer.last_handshake_ns = self.clock()
        peer.last_handshake_wall_ns = self.wallclock()
        peer.attempt_started_ns = 0
        self.counters["handshakes_completed"] += 1

    # ---------------------------------------------------------------- initiating

    def initiate(self, peer: Peer, retry: bool = False) -> bool:
        """Send a handshake initiation unless one went out within
        REKEY_TIMEOUT (retries come from the timer)."""
        if peer.managed:
            # its sessions come from a control plane: ask it
            if self.on_rekey_needed is not None:
                self.on_rekey_needed(peer)
            return False
        if self.handshake is None:
            return False
        now = self.clock()
        if peer.pending is not None and not retry and \
                now - peer.last_initiation_ns < REKEY_TIMEOUT_NS:
            return False
        endpoint = self.device.endpoint(peer.id)
        if endpoint is None:
            return False
        self._cancel_pending(peer)
        index = self.device.index_reserve()
        # the profile the peer last completed a handshake in, else ours
        obf = self.profile(self.default_wire() if peer.wire is None else peer.wire)
        try:
            msg, state = self.handshake.create_initiation(peer.public_key, index,
                                                          self._valid_cookie(peer),
                                                          header=obf.draw_header(INITIATION))
        except noise.HandshakeError:
            self.device.index_release(index)
            return False
        peer.pending = state
        self.pending_by_index[index] = peer
        if not peer.attempt_started_ns:
            peer.attempt_started_ns = now
        peer.last_initiation_ns = now
        peer.next_retry_ns = now + REKEY_TIMEOUT_NS + random.randrange(REKEY_JITTER_NS)
        try:
            # AmneziaWG: signature and junk datagrams go first
            for extra in obf.preamble():
                self.device.send_to(endpoint, extra)
            self.device.send_to(endpoint, obf.wrap(INITIATION, msg))
        except OSError:
            pass  # the retry timer tries again
        return True

    # ---------------------------------------------------------------- timers

    def tick(self) -> None:
        """The timers of whitepaper section 6, evaluated for every peer
        that may have one due (all counters come in one native call, and
        numpy picks the peers; with thousands of peers a per-peer loop in
        Python would eat the data path's CPU)."""
        now = self.clock()
        table = self.device.stats_table()
        for peer_id in self._timer_candidates(table, now):
            peer = self.by_id.get(peer_id)
            if peer is not None:
                self._peer_timers(peer, peer_stats_of(table[peer_id]), now)
        self.device.maintain()
        if len(self.ratelimiter.buckets) > 1024:
            self.ratelimiter.gc()

    def _timer_candidates(self, t, now: int) -> list[int]:
        """Ids of peers for which _peer_timers may act: a superset, from the
        counters (data without keepalive, data without reply, keys to
        zero) and from Python's own state (handshakes in progress,
        persistent keepalive).

        The two data timers run from the first packet of a one-way spell,
        as WireGuard arms them (whitepaper 6.5: a timer is not re-armed by
        the packets after the first), not from the last: a peer that
        streams to us with nothing to answer gets a keepalive every
        KEEPALIVE_TIMEOUT, else it starts a handshake every 15 s; and a
        stream of ours that goes unanswered starts one after 15 s, not
        only once the stream stops. The counters hold only the last
        packet's time, so the start of each spell is kept here, as the
        tick first sees it (the last packet's time then: at most one tick
        late)."""
        n = np.uint64(now)
        self._spells(t)
        rx_since, tx_since = self._rx_spell, self._tx_spell
        with np.errstate(over="ignore"):  # a timestamp ahead of now wraps: still a candidate
            due = (rx_since != 0) & (n - rx_since >= np.uint64(KEEPALIVE_NS))
            due |= (tx_since != 0) & (n - tx_since >= np.uint64(KEEPALIVE_NS + REKEY_TIMEOUT_NS))
            # keypairs are created at handshakes, so current_created_ns is
            # never later than the last handshake
            due |= ((t["keypairs"] > 0)
                    & (n - t["current_created_ns"] >= np.uint64(ZERO_KEYS_NS - NS)))
        ids = set(np.flatnonzero(due).tolist())
        ids.update(p.id for p in self.pending_by_index.values())
        ids.update(self.keepalive_ids)
        return sorted(ids)

    def _spells(self, t) -> None:
        """Brings the one-way spells up to date from a stats table: for
        each peer, when data in began to go unanswered by anything sent
        (_rx_spell) and when data out began to go unheard of (_tx_spell),
        0 for none. A spell that began before the last packet the other
        way is over; one still open when seen again keeps its start."""
        if self._rx_spell is None or len(self._rx_spell) != len(t):
            self._rx_spell = np.zeros(len(t), dtype=np.uint64)
            self._tx_spell = np.zeros(len(t), dtype=np.uint64)
        for spell, data, other in ((self._rx_spell, t["last_rx_data_ns"], t["last_tx_ns"]),
                                   (self._tx_spell, t["last_tx_data_ns"], t["last_rx_ns"])):
            open_ = data > other
            spell[...] = np.where(open_ & (spell > other), spell, np.where(open_, data, 0))

    def _peer_timers(self, peer: Peer, st: PeerStats, now: int) -> None:
        if peer.pending is not None and now >= peer.next_retry_ns:
            if now - peer.attempt_started_ns >= REKEY_ATTEMPT_NS:
                # give up (whitepaper 6.4); new traffic starts a new attempt
                self._cancel_pending(peer)
                peer.attempt_started_ns = 0
                self.device.rearm(peer.id)
            else:
                self.initiate(peer, retry=True)
        # Sent data but heard nothing back for KEEPALIVE + REKEY_TIMEOUT:
        # the session may be dead; start a handshake.
        tx_spell, rx_spell = int(self._tx_spell[peer.id]), int(self._rx_spell[peer.id])
        if peer.pending is None and tx_spell and \
                now - tx_spell >= KEEPALIVE_NS + REKEY_TIMEOUT_NS and \
                now - peer.last_initiation_ns >= REKEY_TIMEOUT_NS:
            self.initiate(peer)
        # Received data and sent nothing back for KEEPALIVE: passive keepalive.
        if rx_spell and now - rx_spell >= KEEPALIVE_NS:
            self.device.keepalive(peer.id)
        elif peer.persistent_keepalive and st.current_created_ns and \
                now - max(st.last_tx_ns, peer.last_keepalive_sent_ns) >= \
                peer.persistent_keepalive * NS:
            peer.last_keepalive_sent_ns = now
            if not self.device.keepalive(peer.id):
                self.initiate(peer)
        # Keys wiped after three REJECT_AFTER_TIMEs without a handshake.
        if st.keypairs and peer.last_handshake_ns and \
                now - peer.last_handshake_ns >= ZERO_KEYS_NS:
            self._drop_session(peer)
            self.device.rearm(peer.id)

    # ---------------------------------------------------------------- for wg

    def stats(self, peer: Peer) -> PeerStats:
        return self.device.stats(peer.id)
