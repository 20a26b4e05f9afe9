"""Micro benchmarks of the per-packet tables (native/tables/) through cffi.
Not part of the test run; run them with `pytest bench/test_tables_bench.py`.

A single call costs mostly the cffi crossing (a few hundred ns); the batch
lookups amortise it over 256 addresses, so their time per address is close
to the C cost of one lookup. extra_info carries `lookups_per_round`: divide
the round time by it for ns per lookup.
"""
import ipaddress
import itertools
import random

import pytest

from dataplane._native import ffi, lib

PREFIXES = 10_000
BATCH = 256
V4, V6 = lib.DP_FAMILY_IPV4, lib.DP_FAMILY_IPV6


def _table(version, rnd):
    """A default route plus PREFIXES random routes of typical lengths:
    /24 and /32 for IPv4, /48, /64 and /128 for IPv6."""
    t = ffi.gc(lib.dp_allowedips_new(), lib.dp_allowedips_free)
    bits, lengths = (32, (24, 32)) if version == 4 else (128, (48, 64, 128))
    family = V4 if version == 4 else V6
    zero = bytes(bits // 8)
    assert lib.dp_allowedips_insert(t, family, zero, 0, 0) == 0
    nets = []
    for i in range(PREFIXES):
        net = ipaddress.ip_network((rnd.getrandbits(bits), rnd.choice(lengths)), strict=False)
        nets.append(net)
        assert lib.dp_allowedips_insert(t, family, net.network_address.packed, net.prefixlen,
                                        1 + i % 1000) == 0
    return t, family, nets


def _addresses(version, nets, rnd, n):
    """Half inside inserted prefixes, half random (most fall to the default)."""
    bits = 32 if version == 4 else 128
    out = []
    for i in range(n):
        if i % 2:
            net = rnd.choice(nets)
            host = rnd.getrandbits(bits - net.prefixlen) if net.prefixlen < bits else 0
            out.append((int(net.network_address) | host).to_bytes(bits // 8, "big"))
        else:
            out.append(rnd.getrandbits(bits).to_bytes(bits // 8, "big"))
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_lookup_one(benchmark, version):
    rnd = random.Random(version)
    t, family, nets = _table(version, rnd)
    addrs = itertools.cycle(_addresses(version, nets, rnd, 4096))
    benchmark.group = "allowedips lookup, one per call"
    benchmark.extra_info.update(prefixes=PREFIXES + 1, lookups_per_round=1)
    lookup = lib.dp_allowedips_lookup
    benchmark(lambda: lookup(t, family, next(addrs)))


@pytest.mark.parametrize("version", [4, 6])
def test_lookup_batch(benchmark, version):
    rnd = random.Random(version)
    t, family, nets = _table(version, rnd)
    bufs = [ffi.from_buffer(a) for a in _addresses(version, nets, rnd, BATCH)]
    ptrs = ffi.new("const uint8_t *[]", bufs)
    out = ffi.new("uint32_t[]", BATCH)
    benchmark.group = f"allowedips lookup, {BATCH} per call"
    benchmark.extra_info.update(prefixes=PREFIXES + 1, lookups_per_round=BATCH)
    assert benchmark(lib.dp_allowedips_lookup_batch, t, family, ptrs, out, BATCH) == 0
    assert all(p != lib.DP_PEER_NONE for p in out)  # the default route catches the rest


@pytest.mark.parametrize("version", [4, 6])
def test_insert_and_remove_host_route(benchmark, version):
    """The writer's cost: one insert and one remove in a full table."""
    rnd = random.Random(version)
    t, family, nets = _table(version, rnd)
    addrs = itertools.cycle(_addresses(version, nets, rnd, 4096))
    cidr = 32 if version == 4 else 128
    insert, remove = lib.dp_allowedips_insert, lib.dp_allowedips_remove
    benchmark.group = "allowedips insert + remove"
    benchmark.extra_info.update(prefixes=PREFIXES + 1)

    def churn():
        a = next(addrs)
        insert(t, family, a, cidr, 7)
        remove(t, family, a, cidr)

    benchmark(churn)


@pytest.mark.parametrize("bits", [2048, lib.DP_REPLAY_BITS_DEFAULT])
@pytest.mark.parametrize("pattern", ["in-order", "reordered"])
def test_replay_check(benchmark, pattern, bits):
    buf = ffi.new("uint64_t[]", lib.dp_replay_size(bits) // 8)
    r = ffi.cast("struct dp_replay *", buf)
    lib.dp_replay_init(r, bits)
    if pattern == "in-order":
        counters = itertools.count()
    else:
        # bursts of 64 shuffled, as after multi-queue receive
        def shuffled():
            rnd = random.Random(1)
            for base in itertools.count(0, 64):
                burst = list(range(base, base + 64))
                rnd.shuffle(burst)
                yield from burst
        counters = shuffled()
    check = lib.dp_replay_check
    benchmark.group = "replay check, one per call"
    benchmark.extra_info.update(checks_per_round=1)
    benchmark(lambda: check(r, next(counters)))
