"""A hub-and-spokes world for the scenarios ported from the kernel's
WireGuard netns selftest: one `dataplane up` hub in its own namespace and
any number of peers, each in a namespace of its own on its own veth link
to the hub. A peer is Debian's wireguard-go or a second `dataplane up`;
both are driven with `wg`, so a test treats them alike.

Addresses, for peer i (1, 2, ...):
    outer  peer 10.210.i.1/24  fd00:210:i::1/64   hub 10.210.i.2  fd00:210:i::2
    inner  peer 10.220.0.(i+1) fd00:220::(i+1)    hub 10.220.0.1  fd00:220::1
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dataplane.keys import PresharedKey, PrivateKey, PublicKey
from dataplane.launch import start_daemon
from dataplane.topology import Topology
from dataplane.wireguard_go import WireGuardGo
from tests.integration.tunnel import DATAPLANE

HUB_PORT = 51820
PEER_PORT = 51900
HUB_INNER = ("10.220.0.1", "fd00:220::1")
INNER_ROUTES = ("10.220.0.0/24", "fd00:220::/64")   # what a peer sends into its tunnel


def peer_outer(i: int) -> tuple[str, str]:
    return f"10.210.{i}.1", f"fd00:210:{i}::1"


def hub_outer(i: int) -> tuple[str, str]:
    return f"10.210.{i}.2", f"fd00:210:{i}::2"


def peer_inner(i: int) -> tuple[str, str]:
    return f"10.220.0.{i + 1}", f"fd00:220::{i + 1:x}"


class WgInterface:
    """What a test does with any interface `wg` can drive."""

    topo: Topology
    ns: str
    name: str

    def wg(self, *args: str, stdin: Optional[str] = None, check: bool = True
           ) -> subprocess.CompletedProcess:
        return self.topo.run(self.ns, ["wg", *args], input=stdin, check=check)

    def dump(self) -> list[list[str]]:
        """`wg show NAME dump`: the interface line, then one line per peer."""
        out = self.wg("show", self.name, "dump").stdout
        return [line.split("\t") for line in out.splitlines()]

    def peer_dump(self, public_key: PublicKey) -> list[str]:
        for line in self.dump()[1:]:
            if line[0] == str(public_key):
                return line
        raise AssertionError(f"{self.name} has no peer {public_key}")

    def transfer(self, public_key: PublicKey) -> tuple[int, int]:
        """(received, sent) bytes of one peer, as `wg show` counts them."""
        line = self.peer_dump(public_key)
        return int(line[5]), int(line[6])

    def ping(self, dst: str, count: int = 2, timeout: int = 2, size: Optional[int] = None,
             df: bool = False, source: Optional[str] = None) -> subprocess.CompletedProcess:
        argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(timeout)]
        if size is not None:
            argv += ["-s", str(size)]
        if df:
            argv += ["-M", "do"]
        if source:
            argv += ["-I", source]
        return self.topo.run(self.ns, [*argv, dst], check=False, timeout=count * timeout + 10)


class DataplaneUp(WgInterface):
    """`dataplane up NAME.conf` in a namespace, from a config text."""

    def __init__(self, topo: Topology, ns: str, tmp: Path, name: str, conf: str):
        self.topo, self.ns, self.name = topo, ns, name
        self.conf_path = tmp / f"{name}.conf"
        self.conf_path.write_text(conf)
        self.conf_path.chmod(0o600)
        self.log_path = tmp / f"{name}.log"
        self.proc = start_daemon(topo, ns, self.conf_path, log=self.log_path)

    def status(self) -> dict:
        """`dataplane show NAME --json`: drop and handshake counters."""
        out = self.topo.run(self.ns, [DATAPLANE, "show", self.name, "--json"]).stdout
        return json.loads(out)[self.name]

    def drops(self) -> dict[str, int]:
        return self.status()["drops"]


class GoPeer(WgInterface):
    """Debian's wireguard-go with one peer: the hub."""

    def __init__(self, topo: Topology, ns: str, name: str):
        self.topo, self.ns, self.name = topo, ns, name
        self.go = WireGuardGo(topo, ns, name)
        self.go.start()


@dataclass
class Spoke:
    index: int
    ns: str
    key: PrivateKey
    veth: tuple[str, str]         # (the spoke's end, the hub's end)
    iface: Optional[WgInterface] = None     # set once the hub is up

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    @property
    def inner(self) -> tuple[str, str]:
        return peer_inner(self.index)

    @property
    def outer(self) -> tuple[str, str]:
        return peer_outer(self.index)


def hub_peer_section(spoke_key: PublicKey, i: int, psk: Optional[PresharedKey],
                     knows_endpoint: bool) -> list[str]:
    v4, v6 = peer_inner(i)
    lines = ["", "[Peer]", f"PublicKey = {spoke_key}", f"AllowedIPs = {v4}/32, {v6}/128"]
    if psk is not None:
        lines.append(f"PresharedKey = {psk.reveal_base64()}")
    if knows_endpoint:
        lines.append(f"Endpoint = {peer_outer(i)[0]}:{PEER_PORT}")
    return lines


class Hub:
    """The hub and its spokes, all up and configured; no handshake yet.

    kinds: one entry per spoke, "go" (wireguard-go) or "dataplane".
    mtu: the hub's MTU line (None: none, the default applies).
    hub_knows_endpoints: the hub's config has each spoke's Endpoint, so it
    can start handshakes itself.
    backend: the hub's Backend line (None: none, the default applies).
    wan_spokes: the spokes (1, 2, ...) whose links the hub names in its
    Interfaces line (None: no such line)."""

    def __init__(self, topo: Topology, tmp: Path, kinds: Sequence[str] = ("go",),
                 mtu: Optional[int] = None, hub_knows_endpoints: bool = True,
                 psk: bool = True, backend: Optional[str] = None,
                 wan_spokes: Optional[Sequence[int]] = None):
        self.topo, self.tmp = topo, tmp
        tag = f"{os.getpid() % 10000}"
        self.ns = topo.namespace("hub")
        self.key = PrivateKey.generate()
        self.psk = PresharedKey.generate() if psk else None
        self.spokes: list[Spoke] = []
        for i, _ in enumerate(kinds, start=1):
            ns = topo.namespace(f"p{i}")
            links = topo.link(ns, self.ns, [f"{a}/{n}" for a, n in zip(peer_outer(i), (24, 64))],
                              [f"{a}/{n}" for a, n in zip(hub_outer(i), (24, 64))])
            self.spokes.append(Spoke(i, ns, PrivateKey.generate(), links))
        conf = ["[Interface]", f"PrivateKey = {self.key.reveal_base64()}",
                f"ListenPort = {HUB_PORT}", f"Address = {HUB_INNER[0]}/24, {HUB_INNER[1]}/64"]
        if mtu is not None:
            conf.append(f"MTU = {mtu}")
        for s in self.spokes:
            conf += hub_peer_section(s.public_key, s.index, self.psk, hub_knows_endpoints)
        if backend is not None or wan_spokes is not None:
            conf += ["", "[DataPlane]"]
            if backend is not None:
                conf.append(f"Backend = {backend}")
            if wan_spokes is not None:
                conf.append("Interfaces = " + ", ".join(self.spokes[i - 1].veth[1]
                                                        for i in wan_spokes))
        self.iface = DataplaneUp(topo, self.ns, tmp, f"dph{tag}", "\n".join(conf) + "\n")
        for s, kind in zip(self.spokes, kinds):
            s.iface = self._start_spoke(s, kind, tag)

    @property
    def name(self) -> str:
        return self.iface.name

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def _start_spoke(self, s: Spoke, kind: str, tag: str) -> WgInterface:
        endpoint = f"{hub_outer(s.index)[0]}:{HUB_PORT}"
        if kind == "go":
            peer = GoPeer(self.topo, s.ns, f"wgp{tag}{s.index}")
            peer.go.configure(s.key.reveal(), listen_port=PEER_PORT)
            peer.go.set_peer(self.public_key, allowed_ips=list(INNER_ROUTES), endpoint=endpoint,
                             psk=self.psk.reveal() if self.psk else None)
            peer.go.up([f"{s.inner[0]}/24", f"{s.inner[1]}/64"])
            return peer
        if kind == "dataplane":
            conf = ["[Interface]", f"PrivateKey = {s.key.reveal_base64()}",
                    f"ListenPort = {PEER_PORT}", f"Address = {s.inner[0]}/24, {s.inner[1]}/64",
                    "", "[Peer]", f"PublicKey = {self.public_key}",
                    f"AllowedIPs = {', '.join(INNER_ROUTES)}", f"Endpoint = {endpoint}"]
            if self.psk:
                conf.append(f"PresharedKey = {self.psk.reveal_base64()}")
            return DataplaneUp(self.topo, s.ns, self.tmp, f"dpp{tag}{s.index}",
                               "\n".join(conf) + "\n")
        raise ValueError(f"unknown spoke kind {kind!r}: expected 'go' or 'dataplane'")

    def drops(self) -> dict[str, int]:
        return self.iface.drops()

    def key_file(self, key: PrivateKey) -> Path:
        """A key in a 0600 file, for `wg set ... private-key FILE`."""
        path = self.tmp / f"key-{key.public_key().base64()[:8].replace('/', '_')}"
        path.write_text(key.reveal_base64() + "\n")
        path.chmod(0o600)
        return path
