"""A two-namespace world for tunnel tests: a client running wireguard-go
and an exit node running `dataplane up`, linked by veth with IPv4 and IPv6."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from dataplane.keys import PresharedKey, PrivateKey
from dataplane.launch import start_daemon
from dataplane.topology import Topology
from dataplane.wireguard_go import UAPI_DIR, WireGuardGo  # noqa: F401 - UAPI_DIR for the tests

DATAPLANE = str(Path(sys.executable).parent / "dataplane")
OUTER = {"client": ["10.201.0.1/24", "fd00:201::1/64"], "exit": ["10.201.0.2/24", "fd00:201::2/64"]}
INNER = {"client": ["10.202.0.2/24", "fd00:202::2/64"], "exit": ["10.202.0.1/24", "fd00:202::1/64"]}
CLIENT_PORT = 51900
EXIT_PORT = 51820
# The exit node's backend when a test does not say; None: no Backend line,
# the default (auto: xdp where the kernel and the WAN veth allow it, as
# here). Test modules that run on every backend set it from a parametrized
# fixture (see test_tunnel.py).
BACKEND = None


class TunnelWorld:
    def __init__(self, topo: Topology, tmp: Path, outer: int = 4, psk: bool = True,
                 exit_knows_client_endpoint: bool = False, client_psk: Optional[bytes] = None,
                 extra_exit_conf: str = "", test_clock: bool = False,
                 backend: Optional[str] = None):
        self.topo, self.tmp = topo, tmp
        self.client_ns, self.exit_ns = topo.namespace("c"), topo.namespace("x")
        self.client_veth, self.exit_veth = topo.link(self.client_ns, self.exit_ns,
                                                     OUTER["client"], OUTER["exit"])
        self.exit_key, self.client_key = PrivateKey.generate(), PrivateKey.generate()
        self.psk = PresharedKey.generate() if psk else None
        tag = f"{os.getpid() % 10000}{outer}"
        self.name = f"dpx{tag}"
        exit_ip = OUTER["exit"][0 if outer == 4 else 1].split("/")[0]
        client_ip = OUTER["client"][0 if outer == 4 else 1].split("/")[0]
        fmt = (lambda ip, port: f"[{ip}]:{port}") if outer == 6 else (lambda ip, port: f"{ip}:{port}")
        conf = [
            "[Interface]",
            f"PrivateKey = {self.exit_key.reveal_base64()}",
            f"ListenPort = {EXIT_PORT}",
            f"Address = {', '.join(INNER['exit'])}",
            "",
            "[Peer]",
            f"PublicKey = {self.client_key.public_key()}",
            "AllowedIPs = 10.202.0.2/32, fd00:202::2/128",
        ]
        if self.psk:
            conf.append(f"PresharedKey = {self.psk.reveal_base64()}")
        if exit_knows_client_endpoint:
            conf.append(f"Endpoint = {fmt(client_ip, CLIENT_PORT)}")
        self.backend = backend or BACKEND
        if self.backend is None:
            pass  # the default
        elif "[DataPlane]" in extra_exit_conf:
            extra_exit_conf = extra_exit_conf.replace(
                "[DataPlane]\n", f"[DataPlane]\nBackend = {self.backend}\n", 1)
        else:
            extra_exit_conf += f"\n[DataPlane]\nBackend = {self.backend}\n"
        self.conf_path = tmp / f"{self.name}.conf"
        self.conf_path.write_text("\n".join(conf) + "\n" + extra_exit_conf)
        self.conf_path.chmod(0o600)
        self.log_path = tmp / "daemon.log"
        env = dict(os.environ, DATAPLANE_TEST_CLOCK="1") if test_clock else None
        self.daemon = start_daemon(topo, self.exit_ns, self.conf_path, log=self.log_path, env=env)

        self.wg = WireGuardGo(topo, self.client_ns, f"wgc{tag}")
        self.wg.start()
        self.wg.configure(self.client_key.reveal(), listen_port=CLIENT_PORT)
        psk_bytes = client_psk if client_psk is not None else (self.psk.reveal() if self.psk else None)
        self.wg.set_peer(self.exit_key.public_key(), allowed_ips=["10.202.0.0/24", "fd00:202::/64"],
                         endpoint=fmt(exit_ip, EXIT_PORT), psk=psk_bytes)
        self.wg.up(INNER["client"])

    def ping(self, ns: str, dst: str, count: int = 3, timeout: int = 5) -> subprocess.CompletedProcess:
        return self.topo.run(ns, ["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), dst],
                             check=False, timeout=count * timeout + 10)

    def exit_wg(self, *args) -> str:
        return self.topo.run(self.exit_ns, ["wg", *args]).stdout

    def exit_peer_dump(self) -> list[str]:
        lines = [l.split("\t") for l in self.exit_wg("show", self.name, "dump").splitlines()]
        assert len(lines) == 2, lines
        return lines[1]

    def status(self) -> dict:
        out = self.topo.run(self.exit_ns, [DATAPLANE, "show", self.name, "--json"]).stdout
        return json.loads(out)[self.name]

    def advance_clock(self, seconds: int) -> dict:
        """Moves the exit node's clock (test_clock=True) and returns its status."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(f"/run/dataplane/{self.name}.status.sock")
            s.sendall(f"advance {seconds}\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def down(self) -> int:
        self.topo.run(self.exit_ns, [DATAPLANE, "down", self.name])
        return self.daemon.wait(timeout=15)
