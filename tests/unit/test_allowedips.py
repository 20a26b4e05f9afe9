"""The allowed-IPs table (native/tables/allowedips.c): the path-compressed
trie checked against a deliberately slow reference (a list of prefixes,
longest match by the ipaddress module), the Linux WireGuard allowedips
self-test's cases re-tabled here, edge cases, bad arguments, and the
reader/reclaim scheme."""
import ipaddress
import random
import threading

import pytest
from hypothesis import given, settings, strategies as st

from dataplane._native import ffi, lib

NONE = lib.DP_PEER_NONE
EINVAL = -lib.DP_TABLES_EINVAL
V4, V6 = lib.DP_FAMILY_IPV4, lib.DP_FAMILY_IPV6
BITS = {V4: 32, V6: 128}


def family_of(address):
    return V4 if address.version == 4 else V6


class Table:
    """The C table with ipaddress-style arguments, for the tests."""

    def __init__(self):
        self.t = ffi.gc(lib.dp_allowedips_new(), lib.dp_allowedips_free)
        assert self.t != ffi.NULL

    def insert(self, prefix, peer):
        net = ipaddress.ip_network(prefix, strict=False)
        return lib.dp_allowedips_insert(self.t, family_of(net), net.network_address.packed,
                                        net.prefixlen, peer)

    def insert_raw(self, address, cidr, peer):
        """address with its host bits as given (the table must clear them)."""
        a = ipaddress.ip_address(address)
        return lib.dp_allowedips_insert(self.t, family_of(a), a.packed, cidr, peer)

    def remove(self, prefix):
        net = ipaddress.ip_network(prefix, strict=False)
        return lib.dp_allowedips_remove(self.t, family_of(net), net.network_address.packed,
                                        net.prefixlen)

    def remove_peer(self, peer):
        return lib.dp_allowedips_remove_peer(self.t, peer)

    def lookup(self, address):
        a = ipaddress.ip_address(address)
        return lib.dp_allowedips_lookup(self.t, family_of(a), a.packed)

    def count(self, family=0):
        return lib.dp_allowedips_count(self.t, family)

    def check_shape(self):
        """Branch nodes exist only where two prefixes diverge: per family,
        fewer branch nodes than prefixes, and no node in an empty table."""
        nodes = lib.dp_allowedips_nodes(self.t)
        assert self.count(V4) + self.count(V6) <= nodes <= max(
            2 * self.count(V4) - 1, 0) + max(2 * self.count(V6) - 1, 0)

    def prefixes(self, peer):
        n = lib.dp_allowedips_list_peer(self.t, peer, ffi.NULL, 0)
        out = ffi.new("struct dp_allowedips_entry[]", max(n, 1))
        assert lib.dp_allowedips_list_peer(self.t, peer, out, n) == n
        nets = []
        for e in out[0:n]:
            raw = bytes(e.addr)
            if e.family == V4:
                assert raw[4:] == bytes(12)
                nets.append(ipaddress.ip_network((raw[:4], e.cidr)))
            else:
                assert e.family == V6
                nets.append(ipaddress.ip_network((raw, e.cidr)))
        return nets


class SlowAllowedIPs:
    """A list of (network, peer) in the order of their last insertion;
    lookup tries every network."""

    def __init__(self):
        self.entries = []

    def insert(self, net, peer):
        self.remove(net)
        self.entries.append((net, peer))

    def remove(self, net):
        before = len(self.entries)
        self.entries = [(n, p) for n, p in self.entries if n != net]
        return before - len(self.entries)

    def remove_peer(self, peer):
        before = len(self.entries)
        self.entries = [(n, p) for n, p in self.entries if p != peer]
        return before - len(self.entries)

    def lookup(self, address):
        best = None
        for net, peer in self.entries:
            if net.version == address.version and address in net:
                if best is None or net.prefixlen > best[0].prefixlen:
                    best = (net, peer)
        return NONE if best is None else best[1]

    def count(self, version=None):
        return sum(1 for n, _ in self.entries if version in (None, n.version))

    def prefixes(self, peer):
        return [n for n, p in self.entries if p == peer]


# ---- the kernel self-test's table (drivers/net/wireguard/selftest/allowedips.c) ----

A, B, C, D, E, F, G, H = range(1, 9)

KERNEL_INSERTS = [
    (A, "192.168.4.0/24"),
    (B, "192.168.4.4/32"),
    (C, "192.168.0.0/16"),
    (D, "192.95.5.64/27"),
    (C, "192.95.5.65/27"),          # same prefix once host bits go: C replaces D
    (D, "2607:5300:6000:6b00::c05f:543/128"),
    (C, "2607:5300:6000:6b00::/64"),
    (E, "0.0.0.0/0"),
    (E, "::/0"),
    (F, "::/0"),                    # replaces E
    (G, "2404:6800::/32"),
    (H, "2404:6800:4004:800:dead:beef:dead:beef/64"),   # host bits set
    (A, "2404:6800:4004:800:dead:beef:dead:beef/128"),
    (C, "2444:6800:40e4:800:deae:beef:def:beef/128"),
    (B, "2444:6800:f0e4:800:eeae:beef::/98"),
    (G, "64.15.112.0/20"),
    (H, "64.15.123.211/25"),        # host bits set
    (A, "10.0.0.0/25"),
    (B, "10.0.0.128/25"),
    (A, "10.1.0.0/30"),
    (B, "10.1.0.4/30"),
    (C, "10.1.0.8/29"),
    (D, "10.1.0.16/29"),
]

KERNEL_LOOKUPS = [
    (1, "192.168.4.20", A),
    (2, "192.168.4.0", A),
    (3, "192.168.4.4", B),
    (4, "192.168.200.182", C),
    (5, "192.95.5.68", C),
    (6, "192.95.5.96", E),
    (7, "2607:5300:6000:6b00::c05f:543", D),
    (8, "2607:5300:6000:6b00::c02e:1ee", C),
    (9, "2607:5300:6000:6b01::", F),
    (10, "2404:6800:4004:806::1006", G),
    (11, "2404:6800:4004:806:0:1234:0:5678", G),
    (12, "2404:67ff:4004:806:0:1234:0:5678", F),
    (13, "2404:6801:4004:806:0:1234:0:5678", F),
    (14, "2404:6800:4004:800:0:1234:0:5678", H),
    (15, "2404:6800:4004:800::", H),
    (16, "2404:6800:4004:800:1010:1010:1010:1010", H),
    (17, "2404:6800:4004:800:dead:beef:dead:beef", A),
    (18, "64.15.116.26", G),
    (19, "64.15.127.3", G),
    (20, "64.15.123.1", G),
    (21, "64.15.123.128", H),
    (22, "64.15.123.129", H),
    (23, "10.0.0.52", A),
    (24, "10.0.0.220", B),
    (25, "10.1.0.2", A),
    (26, "10.1.0.6", B),
    (27, "10.1.0.10", C),
    (28, "10.1.0.20", D),
]


def test_kernel_selftest_lookups():
    t, ref = Table(), SlowAllowedIPs()
    for peer, prefix in KERNEL_INSERTS:
        assert t.insert(prefix, peer) == 0
        ref.insert(ipaddress.ip_network(prefix, strict=False), peer)
    failed = [(num, addr, want, t.lookup(addr)) for num, addr, want in KERNEL_LOOKUPS
              if t.lookup(addr) != want]
    assert failed == [], f"(case, address, expected, got): {failed}"
    # the reference agrees with the kernel's expectations too
    assert [ref.lookup(ipaddress.ip_address(a)) for _, a, _ in KERNEL_LOOKUPS] == [
        w for _, _, w in KERNEL_LOOKUPS]
    assert t.count() == ref.count() == len(KERNEL_INSERTS) - 2  # two replacements


def test_kernel_selftest_remove_peer_of_spread_host_routes():
    t = Table()
    assert t.insert("0.0.0.0/0", B) == 0
    for first in (1, 64, 128, 192, 255):
        assert t.insert(f"{first}.0.0.0/32", A) == 0
    assert t.remove_peer(A) == 5
    for first in (1, 64, 128, 192, 255):
        assert t.lookup(f"{first}.0.0.0") == B
    assert t.prefixes(A) == []
    assert t.count() == 1


def test_kernel_selftest_remove_peer_of_nested_prefixes():
    t = Table()
    assert t.insert("192.168.0.0/16", A) == 0
    assert t.insert("192.168.0.0/24", A) == 0
    assert t.remove_peer(A) == 2
    assert t.lookup("192.168.0.1") == NONE
    assert t.count() == 0
    assert lib.dp_allowedips_nodes(t.t) == 0


def test_kernel_selftest_128_deep_v6_host_routes():
    """All-ones addresses with one bit cleared: every bit position is a
    branch, so the trie is as deep as it gets."""
    t = Table()
    ones = (1 << 128) - 1
    addrs = [ipaddress.IPv6Address(ones & ~(1 << (127 - i))) for i in range(128)]
    for a in addrs:
        assert t.insert(f"{a}/128", A) == 0
    assert t.count(V6) == 128
    for i, a in enumerate(addrs):
        assert t.lookup(a) == A
        # the all-ones address and others off by two bits match nothing
        assert t.lookup(ipaddress.IPv6Address(int(a) & ~(1 << ((128 - i) % 128)))) == NONE
    assert t.lookup(ipaddress.IPv6Address(ones)) == NONE
    for k, a in enumerate(addrs):
        assert t.remove(f"{a}/128") == 1
        assert t.count(V6) == 127 - k
    assert lib.dp_allowedips_reclaim(t.t) == 0


def test_kernel_selftest_list_is_canonical():
    t = Table()
    inserted = [
        ("192.95.5.93/27", "192.95.5.64/27"),
        ("2607:5300:6000:6b00::c05f:543/128", "2607:5300:6000:6b00::c05f:543/128"),
        ("10.1.0.20/29", "10.1.0.16/29"),
        ("2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/83", "2607:5300:6d8a:6bf8:dab1:e000::/83"),
        ("2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/21", "2607:5000::/21"),
    ]
    for given_, _ in inserted:
        addr, cidr = given_.split("/")
        assert t.insert_raw(addr, int(cidr), A) == 0
    assert t.prefixes(A) == [ipaddress.ip_network(c) for _, c in inserted]


# ---- edge cases ----

@pytest.mark.parametrize("version", [4, 6])
def test_every_prefix_length_clears_host_bits_and_matches_exactly_its_range(version):
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    ones = (1 << bits) - 1
    t = Table()
    for cidr in range(bits + 1):
        # all-ones with its host bits set; peer = cidr
        assert t.insert_raw(cls(ones), cidr, cidr) == 0
    t.check_shape()
    for cidr in range(bits + 1):
        assert t.prefixes(cidr) == [ipaddress.ip_network((ones, cidr), strict=False)]
        # the first address of the /cidr range but outside the /cidr+1 one
        host = bits - cidr
        addr = cls(ones ^ (1 << (host - 1))) if host else cls(ones)
        assert t.lookup(addr) == cidr
    for cidr in range(bits + 1):
        assert lib.dp_allowedips_remove(t.t, family_of(cls(0)), cls(ones).packed, cidr) == 1
        t.check_shape()
    assert lib.dp_allowedips_nodes(t.t) == 0

def test_empty_table_matches_nothing():
    t = Table()
    assert t.lookup("0.0.0.0") == NONE
    assert t.lookup("::") == NONE
    assert t.count() == t.count(V4) == t.count(V6) == 0
    assert t.remove("10.0.0.0/8") == 0
    assert t.remove_peer(1) == 0
    assert t.prefixes(1) == []


def test_default_routes_match_everything_of_their_family_only():
    t = Table()
    assert t.insert("0.0.0.0/0", 1) == 0
    for a in ("0.0.0.0", "255.255.255.255", "10.1.2.3"):
        assert t.lookup(a) == 1
    assert t.lookup("::") == NONE
    assert t.insert("::/0", 2) == 0
    assert t.lookup("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == 2
    assert t.lookup("::ffff:10.1.2.3") == 2  # v4-mapped is IPv6 here
    assert t.lookup("10.1.2.3") == 1


def test_host_routes_are_exact():
    t = Table()
    assert t.insert("10.0.0.1/32", 1) == 0
    assert t.insert("2001:db8::1/128", 2) == 0
    assert t.lookup("10.0.0.1") == 1
    assert t.lookup("10.0.0.0") == t.lookup("10.0.0.2") == t.lookup("11.0.0.1") == NONE
    assert t.lookup("2001:db8::1") == 2
    assert t.lookup("2001:db8::") == t.lookup("2001:db8::3") == NONE
    assert t.lookup("3001:db8::1") == NONE


def test_longest_of_overlapping_prefixes_wins_whatever_the_insert_order():
    nets = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.1.2.0/25",
            "0.0.0.0/0", "10.128.0.0/9"]
    probes = {"10.1.2.3": 3, "10.1.2.4": 4, "10.1.2.200": 2, "10.1.3.1": 1, "10.2.0.0": 0,
              "10.200.0.0": 6, "11.0.0.0": 5}
    rnd = random.Random(7)
    for _ in range(30):
        order = list(enumerate(nets))
        rnd.shuffle(order)
        t = Table()
        for peer, net in order:
            assert t.insert(net, peer) == 0
        assert {a: t.lookup(a) for a in probes} == probes
        # peel them off in another order; the reference says what remains
        ref = SlowAllowedIPs()
        for peer, net in order:
            ref.insert(ipaddress.ip_network(net), peer)
        rnd.shuffle(order)
        for peer, net in order:
            assert t.remove(net) == 1
            ref.remove(ipaddress.ip_network(net))
            for a in probes:
                assert t.lookup(a) == ref.lookup(ipaddress.ip_address(a))
        assert t.count() == 0


def test_insert_replaces_owner_and_moves_to_the_end():
    t = Table()
    for net in ("10.0.0.0/8", "10.1.0.0/16", "fd00::/8"):
        assert t.insert(net, 1) == 0
    assert t.insert("10.1.0.0/16", 2) == 0
    assert t.lookup("10.1.2.3") == 2
    assert t.count() == 3
    assert t.prefixes(1) == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert t.prefixes(2) == [ipaddress.ip_network("10.1.0.0/16")]
    # the same owner again: moves to the end of that owner's list, as in WireGuard
    assert t.insert("10.0.0.0/8", 1) == 0
    assert t.prefixes(1) == [ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("10.0.0.0/8")]
    # the last prefix of a peer moving away leaves it with none
    assert t.insert("10.1.0.0/16", 1) == 0
    assert t.prefixes(2) == []
    assert t.remove_peer(2) == 0
    assert t.count() == 3


def test_host_bits_are_cleared_on_insert_and_remove():
    t = Table()
    assert t.insert_raw("10.1.2.3", 8, 1) == 0
    assert t.prefixes(1) == [ipaddress.ip_network("10.0.0.0/8")]
    assert t.lookup("10.200.0.1") == 1
    a = ipaddress.ip_address("10.9.9.9")
    assert lib.dp_allowedips_remove(t.t, V4, a.packed, 8) == 1
    assert t.count() == 0


def test_remove_peer_removes_exactly_its_prefixes():
    t, ref = Table(), SlowAllowedIPs()
    rnd = random.Random(3)
    for _ in range(2000):
        fam = rnd.choice([4, 6])
        bits = 32 if fam == 4 else 128
        cidr = rnd.randint(0, bits)
        addr = rnd.getrandbits(bits) & ~((1 << (bits - min(bits, 16))) - 1) | rnd.getrandbits(4)
        net = ipaddress.ip_network((addr, cidr), strict=False)
        peer = rnd.randrange(10)
        assert t.insert(net, peer) == 0
        ref.insert(net, peer)
    probes = [ipaddress.ip_address(n.network_address) for n, _ in ref.entries]
    for peer in rnd.sample(range(10), 10):
        assert t.remove_peer(peer) == ref.remove_peer(peer)
        assert t.prefixes(peer) == []
        assert t.count() == ref.count()
        for other in range(10):
            assert t.prefixes(other) == ref.prefixes(other)
        for a in rnd.sample(probes, 100):
            assert t.lookup(a) == ref.lookup(a)
    assert t.count() == 0
    assert t.lookup("1.2.3.4") == NONE


def test_ten_thousand_slash24s_and_slash32s():
    """Many prefixes; the reference here is two dicts, as every prefix is a
    /24 or a /32."""
    rnd = random.Random(10_000)
    t = Table()
    by24, by32 = {}, {}
    for i in range(10_000):
        peer = rnd.randrange(500)
        if i % 2:
            key = rnd.getrandbits(24)
            by24[key] = peer
            assert t.insert(ipaddress.ip_network((key << 8, 24)), peer) == 0
        else:
            key = rnd.getrandbits(32)
            by32[key] = peer
            assert t.insert(ipaddress.ip_network((key, 32)), peer) == 0
    assert t.count(V4) == len(by24) + len(by32)

    def slow(addr):
        return by32.get(addr, by24.get(addr >> 8, NONE))

    probes = ([rnd.getrandbits(32) for _ in range(5000)] + list(by32)[:3000] +
              [k << 8 | rnd.getrandbits(8) for k in list(by24)[:3000]])
    packed = [a.to_bytes(4, "big") for a in probes]
    assert [lib.dp_allowedips_lookup(t.t, V4, p) for p in packed] == [slow(a) for a in probes]
    # the batch lookup says the same
    bufs = [ffi.from_buffer(p) for p in packed]
    ptrs = ffi.new("const uint8_t *[]", bufs)
    out = ffi.new("uint32_t[]", len(probes))
    assert lib.dp_allowedips_lookup_batch(t.t, V4, ptrs, out, len(probes)) == 0
    assert list(out) == [slow(a) for a in probes]
    # and every peer lists its own prefixes
    total = sum(len(t.prefixes(p)) for p in range(500))
    assert total == t.count()


# ---- random operations against the slow reference ----

V4_BASES = [0x0A000000, 0xC0A80000, 0xC0A80400, 0x00000000, 0xFFFFFFFF]
V6_BASES = [0x20010DB8 << 96, 0x26075300_60006B00 << 64, 0xFD00 << 112, 0, (1 << 128) - 1]


@st.composite
def prefixes(draw):
    """(address, cidr) pairs that share long runs of bits, so that the trie
    branches, nests and collapses; the address keeps its host bits, which
    the table must clear."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    base = draw(st.sampled_from(V4_BASES if version == 4 else V6_BASES))
    flip = draw(st.integers(0, 255)) << draw(st.integers(0, bits - 8))
    cidr = draw(st.integers(0, bits) | st.sampled_from([0, 1, 31, 32, 63, 64, 65, 127, 128][
        :5 if version == 4 else None]).filter(lambda c: c <= bits))
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    address = cls(base ^ flip)
    return address, cidr


def canonical(prefix):
    address, cidr = prefix
    return ipaddress.ip_network((address, cidr), strict=False)


peers = st.integers(0, 5)
operations = st.lists(st.one_of(
    st.tuples(st.just("insert"), prefixes(), peers),
    st.tuples(st.just("insert"), prefixes(), peers),
    st.tuples(st.just("remove"), prefixes()),
    st.tuples(st.just("remove_existing"), st.integers(0, 10**6)),
    st.tuples(st.just("remove_peer"), peers),
), max_size=80)


def probe_addresses(nets, extra):
    """For each prefix: its first and last address and the ones just
    outside."""
    out = list(extra)
    for net in nets:
        top = (1 << net.max_prefixlen) - 1
        cls = type(net.network_address)
        first, last = int(net.network_address), int(net.broadcast_address)
        out += [cls(first), cls(last), cls(max(first - 1, 0)), cls(min(last + 1, top))]
    return out


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(prefixes(), max_size=5))
def test_random_operations_match_the_slow_reference(ops, extra):
    t, ref = Table(), SlowAllowedIPs()
    touched = [canonical(p) for p in extra]
    for op in ops:
        if op[0] == "insert":
            _, (address, cidr), peer = op
            assert t.insert_raw(address, cidr, peer) == 0
            ref.insert(canonical((address, cidr)), peer)
            touched.append(canonical((address, cidr)))
        elif op[0] == "remove":
            address, cidr = op[1]
            got = lib.dp_allowedips_remove(t.t, family_of(address), address.packed, cidr)
            assert got == ref.remove(canonical(op[1]))
            touched.append(canonical(op[1]))
        elif op[0] == "remove_existing":
            if ref.entries:
                net = ref.entries[op[1] % len(ref.entries)][0]
                assert t.remove(net) == ref.remove(net) == 1
        else:
            assert t.remove_peer(op[1]) == ref.remove_peer(op[1])
        assert t.count() == ref.count()
        t.check_shape()
    assert t.count(V4) == ref.count(4) and t.count(V6) == ref.count(6)
    for peer in range(6):
        assert t.prefixes(peer) == ref.prefixes(peer)
    probes = probe_addresses(touched, [address for address, _ in extra])
    for a in probes:
        assert t.lookup(a) == ref.lookup(a), f"lookup {a}"
    # the batch lookup (8 lanes in lockstep) agrees, whatever the batch length
    for version, family in ((4, V4), (6, V6)):
        same = [a for a in probes if a.version == version]
        bufs = [ffi.from_buffer(a.packed) for a in same]
        out = ffi.new("uint32_t[]", len(same) + 1)
        assert lib.dp_allowedips_lookup_batch(t.t, family, ffi.new("const uint8_t *[]", bufs),
                                              out, len(same)) == 0
        assert list(out)[:len(same)] == [ref.lookup(a) for a in same]
    assert lib.dp_allowedips_reclaim(t.t) == 0  # no readers: nothing waits


# ---- bad arguments ----

def test_bad_arguments_are_errors_not_crashes():
    t = Table()
    v4 = bytes(4)
    v6 = bytes(16)
    assert lib.dp_allowedips_insert(ffi.NULL, V4, v4, 8, 1) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V4, ffi.NULL, 8, 1) == EINVAL
    for family in (0, 2, 5, 10, -1):
        assert lib.dp_allowedips_insert(t.t, family, v6, 8, 1) == EINVAL
        assert lib.dp_allowedips_remove(t.t, family, v6, 8) == EINVAL
        assert lib.dp_allowedips_lookup(t.t, family, v6) == NONE
        assert lib.dp_allowedips_lookup_batch(t.t, family, ffi.NULL, ffi.NULL, 0) == EINVAL
    for family in (2, 5, 10, -1):
        assert lib.dp_allowedips_count(t.t, family) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V4, v4, 33, 1) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V4, v4, -1, 1) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V6, v6, 129, 1) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V6, v6, 1000, 1) == EINVAL
    assert lib.dp_allowedips_insert(t.t, V4, v4, 0, NONE) == EINVAL  # NONE cannot own
    assert lib.dp_allowedips_remove(ffi.NULL, V4, v4, 8) == EINVAL
    assert lib.dp_allowedips_remove(t.t, V4, ffi.NULL, 8) == EINVAL
    assert lib.dp_allowedips_remove(t.t, V4, v4, 33) == EINVAL
    assert lib.dp_allowedips_remove(t.t, V6, v6, 129) == EINVAL
    assert lib.dp_allowedips_remove_peer(ffi.NULL, 1) == EINVAL
    assert lib.dp_allowedips_remove_peer(t.t, NONE) == EINVAL
    assert lib.dp_allowedips_lookup(ffi.NULL, V4, v4) == NONE
    assert lib.dp_allowedips_lookup(t.t, V4, ffi.NULL) == NONE
    assert lib.dp_allowedips_lookup_batch(ffi.NULL, V4, ffi.NULL, ffi.NULL, 0) == EINVAL
    assert lib.dp_allowedips_lookup_batch(t.t, V4, ffi.NULL, ffi.NULL, 1) == EINVAL
    assert lib.dp_allowedips_lookup_batch(t.t, V4, ffi.NULL, ffi.NULL, 0) == 0
    assert lib.dp_allowedips_count(ffi.NULL, 0) == EINVAL
    assert lib.dp_allowedips_list_peer(ffi.NULL, 1, ffi.NULL, 0) == EINVAL
    assert lib.dp_allowedips_list_peer(t.t, 1, ffi.NULL, 4) == EINVAL
    assert lib.dp_allowedips_reclaim(ffi.NULL) == EINVAL
    assert lib.dp_allowedips_reader_register(ffi.NULL) == EINVAL
    for slot in (-1, lib.DP_ALLOWEDIPS_MAX_READERS, 10**6):
        lib.dp_allowedips_reader_quiescent(t.t, slot)
        lib.dp_allowedips_reader_offline(t.t, slot)
        lib.dp_allowedips_reader_online(t.t, slot)
        lib.dp_allowedips_reader_unregister(t.t, slot)
    lib.dp_allowedips_reader_quiescent(ffi.NULL, 0)
    lib.dp_allowedips_free(ffi.NULL)
    assert t.count() == 0  # nothing above changed the table


def test_batch_lookup_with_null_entries():
    t = Table()
    assert t.insert("0.0.0.0/0", 9) == 0
    buf = ffi.from_buffer(bytes([1, 2, 3, 4]))
    ptrs = ffi.new("const uint8_t *[]", [buf, ffi.NULL, buf])
    out = ffi.new("uint32_t[]", [0, 0, 0])
    assert lib.dp_allowedips_lookup_batch(t.t, V4, ptrs, out, 3) == 0
    assert list(out) == [9, NONE, 9]


def test_list_truncates_to_the_buffer_and_reports_the_total():
    t = Table()
    for i in range(5):
        assert t.insert(f"10.0.{i}.0/24", 1) == 0
    out = ffi.new("struct dp_allowedips_entry[]", 2)
    assert lib.dp_allowedips_list_peer(t.t, 1, out, 2) == 5
    assert [(bytes(e.addr[0:4]), e.cidr) for e in out] == [(bytes([10, 0, 0, 0]), 24),
                                                           (bytes([10, 0, 1, 0]), 24)]
    assert lib.dp_allowedips_list_peer(t.t, 1, ffi.NULL, 0) == 5
    assert lib.dp_allowedips_list_peer(t.t, 2, out, 2) == 0


# ---- readers and reclamation ----

def test_unlinked_nodes_wait_for_every_online_reader():
    t = Table()
    a, b = lib.dp_allowedips_reader_register(t.t), lib.dp_allowedips_reader_register(t.t)
    assert 0 <= a != b >= 0
    for i in range(4):
        assert t.insert(f"10.0.{i}.0/24", 1) == 0
    assert t.remove("10.0.0.0/24") == 1
    waiting = lib.dp_allowedips_reclaim(t.t)
    assert waiting >= 1                                 # neither reader has moved on
    lib.dp_allowedips_reader_quiescent(t.t, a)
    assert lib.dp_allowedips_reclaim(t.t) == waiting    # b still may hold them
    lib.dp_allowedips_reader_quiescent(t.t, b)
    assert lib.dp_allowedips_reclaim(t.t) == 0
    # an offline reader holds nothing back; coming online again it does
    lib.dp_allowedips_reader_offline(t.t, b)
    assert t.remove_peer(1) == 3
    assert lib.dp_allowedips_reclaim(t.t) > 0           # a is online
    lib.dp_allowedips_reader_quiescent(t.t, a)
    assert lib.dp_allowedips_reclaim(t.t) == 0
    lib.dp_allowedips_reader_online(t.t, b)
    assert t.insert("10.0.0.0/24", 1) == 0 and t.remove("10.0.0.0/24") == 1
    assert lib.dp_allowedips_reclaim(t.t) > 0
    lib.dp_allowedips_reader_unregister(t.t, a)
    lib.dp_allowedips_reader_unregister(t.t, b)
    assert lib.dp_allowedips_reclaim(t.t) == 0


def test_reader_slots_run_out_and_come_back():
    t = Table()
    slots = [lib.dp_allowedips_reader_register(t.t) for _ in range(lib.DP_ALLOWEDIPS_MAX_READERS)]
    assert sorted(slots) == list(range(lib.DP_ALLOWEDIPS_MAX_READERS))
    assert lib.dp_allowedips_reader_register(t.t) == -lib.DP_TABLES_ENOSPC
    lib.dp_allowedips_reader_unregister(t.t, slots[7])
    assert lib.dp_allowedips_reader_register(t.t) == slots[7]


def test_lookups_during_churn_never_see_a_broken_trie():
    """Reader threads look up (cffi drops the GIL inside each batch call,
    so they run alongside the writer) while the writer inserts and removes
    more specific prefixes under a fixed /8 and ::/0. Every lookup must
    land on a peer that could own the address at some moment; a
    half-published node or a freed one shows up as a wrong peer, NONE or a
    crash. A smoke test: it makes races likely, not certain."""
    t = Table()
    assert t.insert("10.0.0.0/8", 1) == 0
    assert t.insert("::/0", 1) == 0
    stop = threading.Event()
    bad = []

    def reader(seed):
        rnd = random.Random(seed)
        slot = lib.dp_allowedips_reader_register(t.t)
        v4 = [ffi.from_buffer(bytes([10]) + rnd.randbytes(3)) for _ in range(2048)]
        v6 = [ffi.from_buffer(bytes([0xfd]) + rnd.randbytes(15)) for _ in range(2048)]
        out = ffi.new("uint32_t[]", 2048)
        for family, addrs in ((V4, ffi.new("const uint8_t *[]", v4)),
                              (V6, ffi.new("const uint8_t *[]", v6))) * 10**6:
            if stop.is_set():
                break
            lib.dp_allowedips_lookup_batch(t.t, family, addrs, out, 2048)
            lib.dp_allowedips_reader_quiescent(t.t, slot)
            wrong = set(out) - {1, 2, 3}
            if wrong:
                bad.append(wrong)
        lib.dp_allowedips_reader_unregister(t.t, slot)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for th in threads:
        th.start()
    rnd = random.Random(1)
    owner, order = {}, []   # the writer's own view: prefix -> peer, and the prefixes
    try:
        for i in range(20_000):
            if i % 997 == 0:
                t.remove_peer(2)
                owner = {n: p for n, p in owner.items() if p != 2}
                order = list(owner)
            elif order and rnd.random() < 0.45:
                k = rnd.randrange(len(order))
                order[k], order[-1] = order[-1], order[k]
                net = order.pop()
                del owner[net]
                assert t.remove(net) == 1
            else:
                if rnd.random() < 0.5:
                    net = ipaddress.ip_network(
                        (bytes([10]) + rnd.randbytes(3), rnd.randint(9, 32)), strict=False)
                else:
                    net = ipaddress.ip_network(
                        (bytes([0xfd]) + rnd.randbytes(15), rnd.randint(1, 128)), strict=False)
                if net not in owner:
                    order.append(net)
                owner[net] = rnd.choice([2, 3])
                assert t.insert(net, owner[net]) == 0
        assert t.count() == len(owner) + 2
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert bad == []
    assert lib.dp_allowedips_reclaim(t.t) == 0
