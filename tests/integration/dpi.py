"""The censor's eye: capture a namespace's traffic with tcpdump and ask two
DPI engines what they see in it.

- nDPI (`ndpiReader`, Debian's libndpi-bin): a real DPI engine with a
  WireGuard dissector. It also labels an unrecognised UDP flow on port
  51820 "WireGuard" by the port alone, with confidence "Match by port":
  only a label with a "DPI" confidence means the packets were recognised,
  so tests use other ports and read the confidence.
- tshark: dissects WireGuard on any UDP port through its `wg` heuristic
  (on by default in 4.0; enabled explicitly here all the same).

`read_udp` parses the pcap itself, so tests can check sizes and headers
without trusting either engine.
"""
from __future__ import annotations

import ipaddress
import os
import re
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dataplane.topology import Topology

TSHARK_WG = ["--enable-heuristic", "wg"]
# Confidences under which nDPI has looked at the packets, as ndpiReader 4.2
# prints them ("DPI", "DPI (partial)", "DPI (cache)", "DPI (aggressive)");
# the others are "Unknown", "Match by port" and "Match by IP".
_FLOW = re.compile(r"^\s*\d+\s+(?P<l4>\S+) (?P<a>\S+) <?-> (?P<b>\S+) "
                   r"\[proto: [\d.]+/(?P<proto>[^\]]+)\].*?\[Confidence: (?P<conf>[^\]]+)\]"
                   r".*?\[(?P<pa>\d+) pkts/\d+ bytes (?:<->|->) (?P<pb>\d+) pkts")


# ---------------------------------------------------------------- capture

class Capture:
    """tcpdump on one interface of a namespace, writing a pcap. start()
    returns once tcpdump says it is listening, so nothing sent after it is
    missed. stop() waits until the file stops growing, ends tcpdump with
    SIGINT and checks that it wrote every packet its filter took: tcpdump
    drops what still sits in its ring when the signal comes (without
    --immediate-mode, up to a second of packets)."""

    def __init__(self, topo: Topology, ns: str, ifname: str, path: Path,
                 bpf_filter: str = "udp"):
        self.topo, self.ns, self.ifname, self.path = topo, ns, ifname, Path(path)
        self.bpf_filter = bpf_filter
        self.proc: Optional[subprocess.Popen] = None
        self.summary = ""

    def start(self, timeout: float = 10) -> "Capture":
        # -U: write every packet at once; -Z root: Debian's tcpdump would
        # otherwise switch to its own user and hand it the pcap.
        argv = ["tcpdump", "-i", self.ifname, "-n", "--immediate-mode", "-U", "-Z", "root",
                "-w", str(self.path), self.bpf_filter]
        self.proc = self.topo.popen(self.ns, argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        seen = b""
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                proc, self.proc = self.proc, None
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                seen += proc.communicate()[1]
                raise RuntimeError(f"tcpdump on {self.ifname} in {self.ns} did not start: "
                                   f"{seen.decode(errors='replace').strip()}")
            if select.select([self.proc.stderr], [], [], left)[0]:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                seen += chunk
        return self

    def stop(self, timeout: float = 10, settle: float = 0.2) -> Path:
        """Ends the capture once the file has not grown for `settle`
        seconds; returns the pcap's path."""
        if self.proc is None:
            return self.path
        proc, self.proc = self.proc, None
        size, still_since, deadline = -1, time.monotonic(), time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            now_size = self.path.stat().st_size if self.path.exists() else 0
            if now_size != size:
                size, still_since = now_size, time.monotonic()
            elif time.monotonic() - still_since >= settle:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        err = err.decode(errors="replace")
        self.summary = "; ".join(l for l in err.splitlines() if "packets" in l) or err.strip()
        if proc in self.topo.processes:
            self.topo.processes.remove(proc)
        counts = {k: int(n) for n, k in re.findall(
            r"(\d+) packets? (captured|received by filter|dropped by kernel)", self.summary)}
        if proc.returncode != 0 or counts.get("dropped by kernel") or \
                counts.get("captured") != counts.get("received by filter"):
            raise RuntimeError(f"tcpdump on {self.ifname} in {self.ns}: exit {proc.returncode}, "
                               f"{self.summary}")
        return self.path

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except RuntimeError:
            if exc_type is None:
                raise  # else the test's own error says more


# ---------------------------------------------------------------- the pcap itself

@dataclass(frozen=True)
class Datagram:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_udp(path: Path) -> list[Datagram]:
    """The UDP datagrams of a classic pcap of Ethernet frames (what tcpdump
    -w writes), IPv4 and IPv6, in capture order."""
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    frac = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    linktype = struct.unpack_from(end + "I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, sub, caplen, _ = struct.unpack_from(end + "IIII", data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        d = _udp_of_frame(frame, sec + sub * frac)
        if d:
            out.append(d)
    return out


def _udp_of_frame(frame: bytes, t: float) -> Optional[Datagram]:
    ethertype, off = struct.unpack_from("!H", frame, 12)[0], 14
    if ethertype == 0x8100:  # one VLAN tag
        ethertype, off = struct.unpack_from("!H", frame, 16)[0], 18
    if ethertype == 0x0800:
        ihl = (frame[off] & 0xF) * 4
        if frame[off + 9] != 17 or struct.unpack_from("!H", frame, off + 6)[0] & 0x3FFF:
            return None  # not UDP, or a fragment
        src = ipaddress.ip_address(frame[off + 12:off + 16])
        dst = ipaddress.ip_address(frame[off + 16:off + 20])
        off += ihl
    elif ethertype == 0x86DD:
        if frame[off + 6] != 17:
            return None
        src = ipaddress.ip_address(frame[off + 8:off + 24])
        dst = ipaddress.ip_address(frame[off + 24:off + 40])
        off += 40
    else:
        return None
    sport, dport, length = struct.unpack_from("!HHH", frame, off)
    return Datagram(t, (str(src), sport), (str(dst), dport), frame[off + 8:off + length])


# ---------------------------------------------------------------- nDPI

@dataclass(frozen=True)
class NdpiFlow:
    l4: str
    a: str
    b: str
    protocol: str  # as ndpiReader names it: "WireGuard", "Unknown", "TLS.Google"
    confidence: str
    packets: int

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.protocol.split("."))

    @property
    def by_dpi(self) -> bool:
        """The label comes from looking at packets, not from a port or an
        address."""
        return self.confidence.startswith("DPI")


def ndpi_command(pcap: Path) -> list[str]:
    # -v 2 prints every flow with its protocol and confidence (-v 1 only
    # the undetected ones); -q drops the banner and the totals.
    return ["ndpiReader", "-q", "-v", "2", "-i", str(pcap)]


def ndpi_flows(pcap: Path) -> list[NdpiFlow]:
    proc = subprocess.run(ndpi_command(pcap), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(ndpi_command(pcap))} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    flows = []
    for line in proc.stdout.splitlines():
        m = _FLOW.match(line)
        if m:
            flows.append(NdpiFlow(m["l4"], m["a"], m["b"], m["proto"], m["conf"],
                                  int(m["pa"]) + int(m["pb"])))
    return flows


def ndpi_wireguard(flows: list[NdpiFlow], by_dpi_only: bool = True) -> list[NdpiFlow]:
    """The flows nDPI calls WireGuard (by_dpi_only: with a DPI confidence)."""
    return [f for f in flows if "WireGuard" in f.protocols and (f.by_dpi or not by_dpi_only)]


# ---------------------------------------------------------------- tshark

def tshark_command(pcap: Path) -> list[str]:
    return ["tshark", "-n", "-r", str(pcap), *TSHARK_WG, "-T", "fields", "-e", "frame.protocols"]


def tshark_stacks(pcap: Path) -> list[tuple[str, ...]]:
    """Each frame's protocol stack as tshark dissects it, such as
    ("eth", "ethertype", "ip", "udp", "wg")."""
    proc = subprocess.run(tshark_command(pcap), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(tshark_command(pcap))} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")
    return [tuple(line.split(":")) for line in proc.stdout.splitlines() if line]


def tshark_wireguard(stacks: list[tuple[str, ...]]) -> int:
    """How many frames tshark dissected as WireGuard."""
    return sum("wg" in s for s in stacks)


# ---------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Verdict:
    ndpi: list[NdpiFlow]
    tshark: list[tuple[str, ...]]

    @property
    def ndpi_says_wireguard(self) -> bool:
        return bool(ndpi_wireguard(self.ndpi))

    @property
    def tshark_says_wireguard(self) -> bool:
        return tshark_wireguard(self.tshark) > 0

    def __str__(self) -> str:
        flows = "; ".join(f"{f.a} <-> {f.b} {f.protocol} ({f.confidence}, {f.packets} packets)"
                          for f in self.ndpi) or "no flows"
        stacks: dict[str, int] = {}
        for s in self.tshark:
            stacks[":".join(s)] = stacks.get(":".join(s), 0) + 1
        dissected = ", ".join(f"{k} x{v}" for k, v in stacks.items()) or "no frames"
        return f"ndpiReader: {flows}. tshark: {dissected}"


def classify(pcap: Path) -> Verdict:
    return Verdict(ndpi_flows(pcap), tshark_stacks(pcap))


def versions() -> dict[str, str]:
    """The engines' versions, as they print them."""
    ndpi = subprocess.run(["ndpiReader", "-h"], capture_output=True, text=True)
    m = re.search(r"nDPI (\S+)", ndpi.stdout + ndpi.stderr)
    tshark = subprocess.run(["tshark", "--version"], capture_output=True, text=True)
    return {"ndpiReader": m.group(1) if m else "?",
            "tshark": tshark.stdout.splitlines()[0] if tshark.stdout else "?"}
