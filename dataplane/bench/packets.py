"""`dataplane bench`: packets/s, Gbit/s, loss, latency and the DUT's CPU per
packet for every tunnel under test, driven by the native load generator.

    client ns ──veth── DUT ns ──veth── far ns
    (generator:          (tunnel under     (sink, and the sender
     N emulated peers)    test, or plain    of reverse traffic)
                          forwarding)

The generator emulates N WireGuard peers with real sessions (our Noise
handshake, so wireguard-go is measured the same way as we are) and sends
sealed transport messages from them (decap: the DUT decrypts and forwards
to the sink); the far side sends plain UDP to the peers' inner addresses
(encap: the DUT encrypts, the generator opens and checks). Every inner
packet carries a flow, a sequence number and its send time, so loss,
reordering and latency are counted where it lands.

By default the DUT is pinned to the last CPU, with its interfaces'
receive in NAPI threads pinned there too, and the generator and sink to
the others; the DUT's CPU time per packet is that CPU's busy time
(/proc/stat), the kernel's work for the DUT included.

With --obfuscation the generator's peers speak AmneziaWG (junk and
signature packets before each initiation, padded messages, header ranges)
to every DUT that can (dataplane-socket, dataplane-xdp, amneziawg-go);
`both` measures our DUTs without and with it in the same run. With
--junk-flood a separate sender floods the DUT's port with random
datagrams during the measured runs.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from dataplane import __version__
from dataplane import amneziawg_go
from dataplane._native import lib
from dataplane.amneziawg_go import AmneziaWGGo, AmneziaWGUnavailable
from dataplane.bench.awg_profile import (DEFAULT_PROFILE, MODES, PROFILE_DUTS, label,
                                         profile_arg, variants)
from dataplane.bench.loadgen import (IMIX, EmulatedPeers, JunkSender, Receiver, RecvResult,
                                     Sender, junk_sizes)
from dataplane.bench.tunnel import _median, cpu_seconds
from dataplane.client import Client
from dataplane.commands import interface_status, xsk_drops
from dataplane.device import REALTIME_PRIORITY_MAX, REALTIME_PRIORITY_MIN
from dataplane.keys import PrivateKey
from dataplane.launch import start_daemon
from dataplane.obfuscation import PLAIN, Obfuscation
from dataplane.topology import Topology, socket_in
from dataplane.wireguard_go import WireGuardGo

DUTS = ("dataplane-socket", "dataplane-xdp", "wireguard-go", "amneziawg-go", "xsk-forward",
        "no-tunnel")
TUNNEL_DUTS = ("dataplane-socket", "dataplane-xdp", "wireguard-go", "amneziawg-go")
# need the XDP programs (built, and loadable here)
XDP_DUTS = ("dataplane-xdp", "xsk-forward")


def xdp_available() -> bool:
    """The XDP backend can run here (its programs are built and load)."""
    try:
        from dataplane import xdp
        return all(xdp.object_path(name).exists() for name in ("wan", "inner", "forward"))
    except Exception:  # noqa: BLE001 - not built, no libbpf: then it is not available
        return False


def amneziawg_available() -> bool:
    """amneziawg-go is built, or can be (dataplane.amneziawg_go.binary)."""
    try:
        amneziawg_go.binary()
        return True
    except AmneziaWGUnavailable:
        return False


def default_duts(obfuscation: bool = False) -> list[str]:
    """Every DUT that can run here; amneziawg-go only in obfuscated runs
    (without a profile it is wireguard-go)."""
    return [d for d in DUTS if (d not in XDP_DUTS or xdp_available()) and
            (d != "amneziawg-go" or (obfuscation and amneziawg_available()))]
DIRECTIONS = ("decap", "encap", "both")
SIZES = ("64", "512", "1420", "imix")

CLIENT, DUT_CLIENT_SIDE = "10.241.0.1", "10.241.0.2"
DUT_FAR_SIDE, SINK = "10.242.0.1", "10.242.0.2"
TUNNEL_ADDRESS = "10.200.0.1/16"
FIRST_PEER_INNER = "10.200.0.2"
LISTEN_PORT, GEN_PORT, SINK_PORT, JUNK_PORT = 51820, 40000, 40001, 40002
MTU = 1420
REHANDSHAKE_AFTER = 90.0  # seconds; sessions expire at 180 s (REJECT_AFTER_TIME)
# Receivers of saturated runs look at their sockets this often when idle
# (microseconds) instead of sleeping on them; see World.run
RECEIVER_POLL_US = 100


def default_scenarios() -> list[tuple[str, int, str]]:
    """(size, peers, direction): every size both ways with one peer, then
    many peers at full-size packets."""
    return ([(size, 1, d) for size in SIZES for d in ("decap", "encap")]
            + [("1420", 100, "decap"), ("1420", 10000, "decap")])


def quick_scenarios() -> list[tuple[str, int, str]]:
    return [("64", 1, "decap"), ("1420", 1, "decap"), ("1420", 1, "encap"),
            ("1420", 100, "decap")]


def sizes_of(size: str) -> list[int]:
    return list(IMIX) if size == "imix" else [int(size)]


def _size_arg(text: str) -> str:
    if text == "imix":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be a number of bytes or imix, not {text!r}")
    if not 64 <= n <= MTU:
        raise argparse.ArgumentTypeError(f"size must be 64..{MTU} (inner IPv4 packet), not {n}")
    return str(n)


def _peers_arg(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 60000:
        raise argparse.ArgumentTypeError(f"peers must be 1..60000, not {n}")
    return n


def _whole_number(lo: int, hi: int, not_a_number: str, out_of_range: str):
    """An argparse type: a whole number lo..hi; the messages get {text}
    (what was given) and {n} (the number) filled in."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number.format(text=repr(text)))
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(out_of_range.format(n=n))
        return n
    return parse


_poll_us_arg = _whole_number(0, 10000, "not a whole number of microseconds: {text}",
                             "receiver poll must be 0..10000 us, not {n}")
_busy_poll_arg = _whole_number(
    0, lib.DP_DEVICE_BUSY_POLL_MAX_US, "not a whole number of microseconds: {text}",
    f"busy polling must be 0..{lib.DP_DEVICE_BUSY_POLL_MAX_US} us, not {{n}}")
_junk_arg = _whole_number(0, 100_000_000, "not a whole number of packets/s: {text}",
                          "junk flood rate must be 0..100000000 packets/s (0: as fast as "
                          "possible), not {n}")
_realtime_arg = _whole_number(
    0, REALTIME_PRIORITY_MAX, "not a SCHED_FIFO priority: {text}",
    f"a SCHED_FIFO priority is {REALTIME_PRIORITY_MIN}..{REALTIME_PRIORITY_MAX} (0: off), "
    f"not {{n}}")


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dut", action="append", choices=DUTS, help="repeatable (default: all)")
    p.add_argument("--size", action="append", type=_size_arg, metavar="BYTES|imix",
                   help="inner IPv4 packet size, repeatable (64, 512, 1420, imix)")
    p.add_argument("--peers", action="append", type=_peers_arg, help="emulated peers, repeatable")
    p.add_argument("--direction", action="append", choices=DIRECTIONS, help="repeatable")
    p.add_argument("--rate", type=int, default=0, metavar="PPS",
                   help="offered packets/s per direction (default: as fast as possible)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unmeasured traffic before each scenario (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    p.add_argument("--latency-rate", type=int, default=10000, metavar="PPS",
                   help="fixed rate of the latency run, below saturation (default 10000)")
    p.add_argument("--latency-seconds", type=float, default=2.0,
                   help="length of the latency run (default 2; 0 skips it)")
    p.add_argument("--quick", action="store_true",
                   help="a short version of the default set (about a minute)")
    p.add_argument("--sessions", choices=("handshake", "api"), default="handshake",
                   help="how dataplane DUTs get their sessions: Noise handshakes with the "
                        "generator (default), or pushed through the control-plane API")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the DUT and the generator to separate CPUs")
    receive = p.add_mutually_exclusive_group()
    receive.add_argument("--napi-threads", dest="napi_threads", action="store_true",
                         default=True,
                         help="the DUT's interfaces receive in NAPI threads pinned to the DUT's "
                              "CPU (the default: every DUT pays for its own receive, XDP's "
                              "included; no receive livelock)")
    receive.add_argument("--softirq", dest="napi_threads", action="store_false",
                         help="the DUT's interfaces receive in softirq, steered to the DUT's CPU "
                              "with RPS; XDP on a veth then runs on the sender's CPU and an XDP "
                              "DUT's WAN receive is not counted (see README)")
    p.add_argument("--receiver-poll-us", type=_poll_us_arg, default=RECEIVER_POLL_US,
                   metavar="US",
                   help="in saturated runs the sink and the generator's receiver never sleep on "
                        "their sockets (the DUT's CPU, which delivers to them, would pay for "
                        f"waking them) and look every US when idle (default {RECEIVER_POLL_US}; "
                        "0 waits on the sockets, as latency runs always do)")
    p.add_argument("--busy-poll", type=_busy_poll_arg, default=0, metavar="US",
                   help="dataplane-xdp (BusyPoll = US) and xsk-forward busy-poll their AF_XDP "
                        "sockets (default 0: off; the others ignore it)")
    p.add_argument("--realtime", type=_realtime_arg, default=0, metavar="PRIO",
                   help="the DUTs' own threads run SCHED_FIFO at PRIO: dataplane's workers "
                        "(RealtimePriority = PRIO), xsk-forward's forwarding thread and every "
                        "wireguard-go thread (default 0: off; not with --busy-poll)")
    p.add_argument("--obfuscation", nargs="?", const="on", default="off", choices=MODES,
                   help="the generator's peers speak AmneziaWG (--obfuscation-profile) to "
                        "every DUT that can: dataplane-socket, dataplane-xdp and amneziawg-go "
                        "(added to the default DUTs); wireguard-go, xsk-forward and no-tunnel "
                        "run plain. `both`: the dataplane DUTs run without and with it "
                        "(rows DUT and DUT+awg). Rows carry `obfuscation`")
    p.add_argument("--obfuscation-profile", type=profile_arg, default=DEFAULT_PROFILE,
                   metavar="FILE|default",
                   help="the AmneziaWG keys (Jc Jmin Jmax S1-S4 H1-H4 I1-I5) from a file of "
                        "`Key = value` lines (an AmneziaWG config works; other keys are "
                        "ignored); default: Jc 4, Jmin 40, Jmax 70, S1 15, S2 18, S3 20, S4 8, "
                        "header ranges and an I1")
    p.add_argument("--junk-flood", type=_junk_arg, nargs="?", const=0, default=None,
                   metavar="PPS",
                   help="during the measured runs, a separate sender floods the tunnel DUTs' "
                        "port with random datagrams of random sizes, as fast as it can or at "
                        "PPS; rows carry what it sent and the DUT's drop counters")
    p.add_argument("--junk-both", action="store_true",
                   help="measure each tunnel DUT without and with the junk flood (--junk-flood, "
                        "default as fast as it goes), the runs taking turns: rows LABEL and "
                        "LABEL+junk, the latter with vs_no_junk and cpu_vs_no_junk")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    p.add_argument("--plot", metavar="FILE.png", help="throughput and CPU per packet (matplotlib)")


# ---------------------------------------------------------------- measuring


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:  # gone meanwhile
        return ""


def cpu_busy_seconds(cpu: int) -> float:
    """Time CPU `cpu` spent on anything but idle and iowait, in seconds:
    with the DUT pinned there, its process and the kernel's packet work for
    it (softirq, which process accounting misses when the CPU is idle)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def wait_idle(cpu: int, busy_below: float = 0.1, window: float = 0.1,
              timeout: float = 3.0) -> Optional[float]:
    """Waits until CPU `cpu` was busy less than busy_below of a window
    (seconds), at most timeout seconds. With every DUT's world up at once,
    what one DUT still does after its run (draining its rings, a Go
    runtime's garbage collection) must not land in the next DUT's figures.
    Returns None once idle, or the busy fraction of the last window."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy_seconds(cpu)
        time.sleep(window)
        busy = (cpu_busy_seconds(cpu) - before) / window
        if busy < busy_below:
            return None
        if time.monotonic() > deadline:
            return busy


# Figures among a status's XDP counters that are not counts
_GAUGES = frozenset({"outer_routes"})


def _deltas(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    """What moved between two status_counters(), per section: {section:
    {name: increase}}, the counters that did not move left out."""
    if before is None or after is None:
        return None
    return {section: {k: v - before[section].get(k, 0) for k, v in after[section].items()
                      if isinstance(v, int) and k not in _GAUGES and
                      v != before[section].get(k, 0)}
            for section in after}


def _total(before: Optional[dict], after: Optional[dict], section: str,
           prefix: str = "") -> Optional[int]:
    """How much the counters of a section (those starting with prefix) grew."""
    if before is None or after is None:
        return None
    return sum(v - before[section].get(k, 0) for k, v in after[section].items()
               if k.startswith(prefix) and isinstance(v, int))


def _add_deltas(runs: list) -> Optional[dict]:
    """dut_counter_deltas summed over runs (None if a run has none)."""
    if any(r.get("dut_counter_deltas") is None for r in runs):
        return None
    out: dict = {}
    for r in runs:
        for section, moved in r["dut_counter_deltas"].items():
            mine = out.setdefault(section, {})
            for k, v in moved.items():
                mine[k] = mine.get(k, 0) + v
    return out


def _sum(runs: list, key: str) -> Optional[int]:
    """runs' key summed; None when a run has none."""
    values = [r.get(key) for r in runs]
    return None if any(v is None for v in values) else sum(values)


SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; not in Python's socket


def _big_buffers(sock: socket.socket) -> None:
    for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)


class World:
    """The three namespaces, the DUT with `peers` peers, and sessions.
    obfuscation: the AmneziaWG profile of the DUT and the generator's peers
    (PROFILE_DUTS only)."""

    def __init__(self, topo: Topology, dut: str, n_peers: int, tmp: Path, pin: bool,
                 say=print, napi_threads: bool = True, sessions: str = "handshake",
                 busy_poll_us: int = 0, realtime: int = 0, obfuscation: Obfuscation = PLAIN):
        if not obfuscation.is_plain and dut not in PROFILE_DUTS:
            raise ValueError(f"{dut} cannot be given an AmneziaWG profile (only "
                             f"{', '.join(PROFILE_DUTS)})")
        self.topo, self.dut, self.say = topo, dut, say
        self.obfuscation = obfuscation
        # The transport profile the generator sends and accepts: the DUT's,
        # unless a test sets another one to see it refused
        self.wire = obfuscation
        self.label = label(dut, not obfuscation.is_plain)
        self.busy_poll_us = busy_poll_us  # the XDP DUTs' busy polling; 0: off
        self.realtime = realtime  # SCHED_FIFO priority of the DUT's own threads; 0: off
        # dataplane DUTs may get their sessions pushed through the control-
        # plane API instead of made by handshakes (wireguard-go cannot)
        self.api: Optional[Client] = None
        self._api_indices: set = set()
        self.sessions = sessions
        self.tunnel = dut in TUNNEL_DUTS
        cpus = sorted(os.sched_getaffinity(0))
        self.dut_cpu = cpus[-1] if pin and len(cpus) > 1 else None
        self.gen_cpu = cpus[0] if self.dut_cpu is not None else -1
        # a junk flood gets a CPU of its own where there is one to spare
        self.junk_cpu = cpus[1] if self.dut_cpu is not None and len(cpus) > 2 else self.gen_cpu
        self._junk_sock: Optional[socket.socket] = None
        self.client, self.server, self.far = (topo.namespace("cl"), topo.namespace("dut"),
                                              topo.namespace("far"))
        self.client_if, dut_in = topo.link(self.client, self.server, [f"{CLIENT}/24"],
                                           [f"{DUT_CLIENT_SIDE}/24"])
        self.wan = dut_in
        dut_out, far_if = topo.link(self.server, self.far, [f"{DUT_FAR_SIDE}/24"],
                                    [f"{SINK}/24"])
        # The far side's packets leave finished, checksums and all, as
        # packets from the internet arrive at an exit node; veth would
        # leave their checksums to an offload, and an XDP DUT, whose inner
        # pair cannot carry that, would finish them in software
        topo.run(self.far, ["ethtool", "-K", far_if, "tx", "off"])
        if self.dut_cpu is not None:
            # What arrives at the DUT is processed on the DUT's CPU, as a
            # NIC's interrupts would be, not in the sender's context. (What
            # the DUT sends is received by the generator or the sink on the
            # CPU that sends it, the DUT's: the same for every DUT. Steering
            # it to the generator's CPU with RPS would be cleaner, but on
            # two cores it starves the generator.)
            mask = f"{1 << self.dut_cpu:x}"
            topo.run(self.server, ["sh", "-c", f"for q in /sys/class/net/{dut_in}/queues/rx-* "
                                   f"/sys/class/net/{dut_out}/queues/rx-*; "
                                   f"do echo {mask} > $q/rps_cpus; done"])
        # NAPI threads by these names from before this world are not its
        self._napi_before = self._napi_threads([dut_in, dut_out])
        if self.dut_cpu is not None and napi_threads:
            self._receive_in_napi_threads([dut_in, dut_out])
        topo.run(self.server, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        topo.add_route(self.client, "0.0.0.0/0", gateway=DUT_CLIENT_SIDE)
        topo.add_route(self.far, "0.0.0.0/0", gateway=DUT_FAR_SIDE)

        self.gen = socket_in(self.client)
        self.gen.bind((CLIENT, GEN_PORT))
        self.sink = socket_in(self.far)
        self.sink.bind((SINK, SINK_PORT))
        for s in (self.gen, self.sink):
            _big_buffers(s)
        self.peers = EmulatedPeers(n_peers, FIRST_PEER_INNER)
        self.to_sink = EmulatedPeers(1)
        self.to_sink.set_plain([SINK])
        self.dut_pid: Optional[int] = None
        self.dut_name: Optional[str] = None  # a dataplane DUT's interface
        self.dut_public: Optional[bytes] = None
        # xsk-forward: the forwarder, and its counters once it has stopped
        self._forwarder: Optional[subprocess.Popen] = None
        self._forwarder_log: Optional[Path] = None
        self.dut_counters: Optional[dict] = None

        if self.tunnel:
            self._start_tunnel(n_peers, tmp)
        else:
            self.peers.set_plain([CLIENT])
        if dut == "xsk-forward":
            self._start_xsk_forward(tmp)
        if self.dut_cpu is not None and self.dut_pid:
            subprocess.run(["taskset", "-a", "-p", "-c", str(self.dut_cpu), str(self.dut_pid)],
                           check=True, capture_output=True)
        if self.dut_cpu is not None:
            # Every NAPI thread of the DUT's interfaces works for the DUT,
            # those it made itself too (the XDP backend receives on its end
            # of the inner pair in one): on its CPU they are counted,
            # elsewhere they would not be
            for pid in self._napi_threads(self._links(self.server)) - self._napi_before:
                subprocess.run(["taskset", "-p", "-c", str(self.dut_cpu), str(pid)],
                               check=True, capture_output=True)

    def _links(self, ns: str) -> list[str]:
        out = self.topo.run(ns, ["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.count(":") >= 2]

    @staticmethod
    def _napi_threads(ifnames) -> set:
        # "napi/<ifname>-<id>", cut at 15 characters as thread names are
        prefixes = [f"napi/{i}-"[:15] for i in ifnames]
        return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and
                any(_comm(p).startswith(x) for x in prefixes)}

    def _receive_in_napi_threads(self, ifnames) -> None:
        """The default (--napi-threads): the DUT's interfaces receive in
        NAPI threads (a veth has a NAPI with GRO on, or with XDP) pinned to
        the DUT's CPU once the DUT is up. Two differences from softirq with
        RPS: XDP on a veth runs in the receiving veth's NAPI, which the sender
        schedules on its own CPU, so in softirq mode an XDP DUT's WAN
        receive (XDP, the copy into AF_XDP) is done, uncounted, on the
        generator's CPU; and a NAPI thread shares the CPU fairly with the
        DUT's threads, where softirq preempts them: under overload the
        kernel cannot starve an AF_XDP worker by receiving packets that
        then wait for it and are dropped at its ring (receive livelock).
        The price is scheduling latency whenever anything else runs on
        the DUT's CPU."""
        for ifname in ifnames:
            self.topo.run(self.server, ["ethtool", "-K", ifname, "gro", "on"])
            self.topo.run(self.server, ["sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"])

    def _start_tunnel(self, n_peers: int, tmp: Path) -> None:
        key = PrivateKey.generate()
        self.dut_public = bytes(key.public_key())
        tag = f"{os.getpid() % 10000}"
        peers_conf = "".join(f"\n[Peer]\nPublicKey = {pub}\nAllowedIPs = {addr}/32\n"
                             for pub, addr in zip(self.peers.public_keys(), self.peers.inner))
        started = time.monotonic()
        if self.dut.startswith("dataplane-"):
            backend = self.dut.split("-", 1)[1]
            # the dataplane DUTs may be up at once (interleaved runs), each
            # backend with and without obfuscation
            name = (f"{'bpd' if backend == 'xdp' else 'bps'}{tag}"
                    f"{'' if self.obfuscation.is_plain else 'a'}")
            self.dut_name = name
            conf = tmp / f"{name}.conf"
            wan = f"Interfaces = {self.wan}\n" if backend == "xdp" else ""
            if backend == "xdp" and self.busy_poll_us:
                wan += f"BusyPoll = {self.busy_poll_us}\n"
            if self.realtime:
                wan += f"RealtimePriority = {self.realtime}\n"
            awg = "".join(f"{line}\n" for line in self.obfuscation.file_lines())
            conf.write_text(f"[Interface]\nPrivateKey = {key.reveal_base64()}\n"
                            f"ListenPort = {LISTEN_PORT}\nAddress = {TUNNEL_ADDRESS}\n"
                            f"MTU = {MTU}\n{awg}{peers_conf}\n[DataPlane]\nBackend = {backend}\n"
                            f"{wan}")
            conf.chmod(0o600)
            self.dut_pid = start_daemon(self.topo, self.server, conf, log=tmp / f"{name}.log",
                                        timeout=60 + n_peers / 100).pid
            if self.sessions == "api":
                self.api = Client(Path(f"/run/dataplane/{name}.api.sock"), timeout=300)
        elif self.dut == "amneziawg-go":
            awg = AmneziaWGGo(self.topo, self.server, f"bpa{tag}")
            # as wireguard-go: on the DUT's CPU from the start
            awg.start(cpus=[self.dut_cpu] if self.dut_cpu is not None else None)
            awg.configure(key, LISTEN_PORT, self.obfuscation)
            # every peer in one UAPI request (one each takes minutes for 60 000)
            awg.uapi("set=1\n" + "".join(
                f"public_key={base64.b64decode(pub).hex()}\nallowed_ip={addr}/32\n"
                for pub, addr in zip(self.peers.public_keys(), self.peers.inner)) + "\n")
            awg.up([TUNNEL_ADDRESS], mtu=MTU)
            self.dut_pid = awg.proc.pid
            if self.realtime:
                subprocess.run(["chrt", "-f", "-a", "-p", str(self.realtime), str(self.dut_pid)],
                               check=True, capture_output=True)
        else:
            wg = WireGuardGo(self.topo, self.server, f"bpw{tag}")
            # on the DUT's CPU from the start: Go sizes its scheduler to
            # that (GOMAXPROCS 1), as it would deployed on one CPU
            wg.start(cpus=[self.dut_cpu] if self.dut_cpu is not None else None)
            wg.setconf(f"[Interface]\nPrivateKey = {key.reveal_base64()}\n"
                       f"ListenPort = {LISTEN_PORT}\n{peers_conf}")
            wg.up([TUNNEL_ADDRESS], mtu=MTU)
            self.dut_pid = wg.proc.pid
            if self.realtime:
                # every thread it has, and those it makes later inherit it
                subprocess.run(["chrt", "-f", "-a", "-p", str(self.realtime), str(self.dut_pid)],
                               check=True, capture_output=True)
        key.wipe()
        self.say(f"  {self.label}: up with {n_peers} peer(s) in "
                 f"{time.monotonic() - started:.1f} s")
        self.gen.connect((DUT_CLIENT_SIDE, LISTEN_PORT))
        self.handshake()

    def _start_xsk_forward(self, tmp: Path) -> None:
        """The raw AF_XDP forwarding ceiling (dataplane.bench.xsk_forward):
        the dataplane-xdp DUT's WAN veth, an inner veth pair like its
        (the kernel's end NOARP, offloads off) with the route to the client
        through it, so both directions take the same path as through the
        XDP backend: WAN AF_XDP <-> inner pair AF_XDP <-> kernel routing."""
        topo, ns = self.topo, self.server
        name = f"bpx{os.getpid() % 10000}"
        mine = f"{name}-x"
        topo.run(ns, ["ip", "link", "add", name, "type", "veth", "peer", "name", mine])
        topo.run(ns, ["ip", "link", "set", "dev", name, "arp", "off"])
        for ifname in (name, mine):
            topo.run(ns, ["ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off",
                          "gro", "off"])
        topo.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.{mine}.disable_ipv6=1"])
        for ifname in (name, mine):
            topo.run(ns, ["ip", "link", "set", "dev", ifname, "up"])
        topo.run(ns, ["ip", "route", "add", f"{CLIENT}/32", "dev", name])
        # the generator's plain UDP is forwarded as it is, and AF_XDP frames
        # carry no checksum state: it must leave the client finished
        topo.run(self.client, ["ethtool", "-K", self.client_if, "tx", "off"])
        mac = lambda n, i: topo.run(n, ["cat", f"/sys/class/net/{i}/address"]).stdout.strip()  # noqa: E731
        wan_macs = f"{mac(self.client, self.client_if)},{mac(ns, self.wan)}"
        inner_macs = f"{mac(ns, name)},{mac(ns, mine)}"
        log = tmp / f"{name}.log"
        with log.open("w") as out:
            proc = topo.popen(ns, [sys.executable, "-m", "dataplane.bench.xsk_forward",
                                   "--wan", self.wan, "--wan-macs", wan_macs,
                                   "--inner", mine, "--inner-macs", inner_macs,
                                   "--busy-poll", str(self.busy_poll_us),
                                   "--realtime", str(self.realtime)],
                              stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"xsk-forward did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.dut_pid = proc.pid
        self._forwarder, self._forwarder_log = proc, log
        self.say(f"  {self.dut}: forwarding {self.wan} <-> {mine}")

    def handshake(self) -> None:
        started = time.monotonic()
        if self.api is not None:
            # fresh sessions made here, as a control plane would, pushed in
            # one batch: current at once (the ones they replace still take
            # what is in flight)
            self.api.bulk(self.peers.session_ops(activate="now", put_peer=False,
                                                 taken=self._api_indices))
            self.peers.handshake_at = time.monotonic()
            self.say(f"  {self.label}: {self.peers.n} session(s) pushed through the API in "
                     f"{time.monotonic() - started:.1f} s")
            return
        self.peers.handshake(self.gen, self.dut_public,
                             progress=lambda done, n: self.say(f"    handshakes {done}/{n}"),
                             obfuscation=self.obfuscation)
        self.say(f"  {self.label}: {self.peers.n} handshake(s) in "
                 f"{time.monotonic() - started:.1f} s")

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        if self._forwarder is not None and self._forwarder.poll() is None:
            self._forwarder.terminate()
            try:
                self._forwarder.wait(10)
                last = self._forwarder_log.read_text().strip().splitlines()[-1]
                self.dut_counters = json.loads(last)
            except (subprocess.TimeoutExpired, IndexError, ValueError, OSError):
                self.say(f"  {self.dut}: no counters at exit: "
                         f"{self._forwarder_log.read_text()[-500:]}")
        self.peers.close()
        self.to_sink.close()
        self.gen.close()
        self.sink.close()
        if self._junk_sock is not None:
            self._junk_sock.close()

    def run(self, size: str, direction: str, seconds: float, rate: int,
            poll_us: int = RECEIVER_POLL_US, junk_rate: Optional[int] = None) -> dict:
        """One measured run. pps counts packets that arrived (both ways for
        `both`) per second of sending. With poll_us, the receivers never
        sleep on their sockets but look every poll_us microseconds when
        idle: the DUT's CPU, which delivers to them, then does not also pay
        an IPI to wake them (12% of its time at 1420 B). 0 waits on the
        sockets, as latency runs do (no polling delay in the figures).
        junk_rate: a tunnel DUT's port gets a junk flood meanwhile, at that
        rate (0: as fast as it goes)."""
        if self.tunnel and time.monotonic() - self.peers.handshake_at > REHANDSHAKE_AFTER:
            self.handshake()
        sizes = sizes_of(size)
        receivers, senders = [], []
        if direction in ("decap", "both"):
            receivers.append(Receiver(self.sink, None, sealed=False, cpu=self.gen_cpu,
                                      poll_us=poll_us))
            senders.append(Sender(self.gen, self.peers if self.tunnel else self.to_sink,
                                  sealed=self.tunnel, sizes=sizes, dst=SINK, src_port=GEN_PORT,
                                  dst_port=SINK_PORT, flow=0, mtu=MTU, rate=rate,
                                  seconds=seconds, cpu=self.gen_cpu, obfuscation=self.wire))
        if direction in ("encap", "both"):
            receivers.append(Receiver(self.gen, self.peers, sealed=self.tunnel, cpu=self.gen_cpu,
                                      poll_us=poll_us, obfuscation=self.wire))
            senders.append(Sender(self.sink, self.peers, sealed=False, sizes=sizes,
                                  dst_port=GEN_PORT, flow=1, mtu=MTU, rate=rate,
                                  seconds=seconds, cpu=self.gen_cpu))
        junk = None
        if junk_rate is not None and self.tunnel:
            junk = JunkSender(self._junk_socket(), sizes=junk_sizes(), rate=junk_rate,
                              seconds=seconds, cpu=self.junk_cpu)
        for r in receivers:
            r.start()
        counters0 = self.status_counters()
        ring0 = self.ring_drops(counters0)
        junk_sent = None
        try:
            proc0 = cpu_seconds(self.dut_pid) if self.dut_pid else None
            core0 = cpu_busy_seconds(self.dut_cpu) if self.dut_cpu is not None else None
            wall0 = time.monotonic()
            for s in senders + ([junk] if junk else []):
                s.start()
            sent = [s.join(seconds + 30) for s in senders]
            junk_sent = junk.join(seconds + 30) if junk else None
            time.sleep(0.3)  # what is queued in the DUT still arrives
            proc = cpu_seconds(self.dut_pid) - proc0 if self.dut_pid else None
            core = cpu_busy_seconds(self.dut_cpu) - core0 if core0 is not None else None
            wall = time.monotonic() - wall0
        finally:
            for s in senders + ([junk] if junk else []):
                s.stop()
            got = [r.stop() for r in receivers]
        total = got[0]
        for g in got[1:]:
            total = total.merge(g)
        counters1 = self.status_counters()
        ring1 = self.ring_drops(counters1)
        n_sent = sum(s.packets for s in sent)
        span = max(s.seconds for s in sent)
        return {
            "pps": total.packets / span,
            "gbps": total.bytes * 8 / span / 1e9,
            "loss": max(0.0, 1 - total.packets / n_sent) if n_sent else None,
            "sent_pps": n_sent / span,
            "send_errors": sum(s.errors for s in sent),
            # The DUT's core when it has one to itself, else its process.
            "cpu_ns_per_pkt": _per(core if core is not None else proc, total.packets),
            "dut_proc_cpu_ns_per_pkt": _per(proc, total.packets),
            "dut_core_busy": core / wall if core is not None else None,  # fraction of its CPU
            "gen_cpu_ns_per_pkt": (sum(s.cpu_seconds for s in sent) + total.cpu_seconds) * 1e9
            / total.packets if total.packets else None,
            "reordered": total.reordered,
            "duplicates": total.duplicates,
            "rejected": total.rejected,
            "foreign": total.foreign,
            "dut_ring_drops": ring1 - ring0 if ring0 is not None and ring1 is not None else None,
            "dut_counter_deltas": _deltas(counters0, counters1),
            # what the WAN program dropped (junk, and what is not WireGuard
            # at all to a plain DUT), and every drop of the data path (the
            # workers)
            "dut_xdp_drops": _total(counters0, counters1, "xdp", "wan_drop_")
            if self.dut == "dataplane-xdp" else None,
            "dut_worker_drops": _total(counters0, counters1, "drops"),
            "junk_sent": junk_sent.packets if junk_sent else None,
            "junk_pps": junk_sent.packets / junk_sent.seconds if junk_sent else None,
            "latency": total,
        }

    def _junk_socket(self) -> socket.socket:
        if self._junk_sock is None:
            self._junk_sock = socket_in(self.client)
            self._junk_sock.bind((CLIENT, JUNK_PORT))
            _big_buffers(self._junk_sock)
            self._junk_sock.connect((DUT_CLIENT_SIDE, LISTEN_PORT))
        return self._junk_sock

    def status_counters(self) -> Optional[dict]:
        """A dataplane DUT's counters now, from its status socket: the XDP
        programs' and AF_XDP sockets' (`xdp`, the XDP backend) and the data
        path's drops per reason (`drops`); None for other DUTs, or when the
        figures did not come."""
        if not self.dut.startswith("dataplane-") or not self.dut_name:
            return None
        try:
            status = interface_status(self.dut_name)["status"]
        except (OSError, ValueError):
            return None
        return {"xdp": status.get("xdp") or {}, "drops": status.get("drops") or {}}

    def ring_drops(self, counters: Optional[dict] = None) -> Optional[int]:
        """What the kernel has dropped at an XDP DUT's AF_XDP sockets (a
        worker behind: every frame waits in the receive ring), from the
        dataplane-xdp DUT's status (status_counters, read now unless given)
        or the forwarder's report on SIGUSR1; None for other DUTs, or when
        the figures did not come."""
        if self.dut == "dataplane-xdp" and self.dut_name:
            counters = counters if counters is not None else self.status_counters()
            if counters is None:
                return None
            counters = counters["xdp"]
        elif self.dut == "xsk-forward" and self._forwarder is not None:
            counters = self._forwarder_report()
            if counters is None:
                return None
        else:
            return None
        return sum(xsk_drops(counters).values())

    def _forwarder_report(self, timeout: float = 2.0) -> Optional[dict]:
        """The forwarder's counters now: it prints them on SIGUSR1."""
        def reports() -> list[str]:
            return [line for line in self._forwarder_log.read_text().splitlines()
                    if line.startswith('{"now"')]

        seen = len(reports())
        self._forwarder.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = reports()
            if len(lines) > seen:
                try:
                    return json.loads(lines[-1])["now"]
                except (ValueError, KeyError):
                    return None
            time.sleep(0.01)
        return None


# ---------------------------------------------------------------- rows


def machine_info() -> dict:
    from dataplane import crypto
    from dataplane.bench.crypto import machine_info as crypto_machine

    info = crypto_machine()
    info.update({"cores": os.cpu_count(), "python": platform.python_version(),
                 "dataplane": __version__, "crypto_impl": crypto.active()})
    try:
        out = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True,
                             timeout=5)
        info["wireguard_go"] = (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["wireguard_go"] = None
    info["amneziawg_go"] = None
    if os.access(amneziawg_go.BINARY, os.X_OK):
        try:
            out = subprocess.run([str(amneziawg_go.BINARY), "--version"], capture_output=True,
                                 text=True, timeout=5)
            info["amneziawg_go"] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return info


def _per(seconds: Optional[float], packets: int) -> Optional[float]:
    return seconds * 1e9 / packets if seconds is not None and packets else None


def make_row(dut: str, size: str, peers: int, direction: str, runs: list,
             lat_run: Optional[dict], lat_rate: int, duration: float) -> dict:
    lat: Optional[RecvResult] = lat_run["latency"] if lat_run else None
    return {
        "dut": dut, "size": size if size == "imix" else int(size), "peers": peers,
        "direction": direction, "runs": len(runs), "duration_s": duration,
        **{k: _median(runs, k) for k in ("pps", "gbps", "loss", "cpu_ns_per_pkt",
                                          "dut_proc_cpu_ns_per_pkt", "dut_core_busy",
                                          "gen_cpu_ns_per_pkt", "sent_pps")},
        "pps_min": min(r["pps"] for r in runs), "pps_max": max(r["pps"] for r in runs),
        # every run, in order: run i of each DUT was measured in turn (interleaved)
        "pps_runs": [r["pps"] for r in runs],
        "cpu_ns_per_pkt_runs": [r["cpu_ns_per_pkt"] for r in runs],
        "reordered": sum(r["reordered"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "rejected": sum(r["rejected"] for r in runs),
        # datagrams at the generator that were not ours: with a profile,
        # those that did not fit it
        "foreign": sum(r["foreign"] for r in runs),
        "send_errors": sum(r["send_errors"] for r in runs),
        # the XDP DUTs: packets the kernel dropped at their AF_XDP sockets
        # (the rest of the loss is before them: the WAN veth's ring)
        "dut_ring_drops": _sum(runs, "dut_ring_drops"),
        # the dataplane DUTs' counters, summed over the measured runs
        "dut_counter_deltas": _add_deltas(runs),
        "dut_xdp_drops": _sum(runs, "dut_xdp_drops"),
        "dut_worker_drops": _sum(runs, "dut_worker_drops"),
        "junk_sent": _sum(runs, "junk_sent"),
        "junk_pps": _median(runs, "junk_pps"),
        "lat_rate_pps": lat_rate if lat else None,
        "lat_p50_us": lat.percentile_us(0.50) if lat else None,
        "lat_p99_us": lat.percentile_us(0.99) if lat else None,
        "lat_p999_us": lat.percentile_us(0.999) if lat else None,
        "lat_max_us": lat.lat_max_ns / 1000 if lat and lat.lat_count else None,
        "lat_loss": lat_run["loss"] if lat_run else None,
    }


def _paired(ours: list, theirs: list, invert: bool = False) -> Optional[float]:
    """The median over i of ours[i] / theirs[i] (theirs[i] / ours[i] with
    invert): runs i of two DUTs were measured one right after the other,
    so each pair shares the machine's speed of that moment."""
    pairs = [(a, b) for a, b in zip(ours, theirs) if a and b]
    if not pairs or len(ours) != len(theirs):
        return None
    return statistics.median(b / a if invert else a / b for a, b in pairs)


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


def add_ratios(rows: list[dict]) -> None:
    """pps against wireguard-go, amneziawg-go, the raw AF_XDP forwarding
    ceiling and the no-tunnel ceiling of the same scenario in this run, and
    packets per DUT CPU-second against wireguard-go's and amneziawg-go's:
    the ratio of the medians, and (`*_paired`) the median of the run-by-run
    ratios. An obfuscated row also gets both against the same DUT without
    obfuscation in this run (`vs_unobfuscated`, `cpu_vs_unobfuscated`):
    what the profile costs; a row under a junk flood against the same DUT
    without one (`vs_no_junk`, `cpu_vs_no_junk`, --junk-both). Tunnel DUTs
    are compared with rows of the same junk flood, or none."""
    by = {(r.get("label", r["dut"]), r["size"], r["peers"], r["direction"]): r for r in rows}
    for r in rows:
        key = (r["size"], r["peers"], r["direction"])
        junk = JUNK_SUFFIX if r.get("junk_flood") is not None else ""
        plain = by.get((label(r["dut"], False) + junk, *key)) if r.get("obfuscation") else None
        calm = by.get((r["label"][:-len(junk)], *key)) if junk else None
        refs = (("wireguard_go", by.get(("wireguard-go" + junk, *key))),
                ("amneziawg_go", by.get(("amneziawg-go" + junk, *key))),
                ("xsk_forward", by.get(("xsk-forward", *key))),
                ("no_tunnel", by.get(("no-tunnel", *key))),
                ("unobfuscated", plain if plain and not plain.get("obfuscation") else None),
                ("no_junk", calm))
        for name, other in refs:
            r[f"vs_{name}"] = _ratio(r["pps"], other["pps"]) if other else None
            r[f"vs_{name}_paired"] = _paired(r.get("pps_runs", []), other.get("pps_runs", [])) \
                if other else None
            if name in ("xsk_forward", "no_tunnel"):
                continue
            # packets per DUT CPU-second against theirs (their ns/pkt over ours)
            r[f"cpu_vs_{name}"] = _ratio(other.get("cpu_ns_per_pkt"), r.get("cpu_ns_per_pkt")) \
                if other else None
            r[f"cpu_vs_{name}_paired"] = _paired(
                r.get("cpu_ns_per_pkt_runs", []), other.get("cpu_ns_per_pkt_runs", []),
                invert=True) if other else None


def _fmt(v, spec: str, width: int) -> str:
    return f"{v:{width}{spec}}" if v is not None else f"{'-':>{width}}"


def print_table(rows: list[dict], out=sys.stdout) -> None:
    """The rows, one line each; the columns of obfuscation and of a junk
    flood only where a row has them."""
    def pct(v):
        return v * 100 if v is not None else None

    columns = [  # header, width, format, value
        ("kpps", 8, ".1f", lambda r: r["pps"] / 1e3),
        ("min", 8, ".1f", lambda r: r["pps_min"] / 1e3),
        ("max", 8, ".1f", lambda r: r["pps_max"] / 1e3),
        ("Gbit/s", 7, ".3f", lambda r: r["gbps"]),
        ("loss%", 6, ".1f", lambda r: pct(r["loss"])),
        ("DUT ns/pkt", 10, ".0f", lambda r: r["cpu_ns_per_pkt"]),
        ("p50 us", 7, ".0f", lambda r: r["lat_p50_us"]),
        ("p99 us", 7, ".0f", lambda r: r["lat_p99_us"]),
        ("p999 us", 8, ".0f", lambda r: r["lat_p999_us"]),
        ("vs wg-go", 8, ".2f", lambda r: r["vs_wireguard_go"]),
        ("vs xsk", 8, ".2f", lambda r: r["vs_xsk_forward"]),
        ("vs plain", 8, ".2f", lambda r: r["vs_no_tunnel"]),
        ("pkt/CPU-s vs wg-go", 18, ".2f", lambda r: r["cpu_vs_wireguard_go"]),
    ]
    if any(r.get("obfuscation") or r["dut"] == "amneziawg-go" for r in rows):
        columns += [
            ("pkt/CPU-s vs awg-go", 19, ".2f", lambda r: r.get("cpu_vs_amneziawg_go")),
            ("pkt/CPU-s vs no-awg", 19, ".2f", lambda r: r.get("cpu_vs_unobfuscated")),
        ]
    if any(r.get("junk_sent") is not None for r in rows):
        columns += [
            ("vs no-junk", 10, ".2f", lambda r: r.get("vs_no_junk")),
            ("pkt/CPU-s vs no-junk", 20, ".2f", lambda r: r.get("cpu_vs_no_junk")),
            ("junk kpps", 9, ".1f", lambda r: r["junk_pps"] / 1e3 if r.get("junk_pps") else None),
            ("XDP drops", 10, "d", lambda r: r.get("dut_xdp_drops")),
            ("worker drops", 12, "d", lambda r: r.get("dut_worker_drops")),
        ]
    width = max([17] + [len(r.get("label", r["dut"])) for r in rows])
    print(f"\n{'dut':{width}} {'size':>5} {'peers':>5} {'dir':6} "
          + " ".join(f"{h:>{w}}" for h, w, _, _ in columns), file=out)
    for r in rows:
        print(f"{r.get('label', r['dut']):{width}} {str(r['size']):>5} {r['peers']:5} "
              f"{r['direction']:6} " + " ".join(_fmt(value(r), spec, w)
                                                for _, w, spec, value in columns), file=out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["peers"], r["direction"]) for r in rows})
    duts = list(dict.fromkeys(r.get("label", r["dut"]) for r in rows))
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 7), squeeze=False)
    for col, (peers, direction) in enumerate(groups):
        sel = [r for r in rows if r["peers"] == peers and r["direction"] == direction]
        sizes = sorted({str(r["size"]) for r in sel}, key=lambda s: (s == "imix", len(s), s))
        width = 0.8 / max(1, len(duts))
        for j, dut in enumerate(duts):
            xs, pps, err, cpu = [], [], [], []
            for i, size in enumerate(sizes):
                r = next((r for r in sel if r.get("label", r["dut"]) == dut and
                          str(r["size"]) == size), None)
                if r:
                    xs.append(i + j * width)
                    pps.append(r["pps"] / 1e6)
                    err.append([(r["pps"] - r["pps_min"]) / 1e6, (r["pps_max"] - r["pps"]) / 1e6])
                    cpu.append(r["cpu_ns_per_pkt"] or 0)
            if xs:
                axes[0][col].bar(xs, pps, width, label=dut,
                                 yerr=list(zip(*err)) if err else None, capsize=2)
                axes[1][col].bar(xs, cpu, width, label=dut)
        for ax in axes[:, col]:
            ax.set_xticks([i + width * (len(duts) - 1) / 2 for i in range(len(sizes))])
            ax.set_xticklabels(sizes)
            ax.set_xlabel("inner packet size (bytes)")
        axes[0][col].set_title(f"{direction}, {peers} peer(s)")
        axes[0][col].set_ylabel("Mpps received")
        axes[1][col].set_ylabel("DUT CPU ns per packet")
        axes[0][col].legend(fontsize="small")
    fig.suptitle("dataplane bench")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- command


def scenarios_of(args) -> list[tuple[str, int, str]]:
    if args.size or args.peers or args.direction:
        return [(s, p, d) for s in (args.size or list(SIZES)) for p in (args.peers or [1])
                for d in (args.direction or ["decap", "encap"])]
    return quick_scenarios() if args.quick else default_scenarios()


JUNK_SUFFIX = "+junk"  # rows measured under a junk flood


def _junk_rates(args, dut: str) -> list[Optional[int]]:
    """The junk flood of each set of rows a DUT gets: None (no flood), the
    flood's rate, or both (--junk-both). Only tunnel DUTs have a port."""
    if args.junk_flood is None or dut not in TUNNEL_DUTS:
        return [None]
    return [None, args.junk_flood] if args.junk_both else [args.junk_flood]


def _measure(args, variants: list[tuple[str, bool]], n_peers: int, scenarios: list, tmp: Path,
             machine: dict, say, progress: dict) -> list[dict]:
    """The rows of every DUT for these scenarios (one peer count); variants
    are (dut, obfuscated). Every DUT's world is up at once and their runs
    take turns (A B C A B C ...), so that the ratios between DUTs compare
    runs seconds apart: this machine's speed drifts by a fifth over
    minutes, and DUTs measured one after the other would carry that drift
    in their ratios. With --junk-both a tunnel DUT's runs without and with
    the junk flood take turns the same way. Before each run the DUT's CPU
    must have gone quiet (wait_idle): idle worlds sleep, but a DUT may go
    on working for a moment after its run."""
    rows: list[dict] = []
    # (row label, world, junk flood rate or None), in the order runs take turns
    measures: list[tuple[str, World, Optional[int]]] = []
    with contextlib.ExitStack() as stack:
        for i, (dut, obfuscated) in enumerate(variants):
            topo = stack.enter_context(Topology(f"bp{i}"))
            world = World(topo, dut, n_peers, tmp, pin=not args.no_pin, say=say,
                          napi_threads=args.napi_threads, sessions=args.sessions,
                          busy_poll_us=args.busy_poll, realtime=args.realtime,
                          obfuscation=args.obfuscation_profile if obfuscated else PLAIN)
            stack.callback(world.close)  # before its topology goes
            for junk in _junk_rates(args, dut):
                name = world.label + (JUNK_SUFFIX if junk is not None else "")
                measures.append((name, world, junk))
        labels: dict[str, str] = {}

        def settle(name: str, world: World) -> None:
            cpu = world.dut_cpu
            busy = wait_idle(cpu) if cpu is not None else None
            if busy is not None:
                say(f"  {labels[name]}: the DUT's CPU is still {busy:.0%} busy after 3 s; "
                    f"measuring anyway")

        for size, _, direction in scenarios:
            warm: set = set()
            for name, world, _ in measures:
                progress["done"] += 1
                labels[name] = (f"[{progress['done']}/{progress['total']}] {name} {size} B, "
                                f"{n_peers} peer(s), {direction}")
                if args.warmup > 0 and id(world) not in warm:
                    warm.add(id(world))
                    world.run(size, direction, args.warmup, args.rate, args.receiver_poll_us)
            runs: dict[str, list] = {name: [] for name, _, _ in measures}
            for i in range(args.repeat):
                for name, world, junk_rate in measures:
                    settle(name, world)
                    r = world.run(size, direction, args.duration, args.rate,
                                  args.receiver_poll_us, junk_rate=junk_rate)
                    runs[name].append(r)
                    ring = (f" ({r['dut_ring_drops']} at its AF_XDP ring)"
                            if r.get("dut_ring_drops") is not None else "")
                    junk = (f"; junk {r['junk_pps'] / 1e3:.1f} kpps"
                            if r.get("junk_pps") is not None else "")
                    if junk and r.get("dut_xdp_drops") is not None:
                        junk += f", {r['dut_xdp_drops']} dropped in XDP"
                    if junk and r.get("dut_worker_drops") is not None:
                        junk += f", {r['dut_worker_drops']} by the workers"
                    say(f"  {labels[name]}: run {i + 1}/{args.repeat} "
                        f"{r['pps'] / 1e3:.1f} kpps, loss {r['loss'] or 0:.1%}{ring}, "
                        f"DUT {_fmt(r['cpu_ns_per_pkt'], '.0f', 0)} ns/pkt{junk}")
            lat_rate = args.rate or args.latency_rate
            for name, world, junk_rate in measures:
                lat_run = None
                if args.latency_seconds > 0:
                    settle(name, world)
                    lat_run = world.run(size, direction, args.latency_seconds, lat_rate,
                                        poll_us=0, junk_rate=junk_rate)
                    lat = lat_run["latency"]
                    say(f"  {labels[name]}: latency at {lat_rate} pps: p50 "
                        f"{_fmt(lat.percentile_us(0.5), '.0f', 0)} us, p99 "
                        f"{_fmt(lat.percentile_us(0.99), '.0f', 0)} us")
                dut = world.dut
                row = make_row(dut, size, n_peers, direction, runs[name], lat_run, lat_rate,
                               args.duration)
                row["label"] = name
                row["obfuscation"] = not world.obfuscation.is_plain
                row["obfuscation_profile"] = world.obfuscation.settings() \
                    if row["obfuscation"] else None
                # the flood's requested rate (0: as fast as it goes), None: none
                row["junk_flood"] = junk_rate
                row["machine"] = machine
                row["napi_threads"] = args.napi_threads
                row["receiver_poll_us"] = args.receiver_poll_us
                row["busy_poll_us"] = args.busy_poll if dut in XDP_DUTS else 0
                # no-tunnel has no threads of its own: the kernel forwards
                row["realtime_priority"] = args.realtime if dut in TUNNEL_DUTS or \
                    dut == "xsk-forward" else 0
                row["_world"] = world
                rows.append(row)
    for row in rows:
        world = row.pop("_world")
        # the forwarder's, over every run of its world (warm-up and latency runs too)
        if world.dut_counters is not None:
            row["dut_counters"] = world.dut_counters
    return rows


def _profile_text(profile: Obfuscation) -> str:
    return ", ".join(line.replace(" = ", " ", 1) for line in profile.file_lines())


def run(args) -> int:
    if os.geteuid() != 0:
        print("dataplane bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    if args.quick:
        args.duration = min(args.duration, 1.0)
        args.repeat = 1
        args.warmup = min(args.warmup, 0.3)
        args.latency_seconds = min(args.latency_seconds, 0.5)
    if args.repeat < 1 or args.duration <= 0:
        print("dataplane bench: --repeat must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    if args.realtime and args.busy_poll:
        print("dataplane bench: --realtime and --busy-poll do not go together (as "
              "RealtimePriority and BusyPoll: a real-time thread that polls keeps the "
              "receive threads that feed it off its CPU)", file=sys.stderr)
        return 2
    obfuscated = args.obfuscation != "off"
    duts = args.dut or default_duts(obfuscation=obfuscated)
    if "amneziawg-go" in duts:
        try:
            amneziawg_go.binary()
        except AmneziaWGUnavailable as e:
            print(f"dataplane bench: amneziawg-go: {e}", file=sys.stderr)
            return 1
    scenarios = scenarios_of(args)
    machine = machine_info()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    worlds = variants(duts, args.obfuscation)
    say(f"dataplane bench: {len(worlds)} DUT(s) x {len(scenarios)} scenario(s), "
        f"{args.repeat} x {args.duration:g} s each; {machine['cpu']}, {machine['cores']} cores")
    if obfuscated:
        say(f"  AmneziaWG profile: {_profile_text(args.obfuscation_profile)}")
        for dut in duts:
            if dut not in PROFILE_DUTS:
                why = ("cannot speak AmneziaWG" if dut == "wireguard-go" else
                       "forwards the generator's plain UDP (no WireGuard)")
                say(f"  {dut}: measured without the profile ({why}); its rows say "
                    f"obfuscation false")
    elif "amneziawg-go" in duts:
        say("  amneziawg-go without --obfuscation speaks plain WireGuard")
    if args.junk_both and args.junk_flood is None:
        args.junk_flood = 0
    if args.junk_flood is not None:
        rate = f"{args.junk_flood} packets/s" if args.junk_flood else "as fast as it goes"
        say(f"  junk flood at the tunnel DUTs' port{' (+junk rows)' if args.junk_both else ''}"
            f", {rate}")
    rows: list[dict] = []
    progress = {"done": 0, "total": len(scenarios) * sum(
        len(_junk_rates(args, dut)) for dut, _ in worlds)}
    with tempfile.TemporaryDirectory(prefix="dataplane-bench-") as tmp:
        for n_peers in sorted({p for _, p, _ in scenarios}):
            mine = [s for s in scenarios if s[1] == n_peers]
            rows += _measure(args, worlds, n_peers, mine, Path(tmp), machine, say, progress)
    add_ratios(rows)
    order = {d: i for i, d in enumerate(DUTS)}
    rows.sort(key=lambda r: (scenarios.index((str(r["size"]), r["peers"], r["direction"])),
                             order[r["dut"]], r["obfuscation"], r["junk_flood"] is not None))
    print_table(rows)
    print(f"\n{machine['cpu']} ({machine['cores']} cores), {machine['kernel']}, crypto "
          f"{machine['crypto_impl']}; DUT pinned to CPU "
          f"{'none' if args.no_pin else sorted(os.sched_getaffinity(0))[-1]}. pps = inner packets "
          f"received per second; latency at a fixed rate; DUT ns/pkt from its own CPU time.")
    if obfuscated:
        print(f"AmneziaWG profile (+awg rows, amneziawg-go): "
              f"{_profile_text(args.obfuscation_profile)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0
