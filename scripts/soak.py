"""Soak: hours of traffic through the exit node, with the control plane busy.

    sudo .venv/bin/python scripts/soak.py --minutes 60               # both backends at once
    sudo .venv/bin/python scripts/soak.py --minutes 5 --backend xdp  # a quick look

For each backend, in namespaces of its own:

    client ns (Debian's wireguard-go) ──veth── exit ns (`dataplane up`, iperf3 -s)

- traffic: iperf3 UDP at a fixed rate (--rate, well below saturation) in
  one-minute chunks, alternately client→exit (decap) and exit→client
  (encap), each chunk's sent and lost datagrams recorded;
- rekeys: real ones, every two minutes (REKEY_AFTER_TIME) as wireguard-go
  initiates them while it has traffic; counted from the daemon's
  handshakes_completed;
- churn: through the API the whole time, peers added with a session
  (random keys), their sessions rotated, and peers removed, keeping about
  --churn-peers of them alive;
- every --sample seconds: the daemon's RSS, open file descriptors, native
  memory (dp_device_memory's total and its table counts), the entries of
  the BPF maps it holds (hash and LRU maps; arrays have fixed sizes), and
  its drops, written as JSON lines to --out.

The summary compares the first sample after --warmup minutes with the last
(and their range): what must stay flat, and the loss against what was sent.
The exit status is 1 if the daemon died, a churn call failed for a reason
other than a refused index, or a flat figure grew beyond its allowance.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane.client import ApiRequestError, Client  # noqa: E402
from dataplane.keys import PrivateKey  # noqa: E402
from dataplane.launch import dataplane_exe, start_daemon  # noqa: E402
from dataplane.topology import Topology  # noqa: E402
from dataplane.wireguard_go import WireGuardGo  # noqa: E402

PORT = 40830
# BPF map types whose entries come and go (hash, per-CPU hash, LRU hash, LRU
# per-CPU hash, LPM trie, hash of maps); arrays and the like have a fixed
# number.
HASH_MAPS = {1, 5, 9, 10, 11, 13}
# What may move between the warm-up sample and the last without a leak:
# RSS by allocator noise, native memory by the churn peers alive then.
RSS_ALLOWANCE = 8 << 20


class World:
    """One backend's client and exit node, and the threads that drive them."""

    def __init__(self, topo: Topology, n: int, backend: str, tmp: Path, args):
        self.topo, self.n, self.backend, self.args = topo, n, backend, args
        self.client_ns, self.exit_ns = topo.namespace(f"c{n}"), topo.namespace(f"x{n}")
        outer = (f"10.24{n}.0.1", f"10.24{n}.0.2")
        self.inner = (f"10.25{n}.0.2", f"10.25{n}.0.1")  # client, exit
        topo.link(self.client_ns, self.exit_ns, [f"{outer[0]}/24"], [f"{outer[1]}/24"])
        tag = os.getpid() % 10000
        self.name = f"sk{backend[0]}{tag}"
        ck, xk = PrivateKey.generate(), PrivateKey.generate()
        conf = tmp / f"{self.name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {xk.reveal_base64()}\nListenPort = {PORT}\n"
                        f"Address = {self.inner[1]}/24\n\n[Peer]\nPublicKey = {ck.public_key()}\n"
                        f"AllowedIPs = {self.inner[0]}/32\n\n[DataPlane]\nBackend = {backend}\n")
        conf.chmod(0o600)
        self.log = tmp / f"{self.name}.log"
        self.daemon = start_daemon(topo, self.exit_ns, conf, log=self.log)
        client = WireGuardGo(topo, self.client_ns, f"skc{n}{tag}")
        client.start()
        client.configure(ck.reveal())
        client.set_peer(xk.public_key(), allowed_ips=[f"10.25{n}.0.0/24"],
                        endpoint=f"{outer[1]}:{PORT}")
        client.up([f"{self.inner[0]}/24"])
        self.client = client
        topo.run(self.client_ns, ["ping", "-c", "3", "-W", "5", self.inner[1]])
        self.iperf_server = topo.popen(self.exit_ns, ["iperf3", "-s", "-B", self.inner[1]],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        self.chunks: list[dict] = []
        self.samples: list[dict] = []
        self.churn = {"peers_added": 0, "peers_removed": 0, "sessions_put": 0,
                      "index_refused": 0, "errors": []}
        self.stop = threading.Event()

    # -- traffic

    def traffic(self, deadline: float) -> None:
        reverse = False
        while time.monotonic() < deadline - 5 and not self.stop.is_set():
            seconds = int(min(self.args.chunk, deadline - time.monotonic() - 3))
            if seconds < 2:
                break
            argv = ["iperf3", "-c", self.inner[1], "-u", "-b", self.args.rate, "-l", "1200",
                    "-w", "4M", "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
            sides = (("client", self.client_ns), ("exit", self.exit_ns))
            before = {ns: udp_buffer_errors(self.topo, ns) for ns in (self.client_ns, self.exit_ns)}
            links = {ns: link_drops(self.topo, ns) for _, ns in sides}
            r = self.topo.run(self.client_ns, argv, check=False, timeout=seconds + 60)
            chunk = {"t": time.monotonic(), "direction": "encap" if reverse else "decap",
                     # datagrams the kernel dropped at a full socket buffer (iperf3's, the
                     # client's wireguard-go, the socket backend's), by side
                     "rcvbuf_errors": {side: udp_buffer_errors(self.topo, ns) - before[ns]
                                       for side, ns in sides},
                     # packets the interfaces dropped (a full TUN queue among them), by side
                     "link_drops": {side: delta(links[ns], link_drops(self.topo, ns))
                                    for side, ns in sides}}
            try:
                s = json.loads(r.stdout)["end"]["sum"]
                chunk.update(packets=s["packets"], lost=s["lost_packets"],
                             seconds=s["seconds"])
            except (ValueError, KeyError) as e:
                chunk.update(error=f"iperf3 exited {r.returncode}: {e}: "
                                   f"{(r.stdout or r.stderr)[-300:]}")
                time.sleep(1)
            self.chunks.append(chunk)
            reverse = not reverse

    # -- the control plane's churn

    def churn_loop(self, deadline: float) -> None:
        rng = random.Random(self.n)
        live: deque = deque()
        serial = 0
        with Client.for_interface(self.name) as api:
            while time.monotonic() < deadline and not self.stop.is_set():
                try:
                    serial += 1
                    key = base64.b64encode(rng.randbytes(32)).decode()
                    addr = f"10.9{self.n}.{serial // 250 % 250}.{serial % 250 + 1}/32"
                    api.put_peer(key, allowed_ips=[addr])
                    self.churn["peers_added"] += 1
                    live.append(key)
                    self._session(api, rng, key)
                    # rotate the session of one that has been there a while
                    if len(live) > 2:
                        self._session(api, rng, live[len(live) // 2])
                    while len(live) > self.args.churn_peers:
                        old = live.popleft()
                        if rng.random() < 0.5:
                            api.delete_session(old)
                        api.delete_peer(old)
                        self.churn["peers_removed"] += 1
                except (ApiRequestError, OSError) as e:
                    self.churn["errors"].append(f"{type(e).__name__}: {e}")
                    if len(self.churn["errors"]) > 50:
                        return
                    time.sleep(1)
                time.sleep(self.args.churn_interval)
            for key in live:
                try:
                    api.delete_peer(key)
                except (ApiRequestError, OSError):
                    if self.stop.is_set():  # interrupted: the daemon may be gone
                        return
                    raise
                self.churn["peers_removed"] += 1

    def _session(self, api: Client, rng: random.Random, key: str) -> None:
        try:
            api.put_session(key, receiver_index=rng.randrange(1, 1 << 32),
                            sender_index=rng.randrange(0, 1 << 32),
                            send_key=rng.randbytes(32), receive_key=rng.randbytes(32))
            self.churn["sessions_put"] += 1
        except ApiRequestError as e:
            if e.status == 409 or e.field == "receiver_index":  # an index in use, by chance
                self.churn["index_refused"] += 1
            else:
                raise

    # -- what must stay flat

    def sample(self) -> dict:
        pid = self.daemon.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        out = self.topo.run(self.exit_ns, [dataplane_exe(), "show", self.name, "--json"],
                            check=False, timeout=30).stdout
        status = json.loads(out)[self.name] if out else {}
        mem = status.get("native_memory") or {}
        xdp = status.get("xdp") or {}
        return {"t": time.monotonic(), "backend": self.backend, "rss": rss,
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": len(os.listdir(f"/proc/{pid}/task")),
                "native_total": mem.get("total"), "native_locked": mem.get("locked"),
                "keypairs_live": mem.get("keypairs_live"), "indices_used": mem.get("indices_used"),
                "peers": len(status.get("peers", [])),
                "handshakes_completed": (status.get("handshake") or {}).get(
                    "handshakes_completed"),
                "outer_routes": xdp.get("outer_routes"),
                "local_addresses": xdp.get("local_addresses"),
                "bpf_map_entries": bpf_map_entries(pid),
                "drops": {k: v for k, v in (status.get("drops") or {}).items() if v}}

    def sampler(self, deadline: float, out) -> None:
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.daemon.poll() is not None:
                self.samples.append({"t": time.monotonic(), "dead": self.daemon.returncode})
                return
            s = self.sample()
            self.samples.append(s)
            out.write(json.dumps(s) + "\n")
            out.flush()
            self.stop.wait(self.args.sample)


def bpf_map_entries(pid: int) -> dict[str, int]:
    """Entries of the hash-like BPF maps process pid holds open (found by
    their fdinfo), by map name."""
    counts: dict[str, int] = {}
    seen = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = dict(line.split(":", 1) for line in
                        Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "map_id" not in info or int(info["map_type"]) not in HASH_MAPS:
            continue
        map_id = int(info["map_id"])
        if map_id in seen:
            continue
        seen.add(map_id)
        show = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)],
                              capture_output=True, text=True)
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                              capture_output=True, text=True)
        try:
            name = json.loads(show.stdout).get("name", str(map_id))
            n = len(json.loads(dump.stdout or "[]"))
        except ValueError:
            continue
        counts[name] = counts.get(name, 0) + n
    return counts


def udp_buffer_errors(topo: Topology, ns: str) -> int:
    """UDP RcvbufErrors of namespace ns (IPv4 and IPv6)."""
    total = 0
    for path, key in (("/proc/net/snmp", "Udp:"), ("/proc/net/snmp6", "Udp6RcvbufErrors")):
        text = topo.run(ns, ["cat", path]).stdout
        if key == "Udp:":
            rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
            total += int(rows[1][rows[0].index("RcvbufErrors")])
        else:
            total += sum(int(line.split()[1]) for line in text.splitlines()
                         if line.startswith(key))
    return total


def link_drops(topo: Topology, ns: str) -> dict[str, int]:
    """rx_dropped + tx_dropped of each interface in namespace ns."""
    links = json.loads(topo.run(ns, ["ip", "-s", "-j", "link", "show"]).stdout)
    return {link["ifname"]: link["stats64"]["rx"]["dropped"] + link["stats64"]["tx"]["dropped"]
            for link in links if "stats64" in link}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def summary(w: World, warmup_s: float, started: float) -> tuple[dict, list[str]]:
    faults = []
    live = [s for s in w.samples if "dead" not in s]
    if any("dead" in s for s in w.samples) or w.daemon.poll() is not None:
        faults.append(f"{w.backend}: the daemon died (exit {w.daemon.returncode})")
    warm = [s for s in live if s["t"] - started >= warmup_s] or live
    first, last = warm[0], warm[-1]
    sent = sum(c.get("packets", 0) for c in w.chunks)
    lost = sum(c.get("lost", 0) for c in w.chunks)
    by_dir = {}
    for d in ("decap", "encap"):
        cs = [c for c in w.chunks if c["direction"] == d and "packets" in c]
        n, n_lost = sum(c["packets"] for c in cs), sum(c["lost"] for c in cs)
        by_dir[d] = {"datagrams": n, "lost": n_lost, "loss": n_lost / n if n else None,
                     "rcvbuf_errors": {side: sum(c["rcvbuf_errors"][side] for c in cs)
                                       for side in ("client", "exit")},
                     "link_drops": {side: sum(sum(c["link_drops"][side].values()) for c in cs)
                                    for side in ("client", "exit")}}
    row = {"backend": w.backend, "samples": len(live),
           "chunks": len(w.chunks), "chunk_errors": sum(1 for c in w.chunks if "error" in c),
           "datagrams": sent, "lost": lost, "loss": lost / sent if sent else None,
           "chunks_with_loss": sum(1 for c in w.chunks if c.get("lost")), **by_dir,
           # the daemon's completed handshakes: wireguard-go's rekeys, and any retries
           "handshakes": (last.get("handshakes_completed") or 0) - (live[0].get(
               "handshakes_completed") or 0),
           **{k: v for k, v in w.churn.items() if k != "errors"},
           "churn_errors": w.churn["errors"][:5]}
    for key in ("rss", "fds", "threads", "native_total", "native_locked", "outer_routes",
                "local_addresses"):
        values = [s[key] for s in warm if s.get(key) is not None]
        if values:
            row[key] = {"first": first.get(key), "last": last.get(key), "min": min(values),
                        "max": max(values)}
    maps = {name for s in warm for name in s["bpf_map_entries"]}
    row["bpf_map_entries"] = {name: (first["bpf_map_entries"].get(name),
                                     last["bpf_map_entries"].get(name)) for name in sorted(maps)}
    row["drops"] = last.get("drops", {})
    if row.get("rss") and row["rss"]["last"] - row["rss"]["first"] > RSS_ALLOWANCE:
        faults.append(f"{w.backend}: RSS grew {row['rss']['first']} -> {row['rss']['last']}")
    # fds and threads move with the API's connections in flight: the last
    # must not be above what the first tenth of the run saw
    early = warm[:max(1, len(warm) // 10)]
    for key in ("fds", "threads", "outer_routes", "local_addresses"):
        ceiling = max((s[key] for s in early if s.get(key) is not None), default=None)
        if row.get(key) and ceiling is not None and row[key]["last"] > ceiling:
            faults.append(f"{w.backend}: {key} {row[key]['first']} -> {row[key]['last']}")
    # native memory: tables are allocated up front and grow by blocks; the
    # churn peers alive move within a block, so the range must not creep
    nt = row.get("native_total")
    if nt and nt["last"] > nt["first"] and nt["last"] == nt["max"] and nt["max"] > nt["min"]:
        faults.append(f"{w.backend}: native memory {nt['first']} -> {nt['last']} (max at the end)")
    for name, (a, b) in row["bpf_map_entries"].items():
        if a is not None and b is not None and b > a:
            faults.append(f"{w.backend}: BPF map {name} {a} -> {b} entries")
    if row["chunk_errors"]:
        faults.append(f"{w.backend}: {row['chunk_errors']} iperf3 chunks failed")
    if w.churn["errors"]:
        faults.append(f"{w.backend}: churn errors: {w.churn['errors'][:3]}")
    return row, faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--backend", action="append", choices=("xdp", "socket"),
                   help="repeatable, run side by side (default: both)")
    p.add_argument("--rate", default="50M", help="iperf3 -b per backend (default 50M)")
    p.add_argument("--chunk", type=int, default=60, help="seconds per iperf3 run (default 60)")
    p.add_argument("--churn-peers", type=int, default=200,
                   help="API peers kept alive by the churn (default 200)")
    p.add_argument("--churn-interval", type=float, default=0.2,
                   help="seconds between churn steps (default 0.2)")
    p.add_argument("--sample", type=float, default=10, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=5, help="minutes before the flat figures' "
                                                             "first sample (default 5)")
    p.add_argument("--out", default="soak.jsonl", help="samples, JSON lines (default soak.jsonl)")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces)", file=sys.stderr)
        return 1
    backends = args.backend or ["xdp", "socket"]

    owner = os.getpid()

    def interrupted(signum, frame):
        # pyroute2 forks helpers that inherit this handler and are ended
        # with SIGTERM: they must not unwind our stack (and with it the
        # Topology, whose exit removes the namespaces)
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt
    # stop early with the summary on SIGTERM, and on SIGINT even where a
    # shell started us in the background with SIGINT ignored
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    faults: list[str] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="dataplane-soak-") as tmp, \
            Topology("sk") as topo, open(args.out, "w") as out:
        worlds = [World(topo, n, b, Path(tmp), args) for n, b in enumerate(backends)]
        started = time.monotonic()
        deadline = started + args.minutes * 60
        threads = [threading.Thread(target=fn, args=a, daemon=True)
                   for w in worlds for fn, a in ((w.traffic, (deadline,)),
                                                 (w.churn_loop, (deadline,)),
                                                 (w.sampler, (deadline, out)))]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(5)
                done = (time.monotonic() - started) / 60
                print(f"soak: {done:5.1f}/{args.minutes:g} min, " + ", ".join(
                    f"{w.backend}: {sum(c.get('packets', 0) for c in w.chunks)} datagrams "
                    f"{sum(c.get('lost', 0) for c in w.chunks)} lost, "
                    f"{w.churn['peers_added']} peers added" for w in worlds),
                    file=sys.stderr, flush=True)
                time.sleep(55)
        except KeyboardInterrupt:
            for w in worlds:
                w.stop.set()
        for w in worlds:
            row, f = summary(w, args.warmup * 60, started)
            # once the churn has removed its peers
            row["after"] = w.sample() if w.daemon.poll() is None else None
            row["chunk_log"] = w.chunks
            rows.append(row)
            faults += f
            row["log_tail"] = w.log.read_text()[-1500:]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k not in ("log_tail", "chunk_log")},
                         indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    for f in faults:
        print(f"soak: FAULT {f}", file=sys.stderr)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
