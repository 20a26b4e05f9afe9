"""amneziawg-go, AmneziaWG's userspace reference implementation, as the
independent AmneziaWG peer of interop tests and benchmarks: the way
`wireguard_go.WireGuardGo` drives Debian's wireguard-go for plain WireGuard.

The binary is built once from ../shared/peers/amneziawg-go (build.sh, about
20 s, offline on Debian 12) into .cache/amneziawg-go/ by scripts/setup.sh,
or by `binary()` on first use. Stock `wg` cannot reach its UAPI socket
(/var/run/amneziawg, not /var/run/wireguard) nor knows the AmneziaWG keys,
so this module speaks the UAPI text protocol itself; keys go over that
socket only, never on a command line or into a file.
"""
from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from dataplane.obfuscation import PLAIN, Obfuscation
from dataplane.topology import Topology, TopologyError
from dataplane.wireguard_go import connectable

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "amneziawg-go"
BINARY = CACHE / "amneziawg-go"
BUILD_SCRIPT = ROOT.parent / "shared" / "peers" / "amneziawg-go" / "build.sh"
UAPI_DIR = Path("/var/run/amneziawg")

# get=1 values that are numbers (the rest stay text: h1..h4 may be ranges).
_INT_KEYS = frozenset((
    "listen_port", "fwmark", "jc", "jmin", "jmax", "s1", "s2", "s3", "s4",
    "protocol_version", "last_handshake_time_sec", "last_handshake_time_nsec",
    "tx_bytes", "rx_bytes", "persistent_keepalive_interval"))
_SECRET_KEYS = frozenset(("private_key", "preshared_key"))
_UAPI_END = re.compile(rb"(?:^|\n)errno=-?[0-9]+\n\n$")


class AmneziaWGUnavailable(RuntimeError):
    """The binary is not there and cannot be built; str() says why."""


_build_failure: Optional[AmneziaWGUnavailable] = None


def binary() -> Path:
    """The cached amneziawg-go, built first if it is missing. One build at
    a time across processes (a lock file beside it); a build that failed
    is not tried again in the same process."""
    global _build_failure
    if os.access(BINARY, os.X_OK):
        return BINARY
    if _build_failure is not None:
        raise _build_failure
    if not BUILD_SCRIPT.is_file():
        _build_failure = AmneziaWGUnavailable(
            f"amneziawg-go is not built ({BINARY} is missing) and {BUILD_SCRIPT} is not there "
            f"to build it: put the shared folder beside the repository and run "
            f"./scripts/setup.sh")
        raise _build_failure
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "build.log"
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(BINARY, os.X_OK):  # another process built it meanwhile
            return BINARY
        with open(log, "w") as out:
            rc = subprocess.run(["bash", str(BUILD_SCRIPT), str(CACHE)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0 or not os.access(BINARY, os.X_OK):
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        _build_failure = AmneziaWGUnavailable(
            f"building amneziawg-go with {BUILD_SCRIPT} failed (exit {rc}; log {log}): "
            + " | ".join(tail))
        raise _build_failure
    return BINARY


def _raw(key) -> bytes:
    """Raw bytes of a key given as bytes or as a dataplane.keys.Secret."""
    return key.reveal() if hasattr(key, "reveal") else bytes(key)


class AmneziaWGGo:
    """One amneziawg-go interface in a namespace of a Topology, which stops
    it when closed (or call stop())."""

    def __init__(self, topo: Topology, ns: str, ifname: str):
        if len(ifname) > 15:
            raise ValueError(f"interface name {ifname!r} is longer than 15 characters")
        self.topo, self.ns, self.ifname = topo, ns, ifname
        self.sock_path = UAPI_DIR / f"{ifname}.sock"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    # -- process

    def start(self, timeout: float = 10, cpus: Optional[Sequence[int]] = None) -> None:
        """Starts it in the foreground, detached, and waits for its UAPI
        socket to answer. cpus: run on these CPUs alone, with GOMAXPROCS to
        match, from the start (see WireGuardGo.start for why)."""
        exe = binary()
        if connectable(self.sock_path):
            raise TopologyError(f"{self.sock_path} is in use: another amneziawg-go serves an "
                                f"interface named {self.ifname} (names are shared by all "
                                f"namespaces: pick a unique one)")
        env = dict(os.environ, LOG_LEVEL="error", WG_PROCESS_FOREGROUND="1")
        argv = [str(exe), "-f", self.ifname]
        if cpus:
            env["GOMAXPROCS"] = str(len(set(cpus)))
            argv = ["taskset", "-c", ",".join(str(c) for c in sorted(set(cpus)))] + argv
        # Its logger writes to stdout. A file, not a pipe: nobody drains it
        # while the tunnel runs.
        self._log = tempfile.TemporaryFile()
        self.proc = self.topo.popen(self.ns, argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        # A socket left by a killed run exists but refuses connections, so
        # wait for one that accepts.
        while not connectable(self.sock_path):
            if self.proc.poll() is not None:
                raise TopologyError(f"amneziawg-go {self.ifname} exited {self.proc.returncode}: "
                                    f"{self.log()}")
            if time.monotonic() > deadline:
                raise TopologyError(f"amneziawg-go {self.ifname}: no UAPI socket at "
                                    f"{self.sock_path} after {timeout}s")
            time.sleep(0.02)

    def log(self, since: int = 0) -> str:
        """What it logged from byte `since` on (errors only, at
        LOG_LEVEL=error), each line once, at most the last 500 characters."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        # pread: the process shares this file's offset and writes at it.
        text = os.pread(fd, os.fstat(fd).st_size - since, since).decode(errors="replace")
        return "\n".join(dict.fromkeys(text.strip().splitlines()))[-500:]

    def _log_size(self) -> int:
        return os.fstat(self._log.fileno()).st_size if self._log is not None else 0

    def stop(self, timeout: float = 5) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session, from Topology.popen
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc in self.topo.processes:
            self.topo.processes.remove(self.proc)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- UAPI

    def uapi(self, text: str, timeout: float = 5) -> str:
        """One UAPI exchange (`set=1\\n...` or `get=1\\n`); the closing blank
        line is added when missing. Returns what came back before the
        errno line; raises TopologyError when errno is not 0."""
        if not text.endswith("\n"):
            text += "\n"
        if not text.endswith("\n\n"):
            text += "\n"
        logged = self._log_size()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock_path))
            s.sendall(text.encode())
            reply = b""
            while not _UAPI_END.search(reply):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        body, _, status = reply.decode().rstrip("\n").rpartition("errno=")
        if status != "0":
            op = text.split("\n", 1)[0]
            raise TopologyError(f"amneziawg-go {self.ifname}: UAPI {op} failed with errno="
                                f"{status or '(no reply)'}: {self.log(logged) or 'nothing logged'}")
        return body

    def configure(self, private_key, listen_port: Optional[int] = None,
                  obfuscation: Obfuscation = PLAIN) -> None:
        """The interface: key (bytes or a dataplane.keys.PrivateKey), port,
        and the AmneziaWG settings that differ from plain WireGuard (only
        those: amneziawg-go refuses jc=0 and the like)."""
        lines = ["set=1", f"private_key={_raw(private_key).hex()}"]
        if listen_port is not None:
            lines.append(f"listen_port={listen_port}")
        lines += [f"{k}={v}" for k, v in obfuscation.settings().items()]
        self.uapi("\n".join(lines) + "\n\n")

    def set_peer(self, public_key: bytes, allowed_ips: Sequence[str] = (),
                 endpoint: Optional[str] = None, psk=None,
                 keepalive: Optional[int] = None) -> None:
        lines = ["set=1", f"public_key={public_key.hex()}"]
        if psk is not None:
            lines.append(f"preshared_key={_raw(psk).hex()}")
        if endpoint:
            lines.append(f"endpoint={endpoint}")
        if keepalive is not None:
            lines.append(f"persistent_keepalive_interval={keepalive}")
        if allowed_ips:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={ip}" for ip in allowed_ips]
        self.uapi("\n".join(lines) + "\n\n")

    def up(self, addresses: Sequence[str], mtu: Optional[int] = None) -> None:
        for addr in addresses:
            self.topo.add_address(self.ns, self.ifname, addr)
        self.topo.set_up(self.ns, self.ifname, mtu=mtu)

    def get(self) -> dict:
        """get=1, parsed: interface keys (numbers as int, h1..h4 and i1..i5
        as text) and "peers", a list of dicts (public_key as bytes,
        endpoint, allowed_ips, counters and last_handshake_time_sec as
        int). Private and preshared keys are left out."""
        out: dict = {"peers": []}
        target = out
        for line in self.uapi("get=1\n\n").splitlines():
            if not line:
                continue
            key, _, value = line.partition("=")
            if key == "public_key":
                target = {"public_key": bytes.fromhex(value), "allowed_ips": []}
                out["peers"].append(target)
            elif key in _SECRET_KEYS:
                continue
            elif key == "allowed_ip":
                target["allowed_ips"].append(value)
            else:
                target[key] = int(value) if key in _INT_KEYS else value
        return out
