"""Native memory per peer of the device, as the control-plane API will fill
it: N peers, each with one /32 allowed IP and one keypair installed on a
receiver index the control plane chose (claimed, not reserved), for each
replay window asked for. No root needed beyond locked memory for the keys
(RLIMIT_MEMLOCK: about N x (128 + window/8) bytes).

    .venv/bin/python bench/peer_memory.py                  # 100 000 peers, windows 8192 and 2048
    .venv/bin/python bench/peer_memory.py --peers 20000 --windows 1024,8192 --json

Per peer is the device's whole native allocation divided by N (fixed
parts like the packet buffers included), and the marginal cost (what N
peers added to an empty device, divided by N). RSS growth of the process
is shown as a cross-check of what was allocated (it includes allocator
overhead, and pages the kernel had not yet backed).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import sys
import time

from dataplane._native import lib
from dataplane.device import Device
from dataplane.interface import table_sizes

PARTS = ("peers", "index_table", "keypairs", "allowed_ips", "event_ring", "bursts", "routes",
         "device")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_device(peers: int, window: int) -> Device:
    max_peers, index_log2 = table_sizes(peers)
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        return Device([null], [os.dup(udp.fileno())], [-1], 1420, max_peers=max_peers,
                      index_table_log2=index_log2, replay_window=window)
    finally:
        udp.close()


def measure(peers: int, window: int, progress=None, seed: int = 1) -> dict:
    """Fill a device and return its memory before and after, per peer."""
    rnd = random.Random(seed)
    indices = rnd.sample(range(1, 2**32), peers)
    send_key, recv_key = bytes(range(32)), bytes(range(32, 64))
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    rss0 = rss_bytes()
    dev = open_device(peers, window)
    try:
        empty = dev.memory()
        t0 = time.monotonic()
        now = lib.dp_device_now_ns()
        for i, index in enumerate(indices):
            dev.peer_add(i)
            dev.allowed_ip_add(i, ipaddress.IPv4Network((base + i, 32)))
            dev.index_claim(index)
            dev.keypair_install(i, index, rnd.getrandbits(32), send_key, recv_key, True, now)
            if progress and (i + 1) % 10_000 == 0:
                progress(f"window {window}: {i + 1}/{peers} peers")
        seconds = time.monotonic() - t0
        full = dev.memory()
        rss1 = rss_bytes()
    finally:
        dev.close()
    return {
        "peers": peers,
        "window_bits": window,
        "push_seconds": round(seconds, 2),
        "empty": empty,
        "full": full,
        "bytes_per_peer": full["total"] / peers,
        "marginal_bytes_per_peer": (full["total"] - empty["total"]) / peers,
        "by_part_per_peer": {p: full[p] / peers for p in PARTS},
        "locked_per_peer": full["locked"] / peers,
        "rss_growth_per_peer": (rss1 - rss0) / peers,
    }


def report(r: dict) -> str:
    f = r["full"]
    lines = [f"{r['peers']} peers, replay window {r['window_bits']} bits "
             f"(keypair {f['keypair_bytes']} B; index table max probe {f['index_max_probe']}):",
             f"  native total  {f['total'] / 2**20:8.1f} MiB  = {r['bytes_per_peer']:7.0f} B/peer "
             f"(marginal {r['marginal_bytes_per_peer']:.0f} B/peer; "
             f"{'within' if r['bytes_per_peer'] <= 1024 else 'OVER'} the 1 KiB target)"]
    for p in PARTS:
        lines.append(f"    {p:<12}{f[p] / 2**20:8.1f} MiB  = {r['by_part_per_peer'][p]:7.1f} B/peer")
    lines.append(f"  locked        {f['locked'] / 2**20:8.1f} MiB  = {r['locked_per_peer']:7.1f} B/peer")
    lines.append(f"  RSS growth    {r['rss_growth_per_peer'] * r['peers'] / 2**20:8.1f} MiB  "
                 f"= {r['rss_growth_per_peer']:7.0f} B/peer (cross-check)")
    lines.append(f"  push through the Python device API: {r['push_seconds']} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--windows", default="8192,2048",
                    help="comma list of replay window sizes in bits")
    ap.add_argument("--json", action="store_true", help="one JSON object per window on stdout")
    args = ap.parse_args(argv)
    results = []
    for w in (int(x) for x in args.windows.split(",")):
        r = measure(args.peers, w, progress=lambda m: print(m, file=sys.stderr, flush=True))
        results.append(r)
        if args.json:
            print(json.dumps(r))
        else:
            print(report(r), flush=True)
    if not args.json:
        print("summary: " + "; ".join(f"window {r['window_bits']}: {r['bytes_per_peer']:.0f} B/peer"
                                      for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
