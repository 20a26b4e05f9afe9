"""The XDP backend's plumbing around a device: the inner veth pair, our XDP
programs on the WAN interface and on our end of the pair, and the AF_XDP
sockets of the workers in the programs' XSKMAPs.

    WAN (eth0) ── XDP: WireGuard to the listen port ─> AF_XDP ─┐
                                                               worker (decrypt / encrypt)
    NAME (kernel's end: addresses, routes, NAT) <─ veth ─> NAME-x ── XDP: all ─> AF_XDP ─┘

The kernel's end carries the interface's name, addresses and routes, so
routing, nftables and NAT work unchanged; it does no ARP or neighbour
discovery (NOARP: the kernel addresses frames to its own MAC, and the
worker addresses frames to it). Encrypted packets leave through the
worker's WAN AF_XDP socket when an outer route to the endpoint is known
and leaves by that worker's WAN interface, otherwise through the UDP
sockets (the kernel builds the outer headers); the sockets also receive
whatever XDP passes on.

Several WAN interfaces: one WAN program per interface, and the workers
spread over the (interface, receive queue) pairs, every interface getting
at least one (worker_layout).

Never half-attached: `attach` undoes what it did when a step fails; the
programs are attached with bpf_links owned by this process, so they go
when it goes, also after kill -9. Nothing is pinned, so bpffs is not
needed.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from pyroute2 import IPRoute

log = logging.getLogger("dataplane")


class XdpUnavailable(Exception):
    """The XDP backend cannot run here; the message says why."""


def inner_peer_name(name: str) -> str:
    """Our end of the inner veth pair (15 characters at most)."""
    return f"{name[:12]}-x"


RT_SCOPE_UNIVERSE = 0
IFF_LOOPBACK = 0x8
# Link kinds that are tunnels (ours on the socket backend, wireguard-go's,
# the kernel's WireGuard), never WAN interfaces.
TUNNEL_KINDS = ("tun", "wireguard")
RUN_DIR = Path("/run/dataplane")
UAPI_DIR = Path("/var/run/wireguard")


def tunnel_names() -> set:
    """Names of the WireGuard interfaces of this machine: ours (a pid file
    in /run/dataplane) and their inner veth ends, and every interface with
    a UAPI socket (wireguard-go's). The directories are shared by all
    network namespaces, so names from others show up too: harmless, they
    only exclude."""
    names = set()
    for directory, suffix in ((RUN_DIR, ".pid"), (UAPI_DIR, ".sock")):
        try:
            for path in directory.glob(f"*{suffix}"):
                name = path.name[:-len(suffix)]
                names |= {name, inner_peer_name(name)}
        except OSError:
            pass
    return names


def remove_stale_inner_link(ipr: IPRoute, name: str) -> bool:
    """Removes the inner veth pair that a daemon of the interface `name`
    left behind when it was killed (veth `name` whose peer is our end,
    inner_peer_name(name)); True if there was one. The caller made sure
    that no daemon of that name runs (its UAPI socket does not answer)."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    link = ipr.get_links(found[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    peer = link.get_attr("IFLA_LINK")
    if not info or info.get_attr("IFLA_INFO_KIND") != "veth" or not peer:
        return False
    try:
        peer_name = ipr.get_links(peer)[0].get_attr("IFLA_IFNAME")
    except Exception:  # noqa: BLE001 - the peer is in another namespace, or gone
        return False
    if peer_name != inner_peer_name(name):
        return False
    ipr.link("del", index=found[0])
    return True


def wan_interfaces(configured: Sequence[str], own: Sequence[str]) -> list[str]:
    """The WAN interfaces: the configured ones (which must exist), or every
    interface with an address of global scope other than loopback, our own
    and other tunnels (tun and WireGuard links, other dataplane
    interfaces and their inner veth ends)."""
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
        if configured:
            missing = [n for n in configured if n not in links]
            if missing:
                raise XdpUnavailable(f"Interfaces: no interface named {', '.join(missing)} in "
                                     f"this network namespace (have: {', '.join(sorted(links))})")
            return list(dict.fromkeys(configured))
        with_addr = {a["index"] for a in ipr.get_addr() if a["scope"] == RT_SCOPE_UNIVERSE}
    skip = set(own) | {inner_peer_name(n) for n in own} | tunnel_names()
    found = []
    for name, link in sorted(links.items()):
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        if link["index"] in with_addr and not link["flags"] & IFF_LOOPBACK \
                and name not in skip and kind not in TUNNEL_KINDS:
            found.append(name)
    if not found:
        raise XdpUnavailable("no interface with a global address to attach to (set "
                             "[DataPlane] Interfaces)")
    return found


def napi_threaded(ifname: str) -> bool:
    """The interface receives in NAPI threads (/sys/class/net/IF/threaded)."""
    try:
        # "1" here; some kernels say "enabled"
        return Path(f"/sys/class/net/{ifname}/threaded").read_text().strip() in ("1", "enabled")
    except OSError:
        return False


def rx_queues(ifname: str) -> int:
    """How many receive queues the interface has (at least 1)."""
    try:
        return max(1, len(list(Path(f"/sys/class/net/{ifname}/queues").glob("rx-*"))))
    except OSError:
        return 1


def worker_layout(wan: Sequence[str], queues: dict, wanted: int, limit: int
                  ) -> tuple[list, list]:
    """Which (interface, receive queue) each worker serves: `wanted`
    workers, but at least one per interface (an interface without one would
    send all its WireGuard traffic through the kernel's UDP stack), at most
    one per queue and at most `limit`. Queues are dealt round-robin over
    the interfaces (eth0 q0, eth1 q0, eth0 q1, ...). Returns (the layout,
    the queues left to the kernel's UDP stack)."""
    slots = [(ifname, q) for q in range(max(queues[i] for i in wan)) for ifname in wan
             if q < queues[ifname]]
    if len(wan) > limit:
        raise XdpUnavailable(f"{len(wan)} WAN interfaces, but at most {limit} workers: name at "
                             f"most {limit} in [DataPlane] Interfaces")
    n = min(max(wanted, len(wan)), len(slots), limit)
    return slots[:n], slots[n:]


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


def host_addresses(ipr: IPRoute, indices: Optional[set] = None) -> set:
    """Every address of this host (its network namespace), of every
    interface (or of those with these indices): what the kernel delivers
    locally."""
    out = set()
    for a in ipr.get_addr():
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if addr and (indices is None or a["index"] in indices):
            out.add(ipaddress.ip_address(addr.split("%")[0]))
    return out


def resolve_outer_route(ipr: IPRoute, addr: IPAddress, wan: dict
                        ) -> Optional[tuple[IPAddress, bytes, bytes, int]]:
    """(source address, next hop's MAC, our MAC, interface index) to reach
    addr straight out of one of the WAN interfaces, from the kernel's
    routing and neighbour tables. `wan`: interface index -> (our MAC, its
    neighbours as address -> MAC). None when the kernel routes addr
    elsewhere or has no neighbour entry yet (then packets take the kernel's
    path, which resolves the neighbour)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        route = ipr.route("get", dst=str(addr), family=family)[0]
    except Exception:  # noqa: BLE001 - unreachable: the kernel's path says so
        return None
    oif = route.get_attr("RTA_OIF")
    if oif not in wan or route.get("type", 1) != 1:
        return None
    our_mac, neigh = wan[oif]
    src, hop = route.get_attr("RTA_PREFSRC"), route.get_attr("RTA_GATEWAY") or str(addr)
    if not src or hop not in neigh:
        return None
    return ipaddress.ip_address(src), neigh[hop], our_mac, oif


class OuterRoutes:
    """The device's outer routes, kept as the kernel has them: asked for by
    the workers (DP_EVENT_NEED_ROUTE), resolved here, and all resolved
    again every FULL_EVERY refreshes, so that route and neighbour changes
    reach the workers within seconds. Each route names the WAN interface
    it leaves by."""

    FULL_EVERY = 20  # refreshes (the daemon refreshes every tick, 0.25 s)

    def __init__(self, device, wan: Sequence[str], listen_port: int):
        self.device, self.wan, self.listen_port = device, list(wan), listen_port
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

    def rename_wan(self, old: str, new: str) -> None:
        with self._lock:
            self.wan = [new if w == old else w for w in self.wan]

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
            wan = {}
            for ifname in self.wan:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    continue
                mac = ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS")
                wan[found[0]] = (bytes.fromhex(mac.replace(":", "")), neighbours(ipr, found[0]))
            for addr in todo:
                got = resolve_outer_route(ipr, addr, wan)
                if got == self.installed.get(addr):
                    continue
                if got is None:
                    self.device.route_del(addr)
                    self.installed.pop(addr, None)
                    continue
                try:
                    self.device.route_set(addr, got[0], self.listen_port, got[1], got[2],
                                          ifindex=got[3])
                    self.installed[addr] = got
                except OSError as e:  # the table is full: the kernel's path still works
                    # (no address in the log: it is a peer's endpoint)
                    log.debug("an outer route was not installed: %s", os.strerror(e.errno or 0))


# Our end of the inner veth pair: the largest MTU a veth takes.
INNER_PEER_MTU = 65535


class XdpPlumbing:
    """layout: the (WAN interface, receive queue) of each worker, as
    worker_layout makes it."""

    def __init__(self, name: str, mtu: int, listen_port: int, layout: Sequence[tuple]):
        self.name, self.mtu, self.listen_port = name, mtu, listen_port
        self.layout = list(layout)
        self.wan = list(dict.fromkeys(ifname for ifname, _ in self.layout))
        self.workers = len(self.layout)
        self.peer_name = inner_peer_name(name)
        self.wan_progs: dict = {}     # interface -> its WAN program
        self.inner_prog = None
        self._resting = False
        self._limit_until = 0.0
        self._veth = False
        self._wire = None             # (Obfuscation, accept_plain), see set_wire
        self._local: Optional[list] = None  # the addresses in the WAN programs' maps
        # refresh_local runs in a thread; close waits for it
        self._lock = threading.Lock()

    def create_inner_link(self) -> tuple[bytes, bytes]:
        """The veth pair; returns (the kernel end's MAC, our end's MAC).
        XdpUnavailable when it cannot be made (the caller undoes the rest
        with close)."""
        try:
            return self._create_inner_link()
        except XdpUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - netlink: e.g. no veth in this kernel
            raise XdpUnavailable(f"creating the inner veth pair {self.name}/{self.peer_name}: "
                                 f"{e}") from e

    def _create_inner_link(self) -> tuple[bytes, bytes]:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=self.peer_name):
                ipr.link("del", index=ipr.link_lookup(ifname=self.peer_name)[0])
            # a queue per worker on our end, so each worker owns its AF_XDP socket
            ipr.link("add", ifname=self.name, kind="veth", num_rx_queues=self.workers,
                     num_tx_queues=self.workers,
                     peer={"ifname": self.peer_name, "num_rx_queues": self.workers,
                           "num_tx_queues": self.workers})
            self._veth = True
            # The kernel's end has the interface's MTU (the operator's, and
            # they may change it); ours takes anything the kernel's end
            # sends (a veth drops frames over the receiving end's MTU).
            # The XDP program on our end caps the kernel end's MTU at what
            # fits a page.
            ipr.link("set", index=ipr.link_lookup(ifname=self.name)[0], mtu=self.mtu)
            ipr.link("set", index=ipr.link_lookup(ifname=self.peer_name)[0],
                     mtu=INNER_PEER_MTU)
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
        """A WAN program on every WAN interface and the inner program on our
        end of the pair, the workers' AF_XDP sockets in their maps. On
        failure everything attached so far is detached and closed, and the
        error names the step and the interface."""
        from dataplane import xdp

        step = "loading the WAN program"
        try:
            for ifname in self.wan:
                self.wan_progs[ifname] = xdp.XdpProgram.load(xdp.object_path("wan"),
                                                             listen_port=self.listen_port)
            step = "loading the inner program"
            self.inner_prog = xdp.XdpProgram.load(xdp.object_path("inner"))
            for w, (ifname, queue) in enumerate(self.layout):
                step = f"adding worker {w}'s AF_XDP sockets to the maps"
                wan_fd, inner_fd = device.xsk_fds(w)
                self.wan_progs[ifname].set_xsk(queue, wan_fd)
                self.inner_prog.set_xsk(w, inner_fd)
            # the handshake rate limit works only while the control plane
            # is under load (see follow_load)
            for prog in self.wan_progs.values():
                prog.set_ratelimit_rest(True)
            step = "writing the wire profile"
            self._apply_wire()
            step = "writing this host's addresses"
            self._refresh_local()
            self._resting = True
            step = f"attaching the inner program to {self.peer_name}"
            self.inner_prog.attach(self.peer_name)
            self._receive_in_napi_thread()
            for ifname, prog in self.wan_progs.items():
                step = f"attaching the WAN program to {ifname}"
                prog.attach(ifname)
        except Exception as e:
            self.close()
            raise XdpUnavailable(f"{step}: {e}") from e

    # How long XDP's rate limit stays on after the control plane was last
    # under load. A flood that the limit holds back no longer loads the
    # control plane: with the limit off as soon as the load passed (the
    # control plane's own hold is a second), the flood got through again
    # every second and each time cost a burst of full handshakes.
    RATELIMIT_HOLD_SECONDS = 5.0

    def _receive_in_napi_thread(self) -> None:
        """Our end of the pair receives in a NAPI thread, not in softirq
        (a veth has NAPI once its XDP program is attached): what the kernel
        routes into the tunnel is then steered and copied into AF_XDP in a
        thread the scheduler shares with the workers, and under overload
        the surplus is dropped at the veth's ring before that work. In
        softirq that work starved the workers (receive livelock).

        Not when every interface with a global address receives in NAPI
        threads already (as the README advises): what they route into the
        tunnel is then steered in those threads, which the scheduler
        shares fairly, and a thread of our own would only add a wakeup and
        a context switch per burst (14-19% more CPU a packet for encap in
        `dataplane bench`). Decided once, at start; traffic from elsewhere
        (this machine's own, interfaces without a global address or added
        later) is then steered in the context that sends it."""
        try:
            others = wan_interfaces((), [self.name])
        except XdpUnavailable:
            others = []
        if others and all(napi_threaded(ifname) for ifname in others):
            log.info("%s: receives in the NAPI threads of %s (they all have one)",
                     self.peer_name, ", ".join(others))
            return
        try:
            Path(f"/sys/class/net/{self.peer_name}/threaded").write_text("1\n")
            log.info("%s: receives in a NAPI thread of its own", self.peer_name)
        except OSError as e:
            log.info("%s: receive stays in softirq (threaded NAPI: %s)", self.peer_name,
                     e.strerror or e)

    def follow_load(self, under_load: bool, now: Optional[float] = None) -> None:
        """Apply XDP's per-source handshake rate limit while the control
        plane is under load, as the kernel's WireGuard does, and for
        RATELIMIT_HOLD_SECONDS after; let it rest otherwise."""
        now = time.monotonic() if now is None else now
        if under_load:
            self._limit_until = now + self.RATELIMIT_HOLD_SECONDS
        limit = now < self._limit_until
        if self.wan_progs and self._resting == limit:
            for prog in self.wan_progs.values():
                prog.set_ratelimit_rest(not limit)
            self._resting = not limit

    def reattach_detached(self) -> list:
        """WAN programs another process detached (bpftool link detach):
        attached again, the maps and sockets as they were. Returns
        [(interface, None or the error that kept it off)] of those found
        detached."""
        found = []
        for ifname, prog in self.wan_progs.items():
            if prog.link_alive():
                continue
            try:
                prog.detach()  # the dead link
                prog.attach(ifname)
                found.append((ifname, None))
            except Exception as e:  # noqa: BLE001 - reported by the caller
                found.append((ifname, e))
        return found

    def rename_wan(self, old: str, new: str) -> None:
        """A WAN interface was renamed (its programs and sockets hold its
        index and stay): follow the name."""
        self.wan = [new if w == old else w for w in self.wan]
        self.layout = [(new if w == old else w, q) for w, q in self.layout]
        self.wan_progs = {(new if w == old else w): p for w, p in self.wan_progs.items()}

    def refresh_local(self) -> None:
        """This host's addresses into the WAN programs, when they changed:
        the programs steer only datagrams to the listen port that are
        addressed to the host, and leave the rest to the kernel to forward.
        Blocking netlink: the daemon runs it outside its event loop, every
        LOCAL_EVERY seconds."""
        with self._lock:
            if self.wan_progs:
                self._refresh_local()

    LOCAL_EVERY = 1.0

    def _refresh_local(self) -> None:
        from dataplane import xdp

        with IPRoute() as ipr:
            addrs = sorted(host_addresses(ipr), key=lambda a: (a.version, a.packed))
            if len(addrs) > xdp.MAX_LOCAL_ADDRS:
                # the WAN interfaces' own first
                wan = {index for ifname in self.wan for index in ipr.link_lookup(ifname=ifname)}
                on_wan = host_addresses(ipr, wan)
                addrs = sorted(addrs, key=lambda a: a not in on_wan)[:xdp.MAX_LOCAL_ADDRS]
                if self._local is None or len(self._local) < xdp.MAX_LOCAL_ADDRS:
                    log.warning("%s: this host has more addresses than XDP steers for (%d); "
                                "the kernel's path serves the rest", self.name,
                                xdp.MAX_LOCAL_ADDRS)
        if addrs == self._local:
            return
        for prog in self.wan_progs.values():
            prog.set_local(addrs)
        self._local = addrs

    @property
    def local_addresses(self) -> int:
        return len(self._local or ())

    def set_wire(self, obf, accept_plain: bool) -> None:
        """The AmneziaWG profile (dataplane.obfuscation.Obfuscation) the
        WAN programs classify by: kept, and written into every loaded
        program (at once for the next frame)."""
        self._wire = (obf, accept_plain)
        self._apply_wire()

    def _apply_wire(self) -> None:
        if self._wire is None:
            return
        from dataplane import xdp

        config = xdp.wire_config(*self._wire)
        for prog in self.wan_progs.values():
            prog.set_wire(config)

    def counters(self) -> dict:
        """The WAN programs' counters summed over the interfaces ("wan_*")
        and the inner program's ("inner_*")."""
        out = {}
        for counters in self.interface_counters().values():
            for k, v in counters.items():
                out[f"wan_{k}"] = out.get(f"wan_{k}", 0) + v
        if self.inner_prog is not None:
            for k, v in self.inner_prog.counters().items():
                out[f"inner_{k}"] = v
        return out

    def interface_counters(self) -> dict:
        """Each WAN interface's program counters: {interface: {name: n}}."""
        return {ifname: prog.counters() for ifname, prog in self.wan_progs.items()}

    def close(self) -> None:
        with self._lock:  # no refresh_local in flight
            self._close()

    def _close(self) -> None:
        progs = list(self.wan_progs.items())
        if self.inner_prog is not None:
            progs.append((self.peer_name, self.inner_prog))
        for ifname, prog in progs:
            try:
                prog.detach()
            except Exception as e:  # noqa: BLE001 - going away anyway; say so
                log.warning("%s: detaching the XDP program from %s: %s", self.name, ifname, e)
            prog.close()
        self.wan_progs = {}
        self.inner_prog = None
        if self._veth:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.peer_name)
                if found:
                    ipr.link("del", index=found[0])  # takes the kernel's end with it
            self._veth = False
