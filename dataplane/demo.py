"""`dataplane demo`: a live exit node in network namespaces.

    client (wireguard-go) ──WAN── exit node (dataplane up) ──NAT── internet
    10.77.0.2 in the tunnel       10.77.0.1 in the tunnel         203.0.113.10

The client routes the "internet" subnet into its WireGuard tunnel; the exit
node decrypts, masquerades with nftables and forwards; the internet host has
no route back to the tunnel addresses, so every reply proves the NAT path.
Everything created is removed at the end, also after Ctrl-C or an error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataplane.commands import all_drops
from dataplane.keys import PrivateKey
from dataplane.topology import Topology, TopologyError
from dataplane.launch import dataplane_exe, start_daemon
from dataplane.wireguard_go import WireGuardGo

WAN = ("192.0.2.1/24", "192.0.2.2/24")          # client, exit node
INTERNET = ("203.0.113.1/24", "203.0.113.10/24")  # exit node, internet host
TUNNEL = ("10.77.0.2/24", "10.77.0.1/24")        # client, exit node
PORT = 51820


def add_parser(commands) -> None:
    p = commands.add_parser("demo", help="a live exit node in network namespaces, with a real "
                                         "WireGuard client, ping and iperf3",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=3, help="iperf3 duration (default 3)")
    p.set_defaults(run=run)


class Step:
    def __init__(self, n: int, total: int, text: str):
        self.start = time.monotonic()
        print(f"[{n}/{total}] {text} ...", flush=True)

    def done(self, detail: str = "") -> None:
        took = time.monotonic() - self.start
        print(f"      done in {took:.1f}s{': ' + detail if detail else ''}", flush=True)


def run(args) -> int:
    if os.geteuid() != 0:
        print("dataplane demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    missing = [t for t in ("wireguard-go", "wg", "iperf3", "nft", "ping") if not shutil.which(t)]
    if missing:
        print(f"dataplane demo: missing {', '.join(missing)}: run ./scripts/setup.sh",
              file=sys.stderr)
        return 1
    total = 7
    summary: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="dataplane-demo-"))
    try:
        with Topology("demo") as topo:
            name = f"demo{os.getpid() % 10000}"
            s = Step(1, total, "building the world: client, exit node and internet namespaces")
            client, exit_ns, inet = (topo.namespace(r) for r in ("client", "exit", "inet"))
            topo.link(client, exit_ns, [WAN[0]], [WAN[1]])
            _, exit_inet = topo.link(inet, exit_ns, [INTERNET[1]], [INTERNET[0]])
            topo.run(exit_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            topo.run(exit_ns, ["nft", "-f", "-"], input=(
                "table ip dpdemo {\n"
                "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
                f"    oifname \"{exit_inet}\" masquerade\n  }}\n}}\n"))
            s.done(f"{client}, {exit_ns}, {inet}; nftables masquerade on the exit node")

            s = Step(2, total, f"starting the exit node: dataplane up {name}.conf")
            exit_key, client_key = PrivateKey.generate(), PrivateKey.generate()
            conf = tmp / f"{name}.conf"
            conf.write_text("[Interface]\n"
                            f"PrivateKey = {exit_key.reveal_base64()}\n"
                            f"ListenPort = {PORT}\nAddress = {TUNNEL[1]}\n\n"
                            f"[Peer]\nPublicKey = {client_key.public_key()}\n"
                            f"AllowedIPs = {TUNNEL[0].split('/')[0]}/32\n\n"
                            "[DataPlane]\nBackend = auto\n")
            conf.chmod(0o600)
            daemon = start_daemon(topo, exit_ns, conf, log=tmp / "exit.log")
            s.done(f"listening on {WAN[1].split('/')[0]}:{PORT}")

            s = Step(3, total, "starting the client: Debian's wireguard-go, configured with wg")
            wg = WireGuardGo(topo, client, f"democ{os.getpid() % 10000}")
            wg.start()
            wg.configure(client_key.reveal())
            wg.set_peer(exit_key.public_key(), allowed_ips=["10.77.0.0/24", "203.0.113.0/24"],
                        endpoint=f"{WAN[1].split('/')[0]}:{PORT}")
            wg.up([TUNNEL[0]])
            topo.add_route(client, "203.0.113.0/24", ifname=wg.ifname)
            s.done(f"{wg.ifname}: 203.0.113.0/24 routed into the tunnel")

            s = Step(4, total, "ping through the tunnel to the internet host (first packet "
                               "triggers the handshake)")
            t0 = time.monotonic()
            r = topo.run(client, ["ping", "-c", "5", "-i", "0.2", "-W", "5",
                                  INTERNET[1].split("/")[0]], check=False)
            if r.returncode != 0:
                raise TopologyError("ping through the tunnel failed:\n" + r.stdout +
                                    (tmp / "exit.log").read_text())
            rtt = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
            summary["ping"] = f"5/5 replies, avg rtt {rtt.group(1) if rtt else '?'} ms"
            s.done(summary["ping"] + f" ({time.monotonic() - t0:.1f}s incl. handshake)")

            s = Step(5, total, "wg show on the exit node (our interface, read by stock wg)")
            print(_indent(topo.run(exit_ns, ["wg", "show", name]).stdout))
            s.done()

            s = Step(6, total, f"iperf3 TCP, client -> internet host, {args.seconds}s")
            server = topo.popen(inet, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            proc = topo.popen(client, ["iperf3", "-c", INTERNET[1].split("/")[0], "-t",
                                       str(args.seconds), "-i", "1", "-f", "m"],
                              stdout=subprocess.PIPE, text=True)
            speed = "?"
            for line in proc.stdout:
                if re.search(r"\d+\.\d+-\d+\.\d+\s+sec", line):
                    print("      " + line.strip(), flush=True)
                    if "receiver" in line:
                        speed = " ".join(line.split()[6:8])
            proc.wait(timeout=args.seconds + 30)
            server.wait(timeout=10)
            summary["iperf3"] = f"{speed} through the tunnel and NAT"
            s.done(summary["iperf3"])

            s = Step(7, total, "taking everything down")
            status = json.loads(topo.run(exit_ns, [dataplane_exe(), "show", name, "--json"])
                                .stdout)[name]
            topo.run(exit_ns, [dataplane_exe(), "down", name])
            daemon.wait(timeout=15)
            s.done()
        peer = status["peers"][0]
        drops = all_drops(status)  # the data path's, XDP's and the AF_XDP rings'
        print("\nSummary")
        print(f"  exit node backend : {status['backend']}")
        print(f"  handshake         : {status['handshake']['handshakes_completed']} completed "
              f"with wireguard-go")
        print(f"  ping              : {summary['ping']}")
        print(f"  iperf3 TCP        : {summary['iperf3']}")
        print(f"  transfer (exit)   : {peer['rx_bytes']} B received, {peer['tx_bytes']} B sent")
        print(f"  drops             : {', '.join(f'{k} {v}' for k, v in drops.items()) or 'none'}")
        print("  cleanup           : namespaces, links, interface and keys removed")
        return 0
    except KeyboardInterrupt:
        print("\ndataplane demo: interrupted; everything it created was removed", file=sys.stderr)
        return 130
    except (TopologyError, OSError, subprocess.SubprocessError) as e:
        print(f"dataplane demo: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines())
