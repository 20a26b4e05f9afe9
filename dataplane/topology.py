"""Network namespaces and veth links built with pyroute2, for the tests,
`dataplane demo` and `dataplane bench`. A Topology removes everything it
created (processes, namespaces and the links in them) when closed, also
after an error or Ctrl-C (use it as a context manager)."""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import threading
from typing import Optional, Sequence

from pyroute2 import NetNS, netns
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD


class TopologyError(Exception):
    pass


def _ip_interface(addr: str):
    return ipaddress.ip_interface(addr)


def nodad(iface) -> dict:
    """Keyword arguments for pyroute2's addr("add") that put an IPv6
    address in without duplicate address detection. Neither accept_dad=0
    nor a NOARP interface (where the kernel does no DAD) is enough: the
    kernel still holds a new address tentative until its DAD work has run,
    and a bind() in that window fails with EADDRNOTAVAIL. The test worlds
    and the daemon's own interface use it."""
    return {"flags": IFA_F_NODAD} if iface.version == 6 else {}


class Topology:
    """Namespaces named `<prefix>-<role>`; the prefix is made unique per
    process so that parallel runs and stale leftovers do not collide."""

    def __init__(self, prefix: str = "dp"):
        self.prefix = f"{prefix}{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._links = 0

    # -- lifecycle

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.processes.clear()
        for name in reversed(self.namespaces):
            try:
                netns.remove(name)
            except OSError:
                pass
        self.namespaces.clear()

    # -- building

    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        if name in netns.listnetns():
            netns.remove(name)  # a leftover of a run that was killed
        netns.create(name)
        self.namespaces.append(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        # Addresses are ours alone: skip IPv6 duplicate address detection,
        # so they are usable at once.
        self.run(name, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"])
        return name

    def link(self, ns_a: str, ns_b: str, addrs_a: Sequence[str] = (),
             addrs_b: Sequence[str] = (), mtu: Optional[int] = None) -> tuple[str, str]:
        """A veth pair between two namespaces, up, with the given addresses
        (CIDR strings). Returns the two interface names."""
        self._links += 1
        a, b = f"v{self._links}a", f"v{self._links}b"
        with NetNS(ns_a) as ns:
            ns.link("add", ifname=a, kind="veth", peer={"ifname": b, "net_ns_fd": ns_b})
        for ns_name, ifname, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            with NetNS(ns_name) as ns:
                idx = ns.link_lookup(ifname=ifname)[0]
                for addr in addrs:
                    iface = _ip_interface(addr)
                    ns.addr("add", index=idx, address=str(iface.ip),
                            prefixlen=iface.network.prefixlen, **nodad(iface))
                if mtu:
                    ns.link("set", index=idx, mtu=mtu)
                ns.link("set", index=idx, state="up")
        return a, b

    def add_address(self, ns_name: str, ifname: str, addr: str) -> None:
        with NetNS(ns_name) as ns:
            iface = _ip_interface(addr)
            ns.addr("add", index=ns.link_lookup(ifname=ifname)[0], address=str(iface.ip),
                    prefixlen=iface.network.prefixlen, **nodad(iface))

    def set_up(self, ns_name: str, ifname: str, mtu: Optional[int] = None) -> None:
        with NetNS(ns_name) as ns:
            idx = ns.link_lookup(ifname=ifname)[0]
            if mtu:
                ns.link("set", index=idx, mtu=mtu)
            ns.link("set", index=idx, state="up")

    def add_route(self, ns_name: str, dst: str, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None:
        with NetNS(ns_name) as ns:
            kw = {"dst": dst}
            if gateway:
                kw["gateway"] = gateway
            if ifname:
                kw["oif"] = ns.link_lookup(ifname=ifname)[0]
            ns.route("add", **kw)

    # -- running things inside

    def run(self, ns_name: str, argv: Sequence[str], check: bool = True,
            timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", ns_name, *argv], capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise TopologyError(f"{' '.join(argv)} in {ns_name} exited {proc.returncode}: "
                                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def popen(self, ns_name: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """A long-running process in ns_name, stopped by close()."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns_name, *argv],
                                start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def socket(self, ns_name: str, family: int = socket.AF_INET,
               type: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
        """A socket that lives in ns_name (created by a thread that entered
        it, so this process's own namespace is untouched)."""
        return socket_in(ns_name, family, type, proto)


def socket_in(ns_name: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
              proto: int = 0) -> socket.socket:
    """A socket in namespace ns_name (see Topology.socket)."""
    result: dict = {}

    def make() -> None:
        try:
            netns.setns(ns_name)
            result["sock"] = socket.socket(family, type, proto)
        except Exception as e:  # reported to the caller below
            result["error"] = e

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in result:
        raise TopologyError(f"cannot create a socket in {ns_name}: {result['error']}")
    return result["sock"]
