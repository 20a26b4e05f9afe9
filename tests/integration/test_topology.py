"""The test worlds' own building blocks (dataplane.topology)."""
import socket

from pyroute2 import NetNS
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_TENTATIVE


def _flags(ns_name: str, ifname: str) -> dict:
    with NetNS(ns_name) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        return {a.get_attr("IFA_ADDRESS"): a.get_attr("IFA_FLAGS") or a["flags"]
                for a in ns.get_addr(index=idx)}


def test_ipv6_addresses_are_usable_as_soon_as_they_are_added(topo):
    # Without NODAD the kernel holds a new address tentative until its DAD
    # work has run, even with accept_dad=0, and a bind() in that window
    # fails with EADDRNOTAVAIL (a flaky test setup, seen in CI).
    a, b = topo.namespace("a"), topo.namespace("b")
    va, _ = topo.link(a, b, ["10.250.0.1/24", "fd00:250::1/64"], ["10.250.0.2/24"])
    for n in range(20):
        addr = f"fd00:250::{n + 10:x}"
        topo.add_address(a, va, f"{addr}/64")
        s = topo.socket(a, socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((addr, 0))  # at once: no EADDRNOTAVAIL
        s.close()
    flags = _flags(a, va)
    for n in range(20):
        f = flags[f"fd00:250::{n + 10:x}"]
        assert f & IFA_F_NODAD and not f & IFA_F_TENTATIVE, hex(f)
    assert flags["fd00:250::1"] & IFA_F_NODAD
