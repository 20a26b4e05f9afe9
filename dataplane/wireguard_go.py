"""Debian's wireguard-go, configured with `wg`, as the independent peer for
interop tests, the demo and benchmarks. Keys reach `wg` on stdin, never
through files or the command line."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from dataplane.topology import Topology, TopologyError

UAPI_DIR = Path("/var/run/wireguard")


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def connectable(path: Path) -> bool:
    """A UAPI socket that accepts a connection (a killed run's stays,
    refusing them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class WireGuardGo:
    def __init__(self, topo: Topology, ns: str, ifname: str):
        if len(ifname) > 15:
            raise ValueError(f"interface name {ifname!r} is longer than 15 characters")
        self.topo, self.ns, self.ifname = topo, ns, ifname
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 10, cpus: Optional[Sequence[int]] = None) -> None:
        """cpus: run on these CPUs alone, from the start. Go sizes its
        scheduler (GOMAXPROCS) to the CPUs it may use when it starts; one
        pinned only afterwards keeps a scheduler for every CPU of the
        machine, whose threads then take turns on the few it has, which
        costs it CPU time per packet that it would not spend when
        deployed on those CPUs. GOMAXPROCS is also set explicitly."""
        env = dict(os.environ, LOG_LEVEL="error", WG_PROCESS_FOREGROUND="1")
        argv = ["wireguard-go", "-f", self.ifname]
        if cpus:
            env["GOMAXPROCS"] = str(len(set(cpus)))
            argv = ["taskset", "-c", ",".join(str(c) for c in sorted(set(cpus)))] + argv
        self.proc = self.topo.popen(self.ns, argv, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sock = UAPI_DIR / f"{self.ifname}.sock"
        deadline = time.monotonic() + timeout
        # A socket left by a killed run exists but refuses connections (and
        # wireguard-go replaces it): wait for one that accepts, else `wg`
        # could meet the stale one and configure nothing.
        while not connectable(sock):
            if self.proc.poll() is not None:
                raise TopologyError(f"wireguard-go {self.ifname} exited: "
                                    f"{self.proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                raise TopologyError(f"wireguard-go {self.ifname}: no UAPI socket after {timeout}s")
            time.sleep(0.02)

    def wg(self, *args: str, stdin: Optional[str] = None) -> str:
        return self.topo.run(self.ns, ["wg", *args], input=stdin).stdout

    def configure(self, private_key: bytes, listen_port: Optional[int] = None) -> None:
        args = ["set", self.ifname, "private-key", "/dev/stdin"]
        if listen_port is not None:
            args += ["listen-port", str(listen_port)]
        self.wg(*args, stdin=b64(private_key))

    def set_peer(self, public_key: bytes, allowed_ips: Sequence[str] = (),
                 endpoint: Optional[str] = None, psk: Optional[bytes] = None,
                 keepalive: Optional[int] = None) -> None:
        args = ["set", self.ifname, "peer", b64(public_key)]
        if allowed_ips:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            args += ["endpoint", endpoint]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        stdin = None
        if psk is not None:
            args += ["preshared-key", "/dev/stdin"]
            stdin = b64(psk)
        self.wg(*args, stdin=stdin)

    def setconf(self, text: str) -> None:
        """`wg setconf` with a whole configuration (wg(8) format) on stdin:
        one call for any number of peers."""
        self.wg("setconf", self.ifname, "/dev/stdin", stdin=text)

    def up(self, addresses: Sequence[str], mtu: Optional[int] = None) -> None:
        for addr in addresses:
            self.topo.add_address(self.ns, self.ifname, addr)
        self.topo.set_up(self.ns, self.ifname, mtu=mtu)

    def dump(self) -> list[list[str]]:
        """`wg show IF dump`: the interface line, then one line per peer."""
        return [line.split("\t") for line in self.wg("show", self.ifname, "dump").splitlines()]
