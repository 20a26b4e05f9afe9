"""The XDP backend's plumbing around a device: the inner veth pair, our XDP
programs on the WAN interface and on our end of the pair, and the AF_XDP
sockets of the workers in the programs' XSKMAPs.

    WAN (eth0) ── XDP: WireGuard to the listen port ─> AF_XDP ─┐
                                                               worker (decrypt / encrypt)
    NAME (kernel's end: addresses, routes, NAT) <─ veth ─> NAME-x ── XDP: all ─> AF_XDP ─┘

The kernel's end carries the interface's name, addresses and routes, so
routing, nftables and NAT work unchanged; it does no ARP or neighbour
discovery (NOARP: the kernel addresses frames to its own MAC, and the
worker addresses frames to it). Encrypted packets leave through the UDP
sockets (the kernel builds the outer headers from its routing and
neighbour tables); the sockets also receive whatever XDP passes on.

Never half-attached: `setup` undoes what it did when a step fails; the
programs are attached with bpf_links owned by this process, so they go
when it goes, also after kill -9.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

from pyroute2 import IPRoute

log = logging.getLogger("dataplane")


class XdpUnavailable(Exception):
    """The XDP backend cannot run here; the message says why."""


def inner_peer_name(name: str) -> str:
    """Our end of the inner veth pair (15 characters at most)."""
    return f"{name[:12]}-x"


def wan_interfaces(configured: Sequence[str], own: Sequence[str]) -> list[str]:
    """The WAN interfaces: the configured ones (which must exist), or every
    interface with an address other than loopback and our own."""
    with IPRoute() as ipr:
        names = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        if configured:
            missing = [n for n in configured if n not in names]
            if missing:
                raise XdpUnavailable(f"Interfaces: no interface named {', '.join(missing)}")
            return list(configured)
        with_addr = {a["index"] for a in ipr.get_addr()}
    found = sorted(n for n, i in names.items()
                   if i in with_addr and n != "lo" and n not in own)
    if not found:
        raise XdpUnavailable("no interface with an address to attach to (set Interfaces)")
    return found


def rx_queues(ifname: str) -> int:
    """How many receive queues the interface has (at least 1)."""
    try:
        return max(1, len(list(Path(f"/sys/class/net/{ifname}/queues").glob("rx-*"))))
    except OSError:
        return 1


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise XdpUnavailable(f"ip {' '.join(args)}: {r.stderr.strip()}")


NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def neighbours(ipr: IPRoute, wan_index: int) -> dict:
    """Usable neighbour entries of the WAN interface: address -> MAC."""
    out = {}
    for n in ipr.get_neighbours(ifindex=wan_index):
        mac, dst = n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST")
        if mac and dst and not n["state"] & (NUD_INCOMPLETE | NUD_FAILED):
            out[dst] = bytes.fromhex(mac.replace(":", ""))
    return out


def resolve_outer_route(ipr: IPRoute, addr: IPAddress, wan_index: int, neigh: dict,
                        our_mac: bytes) -> Optional[tuple[IPAddress, bytes, bytes]]:
    """(source address, next hop's MAC, our MAC) to reach addr straight out
    of the WAN interface, from the kernel's routing and neighbour tables;
    None when the kernel routes it elsewhere or has no neighbour entry yet
    (then packets take the kernel's path, which resolves the neighbour)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        route = ipr.route("get", dst=str(addr), family=family)[0]
    except Exception:  # noqa: BLE001 - unreachable: the kernel's path says so
        return None
    if route.get_attr("RTA_OIF") != wan_index or route.get("type", 1) != 1:
        return None
    src, hop = route.get_attr("RTA_PREFSRC"), route.get_attr("RTA_GATEWAY") or str(addr)
    if not src or hop not in neigh:
        return None
    return ipaddress.ip_address(src), neigh[hop], our_mac


class OuterRoutes:
    """The device's outer routes, kept as the kernel has them: asked for by
    the workers (DP_EVENT_NEED_ROUTE), resolved here, and all resolved
    again every FULL_EVERY refreshes, so that route and neighbour changes
    reach the workers within seconds."""

    FULL_EVERY = 20  # refreshes (the daemon refreshes every tick, 0.25 s)

    def __init__(self, device, wan: str, listen_port: int):
        self.device, self.wan, self.listen_port = device, wan, listen_port
        self.wanted: set = set()
        self.installed: dict = {}
        self._count = 0
        # refresh runs in a thread: closing waits for it, so the device is
        # never used after it is closed
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def want(self, addr: IPAddress) -> None:
        self.wanted.add(addr)

    def refresh(self) -> None:
        """Blocking netlink: the daemon runs it outside its event loop."""
        with self._lock:
            if not self._closed:
                self._refresh()

    def _refresh(self) -> None:
        self._count += 1
        todo, self.wanted = self.wanted, set()
        if self._count % self.FULL_EVERY == 0:
            todo |= set(self.installed)
        if not todo:
            return
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.wan)
            if not found:
                return
            index = found[0]
            neigh = neighbours(ipr, index)
            ours = bytes.fromhex(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS").replace(":", ""))
            for addr in todo:
                got = resolve_outer_route(ipr, addr, index, neigh, ours)
                if got == self.installed.get(addr):
                    continue
                if got is None:
                    self.device.route_del(addr)
                    self.installed.pop(addr, None)
                    continue
                try:
                    self.device.route_set(addr, got[0], self.listen_port, got[1], got[2])
                    self.installed[addr] = got
                except OSError as e:  # the table is full: the kernel's path still works
                    # (no address in the log: it is a peer's endpoint)
                    log.debug("an outer route was not installed: %s", os.strerror(e.errno or 0))


class XdpPlumbing:
    def __init__(self, name: str, mtu: int, listen_port: int, wan: Sequence[str], workers: int):
        self.name, self.mtu, self.listen_port = name, mtu, listen_port
        self.wan = list(wan)
        self.workers = workers
        self.peer_name = inner_peer_name(name)
        self.programs: list = []
        self.wan_prog = None
        self._resting = False
        self._veth = False

    def create_inner_link(self) -> tuple[bytes, bytes]:
        """The veth pair; returns (the kernel end's MAC, our end's MAC)."""
        if len(self.wan) != 1:
            raise XdpUnavailable(f"the XDP backend serves one WAN interface in this version; "
                                 f"found {', '.join(self.wan)} (set Interfaces)")
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=self.peer_name):
                ipr.link("del", index=ipr.link_lookup(ifname=self.peer_name)[0])
            # a queue per worker on our end, so each worker owns its AF_XDP socket
            ipr.link("add", ifname=self.name, kind="veth", num_rx_queues=self.workers,
                     num_tx_queues=self.workers,
                     peer={"ifname": self.peer_name, "num_rx_queues": self.workers,
                           "num_tx_queues": self.workers})
            self._veth = True
            for ifname in (self.name, self.peer_name):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=self.mtu)
        # no neighbour resolution on the kernel's end, no IPv6 on ours
        _ip("link", "set", "dev", self.name, "arp", "off")
        # AF_XDP frames carry no checksum state: what the kernel hands to
        # the pair must be finished packets (checksums computed, segmented)
        for ifname in (self.name, self.peer_name):
            r = subprocess.run(["ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off",
                                "gro", "off"], capture_output=True, text=True)
            if r.returncode != 0:
                raise XdpUnavailable(f"ethtool -K {ifname} tx off: {r.stderr.strip()}")
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{self.peer_name}.disable_ipv6=1"],
                       capture_output=True)
        with IPRoute() as ipr:
            macs = []
            for ifname in (self.name, self.peer_name):
                link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
                macs.append(bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", "")))
            ipr.link("set", index=ipr.link_lookup(ifname=self.peer_name)[0], state="up")
        return macs[0], macs[1]

    def attach(self, device) -> None:
        """Programs on the WAN and on our inner end, AF_XDP sockets of every
        worker in their maps. On failure everything is undone."""
        from dataplane import xdp

        try:
            wan_prog = xdp.XdpProgram.load(xdp.object_path("wan"), listen_port=self.listen_port)
            self.programs.append(wan_prog)
            inner_prog = xdp.XdpProgram.load(xdp.object_path("inner"))
            self.programs.append(inner_prog)
            for w in range(self.workers):
                wan_fd, inner_fd = device.xsk_fds(w)
                wan_prog.set_xsk(w, wan_fd)
                inner_prog.set_xsk(w, inner_fd)
            # the handshake rate limit works only while the control plane
            # is under load (see follow_load)
            wan_prog.set_ratelimit_rest(True)
            self._resting = True
            self.wan_prog = wan_prog
            inner_prog.attach(self.peer_name)
            wan_prog.attach(self.wan[0])
        except Exception as e:
            self.close()
            raise XdpUnavailable(f"cannot attach the XDP programs: {e}") from e

    def follow_load(self, under_load: bool) -> None:
        """Apply XDP's per-source handshake rate limit while the control
        plane is under load, as the kernel's WireGuard does; let it rest
        otherwise."""
        if self.wan_prog is not None and self._resting == under_load:
            self.wan_prog.set_ratelimit_rest(not under_load)
            self._resting = not under_load

    def counters(self) -> dict:
        out = {}
        for label, prog in zip(("wan", "inner"), self.programs):
            for k, v in prog.counters().items():
                out[f"{label}_{k}"] = v
        return out

    def close(self) -> None:
        for prog in reversed(self.programs):
            try:
                prog.detach()
            except Exception as e:  # noqa: BLE001 - going away anyway; say so
                log.warning("%s: detaching an XDP program: %s", self.name, e)
            prog.close()
        self.programs = []
        self.wan_prog = None
        if self._veth:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.peer_name)
                if found:
                    ipr.link("del", index=found[0])  # takes the kernel's end with it
            self._veth = False
