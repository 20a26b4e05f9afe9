"""`dataplane bench api`: the control-plane API under load.

An exit node (`dataplane up`, no peers in its file) in a namespace, its
API on the unix socket. Measured: the time to push N peers, each with a
session, in one all-or-nothing NDJSON batch (`POST /v1/bulk`); the
daemon's memory before and after (resident, and the native tables' own
figure) per peer; that the pushed sessions carry traffic (the load
generator sends through a sample of them and the far side counts what
arrives); and the latency of single `PUT /v1/peers/{key}` requests while
other clients push at the same time.

Topology: gen (load generator) -- exit (dataplane) -- far (sink)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from dataplane.bench.loadgen import EmulatedPeers, Receiver, Sender
from dataplane.client import Client
from dataplane.keys import PrivateKey
from dataplane.launch import start_daemon
from dataplane.topology import Topology, socket_in

GEN, EXIT_GEN_SIDE = "10.231.0.1", "10.231.0.2"
EXIT_FAR_SIDE, SINK = "10.232.0.1", "10.232.0.2"
TUNNEL_ADDRESS = "10.224.0.1/12"   # every peer's /32 lies inside: no routes per peer
FIRST_PEER = "10.224.0.2"
LISTEN_PORT, GEN_PORT, SINK_PORT = 51830, 40010, 9
MTU = 1420


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class PushWorld:
    """gen -- exit -- far, with `dataplane up` on exit and an API client."""

    def __init__(self, topo: Topology, tmp: Path, max_peers: int = 1024,
                 extra_dataplane: str = "", backend: str = "socket"):
        self.topo = topo
        self.gen_ns, self.exit_ns, self.far_ns = (topo.namespace("g"), topo.namespace("x"),
                                                  topo.namespace("f"))
        _, wan = topo.link(self.gen_ns, self.exit_ns, [f"{GEN}/24"], [f"{EXIT_GEN_SIDE}/24"])
        topo.link(self.exit_ns, self.far_ns, [f"{EXIT_FAR_SIDE}/24"], [f"{SINK}/24"])
        topo.run(self.exit_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        topo.add_route(self.gen_ns, "0.0.0.0/0", gateway=EXIT_GEN_SIDE)
        topo.add_route(self.far_ns, "0.0.0.0/0", gateway=EXIT_FAR_SIDE)
        self.key = PrivateKey.generate()
        self.name = f"dpa{os.getpid() % 100000}"
        conf = tmp / f"{self.name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {self.key.reveal_base64()}\n"
                        f"ListenPort = {LISTEN_PORT}\nAddress = {TUNNEL_ADDRESS}\nMTU = {MTU}\n"
                        f"\n[DataPlane]\nBackend = {backend}\nMaxPeers = {max_peers}\n"
                        + (f"Interfaces = {wan}\n" if backend == "xdp" else "") +
                        f"{extra_dataplane}")
        conf.chmod(0o600)
        self.log = tmp / f"{self.name}.log"
        self.daemon = start_daemon(topo, self.exit_ns, conf, log=self.log)
        self.api_path = Path(f"/run/dataplane/{self.name}.api.sock")
        deadline = time.monotonic() + 10
        while not self.api_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client = Client(self.api_path, timeout=300)
        self.gen = socket_in(self.gen_ns)
        self.gen.bind((GEN, GEN_PORT))
        self.gen.connect((EXIT_GEN_SIDE, LISTEN_PORT))
        self.sink = socket_in(self.far_ns)
        self.sink.bind((SINK, SINK_PORT))

    def peers(self, n: int) -> EmulatedPeers:
        return EmulatedPeers(n, FIRST_PEER)

    def send(self, peers: EmulatedPeers, packets: int, rate: int = 20000, flow: int = 0,
             size: int = 128) -> tuple[int, int, int]:
        """`packets` sealed packets round-robin over the peers, to the sink
        through the exit node; (sent, received, rejected-or-foreign)."""
        recv = Receiver(self.sink, None, sealed=False).start()
        try:
            sender = Sender(self.gen, peers, sealed=True, sizes=[size], dst=SINK,
                            src_port=GEN_PORT, dst_port=SINK_PORT, flow=flow, mtu=MTU,
                            rate=rate, seconds=packets / rate).start()
            sent = sender.join(packets / rate + 30)
            recv.settle()
        finally:
            got = recv.stop()
        return sent.packets, got.packets, got.rejected + got.foreign

    def close(self) -> None:
        self.client.close()
        self.gen.close()
        self.sink.close()
        self.key.wipe()
        if self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except Exception:  # noqa: BLE001
                self.daemon.kill()


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(n_peers: int, single_puts: int, background: int, replay_window: int = 0,
            say=print) -> dict:
    out: dict = {"peers": n_peers, "replay_window": replay_window or "default"}
    extra = f"ReplayWindow = {replay_window}\n" if replay_window else ""
    with Topology("dpb") as topo, tempfile.TemporaryDirectory(prefix="dp-bench-api-") as tmp:
        world = PushWorld(topo, Path(tmp), max_peers=max(1024, n_peers + single_puts * 2),
                          extra_dataplane=extra)
        try:
            pid = world.daemon.pid
            time.sleep(0.5)
            rss0 = rss_bytes(pid)
            native0 = world.client.interface()["status"].get("native_memory") or {}
            with world.peers(n_peers) as peers:
                ops = peers.session_ops(activate="now")
                taken = {op["session"]["receiver_index"] for op in ops}
                body = "".join(json.dumps(op, separators=(",", ":")) + "\n" for op in ops)
                del ops
                say(f"  bulk: {n_peers} peers with sessions, {len(body) / 1e6:.1f} MB of NDJSON")
                out["bulk_seconds"] = _timed_bulk(world, body.encode(), n_peers, 201)
                say(f"  bulk: applied in {out['bulk_seconds']:.2f} s "
                    f"({n_peers / out['bulk_seconds']:.0f} peers/s)")
                rss1 = rss_bytes(pid)
                native1 = world.client.interface()["status"].get("native_memory") or {}
                out["rss_bytes_per_peer"] = (rss1 - rss0) / n_peers
                if native1:
                    out["native_memory"] = native1
                    total0 = native0.get("total", 0)
                    total1 = native1["total"]
                    out["native_bytes_per_peer_total"] = total1 / n_peers
                    out["native_bytes_per_peer_added"] = (total1 - total0) / n_peers
                say(f"  memory: RSS +{(rss1 - rss0) / 1e6:.0f} MB "
                    f"({out['rss_bytes_per_peer']:.0f} B/peer)"
                    + (f"; native tables {out['native_bytes_per_peer_total']:.0f} B/peer"
                       if native1 else ""))
                sample = min(n_peers, 20000)
                sent, got, bad = world.send(peers, sample, rate=5000)
                out["traffic"] = {"sent": sent, "received": got, "rejected": bad}
                say(f"  traffic through the pushed sessions: {got}/{sent} arrived")
                # a control plane's resync (the same batch again: nothing
                # changes) and a rotation of every session
                out["resync_seconds"] = _timed_bulk(world, body.encode(), n_peers, 200)
                del body
                ops = peers.session_ops(activate="on_receive", put_peer=False, taken=taken,
                                        stage=True)
                rotation = "".join(json.dumps(op, separators=(",", ":")) + "\n" for op in ops)
                del ops
                out["rotation_seconds"] = _timed_bulk(world, rotation.encode(), n_peers, 201)
                say(f"  the same batch again: {out['resync_seconds']:.2f} s; a new session "
                    f"for every peer: {out['rotation_seconds']:.2f} s")
            out["put_latency_ms"] = _put_latency(world, single_puts, background, say)
        finally:
            world.close()
    return out


def _timed_bulk(world: PushWorld, body: bytes, n: int, status: int) -> float:
    """Seconds for one bulk push whose every line must answer `status`."""
    t0 = time.perf_counter()
    _, answer = world.client.request("POST", "/v1/bulk", body,
                                     content_type="application/x-ndjson")
    seconds = time.perf_counter() - t0
    assert answer["applied"] and len(answer["results"]) == n, answer
    assert all(r["status"] == status for r in answer["results"]), answer["results"][:3]
    return seconds


def _put_latency(world: PushWorld, n: int, background: int, say) -> dict:
    """Single PUTs of a peer with a session, timed, while `background`
    other clients push peers as fast as they can."""
    stop = threading.Event()
    counts = [0] * background

    def pusher(k: int) -> None:
        with Client(world.api_path) as c, EmulatedPeers(1, f"10.230.{k}.1") as p:
            while not stop.is_set():
                op = p.session_ops(activate="now")[0]
                c.request("PUT", "/v1/peers/" + _q(op["public_key"]),
                          {"allowed_ips": op["allowed_ips"], "session": op["session"]})
                counts[k] += 1
    threads = [threading.Thread(target=pusher, args=(k,), daemon=True) for k in range(background)]
    for t in threads:
        t.start()
    times = []
    taken: set = set()
    try:
        with Client(world.api_path) as c, EmulatedPeers(n, "10.229.0.2") as peers:
            ops = peers.session_ops(activate="now", taken=taken)
            t_start = time.perf_counter()
            for op in ops:
                t0 = time.perf_counter()
                c.request("PUT", "/v1/peers/" + _q(op["public_key"]),
                          {"allowed_ips": op["allowed_ips"], "session": op["session"]})
                times.append((time.perf_counter() - t0) * 1000)
            span = time.perf_counter() - t_start
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    res = {"n": n, "background_clients": background, "p50": statistics.median(times),
           "p99": _percentile(times, 0.99), "max": max(times),
           "background_puts_per_s": sum(counts) / span}
    say(f"  PUT latency with {background} pushing clients: p50 {res['p50']:.2f} ms, "
        f"p99 {res['p99']:.2f} ms ({res['background_puts_per_s']:.0f} background PUTs/s)")
    return res


def _q(key: str) -> str:
    return key.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("api", help="push peers and sessions through the control-plane "
                                          "API: bulk time, memory per peer, PUT latency",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=100_000, help="peers in the bulk push "
                                                               "(default 100000)")
    p.add_argument("--puts", type=int, default=1000, help="timed single PUTs (default 1000)")
    p.add_argument("--background", type=int, default=2,
                   help="clients pushing at the same time (default 2)")
    p.add_argument("--replay-window", type=int, default=0, metavar="BITS",
                   help="[DataPlane] ReplayWindow of the node (default: its default, 8192)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    if os.geteuid() != 0:
        print("dataplane bench api: needs root (network namespaces)")
        return 1
    if not 1 <= args.peers <= 1 << 20:
        print("dataplane bench api: --peers must be 1..1048576")
        return 2
    print(f"dataplane bench api: {args.peers} peers, {args.puts} timed PUTs, "
          f"{args.background} background clients")
    out = measure(args.peers, args.puts, args.background, args.replay_window)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    t = out["traffic"]
    print(f"\nbulk push of {out['peers']} peers with sessions: {out['bulk_seconds']:.2f} s; "
          f"RSS {out['rss_bytes_per_peer']:.0f} B/peer"
          + (f", native {out['native_bytes_per_peer_total']:.0f} B/peer"
             if "native_bytes_per_peer_total" in out else "")
          + f"; traffic {t['received']}/{t['sent']}; again {out['resync_seconds']:.2f} s, "
          f"rotation {out['rotation_seconds']:.2f} s; PUT p50 "
          f"{out['put_latency_ms']['p50']:.2f} ms, p99 {out['put_latency_ms']['p99']:.2f} ms")
    return 0 if t["received"] == t["sent"] else 1
