"""Bindings of the native device (native/wg/dp_device.h): argument checks,
C error codes turned into exceptions, Python types in and out. Policy
(handshakes, timers) lives in dataplane.interface; this layer only moves
tables and events across."""
from __future__ import annotations

import array
import errno as errno_mod
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dataplane._native import ffi, lib

BURST: int = lib.DP_DEVICE_BURST
PEER_NONE: int = lib.DP_PEER_NONE
# struct dp_keypair_params, packed from Python (checked against C below)
_KP_PARAMS = struct.Struct("<IIIBB2xQ32s32s")
assert _KP_PARAMS.size == ffi.sizeof("struct dp_keypair_params") and \
    ffi.offsetof("struct dp_keypair_params", "created_ns") == 16 and \
    ffi.offsetof("struct dp_keypair_params", "wire") == 13 and \
    ffi.offsetof("struct dp_keypair_params", "send_key") == 24 and \
    ffi.offsetof("struct dp_keypair_params", "recv_key") == 56, "dp_keypair_params changed"
REPLAY_WINDOW_DEFAULT: int = lib.DP_REPLAY_BITS_DEFAULT
REPLAY_WINDOW_MIN: int = lib.DP_REPLAY_BITS_MIN
REPLAY_WINDOW_MAX: int = lib.DP_REPLAY_BITS_MAX
INDEX_TABLE_LOG2_MAX: int = lib.DP_DEVICE_INDEX_LOG2_MAX
BUSY_POLL_MAX_US: int = lib.DP_DEVICE_BUSY_POLL_MAX_US
# the kernel's SCHED_FIFO range (1..99 on Linux), for set_realtime
REALTIME_PRIORITY_MIN: int = os.sched_get_priority_min(os.SCHED_FIFO)
REALTIME_PRIORITY_MAX: int = os.sched_get_priority_max(os.SCHED_FIFO)
# <asm-generic/socket.h>; not all in Python's socket module
SO_BUSY_POLL, SO_INCOMING_NAPI_ID, SO_PREFER_BUSY_POLL = 46, 56, 69
AF_XDP = 44  # given, as Python cannot find an AF_XDP socket's family itself
# getsockopt(SOL_XDP, XDP_STATISTICS): struct xdp_statistics, six __u64 in
# this order (<linux/if_xdp.h>, all six since Linux 5.9)
SOL_XDP, XDP_STATISTICS = 283, 7
XSK_STATISTICS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                  "rx_fill_ring_empty_descs", "tx_ring_empty_descs")

DROP_REASONS = {
    lib.DP_DROP_MALFORMED: "malformed",
    lib.DP_DROP_UNKNOWN_INDEX: "unknown_index",
    lib.DP_DROP_BAD_MAC: "bad_mac",
    lib.DP_DROP_REPLAY: "replay",
    lib.DP_DROP_EXPIRED_KEY: "expired_key",
    lib.DP_DROP_NOT_ALLOWED: "not_allowed",
    lib.DP_DROP_INNER_MALFORMED: "inner_malformed",
    lib.DP_DROP_NO_ROUTE: "no_route",
    lib.DP_DROP_NO_ENDPOINT: "no_endpoint",
    lib.DP_DROP_STAGED_FULL: "staged_full",
    lib.DP_DROP_EVENTS_FULL: "events_full",
    lib.DP_DROP_TOO_BIG: "too_big",
    lib.DP_DROP_SEND_FAILED: "send_failed",
    lib.DP_DROP_JUNK: "junk",
}
assert len(DROP_REASONS) == lib.DP_DROP_COUNT

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class DeviceError(OSError):
    pass


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise DeviceError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def replay_window_error(bits: int) -> Optional[str]:
    """Why `bits` cannot be a replay window size, or None if it can."""
    if not REPLAY_WINDOW_MIN <= bits <= REPLAY_WINDOW_MAX or bits & (bits - 1):
        sizes = []
        b = REPLAY_WINDOW_MIN
        while b <= REPLAY_WINDOW_MAX:
            sizes.append(str(b))
            b *= 2
        return (f"the replay window must be a power of two from {REPLAY_WINDOW_MIN} to "
                f"{REPLAY_WINDOW_MAX} bits ({', '.join(sizes)}), got {bits}")
    return None


@dataclass(frozen=True)
class Endpoint:
    address: IPAddress
    port: int
    scope_id: int = 0

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def wire_struct(obf, accept_plain: bool = False):
    """A struct dp_wire for an Obfuscation (the plain one: not obfuscated)."""
    w = ffi.new("struct dp_wire *")
    if obf is not None and not obf.profile_is_plain:
        w.obfuscated = 1
        w.accept_plain = int(bool(accept_plain))
        for k, (pad, h) in enumerate(zip(obf.paddings, obf.headers)):
            w.padding[k] = pad
            w.header_min[k] = h.lo
            w.header_max[k] = h.hi
    return w


def classify(w, datagram: bytes) -> tuple[int, int, int]:
    """The native classifier (dp_wire_classify) on one datagram under the
    struct dp_wire w: (kind or 0 for junk, offset, DP_WIRE_*)."""
    off = ffi.new("uint32_t *")
    wire = ffi.new("uint8_t *")
    kind = lib.dp_wire_classify(w, datagram, len(datagram), off, wire)
    return kind, off[0], wire[0]


def endpoint_to_c(ep: Optional[Endpoint]):
    c = ffi.new("struct dp_endpoint *")
    if ep is None:
        c.family = lib.DP_ENDPOINT_NONE
        return c
    if not 0 < ep.port < 65536:
        raise ValueError(f"endpoint port must be 1..65535, got {ep.port}")
    addr = ep.address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    c.family = addr.version
    c.port = ep.port
    c.scope_id = ep.scope_id
    ffi.memmove(c.addr, addr.packed, len(addr.packed))
    return c


def endpoint_from_c(c) -> Optional[Endpoint]:
    if c.family == lib.DP_ENDPOINT_IPV4:
        return Endpoint(ipaddress.IPv4Address(bytes(c.addr[0:4])), c.port)
    if c.family == lib.DP_ENDPOINT_IPV6:
        return Endpoint(ipaddress.IPv6Address(bytes(c.addr[0:16])), c.port, c.scope_id)
    return None


@dataclass(frozen=True)
class Event:
    type: int
    peer_id: int
    local_index: int
    data: bytes
    endpoint: Optional[Endpoint]
    # HANDSHAKE: its kind (DP_WG_MSG_*) and profile (DP_WIRE_*); data is
    # the message without its padding
    message: int = 0
    wire: int = 0


@dataclass(frozen=True)
class PeerStats:
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    last_rx_ns: int
    last_rx_data_ns: int
    last_tx_ns: int
    last_tx_data_ns: int
    current_created_ns: int
    current_send_counter: int
    current_local_index: int
    current_is_initiator: bool
    staged: int
    keypairs: int


def _struct_dtype(ctype: str) -> np.dtype:
    """A numpy dtype with the layout of a C struct of unsigned integers,
    read from cffi (so Python never re-types the struct)."""
    t = ffi.typeof(ctype)
    return np.dtype({"names": [name for name, _ in t.fields],
                     "formats": [f"<u{ffi.sizeof(f.type)}" for _, f in t.fields],
                     "offsets": [f.offset for _, f in t.fields],
                     "itemsize": ffi.sizeof(t)})


PEER_STATS_DTYPE = _struct_dtype("struct dp_peer_stats")


def peer_stats_of(row) -> PeerStats:
    """PeerStats from one row of Device.stats_table()."""
    values = {name: int(row[name]) for name in PEER_STATS_DTYPE.names}
    values["current_is_initiator"] = bool(values["current_is_initiator"])
    return PeerStats(**values)


class Device:
    """One native device. It owns the fds given to it from construction on
    (also when construction fails)."""

    def __init__(self, tun_fds: list[int], udp4_fds: list[int], udp6_fds: list[int], mtu: int,
                 max_peers: int = 1024, index_table_log2: int = 12, event_ring_log2: int = 10,
                 tun_vnet_hdr: bool = False, replay_window: int = REPLAY_WINDOW_DEFAULT,
                 max_keypairs: int = 0):
        """One worker per entry of the fd lists (TUN queues and UDP sockets
        sharing a port; -1 for a family not served). The receiver index
        table has 2**index_table_log2 entries and holds half as many
        indices; every keypair has an anti-replay window of replay_window
        bits; keypairs are allocated (in locked memory, as needed) up to
        max_keypairs (0: 3 a peer and 1024 more)."""
        workers = len(tun_fds)
        problem = None
        if not (len(udp4_fds) == len(udp6_fds) == workers):
            problem = "one TUN queue and one UDP socket of each family per worker"
        elif replay_window_error(replay_window):
            problem = replay_window_error(replay_window)
        elif not 4 <= index_table_log2 <= INDEX_TABLE_LOG2_MAX:
            problem = (f"index_table_log2 must be 4..{INDEX_TABLE_LOG2_MAX}, "
                       f"got {index_table_log2}")
        elif not 0 <= max_keypairs <= lib.DP_DEVICE_MAX_KEYPAIRS:
            problem = f"max_keypairs must be 0..{lib.DP_DEVICE_MAX_KEYPAIRS}, got {max_keypairs}"
        if problem:
            for fd in (*tun_fds, *udp4_fds, *udp6_fds):
                if fd >= 0:
                    os.close(fd)
            raise ValueError(problem)
        cfg = ffi.new("struct dp_device_config *")
        cfg.workers = workers
        for i in range(workers):
            cfg.tun_fd[i], cfg.udp4_fd[i], cfg.udp6_fd[i] = tun_fds[i], udp4_fds[i], udp6_fds[i]
        cfg.tun_vnet_hdr = int(tun_vnet_hdr)
        cfg.mtu, cfg.max_peers = mtu, max_peers
        cfg.index_table_log2, cfg.event_ring_log2 = index_table_log2, event_ring_log2
        cfg.replay_window_bits, cfg.max_keypairs = replay_window, max_keypairs
        ptr = lib.dp_device_new(cfg)
        if ptr == ffi.NULL:
            err = ffi.errno or errno_mod.ENOMEM
            for fd in (*tun_fds, *udp4_fds, *udp6_fds):
                if fd >= 0:
                    os.close(fd)
            raise DeviceError(err, f"cannot create the device: {os.strerror(err)}")
        self._d = ptr
        self._kp_buf = bytearray(_KP_PARAMS.size)
        self._kp_params = ffi.cast("struct dp_keypair_params *", ffi.from_buffer(self._kp_buf))
        self.max_peers = max_peers
        self.workers = workers
        self.replay_window = replay_window
        self._aip = lib.dp_device_allowedips(ptr)
        self._events = ffi.new("struct dp_event[]", 64)

    # -- lifecycle

    def start(self) -> None:
        _check(lib.dp_device_start(self._dev), "start")

    def set_realtime(self, priority: int) -> None:
        """Start the workers under SCHED_FIFO at priority (1..99), or under
        the caller's own policy (0, the default); before start. Starting
        then needs CAP_SYS_NICE (start fails with EPERM without it)."""
        if priority and not REALTIME_PRIORITY_MIN <= priority <= REALTIME_PRIORITY_MAX:
            raise ValueError(f"a SCHED_FIFO priority is {REALTIME_PRIORITY_MIN}.."
                             f"{REALTIME_PRIORITY_MAX} (0: off), not {priority}")
        _check(lib.dp_device_set_realtime(self._dev, priority), f"real-time priority {priority}")

    @staticmethod
    def worker_scheduling() -> list[dict]:
        """What the kernel holds for this process's worker threads
        (dp-worker-N), in worker order: policy ("fifo", "rr", "other",
        ...) and priority."""
        names = {os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr", os.SCHED_OTHER: "other",
                 os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}
        out = []
        for task in Path("/proc/self/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                if not comm.startswith("dp-worker-"):
                    continue
                tid = int(task.name)
                policy = os.sched_getscheduler(tid)
                out.append({"worker": int(comm.rsplit("-", 1)[1]),
                            "policy": names.get(policy, str(policy)),
                            "priority": os.sched_getparam(tid).sched_priority})
            except (OSError, ValueError):
                continue  # a thread that ended meanwhile
        return sorted(out, key=lambda w: w["worker"])

    def attach_xsk(self, worker: int, wan_ifname: str, wan_queue: int, inner_ifname: str,
                   inner_queue: int, inner_dst_mac: bytes, inner_src_mac: bytes,
                   zerocopy: bool = True) -> None:
        """AF_XDP sockets for a worker (the XDP backend; before start)."""
        if len(inner_dst_mac) != 6 or len(inner_src_mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        rc = lib.dp_device_attach_xsk(self._dev, worker, wan_ifname.encode(), wan_queue,
                                      inner_ifname.encode(), inner_queue, inner_dst_mac,
                                      inner_src_mac, int(zerocopy))
        hint = ""
        if rc in (-errno_mod.ENOBUFS, -errno_mod.ENOMEM):
            hint = (" (their frame memory is locked memory: RLIMIT_MEMLOCK too small without "
                    "CAP_IPC_LOCK? systemd: LimitMEMLOCK=infinity)")
        _check(rc, f"AF_XDP sockets on {wan_ifname} queue {wan_queue} and {inner_ifname} "
                   f"queue {inner_queue}{hint}")

    def xsk_fds(self, worker: int) -> tuple[int, int]:
        """(WAN, inner) AF_XDP socket fds of a worker, -1 when none."""
        wan, inner = ffi.new("int *"), ffi.new("int *")
        _check(lib.dp_device_xsk_fds(self._dev, worker, wan, inner), "AF_XDP fds")
        return wan[0], inner[0]

    def xsk_busy_poll(self, usecs: int) -> None:
        """Busy polling on every worker's AF_XDP sockets, usecs of polling
        before an idle worker sleeps; 0 turns it off (after attach_xsk,
        before start; see dp_device_xsk_busy_poll)."""
        if not 0 <= usecs <= BUSY_POLL_MAX_US:
            raise ValueError(f"busy polling takes 0..{BUSY_POLL_MAX_US} us, not {usecs}")
        _check(lib.dp_device_xsk_busy_poll(self._dev, usecs), f"busy polling of {usecs} us")

    def xsk_socket_options(self, worker: int) -> dict[str, dict[str, int]]:
        """What the kernel holds for a worker's AF_XDP sockets ("wan",
        "inner"): busy_poll_us, prefer_busy_poll, and napi_id (0 until a
        packet came, and on drivers without NAPI ids, veth among them: the
        kernel then never busy-polls). The budget cannot be read back."""
        out = {}
        for side, fd in zip(("wan", "inner"), self.xsk_fds(worker)):
            if fd < 0:
                continue
            with socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(fd)) as s:
                out[side] = {name: s.getsockopt(socket.SOL_SOCKET, opt) for name, opt in (
                    ("busy_poll_us", SO_BUSY_POLL), ("prefer_busy_poll", SO_PREFER_BUSY_POLL),
                    ("napi_id", SO_INCOMING_NAPI_ID))}
        return out

    def xsk_statistics(self, worker: int) -> dict[str, dict[str, int]]:
        """The kernel's counters of a worker's AF_XDP sockets ("wan",
        "inner"), each XSK_STATISTICS name: rx_ring_full, frames dropped
        because the worker had not emptied its receive ring; rx_dropped,
        dropped for want of a free frame (an empty fill ring) or for being
        larger than a frame; rx_fill_ring_empty_descs and
        tx_ring_empty_descs, how often the kernel found those rings empty
        (not drops); the invalid descriptor counts, bugs of ours."""
        return {side: xsk_socket_statistics(fd)
                for side, fd in zip(("wan", "inner"), self.xsk_fds(worker)) if fd >= 0}

    def stop(self) -> None:
        lib.dp_device_stop(self._dev)

    def close(self) -> None:
        if self._d is not None:
            lib.dp_device_free(self._d)
            self._d = None

    @property
    def _dev(self):
        if self._d is None:
            raise DeviceError(errno_mod.EBADF, "the device is closed")
        return self._d

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- events

    @property
    def event_fd(self) -> int:
        return lib.dp_device_event_fd(self._dev)

    def events(self) -> list[Event]:
        """At most one batch (64) of waiting events. The caller checks
        event_backlog() and comes back for more, so that a flood cannot
        keep it here."""
        n = lib.dp_device_events(self._dev, self._events, len(self._events))
        out = []
        for i in range(n):
            e = self._events[i]
            out.append(Event(e.type, e.peer_id, e.local_index, bytes(e.data[0:e.len]),
                             endpoint_from_c(e.endpoint), e.message, e.wire))
        return out

    def event_backlog(self) -> int:
        return lib.dp_device_event_backlog(self._dev)

    def event_load(self) -> float:
        """How full the event ring is, 0..1: the control plane's load."""
        return lib.dp_device_event_backlog(self._dev) / lib.dp_device_event_capacity(self._dev)

    # -- peers

    def peer_add(self, peer_id: int) -> None:
        _check(lib.dp_device_peer_add(self._dev, peer_id), f"add peer {peer_id}")

    def bulk_apply(self, batch, peer_ids: list[int], actions: bytearray,
                   now_ns: int) -> tuple[int, int]:
        """dp_device_bulk_apply on a parsed batch (struct dp_bulk *): how
        many operations were done whole, and 0 or -errno."""
        err = ffi.new("int *")
        done = lib.dp_device_bulk_apply(self._dev, batch,
                                        ffi.from_buffer("uint32_t[]", array.array("I", peer_ids)),
                                        ffi.from_buffer("uint8_t[]", actions), now_ns, err)
        return done, err[0]

    def peer_remove(self, peer_id: int) -> None:
        _check(lib.dp_device_peer_remove(self._dev, peer_id), f"remove peer {peer_id}")

    def set_endpoint(self, peer_id: int, ep: Optional[Endpoint]) -> None:
        _check(lib.dp_device_peer_set_endpoint(self._dev, peer_id, endpoint_to_c(ep)),
               f"set the endpoint of peer {peer_id}")

    def endpoint(self, peer_id: int) -> Optional[Endpoint]:
        c = ffi.new("struct dp_endpoint *")
        _check(lib.dp_device_peer_get_endpoint(self._dev, peer_id, c),
               f"endpoint of peer {peer_id}")
        return endpoint_from_c(c)

    def stats(self, peer_id: int) -> PeerStats:
        c = ffi.new("struct dp_peer_stats *")
        _check(lib.dp_device_peer_stats(self._dev, peer_id, c), f"stats of peer {peer_id}")
        return PeerStats(c.rx_bytes, c.tx_bytes, c.rx_packets, c.tx_packets, c.last_rx_ns,
                         c.last_rx_data_ns, c.last_tx_ns, c.last_tx_data_ns, c.current_created_ns,
                         c.current_send_counter, c.current_local_index,
                         bool(c.current_is_initiator), c.staged, c.keypairs)

    def stats_table(self) -> np.ndarray:
        """Every peer's counters in one native call: a structured array
        indexed by peer id (PEER_STATS_DTYPE; unused ids are zeros). A
        copy, so it stays valid."""
        buf = ffi.new("struct dp_peer_stats[]", self.max_peers)
        n = lib.dp_device_peer_stats_all(self._dev, buf, self.max_peers)
        _check(int(n) if n < 0 else 0, "stats of all peers")
        return np.frombuffer(ffi.buffer(buf), dtype=PEER_STATS_DTYPE).copy()

    def clear_keypairs(self, peer_id: int) -> None:
        _check(lib.dp_device_peer_clear_keypairs(self._dev, peer_id),
               f"clear the keys of peer {peer_id}")

    def rearm(self, peer_id: int) -> None:
        _check(lib.dp_device_peer_rearm(self._dev, peer_id), f"rearm peer {peer_id}")

    def keepalive(self, peer_id: int) -> bool:
        """Sends a keepalive; False when the peer has no keypair or no
        endpoint to send with. A send the kernel refuses (no route, no
        socket of that family) is counted as a drop, not raised: the
        keypair is there, and a handshake would fare no better."""
        rc = lib.dp_device_peer_keepalive(self._dev, peer_id)
        if rc in (-errno_mod.ENOKEY, -errno_mod.EDESTADDRREQ):
            return False
        if rc in (-errno_mod.ENOENT, -errno_mod.ENOMEM):
            _check(rc, f"keepalive to peer {peer_id}")
        return True

    # -- allowed IPs

    def allowed_ip_add(self, peer_id: int, net: IPNetwork) -> None:
        _check(lib.dp_allowedips_insert(self._aip, net.version, net.network_address.packed,
                                        net.prefixlen, peer_id), f"allowed IP {net}")

    def allowed_ip_add_packed(self, peer_id: int, version: int, address: bytes,
                              cidr: int) -> None:
        """allowed_ip_add for a prefix given as (version, address bytes, length)."""
        _check(lib.dp_allowedips_insert(self._aip, version, address, cidr, peer_id),
               f"allowed IP of peer {peer_id}")

    def allowed_ip_remove_packed(self, version: int, address: bytes, cidr: int) -> bool:
        return _check(lib.dp_allowedips_remove(self._aip, version, address, cidr),
                      "remove an allowed IP") > 0

    def allowed_ip_remove(self, net: IPNetwork) -> bool:
        return _check(lib.dp_allowedips_remove(self._aip, net.version,
                                               net.network_address.packed, net.prefixlen),
                      f"remove allowed IP {net}") == 1

    def allowed_ips_remove_peer(self, peer_id: int) -> int:
        return _check(lib.dp_allowedips_remove_peer(self._aip, peer_id),
                      f"remove the allowed IPs of peer {peer_id}")

    def allowed_ips(self, peer_id: int) -> list[IPNetwork]:
        n = _check(lib.dp_allowedips_list_peer(self._aip, peer_id, ffi.NULL, 0), "list")
        buf = ffi.new("struct dp_allowedips_entry[]", max(n, 1))
        n = _check(lib.dp_allowedips_list_peer(self._aip, peer_id, buf, n), "list")
        out = []
        for e in buf[0:n]:
            size = 4 if e.family == lib.DP_FAMILY_IPV4 else 16
            out.append(ipaddress.ip_network((bytes(e.addr[0:size]), e.cidr)))
        return out

    def lookup(self, addr: IPAddress) -> Optional[int]:
        peer = lib.dp_allowedips_lookup(self._aip, addr.version, addr.packed)
        return None if peer == PEER_NONE else peer

    # -- keypairs

    def index_reserve(self) -> int:
        """A random free receiver index, now ours (for a handshake)."""
        rc = lib.dp_device_index_reserve(self._dev)
        if rc == -errno_mod.ENOSPC:
            raise DeviceError(errno_mod.ENOSPC, f"reserve a receiver index: {self._index_full()}")
        return _check(rc, "reserve a receiver index")

    def index_claim(self, index: int) -> None:
        """Take exactly `index` (one a control plane chose for a session)."""
        if not 0 < index <= 0xFFFFFFFF:
            raise ValueError(f"a receiver index is 1..0xffffffff, got {index}")
        rc = lib.dp_device_index_claim(self._dev, index)
        what = f"claim receiver index {index:#010x}"
        if rc == -errno_mod.EEXIST:
            raise DeviceError(errno_mod.EEXIST,
                              f"{what}: taken (reserved, or in use by a keypair); "
                              f"choose another index or retire that keypair first")
        if rc == -errno_mod.ENOSPC:
            raise DeviceError(errno_mod.ENOSPC, f"{what}: {self._index_full()}")
        _check(rc, what)

    def index_release(self, index: int) -> bool:
        """Give back a reserved index that got no keypair; False if it was
        not reserved."""
        return lib.dp_device_index_release(self._dev, index) == 0

    def _index_full(self) -> str:
        m = self.memory()
        return (f"the receiver index table is full ({m['indices_used']} of "
                f"{m['indices_max']} indices; a bigger max_peers sizes a bigger table)")

    def keypair_install(self, peer_id: int, local_index: int, remote_index: int,
                        send_key: bytes, recv_key: bytes, is_initiator: bool,
                        created_ns: int, wire: int = lib.DP_WIRE_PLAIN) -> None:
        """wire: the profile (DP_WIRE_*) its messages go out in, the one
        its handshake came in."""
        # One parameter block for the device's life, packed in place and
        # wiped after each call (a fresh cffi struct per keypair costs more
        # than the install itself when a control plane pushes thousands).
        buf = self._kp_buf
        _KP_PARAMS.pack_into(buf, 0, peer_id, local_index, remote_index, int(is_initiator),
                             wire, created_ns, send_key, recv_key)
        p = self._kp_params
        try:
            rc = lib.dp_device_keypair_install(self._dev, p)
            what = f"install a keypair for peer {peer_id} on index {local_index:#010x}"
            if rc == -errno_mod.ENOMEM:
                raise DeviceError(errno_mod.ENOMEM,
                                  f"{what}: no more locked memory for keys (raise "
                                  f"RLIMIT_MEMLOCK, e.g. systemd's LimitMEMLOCK=, or run as "
                                  f"root)")
            if rc == -errno_mod.ENOSPC:
                m = self.memory()
                raise DeviceError(errno_mod.ENOSPC,
                                  f"{what}: {m['keypairs_allocated']} keypairs allocated, the "
                                  f"most this device takes (max_keypairs)")
            if rc == -errno_mod.EEXIST:
                raise DeviceError(errno_mod.EEXIST,
                                  f"{what}: the index is not reserved or claimed, or has a "
                                  f"keypair already")
            _check(rc, what)
        finally:
            buf[:] = bytes(len(buf))  # in place: the keys go

    def keypair_retire(self, local_index: int) -> bool:
        return lib.dp_device_keypair_retire(self._dev, local_index) == 0

    def maintain(self) -> int:
        return lib.dp_device_maintain(self._dev)

    def memory(self) -> dict[str, int]:
        """Native bytes allocated by table (peers, index_table, keypairs,
        allowed_ips, event_ring, bursts, routes, device; total; locked),
        with keypair_bytes (one keypair with its replay window) and how
        full the tables are (keypairs_live, keypairs_allocated,
        keypairs_mapped, keypairs_max, indices_used, indices_max,
        index_max_probe, replay_window_bits)."""
        st = ffi.new("struct dp_device_memory *")
        lib.dp_device_memory(self._dev, st)
        return {name: getattr(st, name)
                for name, _ in ffi.typeof("struct dp_device_memory").fields}

    # -- I/O and counters

    def set_wire(self, obf, accept_plain: bool = False) -> None:
        """The AmneziaWG profile (dataplane.obfuscation.Obfuscation) of
        what the workers receive and send; the plain one turns it off."""
        w = wire_struct(obf, accept_plain)
        _check(lib.dp_device_set_wire(self._dev, w), "set the wire profile")

    def wire(self) -> dict:
        """The profile the workers hold, read back."""
        w = ffi.new("struct dp_wire *")
        lib.dp_device_get_wire(self._dev, w)
        return {"obfuscated": bool(w.obfuscated), "accept_plain": bool(w.accept_plain),
                "padding": list(w.padding), "header_min": list(w.header_min),
                "header_max": list(w.header_max)}

    def set_mtu(self, mtu: int) -> None:
        _check(lib.dp_device_set_mtu(self._dev, mtu), f"set the MTU to {mtu}")

    def set_udp(self, udp4_fds: list[int], udp6_fds: list[int]) -> None:
        """New UDP sockets, one per worker and family (a new listen port);
        the device owns the fds."""
        _check(lib.dp_device_set_udp(self._dev, ffi.new("int[]", udp4_fds),
                                     ffi.new("int[]", udp6_fds)), "replace the UDP sockets")

    def send_to(self, ep: Endpoint, data: bytes) -> None:
        _check(lib.dp_device_send_to(self._dev, endpoint_to_c(ep), data, len(data)),
               f"send {len(data)} bytes")

    def drops(self) -> dict[str, int]:
        buf = ffi.new("uint64_t[]", lib.DP_DROP_COUNT)
        lib.dp_device_drops(self._dev, buf, lib.DP_DROP_COUNT)
        return {name: buf[i] for i, name in DROP_REASONS.items()}

    def poll_once(self) -> int:
        return lib.dp_device_poll_once(self._dev)

    # -- the XDP backend's outer routes

    def route_set(self, dst: IPAddress, src: IPAddress, src_port: int, dst_mac: bytes,
                  src_mac: bytes, ifindex: int = 0) -> None:
        """How to send to dst straight out of the WAN interface `ifindex`
        (0: whichever WAN port the sending worker has)."""
        r = ffi.new("struct dp_route *")
        r.family = dst.version
        r.src_port = src_port
        r.ifindex = ifindex
        ffi.memmove(r.dst, dst.packed, len(dst.packed))
        ffi.memmove(r.src, src.packed, len(src.packed))
        ffi.memmove(r.dst_mac, dst_mac, 6)
        ffi.memmove(r.src_mac, src_mac, 6)
        _check(lib.dp_device_route_set(self._dev, r), f"outer route to {dst}")

    def route_del(self, dst: IPAddress) -> bool:
        return lib.dp_device_route_del(self._dev, dst.version, dst.packed) == 0

    def path_stats(self) -> dict[str, int]:
        st = ffi.new("struct dp_path_stats *")
        lib.dp_device_path_stats(self._dev, st)
        return {name: getattr(st, name) for name, _ in ffi.typeof("struct dp_path_stats").fields}

    # -- the packet path without I/O (tests and micro benchmarks)

    def test_rx(self, datagrams: list, source: Endpoint) -> int:
        """The receive path over up to DP_DEVICE_BURST datagrams from
        `source` (a stopped device; delivery to worker 0's TUN fd)."""
        bufs = [ffi.from_buffer(m) for m in datagrams]
        ptrs = ffi.new("uint8_t *[]", bufs)
        lens = ffi.new("uint32_t[]", [len(m) for m in datagrams])
        return _check(lib.dp_device_test_rx(self._dev, ptrs, lens, len(datagrams),
                                            endpoint_to_c(source)), "receive path")

    def test_tx(self, packets: list) -> int:
        """The send path over up to DP_DEVICE_BURST inner packets."""
        bufs = [ffi.from_buffer(p) for p in packets]
        ptrs = ffi.new("uint8_t *[]", bufs)
        lens = ffi.new("uint32_t[]", [len(p) for p in packets])
        return _check(lib.dp_device_test_tx(self._dev, ptrs, lens, len(packets)), "send path")

    def test_stage(self, peer_id: int, packet: bytes) -> None:
        """Queue an inner packet for peer_id as the send path does when it
        found no usable keypair for it."""
        _check(lib.dp_device_test_stage(self._dev, peer_id, packet, len(packet)), "stage")


def xsk_socket_statistics(fd: int) -> dict[str, int]:
    """XDP_STATISTICS of an AF_XDP socket: every XSK_STATISTICS name."""
    with socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(fd)) as s:
        raw = s.getsockopt(SOL_XDP, XDP_STATISTICS, 8 * len(XSK_STATISTICS))
    values = struct.unpack(f"={len(raw) // 8}Q", raw[:len(raw) // 8 * 8])
    return {name: values[i] if i < len(values) else 0 for i, name in enumerate(XSK_STATISTICS)}


def parse_outer_frame(frame: bytes) -> Optional[tuple[int, int, Optional[Endpoint]]]:
    """(offset, length) of the UDP payload of an Ethernet frame as the XDP
    backend's receive path parses it, and its source; None if refused."""
    off, length = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    ep = ffi.new("struct dp_endpoint *")
    if lib.dp_device_test_outer_parse(frame, len(frame), off, length, ep) != 0:
        return None
    return off[0], length[0], endpoint_from_c(ep)



def outer_checksum_ok(frame: bytes) -> Optional[bool]:
    """Whether the UDP checksum of such a frame lets it move a peer's
    endpoint (it verifies, IPv4 says none, or it is the pseudo-header sum
    that checksum offload leaves); None if the parse refuses the frame."""
    rc = lib.dp_device_test_outer_checksum(frame, len(frame))
    return None if rc < 0 else bool(rc)
