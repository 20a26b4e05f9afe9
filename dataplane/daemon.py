"""`dataplane up`: bring an interface up from a config file and serve it in
the foreground (systemd-friendly) until SIGTERM/SIGINT, then take it down:
interface and routes removed, keys wiped.

Layout on the machine:
  /var/run/wireguard/NAME.sock   the WireGuard UAPI (mode 0600), for `wg`
  /run/dataplane/NAME.pid        our pid, for `dataplane down NAME`
  /run/dataplane/NAME.status.sock  our own figures as JSON (mode 0600), for
                                 `dataplane show`
"""
from __future__ import annotations

import asyncio
import errno as errno_mod
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Optional

from pyroute2 import IPRoute

from dataplane import config as cfg
from dataplane import crypto, uapi
from dataplane.api.controller import Controller
from dataplane.api.metrics import Metrics
from dataplane.api.model import ApiError
from dataplane.api.server import ApiServer, tls_context
from dataplane._native import lib
from dataplane.device import Device, DeviceError
from dataplane.interface import DEFAULT_MTU, Interface, Peer, resolve, table_sizes
from dataplane.obfuscation import Obfuscation
from dataplane.topology import nodad
from dataplane.tun import open_tun
from dataplane.xdp_backend import (OuterRoutes, XdpPlumbing, XdpUnavailable,
                                   remove_stale_inner_link, rx_queues, wan_interfaces,
                                   worker_layout)

log = logging.getLogger("dataplane")

UAPI_DIR = Path("/var/run/wireguard")
RUN_DIR = Path("/run/dataplane")
TICK_SECONDS = 0.25
TUN_CHECK_SECONDS = 2.0   # how often the TUN's queue drops are read
SIOCGIFMTU = 0x8921


class UpError(Exception):
    """The interface could not come up; nothing was left behind."""


# ---------------------------------------------------------------- sockets

def bind_udp(port: int, workers: int = 1) -> tuple[list, list]:
    """UDP sockets on `port` (0: a random one), one per worker, for IPv4
    and, where the machine has IPv6, IPv6 (v6-only, same port); several
    per family share the port with SO_REUSEPORT, and the kernel spreads
    peers over them. The IPv6 list holds None where there is no IPv6.
    OSError (EADDRINUSE, ...) with nothing left open."""
    def make(family: int, addr: str, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if workers > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((addr, port))
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        _grow_buffers(s)
        return s

    v4: list = []
    v6: list = []
    try:
        for _ in range(workers):
            v4.append(make(socket.AF_INET, "0.0.0.0", port))
            port = v4[0].getsockname()[1]
        for _ in range(workers):
            try:
                v6.append(make(socket.AF_INET6, "::", port))
            except OSError:
                if v6:
                    raise
                v6 = [None] * workers  # no IPv6 here: IPv4 alone
                break
    except OSError:
        for s in v4 + v6:
            if s is not None:
                s.close()
        raise
    return v4, v6


def open_udp(port: int, workers: int = 1) -> tuple[list, list]:
    """bind_udp for `up`: UpError when the port cannot be had."""
    try:
        return bind_udp(port, workers)
    except OSError as e:
        raise UpError(f"cannot listen on UDP port {port}: {e.strerror or e}") from None


def _set_steps(ops: list) -> list[tuple]:
    """A parsed UAPI set as (line, None) for a device line and
    (SelectPeer, the peer's lines up to the next one) for each peer."""
    steps: list[tuple] = []
    for op in ops:
        if isinstance(op, uapi.SelectPeer):
            steps.append((op, []))
        elif steps and steps[-1][1] is not None:
            steps[-1][1].append(op)
        else:
            steps.append((op, None))
    return steps


def _dup(sockets: list) -> list[int]:
    return [os.dup(s.fileno()) if s is not None else -1 for s in sockets]


SOCKET_BUFFER_BYTES = 8 << 20


def _grow_buffers(s: socket.socket) -> None:
    """Bursts from many peers overflow the default 208 KiB buffers long
    before the worker falls behind on average (wireguard-go asks for 7 MiB
    too). FORCE goes past net.core.rmem_max, as root may."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)


# What the first keys need locked (a chunk of keypairs, and room to spare).
MEMLOCK_NEEDED = 512 << 10


def check_memlock(needed: int = MEMLOCK_NEEDED) -> None:
    """Keys live only in locked memory: refuse to come up (UpError) when
    this process cannot lock even the first of it, rather than come up
    and fail every handshake. RLIMIT_MEMLOCK bounds it unless the process
    has CAP_IPC_LOCK (root has)."""
    import ctypes
    import mmap
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    buf = mmap.mmap(-1, needed)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(needed)) == 0:
            libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(needed))
            return
        err = ctypes.get_errno()
    finally:
        buf.close()
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"
    raise UpError(f"keys are kept in locked memory, and this process cannot lock "
                  f"{needed >> 10} KiB ({os.strerror(err)}; RLIMIT_MEMLOCK is {limit}, "
                  f"CAP_IPC_LOCK lifts it): raise the limit (systemd: LimitMEMLOCK=infinity, "
                  f"or ulimit -l)")


def uapi_socket_in_use(path: Path) -> bool:
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


# ---------------------------------------------------------------- the daemon

class Daemon:
    def __init__(self, conf: cfg.Config):
        self.conf = conf
        self.name = conf.name
        self.iface: Optional[Interface] = None
        self.sockets: list = []
        self.uapi_path = UAPI_DIR / f"{self.name}.sock"
        self.pid_path = RUN_DIR / f"{self.name}.pid"
        self.status_path = RUN_DIR / f"{self.name}.status.sock"
        self.api_path = RUN_DIR / f"{self.name}.api.sock"
        self.api: Optional[Controller] = None
        self._api_server: Optional[ApiServer] = None
        self._api_tls = None
        self.backend = "socket"
        self.xdp: Optional[XdpPlumbing] = None
        self.outer_routes: Optional[OuterRoutes] = None
        self._local_due = 0.0  # when the XDP programs' local addresses are next refreshed
        self._links: dict = {}  # role -> (name, ifindex), see _watch_links
        self._tun_due = 0.0     # when the TUN's queue drops are next read
        self.tun_queue: Optional[dict] = None   # see _check_tun_queue
        self.exit_status = 0    # of `dataplane up`: 1 when a link was removed from under it
        self.workers = 1
        self.mtu = DEFAULT_MTU
        self._server: Optional[asyncio.AbstractServer] = None
        self._status_server: Optional[asyncio.AbstractServer] = None
        self.test_clock = bool(os.environ.get("DATAPLANE_TEST_CLOCK"))
        self._events_again = False
        self._stop: Optional[asyncio.Event] = None

    # -- bring up / down

    def up(self) -> None:
        """Everything or nothing: on failure what was done is undone.
        Backend = auto tries the XDP backend and, when the kernel or the
        interfaces do not allow it, falls back to the socket backend; one
        log line says which backend runs and why."""
        conf = self.conf
        if conf.dataplane.api_listen is not None:
            d = conf.dataplane
            try:
                self._api_tls = tls_context(d.api_certificate, d.api_certificate_key,
                                            d.api_client_ca)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise UpError(f"ApiListen: cannot load the TLS files: {e}") from None
        if uapi_socket_in_use(self.uapi_path):
            raise UpError(f"{self.name} is already up (its UAPI socket answers)")
        check_memlock()
        with IPRoute() as ipr:
            if remove_stale_inner_link(ipr, self.name):
                log.info("%s: removed the inner veth pair that a killed daemon left behind",
                         self.name)
            elif ipr.link_lookup(ifname=self.name):
                raise UpError(f"an interface named {self.name} already exists")
        choice = conf.dataplane.backend
        if choice in ("xdp", "auto"):
            try:
                how = self._up("xdp")
            except XdpUnavailable as e:
                if choice == "xdp":
                    raise UpError(f"Backend = xdp: {e}") from None
                self._up("socket")
                # one line, whatever the loader's message holds
                log.info("backend: socket (xdp unavailable: %s)", " ".join(str(e).split()))
                if conf.dataplane.busy_poll_us:
                    log.warning("BusyPoll = %d ignored: the socket backend has no AF_XDP "
                                "sockets to busy-poll", conf.dataplane.busy_poll_us)
            else:
                log.info("backend: xdp on %s (%s)", ", ".join(self.xdp.wan), how)
                if conf.dataplane.busy_poll_us:
                    log.info("busy polling: workers poll their AF_XDP sockets for %d us "
                             "before they sleep, and ask the kernel to receive in their "
                             "threads where the driver allows it (`dataplane show` says "
                             "where it does)", conf.dataplane.busy_poll_us)
        else:
            self._up("socket")
            log.info("backend: socket (Backend = socket)")
        log.info("%s is up: listening on UDP port %d, %d peer(s), backend %s, %d worker(s), "
                 "crypto %s", self.name, self.iface.listen_port, len(conf.peers), self.backend,
                 self.workers, crypto.active())

    def _workers_wanted(self) -> int:
        d = self.conf.dataplane
        wanted = d.workers or d.queues or 1
        if d.queues and d.workers and d.queues != d.workers:
            log.warning("Queues = %d, Workers = %d: one worker per queue; using %d",
                        d.queues, d.workers, d.workers)
        return wanted

    def _xdp_layout(self) -> tuple[list, str]:
        """The workers' (WAN interface, receive queue) and how the WAN
        interfaces were chosen; XdpUnavailable when there are none."""
        d = self.conf.dataplane
        wan = wan_interfaces(d.interfaces, own=[self.name])
        how = "Interfaces" if d.interfaces else \
            "every interface with a global address; [DataPlane] Interfaces chooses"
        queues = {ifname: rx_queues(ifname) for ifname in wan}
        wanted = self._workers_wanted()
        layout, unserved = worker_layout(wan, queues, wanted, lib.DP_DEVICE_MAX_WORKERS)
        if len(layout) < wanted:
            log.warning("%s: %d receive queue(s) in all: running %d worker(s), not %d",
                        ", ".join(wan), sum(queues.values()), len(layout), wanted)
        if unserved:
            log.warning("receive queues without a worker (their WireGuard traffic takes the "
                        "kernel's UDP path; raise Workers): %s",
                        ", ".join(f"{i} queue {q}" for i, q in unserved))
        return layout, how

    def _up(self, backend: str) -> str:
        """Brings the interface up on one backend; on failure everything
        done so far is undone. XdpUnavailable when the XDP backend cannot
        run here (nothing left attached); for xdp, returns how the WAN
        interfaces were chosen."""
        conf = self.conf
        self.backend = backend
        how = ""
        if backend == "xdp":
            layout, how = self._xdp_layout()
            self.workers = len(layout)
        else:
            # One worker per TUN queue. One by default: on a small machine
            # that shares its cores with other work it did best (measured
            # with bench tunnel on 2 cores); a dedicated exit node sets one
            # per core.
            self.workers = min(self._workers_wanted(), lib.DP_DEVICE_MAX_WORKERS)
        mtu = self.mtu = conf.interface.mtu or DEFAULT_MTU
        try:
            workers = self.workers
            v4, v6 = open_udp(conf.interface.listen_port or 0, workers)
            self.sockets = [s for s in v4 + v6 if s is not None]
            port = v4[0].getsockname()[1]
            if backend == "xdp":
                self.xdp = XdpPlumbing(self.name, mtu, port, layout)
                macs = self.xdp.create_inner_link()
                tun_fds, vnet = [-1] * workers, False
            else:
                # DATAPLANE_TUN_OFFLOADS=0 turns TSO off, to measure what it brings
                tun_fds, vnet = open_tun(self.name, queues=workers,
                                         offloads=os.environ.get("DATAPLANE_TUN_OFFLOADS") != "0")
            max_peers, slots_log2 = table_sizes(len(conf.peers), conf.dataplane.max_peers)
            if len(conf.peers) > max_peers:
                raise UpError(f"{len(conf.peers)} peers in the file, but [DataPlane] MaxPeers "
                              f"is {max_peers}")
            device = Device(tun_fds, _dup(v4), _dup(v6), mtu, max_peers=max_peers,
                            index_table_log2=slots_log2, tun_vnet_hdr=vnet,
                            replay_window=conf.dataplane.replay_window)
            if self.xdp is not None:
                try:
                    for w, (ifname, queue) in enumerate(layout):
                        device.attach_xsk(w, ifname, queue, self.xdp.peer_name, w, macs[0],
                                          macs[1])
                    if conf.dataplane.busy_poll_us:
                        device.xsk_busy_poll(conf.dataplane.busy_poll_us)
                    self.xdp.set_wire(conf.interface.obfuscation,
                                      conf.dataplane.accept_plain_wireguard)
                    self.xdp.attach(device)
                except (DeviceError, XdpUnavailable) as e:
                    device.close()
                    raise XdpUnavailable(str(e)) from None
                self.outer_routes = OuterRoutes(device, self.xdp.wan, port)
            self.iface = Interface(self.name, conf.interface.private_key, device, port)
            self.set_obfuscation(conf.interface.obfuscation,
                                 conf.dataplane.accept_plain_wireguard)
            if self.outer_routes is not None:
                self.iface.on_need_route = lambda ep: self.outer_routes.want(ep.address)
            self._apply_fwmark(conf.interface.fwmark)
            for pc in conf.peers:
                self._configure_peer(pc)
            self._configure_link(mtu)
            if conf.dataplane.realtime_priority:
                device.set_realtime(conf.dataplane.realtime_priority)
            self._watch_links()
            try:
                device.start()
            except DeviceError as e:
                if e.errno == errno_mod.EPERM and conf.dataplane.realtime_priority:
                    raise UpError(f"RealtimePriority = {conf.dataplane.realtime_priority}: the "
                                  f"kernel refused SCHED_FIFO for the workers (EPERM): that "
                                  f"needs CAP_SYS_NICE, and under a cgroup with real-time "
                                  f"group scheduling, a real-time budget for it") from None
                raise
        except BaseException:
            self.down()
            raise
        return how

    def _watch_links(self) -> None:
        """The interface index of every link the daemon depends on: the
        interface itself, and on the XDP backend our end of the inner veth
        pair and the WAN interfaces (see _check_links)."""
        names = {"interface": self.name}
        if self.xdp is not None:
            names["inner"] = self.xdp.peer_name
            names.update({f"wan {ifname}": ifname for ifname in self.xdp.wan})
        self._links = {role: (name, socket.if_nametoindex(name)) for role, name in names.items()}

    def _check_links(self) -> None:
        """A link removed from under the daemon (`ip link del`, a NIC gone):
        say which, and go down with exit status 1, the WAN interfaces left
        forwarding normally (so that a supervisor's restart serves the
        links there are now). A WAN interface renamed keeps its programs
        and sockets (they hold its index): only the name is followed."""
        for role, (name, index) in list(self._links.items()):
            try:
                now = socket.if_indextoname(index)
            except OSError:
                now = None
            if now == name:
                continue
            if now is None:
                what = {"interface": "the interface",
                        "inner": f"our end of the inner veth pair ({name})"}.get(
                            role, f"WAN interface {name}")
                log.error("%s: %s was removed from under the daemon: going down", self.name, what)
                self.exit_status = 1
                self._stop.set()
                return
            if role.startswith("wan "):
                log.warning("%s: WAN interface %s is now called %s", self.name, name, now)
                self.xdp.rename_wan(name, now)
                if self.outer_routes is not None:
                    self.outer_routes.rename_wan(name, now)
            else:
                log.warning("%s: %s was renamed %s; `wg` and `dataplane` still know it as %s",
                            self.name, name, now, self.name)
            self._links[role] = (now, index)
        if self.xdp is not None:
            for ifname, error in self.xdp.reattach_detached():
                if error is None:
                    log.warning("%s: the XDP program on %s was detached by another process; "
                                "attached again", self.name, ifname)
                    continue
                log.error("%s: the XDP program on %s was detached by another process and "
                          "cannot be attached again (%s): going down", self.name, ifname, error)
                self.exit_status = 1
                self._stop.set()
                return

    def _configure_peer(self, pc: cfg.PeerConfig) -> Peer:
        iface = self.iface
        peer = iface.add_peer(pc.public_key)
        peer.preshared_key = pc.preshared_key
        iface.set_persistent_keepalive(peer, pc.persistent_keepalive)
        iface.replace_allowed_ips(peer, pc.allowed_ips)
        if pc.endpoint is not None:
            iface.set_endpoint(peer, resolve(pc.endpoint))
        return peer

    def _configure_link(self, mtu: int) -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, mtu=mtu)
            for addr in self.conf.interface.addresses:
                ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen,
                         **nodad(addr))
            ipr.link("set", index=idx, state="up")
        self.sync_routes()

    def sync_routes(self) -> None:
        """A route into the interface for every peer's allowed IPs, as
        wg-quick adds them (default routes are left to the operator)."""
        if self.iface is None:
            return
        # pyroute2's IPRoute runs an event loop of its own, which cannot
        # nest in ours: inside the daemon's loop, do netlink in a thread.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._sync_routes()
            return
        errors = []
        t = threading.Thread(target=lambda: _capture(self._sync_routes, errors))
        t.start()
        t.join()
        if errors:
            raise errors[0]

    def _sync_routes(self) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                return
            idx = found[0]
            have, connected = set(), []
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family, oif=idx):
                    dst = r.get_attr("RTA_DST")
                    if not dst or r.get("dst_len") is None:
                        continue
                    net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                    if r.get("proto") == 3:  # RTPROT_BOOT: ours
                        have.add(net)
                    elif r.get("proto") == 2 and r.get("type") == 1:  # kernel, unicast
                        connected.append(net)  # the prefix of an Address line
            want = set()
            for peer in self.iface.peers.values():
                for net in self.iface.device.allowed_ips(peer.id):
                    if net.prefixlen == 0:
                        log.warning("%s: not adding a default route for a peer; route it "
                                    "yourself", self.name)
                        continue
                    # As wg-quick: an allowed IP that the interface's own
                    # prefix already routes here needs no route of its own
                    # (thousands of /32s in a /16 stay one route).
                    if any(net.version == c.version and net.subnet_of(c) for c in connected):
                        continue
                    want.add(net)
            for net in want - have:
                try:
                    ipr.route("add", dst=str(net), oif=idx, proto=3)
                except Exception as e:  # noqa: BLE001 - e.g. the route exists already
                    if "exists" not in str(e).lower():
                        log.warning("%s: cannot add a route for %s: %s", self.name, net, e)
            for net in have - want:
                try:
                    ipr.route("del", dst=str(net), oif=idx)
                except Exception:  # noqa: BLE001
                    pass

    def _apply_fwmark(self, mark: int) -> None:
        for s in self.sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if self.iface:
            self.iface.fwmark = mark

    def down(self) -> None:
        if self.outer_routes is not None:
            self.outer_routes.close()  # waits for a refresh in flight
        if self.iface is not None:
            self.iface.device.stop()
            self.iface.device.close()  # wipes keys; closing the TUN removes the link and routes
            if self.iface.private_key is not None:
                self.iface.private_key.wipe()
            self.iface = None
        if self.xdp is not None:
            self.xdp.close()  # programs detached, the inner veth pair (and its routes) gone
            self.xdp = None
        self.outer_routes = None
        for s in self.sockets:
            s.close()
        self.sockets = []
        for path in (self.uapi_path, self.pid_path, self.status_path, self.api_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- serving

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        UAPI_DIR.mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        for path in (self.uapi_path, self.status_path):
            if path.exists():
                path.unlink()  # stale: up() checked that nobody answers
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._uapi_client, str(self.uapi_path))
            self._status_server = await asyncio.start_unix_server(self._status_client,
                                                                  str(self.status_path))
        finally:
            os.umask(old)
        for path in (self.uapi_path, self.status_path):
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        await self._start_api()
        self.pid_path.write_text(f"{os.getpid()}\n")
        loop.add_reader(self.iface.device.event_fd, self._on_events)
        ticker = asyncio.create_task(self._ticker())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            loop.remove_reader(self.iface.device.event_fd)
            self._server.close()
            self._status_server.close()
            if self._api_server is not None:
                await self._api_server.stop()
            log.info("%s: going down", self.name)

    async def _start_api(self) -> None:
        """The control-plane API: NAME.api.sock (0600), and TCP with mutual
        TLS when ApiListen is set."""
        d = self.conf.dataplane
        self.api = Controller(self.iface, self.routes_changed, self.interface_info,
                              self._api_listen_port, self._apply_fwmark, self.set_obfuscation)
        metrics = Metrics(self.name, lambda: self.iface, self.status,
                          lambda: dict(self.api.counters))
        self._api_server = ApiServer(self.api, metrics, self.api_path, d.api_listen,
                                     self._api_tls)
        try:
            await self._api_server.start()
        except OSError as e:
            await self._api_server.stop()
            self._api_server = None
            raise UpError(f"cannot serve the API: {e}") from None
        log.info("%s: API on %s%s", self.name, self.api_path,
                 f" and TCP port {d.api_listen[1]} (mutual TLS)" if d.api_listen else "")

    def interface_info(self) -> dict:
        iface = self.iface
        return {"name": self.name,
                "public_key": iface.private_key.public_key().base64() if iface.private_key
                else None,
                "listen_port": iface.listen_port, "fwmark": iface.fwmark,
                "backend": self.backend, "workers": self.workers, "peers": len(iface.peers),
                "max_peers": iface.device.max_peers, "status": self.status(per_peer=False)}

    def _api_listen_port(self, port: int) -> None:
        try:
            self._set_listen_port(port)
        except OSError as e:
            raise ApiError(409 if e.errno in (errno_mod.EOPNOTSUPP, errno_mod.EADDRINUSE) else 400,
                           f"listen_port: {e.strerror or e}", "listen_port") from None

    def routes_changed(self, added: list, removed: list) -> None:
        """Routes for allowed IPs the API added or removed (as sync_routes,
        for just these prefixes); most fall inside an Address prefix and
        need no netlink at all."""
        # (version, width, network as an integer, length) of each Address;
        # integers, because a bulk push brings 10^5 prefixes at once
        connected = [(a.network.version, a.network.max_prefixlen,
                      int(a.network.network_address), a.network.prefixlen)
                     for a in self.conf.interface.addresses]

        def needs_route(p) -> bool:
            version, addr, cidr = p
            if cidr == 0:
                return False
            n = int.from_bytes(addr, "big")
            return not any(v == version and length <= cidr and
                           n >> (width - length) == net >> (width - length)
                           for v, width, net, length in connected)
        # a prefix removed from one peer may have moved to another
        held = self.iface.prefix_owner
        if any(map(needs_route, added)) or \
                any(needs_route(p) and p not in held for p in removed):
            self.sync_routes()

    def _on_events(self) -> None:
        more = False
        try:
            more = self.iface.handle_events()
            if self.xdp is not None:
                self.xdp.follow_load(self.iface.under_load())
        except Exception:  # noqa: BLE001 - one bad event must not stop the daemon
            log.exception("%s: error while handling events", self.name)
        if more and not self._events_again:
            # the eventfd was cleared: come back soon, after the UAPI and
            # timers had their turn
            self._events_again = True
            asyncio.get_running_loop().call_soon(self._on_events_again)

    def _on_events_again(self) -> None:
        self._events_again = False
        self._on_events()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self._check_links()
                self.iface.tick()
                if self.api is not None:
                    self.api.tick()
                self._follow_mtu()
                if self.xdp is not None:
                    self.xdp.follow_load(self.iface.under_load())
                if self.outer_routes is not None:
                    await asyncio.get_running_loop().run_in_executor(None,
                                                                     self.outer_routes.refresh)
                if self.xdp is None and time.monotonic() >= self._tun_due:
                    self._tun_due = time.monotonic() + TUN_CHECK_SECONDS
                    await asyncio.get_running_loop().run_in_executor(None,
                                                                     self._check_tun_queue)
                if self.xdp is not None and time.monotonic() >= self._local_due:
                    self._local_due = time.monotonic() + self.xdp.LOCAL_EVERY
                    await asyncio.get_running_loop().run_in_executor(None,
                                                                     self.xdp.refresh_local)
            except Exception:  # noqa: BLE001
                log.exception("%s: error in the timer tick", self.name)

    def _check_tun_queue(self) -> None:
        """The kernel drops what it would queue on the TUN for the workers
        when they have not read the queue in time (txqueuelen packets, a
        worker stalled or the CPU saturated): the interface's tx_dropped.
        Say so once per check that finds new drops, with how many, and
        keep the figures for the status."""
        try:
            with IPRoute() as ipr:
                link = ipr.link("get", index=self._links["interface"][1])[0]
        except Exception as e:  # noqa: BLE001 - figures missing, the tunnel is fine
            log.debug("%s: the TUN's counters: %s", self.name, e)
            return
        stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
        dropped, qlen = int(stats.get("tx_dropped", 0)), link.get_attr("IFLA_TXQLEN")
        before = self.tun_queue["dropped"] if self.tun_queue is not None else dropped
        self.tun_queue = {"dropped": dropped, "txqueuelen": qlen}
        if dropped > before:
            log.warning("%s: the kernel dropped %d packets bound for the tunnel: the TUN's "
                        "queue (txqueuelen %s) was full, the workers did not read it in time",
                        self.name, dropped - before, qlen)

    def _follow_mtu(self) -> None:
        """Padding follows the link's MTU when the operator changes it."""
        try:
            ifr = fcntl.ioctl(self.sockets[0], SIOCGIFMTU,
                              struct.pack("16si12x", self.name.encode(), 0))
        except OSError:
            return
        mtu = struct.unpack_from("16si", ifr)[1]
        if mtu != self.mtu:
            self.iface.device.set_mtu(mtu)
            self.mtu = mtu

    async def _status_client(self, reader, writer) -> None:
        # Tests only: with DATAPLANE_TEST_CLOCK set at start, a client may
        # first send "advance SECONDS" to move the clock forward, or "load
        # SECONDS" to hold the handshake path under load (cookie replies).
        if self.test_clock:
            try:
                line = await asyncio.wait_for(reader.readline(), 0.2)
            except asyncio.TimeoutError:
                line = b""
            words = line.split()
            if len(words) == 2 and words[0] == b"advance" and words[1].isdigit():
                lib.dp_device_test_advance_clock(int(words[1]) * 1_000_000_000)
                self.iface.tick()
            elif len(words) == 2 and words[0] == b"load" and words[1].isdigit():
                self.iface.under_load_until = self.iface.clock() + int(words[1]) * 1_000_000_000
                if self.xdp is not None:
                    self.xdp.follow_load(True)
        writer.write(json.dumps(self.status()).encode())
        await writer.drain()
        writer.close()

    # -- UAPI

    async def _uapi_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        framer = uapi.RequestReader()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    framer.close()
                    break
                try:
                    requests = framer.feed(data)
                except uapi.UapiError as e:
                    writer.write(e.response().encode())
                    break
                for req in requests:
                    writer.write(self.uapi_request(req).encode())
                await writer.drain()
        except (uapi.UapiError, ConnectionError):
            pass
        finally:
            writer.close()

    def uapi_request(self, req: uapi.Request) -> str:
        try:
            if req.operation == "get":
                return uapi.format_get(self.device_state())
            self.apply_set(uapi.parse_set(req.lines))
            return uapi.format_status(0)
        # Reasons never carry keys; those about an endpoint quote it, so the
        # log gets only their errno.
        except uapi.UapiError as e:
            reason = str(e) if not str(e).lower().startswith("endpoint") else \
                f"endpoint refused ({errno_mod.errorcode.get(e.errno, e.errno)})"
            log.info("%s: UAPI request refused: %s", self.name, reason)
            return e.response()
        except (ValueError, OSError) as e:
            code = getattr(e, "errno", None) or uapi.EINVAL
            log.info("%s: UAPI request failed (%s)", self.name, errno_mod.errorcode.get(code, code))
            return uapi.format_status(code)
        except Exception:  # noqa: BLE001 - a bug must not kill the connection silently
            log.exception("%s: UAPI request failed", self.name)
            return uapi.format_status(uapi.EIO)

    def device_state(self) -> uapi.DeviceState:
        iface = self.iface
        peers = []
        for peer in iface.peers.values():
            st = iface.stats(peer)
            ep = iface.device.endpoint(peer.id)
            peers.append(uapi.PeerState(
                public_key=peer.public_key, preshared_key=peer.preshared_key,
                endpoint=cfg.Endpoint(str(ep.address), ep.port) if ep else None,
                last_handshake_ns=peer.last_handshake_wall_ns, tx_bytes=st.tx_bytes,
                rx_bytes=st.rx_bytes, persistent_keepalive_interval=peer.persistent_keepalive,
                allowed_ips=tuple(iface.device.allowed_ips(peer.id))))
        return uapi.DeviceState(private_key=iface.private_key, listen_port=iface.listen_port,
                                fwmark=iface.fwmark, obfuscation=iface.obfuscation,
                                peers=tuple(peers))

    def apply_set(self, ops: list) -> None:
        """Apply a parsed `set` (parse_set checked each line) as a whole:
        everything that can refuse it is done before anything changes (the
        AmneziaWG lines checked together with the profile held, room for
        the new peers, endpoint host names, the new listen port
        bound), so that a refused set leaves the device as it was. The
        AmneziaWG lines go first: a peer the same set makes initiate uses
        the new profile."""
        iface = self.iface
        obf = None
        if any(isinstance(op, uapi.SetObfuscation) for op in ops):
            obf = uapi.merge_obfuscation(ops, iface.obfuscation)
            if iface.accept_plain:
                try:
                    obf.check_plain_alongside(lower=True)
                except ValueError as e:
                    raise uapi.UapiError(uapi.EINVAL, str(e)) from None
        endpoints = self._check_set_peers(ops)
        # only the last listen_port of a set counts: bind it now, install it
        # in its place below
        last_port = next((op for op in reversed(ops) if isinstance(op, uapi.SetListenPort)),
                          None)
        udp = None
        if last_port is not None:
            try:
                udp = self._bind_listen_port(last_port.port)
            except OSError as e:
                raise uapi.UapiError(e.errno or uapi.EIO,
                                     f"listen_port: {e.strerror or e}") from None
        try:
            if obf is not None and obf != iface.obfuscation:
                self.set_obfuscation(obf, iface.accept_plain)
            if self.api is not None:
                # what the API last put no longer says what these peers hold
                self.api.changed_elsewhere()
            routes_changed = False
            for op, lines in _set_steps(ops):
                if lines is not None:
                    routes_changed |= self._apply_peer(op.public_key, lines, endpoints)
                elif isinstance(op, uapi.SetPrivateKey):
                    iface.set_private_key(op.private_key)
                elif op is last_port:
                    if udp is not None:
                        self._install_udp(*udp)
                        udp = None
                elif isinstance(op, uapi.SetFwmark):
                    self._apply_fwmark(op.fwmark)
                elif isinstance(op, uapi.ReplacePeers):
                    for key in list(iface.peers):
                        iface.remove_peer(key)
                    routes_changed = True
        finally:
            for s in (udp[0] + udp[1]) if udp else ():
                if s is not None:
                    s.close()
        if routes_changed:
            self.sync_routes()

    def _check_set_peers(self, ops: list) -> dict[int, object]:
        """What the peer lines of a set would do to the peer count, played
        through without changing anything: UapiError if an endpoint does
        not resolve or the peers would not fit. The resolved endpoints, by
        id() of their SetEndpoint."""
        iface = self.iface
        present = set(iface.peers)
        own = iface.private_key.public_key() if iface.private_key is not None else None
        endpoints: dict[int, object] = {}
        for op, lines in _set_steps(ops):
            if lines is not None:
                key = op.public_key
                if any(isinstance(o, uapi.RemovePeer) for o in lines):
                    present.discard(key)
                    continue
                if (any(isinstance(o, uapi.UpdateOnly) for o in lines) and key not in present) \
                        or key == own:
                    continue
                present.add(key)  # (parse_set refused low-order keys)
                for o in lines:
                    if isinstance(o, uapi.SetEndpoint):
                        try:
                            endpoints[id(o)] = resolve(o.endpoint)
                        except (OSError, ValueError):
                            raise uapi.UapiError(uapi.EINVAL, "endpoint: does not resolve") \
                                from None
            elif isinstance(op, uapi.SetPrivateKey):
                key = op.private_key
                if key is not None and not key.is_zero():
                    own = key.public_key()
                    present.discard(own)
            elif isinstance(op, uapi.ReplacePeers):
                present = set()
        if len(present) > iface.device.max_peers:
            raise uapi.UapiError(errno_mod.ENOSPC, f"{len(present)} peers would not fit: "
                                                   f"MaxPeers is {iface.device.max_peers}")
        return endpoints

    def _apply_peer(self, key, ops: list, endpoints: dict) -> bool:
        """One peer's lines of a set; `endpoints`: _check_set_peers's."""
        iface = self.iface
        if any(isinstance(op, uapi.RemovePeer) for op in ops):
            iface.remove_peer(key)
            return True
        if any(isinstance(op, uapi.UpdateOnly) for op in ops) and key not in iface.peers:
            return False
        if iface.private_key is not None and key == iface.private_key.public_key():
            return False  # our own key: wireguard-go skips such a peer as well
        peer = iface.add_peer(key)
        changed = False
        for op in ops:
            if isinstance(op, uapi.SetPresharedKey):
                peer.preshared_key = op.preshared_key
            elif isinstance(op, uapi.SetEndpoint):
                iface.set_endpoint(peer, endpoints[id(op)])
            elif isinstance(op, uapi.SetPersistentKeepalive):
                was = peer.persistent_keepalive
                iface.set_persistent_keepalive(peer, op.interval)
                if op.interval and not was and not iface.device.keepalive(peer.id):
                    iface.initiate(peer)
            elif isinstance(op, uapi.ReplaceAllowedIPs):
                iface.clear_allowed_ips(peer)
                changed = True
            elif isinstance(op, uapi.AddAllowedIP):
                iface.add_allowed_ip(peer, op.network)
                changed = True
        return changed

    def set_obfuscation(self, obf: Obfuscation, accept_plain: bool) -> None:
        """The interface's AmneziaWG profile (checked by the caller:
        Obfuscation.check, and check_plain_alongside with accept_plain), in
        the control plane, the workers and the WAN program at once."""
        self.iface.set_obfuscation(obf, accept_plain)
        if self.xdp is not None:
            self.xdp.set_wire(obf, bool(accept_plain) and not obf.profile_is_plain)

    def _set_listen_port(self, port: int) -> None:
        """OSError (EADDRINUSE, EOPNOTSUPP on the XDP backend, ...) with
        the old port kept."""
        udp = self._bind_listen_port(port)
        if udp is not None:
            self._install_udp(*udp)

    def _bind_listen_port(self, port: int) -> Optional[tuple[list, list]]:
        """The sockets for a new listen port, not yet in use (None: it is
        the port we hold)."""
        if port and port == self.iface.listen_port:
            return None
        if self.xdp is not None:
            # the XDP program was loaded for the port (read-only data)
            raise OSError(errno_mod.EOPNOTSUPP, "the XDP backend cannot change its listen port "
                                                "while it runs; restart with the new ListenPort")
        return bind_udp(port, self.workers)

    def _install_udp(self, v4: list, v6: list) -> None:
        self.iface.device.set_udp(_dup(v4), _dup(v6))
        for s in self.sockets:
            s.close()
        self.sockets = [s for s in v4 + v6 if s is not None]
        self.iface.listen_port = v4[0].getsockname()[1]
        self._apply_fwmark(self.iface.fwmark)

    def _xsk_statistics(self) -> dict[str, int]:
        """The kernel's AF_XDP socket counters summed over the workers:
        xsk_wan_rx_ring_full, xsk_inner_rx_dropped, ... (see
        Device.xsk_statistics)."""
        out: dict[str, int] = {}
        for w in range(self.workers):
            try:
                per_side = self.iface.device.xsk_statistics(w)
            except OSError as e:  # figures missing, not a failed status request
                log.debug("%s: AF_XDP statistics of worker %d: %s", self.name, w, e)
                continue
            for side, stats in per_side.items():
                for name, value in stats.items():
                    key = f"xsk_{side}_{name}"
                    out[key] = out.get(key, 0) + value
        return out

    def status(self, per_peer: bool = True) -> dict:
        """Our own figures beyond what `wg` shows (for `dataplane show`)."""
        peers = {}
        for peer in (self.iface.peers.values() if per_peer else ()):
            st = self.iface.stats(peer)
            peers[str(peer.public_key)] = {"keypairs": st.keypairs, "staged": st.staged,
                                           "current_index": st.current_local_index,
                                           "rx_packets": st.rx_packets,
                                           "tx_packets": st.tx_packets}
        xdp_counters, wan = None, {}
        if self.xdp is not None:
            xdp_counters = {**self.xdp.counters(), **self.iface.device.path_stats(),
                            **self._xsk_statistics(),
                            "outer_routes": len(self.outer_routes.installed),
                            "local_addresses": self.xdp.local_addresses}
            # each WAN interface: the queues its workers serve, its program's counters
            for ifname, counters in self.xdp.interface_counters().items():
                wan[ifname] = {"queues": [q for i, q in self.xdp.layout if i == ifname],
                               "xdp": counters}
        memory = getattr(self.iface.device, "memory", None)
        busy_poll = None
        if self.xdp is not None:
            # what the kernel holds, not what the file asked for
            busy_poll = {"us": self.conf.dataplane.busy_poll_us,
                         "sockets": [self.iface.device.xsk_socket_options(w)
                                     for w in range(self.workers)]}
        return {"backend": self.backend, "workers": self.workers, "xdp": xdp_counters,
                "obfuscation": self.iface.obfuscation.as_json(),
                "accept_plain_wireguard": self.iface.accept_plain,
                # the ChaCha20-Poly1305 implementation the CPU chose
                "crypto": crypto.active(),
                "wan": wan, "busy_poll": busy_poll,
                # socket backend: what the kernel dropped because the TUN's
                # queue to the workers was full (as of the last check)
                "tun_queue": self.tun_queue,
                # what the kernel holds for the worker threads
                "scheduling": self.iface.device.worker_scheduling(),
                "native_memory": memory() if memory is not None else None,
                "drops": self.iface.device.drops(),
                "handshake": dict(self.iface.counters), "peer_state": peers}


def _capture(fn, errors: list) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - re-raised by the caller
        errors.append(e)


def run_up(path: str) -> int:
    try:
        conf = cfg.load_config(path)
    except (cfg.ConfigError, OSError) as e:
        log.error("%s", e)
        return 1
    for warning in conf.warnings:
        log.warning("%s", warning)
    daemon = Daemon(conf)
    try:
        daemon.up()
    except (UpError, OSError) as e:
        log.error("%s: cannot bring the interface up: %s", conf.name, e)
        return 1
    try:
        asyncio.run(daemon.serve())
    except UpError as e:
        log.error("%s: %s", conf.name, e)
        return 1
    finally:
        daemon.down()
        log.info("%s is down", conf.name)
    return daemon.exit_status
