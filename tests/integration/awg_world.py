"""Worlds for AmneziaWG tests: our exit node (`dataplane up` with an
AmneziaWG profile in its file) and clients in namespaces of their own,
each on its own veth link to the exit node: amneziawg-go ones, and
Debian's wireguard-go for plain WireGuard on the same port."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from dataplane import amneziawg_go
from dataplane.amneziawg_go import AmneziaWGGo
from dataplane.keys import PrivateKey
from dataplane.launch import dataplane_exe, start_daemon
from dataplane.obfuscation import Obfuscation
from dataplane.topology import Topology
from dataplane.wireguard_go import WireGuardGo

EXIT_PORT = 40820          # not 51820: nDPI labels that port WireGuard by itself
CLIENT_PORT = 40900
EXIT_INNER = ("10.230.0.1/24", "fd00:230::1/64")

# Two profiles of the kind AmneziaVPN hands out: fixed headers with odd
# paddings, and header ranges with every padding set, junk and signature
# packets (the client's alone: J and I are the initiator's).
FIXED = Obfuscation.from_settings({
    "Jc": "3", "Jmin": "10", "Jmax": "50", "S1": "17", "S2": "23", "S3": "9", "S4": "3",
    "H1": "1322545867", "H2": "2079419829", "H3": "864123995", "H4": "3355713651"})
RANGES = Obfuscation.from_settings({
    "Jc": "5", "Jmin": "40", "Jmax": "970", "S1": "77", "S2": "31", "S3": "25", "S4": "13",
    "H1": "100000000-100999999", "H2": "200000000-200000063", "H3": "300000000-300999999",
    "H4": "400000000-499999999",
    "I1": "<b 0xc0ffee17><r 12><t>", "I2": "<rc 20><rd 8>", "I3": "<r 64>"})


def server_side(obf: Obfuscation) -> Obfuscation:
    """What an exit node configures: S and H (J and I are the client's)."""
    keep = {k: v for k, v in obf.settings().items() if k[0] in "sh"}
    return Obfuscation.from_settings(keep)


def needs_amneziawg_go() -> None:
    try:
        amneziawg_go.binary()
    except amneziawg_go.AmneziaWGUnavailable as e:
        pytest.skip(f"amneziawg-go: {e}")


@dataclass
class Client:
    kind: str                     # "amneziawg-go" or "wireguard-go"
    obf: Optional[Obfuscation]    # amneziawg-go's profile (None: plain)
    ns: str = ""
    n: int = 0
    key: Optional[PrivateKey] = None
    proc: object = None
    ifname: str = ""
    veth: str = ""                # the client's end of its link to the exit node

    @property
    def outer(self) -> tuple[str, str]:
        return f"10.23{self.n + 1}.0.1", f"fd00:23{self.n + 1}::1"

    @property
    def exit_outer(self) -> tuple[str, str]:
        return f"10.23{self.n + 1}.0.2", f"fd00:23{self.n + 1}::2"

    @property
    def inner(self) -> tuple[str, str]:
        return f"10.230.0.{10 + self.n}", f"fd00:230::{10 + self.n:x}"


class AwgWorld:
    def __init__(self, topo: Topology, tmp: Path, backend: str, exit_obf: Obfuscation,
                 clients: list[Client], accept_plain: bool = False,
                 exit_initiates: bool = False, test_clock: bool = False,
                 extra_dataplane: str = ""):
        self.topo, self.tmp, self.backend = topo, tmp, backend
        self.exit_ns = topo.namespace("x")
        self.exit_key = PrivateKey.generate()
        self.clients = clients
        tag = f"{os.getpid() % 10000}"
        self.name = f"dpa{tag}"
        for n, c in enumerate(clients):
            c.n, c.ns, c.key = n, topo.namespace(f"c{n}"), PrivateKey.generate()
            c.ifname = f"awc{tag}{n}" if c.kind == "amneziawg-go" else f"wgc{tag}{n}"
            c.veth, _ = topo.link(c.ns, self.exit_ns, [f"{c.outer[0]}/24", f"{c.outer[1]}/64"],
                                  [f"{c.exit_outer[0]}/24", f"{c.exit_outer[1]}/64"])
        conf = ["[Interface]", f"PrivateKey = {self.exit_key.reveal_base64()}",
                f"ListenPort = {EXIT_PORT}", f"Address = {', '.join(EXIT_INNER)}"]
        conf += exit_obf.file_lines()
        for c in clients:
            conf += ["", "[Peer]", f"PublicKey = {c.key.public_key()}",
                     f"AllowedIPs = {c.inner[0]}/32, {c.inner[1]}/128"]
            if exit_initiates:
                conf.append(f"Endpoint = {c.outer[0]}:{CLIENT_PORT}")
        conf += ["", "[DataPlane]", f"Backend = {backend}"]
        if accept_plain:
            conf.append("AcceptPlainWireGuard = yes")
        conf += [line for line in extra_dataplane.splitlines() if line.strip()]
        self.conf_path = tmp / f"{self.name}.conf"
        self.conf_path.write_text("\n".join(conf) + "\n")
        self.conf_path.chmod(0o600)
        self.log_path = tmp / "daemon.log"
        env = dict(os.environ, DATAPLANE_TEST_CLOCK="1") if test_clock else None
        self.daemon = start_daemon(topo, self.exit_ns, self.conf_path, log=self.log_path, env=env)
        for c in clients:
            self._start_client(c, exit_initiates)

    def _start_client(self, c: Client, exit_initiates: bool) -> None:
        endpoint = None if exit_initiates else f"{c.exit_outer[0]}:{EXIT_PORT}"
        allowed = ["10.230.0.0/24", "fd00:230::/64"]
        if c.kind == "amneziawg-go":
            peer = AmneziaWGGo(self.topo, c.ns, c.ifname)
            peer.start()
            peer.configure(c.key.reveal(), listen_port=CLIENT_PORT,
                           **({"obfuscation": c.obf} if c.obf is not None else {}))
        else:
            peer = WireGuardGo(self.topo, c.ns, c.ifname)
            peer.start()
            peer.configure(c.key.reveal(), listen_port=CLIENT_PORT)
        peer.set_peer(self.exit_key.public_key(), allowed_ips=allowed, endpoint=endpoint)
        peer.up([f"{c.inner[0]}/24", f"{c.inner[1]}/64"])
        c.proc = peer

    # -- looking

    def ping(self, ns: str, dst: str, count: int = 3, timeout: int = 3):
        return self.topo.run(ns, ["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), dst],
                             check=False, timeout=count * timeout + 10)

    def status(self) -> dict:
        out = self.topo.run(self.exit_ns, [dataplane_exe(), "show", self.name, "--json"]).stdout
        return json.loads(out)[self.name]

    def drops(self) -> dict:
        return self.status().get("drops", {})

    def xdp_counters(self) -> dict:
        return self.status().get("xdp", {})

    def exit_dump(self) -> list[list[str]]:
        out = self.topo.run(self.exit_ns, ["wg", "show", self.name, "dump"]).stdout
        return [line.split("\t") for line in out.splitlines()[1:]]

    def advance_clock(self, seconds: int) -> dict:
        return self._test_command(f"advance {seconds}")

    def hold_under_load(self, seconds: int) -> dict:
        """The handshake path answers initiations without a valid MAC2
        with cookie replies for `seconds` (test clock worlds only)."""
        return self._test_command(f"load {seconds}")

    def _test_command(self, command: str) -> dict:
        import socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(f"/run/dataplane/{self.name}.status.sock")
            s.sendall(f"{command}\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def iperf3(self, c: Client, seconds: int = 2, reverse: bool = False) -> float:
        """Bits per second of TCP from the client to the exit node (or back)."""
        server = self.topo.popen(self.exit_ns, ["iperf3", "-s", "-1", "-B", "10.230.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        try:
            args = ["iperf3", "-c", "10.230.0.1", "-t", str(seconds), "-J"]
            out = self.topo.run(c.ns, args + (["-R"] if reverse else []),
                                timeout=seconds + 30).stdout
        finally:
            server.wait(timeout=10)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]

    def down(self) -> int:
        self.topo.run(self.exit_ns, [dataplane_exe(), "down", self.name])
        return self.daemon.wait(timeout=15)
