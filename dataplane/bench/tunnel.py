"""`dataplane bench tunnel`: iperf3 through a tunnel under test, next to
wireguard-go and plain forwarding, on this machine.

    client ns ──veth── DUT ns (tunnel under test, iperf3 server)

The client is always Debian's wireguard-go (or nothing, for the no-tunnel
row), so every DUT faces the same peer. For each DUT: TCP with 1 and 4
streams in both directions, and 64-byte UDP (packets/s received), plus the
CPU time the DUT's own process used per byte and per packet (from
/proc/PID/stat; kernel work done in its threads, e.g. TUN writes that
enter the TCP stack, is included, as it is for wireguard-go).

This is the first of the benchmark harness's scenarios: a native load
generator that takes the client out of the measurement is still to come,
so on a small machine the client's wireguard-go can be what limits the
throughput rows; the CPU-per-byte rows are the DUT's own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from dataplane.keys import PrivateKey
from dataplane.launch import start_daemon
from dataplane.topology import Topology
from dataplane.wireguard_go import WireGuardGo

DUTS = ("dataplane-socket", "wireguard-go", "no-tunnel")
TESTS = ("tcp", "tcp-r", "tcp-4", "udp-64")
OUTER = ("10.231.0.1/24", "10.231.0.2/24")
INNER = ("10.232.0.2/24", "10.232.0.1/24")  # client, DUT
PORT = 51820


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tunnel", help="iperf3 TCP/UDP through our tunnel vs wireguard-go "
                                             "and plain forwarding, with the DUT's CPU per byte",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--dut", action="append", choices=DUTS, help="repeatable (default: all)")
    p.add_argument("--test", action="append", choices=TESTS, help="repeatable (default: all)")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="median of this many (default 3)")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    p.set_defaults(run=run)
    return p


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class World:
    """Client and DUT namespaces with the DUT's tunnel (or none) up."""

    def __init__(self, topo: Topology, dut: str, tmp: Path):
        self.topo, self.dut = topo, dut
        self.client, self.server = topo.namespace("cl"), topo.namespace("dut")
        topo.link(self.client, self.server, [OUTER[0]], [OUTER[1]])
        self.dut_pid: Optional[int] = None
        self.target = OUTER[1].split("/")[0]
        if dut == "no-tunnel":
            return
        ck, sk = PrivateKey.generate(), PrivateKey.generate()
        tag = os.getpid() % 10000
        if dut == "dataplane-socket":
            name = f"bdp{tag}"
            conf = tmp / f"{name}.conf"
            conf.write_text(f"[Interface]\nPrivateKey = {sk.reveal_base64()}\nListenPort = {PORT}\n"
                            f"Address = {INNER[1]}\n\n[Peer]\nPublicKey = {ck.public_key()}\n"
                            f"AllowedIPs = {INNER[0].split('/')[0]}/32\n"
                            f"\n[DataPlane]\nBackend = socket\n")
            conf.chmod(0o600)
            self.dut_pid = start_daemon(topo, self.server, conf).pid
        else:
            server = WireGuardGo(topo, self.server, f"bws{tag}")
            server.start()
            server.configure(sk.reveal(), listen_port=PORT)
            server.set_peer(ck.public_key(), allowed_ips=[f"{INNER[0].split('/')[0]}/32"])
            server.up([INNER[1]])
            self.dut_pid = server.proc.pid
        client = WireGuardGo(topo, self.client, f"bwc{tag}")
        client.start()
        client.configure(ck.reveal())
        client.set_peer(sk.public_key(), allowed_ips=["10.232.0.0/24"],
                        endpoint=f"{OUTER[1].split('/')[0]}:{PORT}")
        client.up([INNER[0]])
        self.target = INNER[1].split("/")[0]
        topo.run(self.client, ["ping", "-c", "1", "-W", "5", self.target])

    def iperf3(self, test: str, seconds: float) -> dict:
        server = self.topo.popen(self.server, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        args = {"tcp": [], "tcp-r": ["-R"], "tcp-4": ["-P", "4"],
                "udp-64": ["-u", "-b", "0", "-l", "64"]}[test]
        cpu0 = cpu_seconds(self.dut_pid) if self.dut_pid else 0.0
        try:
            out = self.topo.run(self.client, ["iperf3", "-c", self.target, "-t", str(seconds),
                                              "-J", *args], timeout=seconds + 60).stdout
        finally:
            server.wait(timeout=15)
        cpu = cpu_seconds(self.dut_pid) - cpu0 if self.dut_pid else None
        end = json.loads(out)["end"]
        if test == "udp-64":
            s = end["sum"]
            received = s["packets"] - s["lost_packets"]
            pps = received / s["seconds"]
            return {"gbps": pps * 64 * 8 / 1e9, "pps": pps, "loss": s["lost_percent"] / 100,
                    "cpu_s": cpu,
                    "cpu_ns_per_pkt": cpu * 1e9 / received if cpu is not None and received else None}
        s = end["sum_received"]
        return {"gbps": s["bits_per_second"] / 1e9, "pps": None, "loss": None, "cpu_s": cpu,
                "cpu_ns_per_byte": cpu * 1e9 / s["bytes"] if cpu is not None else None}


def _median(runs: list, key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def run(args) -> int:
    if os.geteuid() != 0:
        print("dataplane bench tunnel: needs root (network namespaces)", file=sys.stderr)
        return 1
    rows = []
    duts, tests = args.dut or list(DUTS), args.test or list(TESTS)
    with tempfile.TemporaryDirectory(prefix="dataplane-bench-") as tmp:
        for dut in duts:
            with Topology("bt") as topo:
                world = World(topo, dut, Path(tmp))
                for test in tests:
                    runs = []
                    for i in range(args.repeat):
                        print(f"  {dut:17} {test:7} run {i + 1}/{args.repeat}", file=sys.stderr,
                              flush=True)
                        runs.append(world.iperf3(test, args.seconds))
                    row = {"dut": dut, "test": test, "runs": len(runs),
                           **{k: _median(runs, k) for k in runs[0]},
                           "min_gbps": min(r["gbps"] for r in runs),
                           "max_gbps": max(r["gbps"] for r in runs)}
                    rows.append(row)
    print(f"\n{'dut':17} {'test':7} {'Gbit/s':>7} {'min':>6} {'max':>6} {'kpps':>7} "
          f"{'DUT cpu ns/B':>12} {'DUT cpu ns/pkt':>14}")
    for r in rows:
        kpps = f"{r['pps'] / 1e3:7.1f}" if r.get("pps") else f"{'':7}"
        nsb = f"{r['cpu_ns_per_byte']:12.2f}" if r.get("cpu_ns_per_byte") else f"{'':12}"
        nsp = f"{r['cpu_ns_per_pkt']:14.0f}" if r.get("cpu_ns_per_pkt") else f"{'':14}"
        print(f"{r['dut']:17} {r['test']:7} {r['gbps']:7.3f} {r['min_gbps']:6.3f} "
              f"{r['max_gbps']:6.3f} {kpps} {nsb} {nsp}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0
