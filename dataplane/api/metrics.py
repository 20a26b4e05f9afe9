"""GET /metrics: Prometheus text, read from the native counters at scrape
time. Per-peer names follow the common WireGuard exporters
(wireguard_sent_bytes_total, wireguard_received_bytes_total,
wireguard_latest_handshake_seconds, labelled by interface and public_key);
the rest are ours, dataplane_*."""
from __future__ import annotations

from typing import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dataplane.interface import NS


MEMORY_TABLES = ("peers", "index_table", "keypairs", "allowed_ips", "event_ring", "bursts",
                 "routes", "device", "total", "locked")


class _Collector:
    def __init__(self, name: str, iface_fn: Callable, status_fn: Callable,
                 api_counters: Callable[[], dict]):
        self.name, self.iface_fn, self.status_fn = name, iface_fn, status_fn
        self.api_counters = api_counters

    def describe(self):
        return []  # collected at scrape time only

    def collect(self):
        iface = self.iface_fn()
        if iface is None:
            return
        n = self.name
        peers = GaugeMetricFamily("dataplane_peers", "Peers configured", labels=["interface"])
        peers.add_metric([n], len(iface.peers))
        yield peers
        drops = CounterMetricFamily("dataplane_drops", "Packets dropped, by reason",
                                    labels=["interface", "reason"])
        for reason, count in iface.device.drops().items():
            drops.add_metric([n, reason], float(count))
        yield drops
        hsc = CounterMetricFamily("dataplane_handshake_events",
                                  "Handshake messages handled, by outcome",
                                  labels=["interface", "outcome"])
        for outcome, count in iface.counters.items():
            hsc.add_metric([n, outcome], float(count))
        yield hsc
        status = self.status_fn()
        info = GaugeMetricFamily("dataplane_info",
                                 "Always 1; the labels say which backend and which "
                                 "ChaCha20-Poly1305 implementation run",
                                 labels=["interface", "backend", "crypto"])
        info.add_metric([n, str(status.get("backend", "")), str(status.get("crypto", ""))], 1)
        yield info
        xdp = status.get("xdp") or {}
        if xdp:
            fam = CounterMetricFamily("dataplane_xdp_packets",
                                      "XDP and AF_XDP path counters, by counter",
                                      labels=["interface", "counter"])
            for counter, value in xdp.items():
                if isinstance(value, (int, float)):
                    fam.add_metric([n, counter], float(value))
            yield fam
        api = CounterMetricFamily("dataplane_api_operations",
                                  "API sessions installed and events sent, by kind",
                                  labels=["interface", "kind"])
        for kind, count in self.api_counters().items():
            api.add_metric([n, kind], float(count))
        yield api
        memory = status.get("native_memory") or {}
        if memory:
            mem = GaugeMetricFamily("dataplane_native_memory_bytes",
                                    "Native memory of the device, by table",
                                    labels=["interface", "table"])
            for table_name in MEMORY_TABLES:
                if table_name in memory:
                    mem.add_metric([n, table_name], float(memory[table_name]))
            yield mem


# (name, type, help, stats column or None for the latest handshake)
PER_PEER = (
    ("wireguard_sent_bytes_total", "counter", "Bytes sent to the peer", "tx_bytes"),
    ("wireguard_received_bytes_total", "counter", "Bytes received from the peer", "rx_bytes"),
    ("wireguard_latest_handshake_seconds", "gauge",
     "Unix time of the peer's latest handshake (or pushed session), 0 if none", None),
    ("dataplane_peer_received_packets_total", "counter", "Data packets received from the peer",
     "rx_packets"),
    ("dataplane_peer_sent_packets_total", "counter", "Data packets sent to the peer",
     "tx_packets"),
)


def per_peer_text(name: str, iface) -> str:
    """The per-peer families in Prometheus text, written directly: with
    100 000 peers, prometheus_client's per-sample path took seconds of
    the event loop."""
    peers = list(iface.peers.values())
    if not peers:
        return ""
    table = iface.device.stats_table()
    ids = np.fromiter((p.id for p in peers), dtype=np.int64, count=len(peers))
    labels = [f'{{interface="{name}",public_key="{p.public_key.base64()}"}} ' for p in peers]
    out = []
    for metric, kind, help_text, column in PER_PEER:
        family = metric[:-6] if kind == "counter" else metric
        out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n")
        if column is None:
            values = [str(p.last_handshake_wall_ns / NS) for p in peers]
        else:
            values = table[column][ids].astype(str).tolist()
        out.append("".join(f"{metric}{lab}{v}\n" for lab, v in zip(labels, values)))
    return "".join(out)


class Metrics:
    def __init__(self, name: str, iface_fn: Callable, status_fn: Callable,
                 api_counters: Callable[[], dict]):
        self.name, self.iface_fn = name, iface_fn
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(name, iface_fn, status_fn, api_counters))
        self.requests = Counter("dataplane_api_requests", "API requests, by route and status",
                                ["method", "route", "code"], registry=self.registry)

    def request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        iface = self.iface_fn()
        peers = per_peer_text(self.name, iface).encode() if iface is not None else b""
        return peers + generate_latest(self.registry), CONTENT_TYPE_LATEST
