"""GET /metrics: Prometheus text, read from the native counters at scrape
time. Per-peer names follow the common WireGuard exporters
(wireguard_sent_bytes_total, wireguard_received_bytes_total,
wireguard_latest_handshake_seconds, labelled by interface and public_key);
the rest are ours, dataplane_*."""
from __future__ import annotations

from typing import Callable

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
        sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer",
                                   labels=["interface", "public_key"])
        recv = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer",
                                   labels=["interface", "public_key"])
        hs = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                               "Unix time of the peer's latest handshake (or pushed "
                               "session), 0 if none",
                               labels=["interface", "public_key"])
        rxp = CounterMetricFamily("dataplane_peer_received_packets",
                                  "Data packets received from the peer",
                                  labels=["interface", "public_key"])
        txp = CounterMetricFamily("dataplane_peer_sent_packets", "Data packets sent to the peer",
                                  labels=["interface", "public_key"])
        table = iface.device.stats_table()
        for peer in list(iface.peers.values()):
            row = table[peer.id]
            labels = [n, peer.public_key.base64()]
            sent.add_metric(labels, float(row["tx_bytes"]))
            recv.add_metric(labels, float(row["rx_bytes"]))
            rxp.add_metric(labels, float(row["rx_packets"]))
            txp.add_metric(labels, float(row["tx_packets"]))
            hs.add_metric(labels, peer.last_handshake_wall_ns / NS)
        yield from (sent, recv, hs, rxp, txp)
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


class Metrics:
    def __init__(self, name: str, iface_fn: Callable, status_fn: Callable,
                 api_counters: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(name, iface_fn, status_fn, api_counters))
        self.requests = Counter("dataplane_api_requests", "API requests, by route and status",
                                ["method", "route", "code"], registry=self.registry)

    def request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
