"""Micro benchmarks of the per-packet path through its test entry points
(native/wg/datapath.c): decap of a burst (classify, index lookup, batch
decrypt, replay window, allowed IPs, delivery to /dev/null), encap of a
burst (allowed-IPs lookup, counters, padding, batch encrypt, sendmmsg on
loopback) and the parse of a WAN frame for the XDP backend. Not part of the
test run: `pytest bench/test_packet_path_bench.py`.

Each round is one call over a burst of BURST packets: divide by
extra_info["packets_per_round"] for ns per packet (the cffi crossing, a
few hundred ns, is amortised over the burst). Fresh messages are sealed
in each round's setup, which is not timed (the replay window would refuse
old ones).
"""
import sys
from pathlib import Path

import pytest

from dataplane._native import lib
from dataplane.device import parse_outer_frame

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from test_packet_path import (FAR, PEER_INNER, SOURCE, PathWorld, ipv4_udp,  # noqa: E402
                              udp_frame)

BURST = lib.DP_DEVICE_BURST
SIZES = [64, 512, 1420]


@pytest.fixture
def world():
    w = PathWorld()
    yield w
    w.close()


@pytest.mark.parametrize("size", SIZES)
def test_decap_burst(benchmark, world, size):
    benchmark.group = "decap of a burst"
    benchmark.extra_info.update(packets_per_round=BURST, size=size)
    benchmark.pedantic(world.dev.test_rx,
                       setup=lambda: ((world.messages(BURST, size=size), SOURCE), {}),
                       rounds=300)
    assert world.dev.stats(0).rx_packets >= 300 * BURST
    assert sum(world.dev.drops().values()) == 0


@pytest.mark.parametrize("size", SIZES)
def test_encap_burst(benchmark, world, size):
    benchmark.group = "encap of a burst"
    benchmark.extra_info.update(packets_per_round=BURST, size=size)
    pkts = [ipv4_udp(FAR, PEER_INNER, size)] * BURST

    def drain():
        world.sink.setblocking(False)
        try:
            while True:
                world.sink.recv(65536)
        except BlockingIOError:
            pass
        return (pkts,), {}

    benchmark.pedantic(world.dev.test_tx, setup=drain, rounds=300)
    assert world.dev.stats(0).tx_packets >= 300 * BURST


def test_parse_wan_frame(benchmark):
    benchmark.group = "parse of a WAN frame"
    benchmark.extra_info.update(packets_per_round=1)
    frame = udp_frame(b"\x04\x00\x00\x00" + bytes(1436), vlan=True)
    assert benchmark(parse_outer_frame, frame) is not None
