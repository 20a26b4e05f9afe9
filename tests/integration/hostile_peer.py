"""An attacker next to a running tunnel, for the hostile-input tests: a
sniffer that records the datagrams reaching the exit node's port, a UDP
(or raw IP) socket of its own in the client namespace, WireGuard messages
crafted from dataplane.noise, and the exit node's counters read fast
enough to poll."""
from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from pyroute2 import netns

from dataplane import noise
from dataplane.daemon import RUN_DIR
from dataplane.topology import Topology, socket_in

ETH_P_ALL = 0x0003
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ARPHRD_ETHER = 1
PACKET_OUTGOING = 4
IPPROTO_UDP = 17

DATA_HEADER = struct.Struct("<IIQ")  # type, receiver index, counter
MSG_DATA = 4


# ---------------------------------------------------------------- sockets

def veth_name(topo: Topology, ns: str) -> str:
    out = topo.run(ns, ["ip", "-o", "link", "show", "type", "veth"]).stdout
    return re.search(r"\d+: (v\d+[ab])", out).group(1)


class Attacker:
    """A UDP socket in the client namespace on an address of its own (so
    that per-source rate limits do not fall on the honest client)."""

    def __init__(self, topo: Topology, ns: str, address: str, target: tuple):
        self.target = target
        family = socket.AF_INET6 if ":" in address.split("/")[0] else socket.AF_INET
        self.family = 6 if family == socket.AF_INET6 else 4  # IP version
        ip = address.split("/")[0]
        topo.add_address(ns, veth_name(topo, ns), address)
        self.sock = topo.socket(ns, family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)

    def send(self, datagrams: Iterable[bytes], burst: int = 32, pause: float = 0.002) -> int:
        """Paced: bursts of `burst` with a pause, so that the exit node's
        socket buffer never overflows and every datagram can be counted."""
        n = 0
        for msg in datagrams:
            self._sendto(msg)
            n += 1
            if n % burst == 0:
                time.sleep(pause)
        return n

    def flood(self, datagrams: Sequence[bytes], seconds: float,
              rate: Optional[float] = None) -> int:
        """Cycles through datagrams for `seconds`: as fast as one thread can,
        or at about `rate` per second (in bursts of 16). Returns how many
        went out."""
        n, start = 0, time.monotonic()
        while time.monotonic() < start + seconds:
            for _ in range(16):
                self._sendto(datagrams[n % len(datagrams)])
                n += 1
            if rate:
                time.sleep(max(0.0, start + n / rate - time.monotonic()))
        return n

    def _sendto(self, msg: bytes) -> None:
        while True:
            try:
                self.sock.sendto(msg, self.target)
                return
            except BlockingIOError:
                time.sleep(0.0005)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def udp4_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """IPv4 + UDP for a raw (IPPROTO_RAW) socket: the kernel fills in the
    header checksum; a UDP checksum of 0 means none."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, IPPROTO_UDP, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return ip + udp


# ---------------------------------------------------------------- capture

@dataclass(frozen=True)
class Captured:
    src: tuple
    dst: tuple
    payload: bytes


class Sniffer:
    """Records, on every Ethernet interface of a namespace, the UDP
    datagrams arriving for `port` (and with both_directions, those leaving
    from it): AF_PACKET in a thread, the kernel filtering by port.

    outgoing: record instead the datagrams leaving the namespace for
    `port` (what the other side's port receives). An exit node on the XDP
    backend takes its port's datagrams before AF_PACKET sees them, so
    they are captured where they leave."""

    def __init__(self, ns: str, port: int, both_directions: bool = False,
                 outgoing: bool = False):
        self.port, self.both_directions, self.outgoing = port, both_directions, outgoing
        self.sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        _attach_filter(self.sock, f"udp port {port}")
        self.sock.settimeout(0.05)
        self.datagrams: list[Captured] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sniffer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _run(self) -> None:
        # after stop, what is still queued is read too (a busy machine may
        # not have scheduled this thread before a fast exchange was over)
        while True:
            try:
                frame, (_, _, pkttype, hatype, _) = self.sock.recvfrom(65536)
            except socket.timeout:
                if self._stop.is_set():
                    return
                continue
            if hatype != ARPHRD_ETHER or len(frame) < 14:
                continue
            got = _udp_in_ethernet(frame)
            if got is None:
                continue
            if self.outgoing:
                if pkttype == PACKET_OUTGOING and got.dst[1] == self.port:
                    self.datagrams.append(got)
            elif pkttype == PACKET_OUTGOING:
                if self.both_directions and got.src[1] == self.port:
                    self.datagrams.append(got)
            elif got.dst[1] == self.port:
                self.datagrams.append(got)

    def sent(self, mtype: int) -> list[bytes]:
        """Payloads of type mtype that left from the port (both_directions)."""
        return [d.payload for d in list(self.datagrams)
                if d.src[1] == self.port and d.payload[:4] == struct.pack("<I", mtype)]

    def payloads(self, mtype: int) -> list[bytes]:
        """Payloads of type mtype that arrived for the port (outgoing: that
        left for it)."""
        return [d.payload for d in list(self.datagrams)
                if d.dst[1] == self.port and d.payload[:4] == struct.pack("<I", mtype)]


SO_ATTACH_FILTER = 26


def _attach_filter(sock: socket.socket, expression: str) -> None:
    """A classic BPF filter compiled by tcpdump, so that a flood on other
    ports never reaches Python."""
    out = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", expression], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    insns = [tuple(int(x) for x in line.split()) for line in out[1:1 + int(out[0])]]
    prog = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("@HP", len(insns), ctypes.addressof(prog)))


def _udp_in_ethernet(frame: bytes) -> Optional[Captured]:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == ETH_P_IP and len(ip) >= 20 and ip[9] == IPPROTO_UDP:
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
            return None  # a fragment: reassembled datagrams are not needed here
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        udp = ip[ihl:total]
    elif ethertype == ETH_P_IPV6 and len(ip) >= 48 and ip[6] == IPPROTO_UDP:
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        udp = ip[40:40 + struct.unpack_from("!H", ip, 4)[0]]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", udp)
    return Captured((src, sport), (dst, dport), udp[8:length])


# ---------------------------------------------------------------- messages

def data_header(msg: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a data message."""
    _, index, counter = DATA_HEADER.unpack_from(msg)
    return index, counter


def with_macs(msg: bytes, responder_public: bytes, cookie: Optional[bytes] = None) -> bytes:
    """msg (an initiation or response) with mac1 for responder_public and
    mac2 from cookie (zero without one), as an initiator computes them."""
    off = noise.INITIATION_MAC1_OFF if msg[0] == noise.MSG_INITIATION else noise.RESPONSE_MAC1_OFF
    out = bytearray(msg)
    noise.Handshake.add_macs(out, off, responder_public, cookie)
    return bytes(out)


def with_sender_index(msg: bytes, index: int, responder_public: bytes,
                      cookie: Optional[bytes] = None) -> bytes:
    """The same initiation from another sender index: only the MACs cover
    the index, and anyone can compute mac1 from the responder's public key."""
    out = bytearray(msg)
    struct.pack_into("<I", out, 4, index)
    return with_macs(bytes(out), responder_public, cookie)


def mac1_of(msg: bytes) -> bytes:
    off = noise.INITIATION_MAC1_OFF if msg[0] == noise.MSG_INITIATION else noise.RESPONSE_MAC1_OFF
    return msg[off:off + noise.MAC_LEN]


# ---------------------------------------------------------------- the exit node's figures

def status(name: str, timeout: float = 10) -> dict:
    """What `dataplane show NAME --json` reads from the daemon (drops,
    handshake counters), straight from its status socket: fast to poll."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(RUN_DIR / f"{name}.status.sock"))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def counters(name: str, timeout: float = 10) -> dict[str, int]:
    """Every drop reason and handshake counter in one flat dict; on the XDP
    backend also the WAN program's drops (wan_drop_*, summed over the WAN
    interfaces)."""
    st = status(name, timeout)
    xdp = {k: n for k, n in (st.get("xdp") or {}).items() if k.startswith("wan_drop_")}
    return {**st["drops"], **st["handshake"], **xdp}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed, and by how much."""
    return {k: after[k] - before[k] for k in after if after[k] != before.get(k, 0)}


def settle(name: str, before: dict[str, int], done: Callable[[dict], bool] = lambda d: False,
           timeout: float = 10, quiet: float = 0.2) -> dict[str, int]:
    """Polls until done(delta) holds, or the counters stop moving for
    `quiet` seconds after having moved, or timeout; returns the delta."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        d = delta(before, counters(name))
        if done(d):
            time.sleep(quiet)  # anything more that arrives late shows too
            return delta(before, counters(name))
        now = time.monotonic()
        if d != last:
            last, since = d, now
        elif d and now - since >= quiet:
            return d
        if now >= deadline:
            return d
        time.sleep(0.05)


def udp_receive_errors(topo: Topology, ns: str) -> int:
    """Datagrams the kernel dropped for full socket buffers in ns (IPv4 and
    IPv6): the ones the data path never saw and so cannot count."""
    out = topo.run(ns, ["cat", "/proc/net/snmp", "/proc/net/snmp6"]).stdout
    lines = [l.split() for l in out.splitlines() if l.startswith("Udp:")]
    total = int(lines[1][lines[0].index("RcvbufErrors")]) if len(lines) == 2 else 0
    for l in out.splitlines():
        if l.startswith("Udp6RcvbufErrors"):
            total += int(l.split()[1])
    return total


def flood_from_processes(ns: str, source_ip: str, target: tuple, datagrams: Sequence[bytes],
                         seconds: float, processes: int = 2, rate: Optional[float] = None) -> int:
    """Floods target from `processes` forked children in ns, each with a
    UDP socket of its own on source_ip, for seconds: as fast as each can
    (more than one Python thread can send), or `rate` per second in all
    (without taking this process's GIL). Returns how many went out."""
    family = socket.AF_INET6 if ":" in source_ip else socket.AF_INET
    children = []
    for _ in range(processes):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: send, report the count, leave at once
            n = 0
            try:
                os.close(r)
                netns.setns(ns)
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.bind((source_ip, 0))
                start = time.monotonic()
                while time.monotonic() < start + seconds:
                    for _ in range(16):
                        try:
                            s.sendto(datagrams[n % len(datagrams)], target)
                            n += 1
                        except OSError:
                            pass  # not sent (a full queue): not counted
                    if rate:
                        time.sleep(max(0.0, start + n * processes / rate - time.monotonic()))
            finally:
                os.write(w, struct.pack("<Q", n))
                os._exit(0)
        os.close(w)
        children.append((pid, r))
    total = 0
    for pid, r in children:
        data = b""
        while chunk := os.read(r, 8):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        total += struct.unpack("<Q", data)[0] if len(data) == 8 else 0
    return total
