"""Receiver indices and keypairs of the native device, without root:
reserve, claim and release of indices (collisions, 0, a full table, 100k
indices a control plane chose), keypair install/retire/reuse in the locked
chunks, decap through a claimed index, the replay window a device is
configured with, and the memory the device reports."""
import errno
import ipaddress
import os
import random
import socket

import pytest

from dataplane._native import ffi, lib
from dataplane.device import Device, DeviceError, Endpoint
from dataplane.interface import table_sizes
from tests.unit.test_packet_path import FAR, PEER_INNER, data_message, ipv4_udp

SOURCE = Endpoint(ipaddress.ip_address("127.0.0.1"), 5555)
KEY_A, KEY_B = bytes(range(32)), bytes(range(100, 132))


def make_device(**kw) -> Device:
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        return Device([null], [os.dup(udp.fileno())], [-1], 1420, **kw)
    finally:
        udp.close()


@pytest.fixture
def dev():
    d = make_device()
    d.peer_add(0)
    d.allowed_ip_add(0, ipaddress.ip_network(f"{PEER_INNER}/32"))
    yield d
    d.close()


def install(d: Device, index: int, recv_key: bytes = KEY_A, peer: int = 0,
            initiator: bool = True) -> None:
    d.keypair_install(peer, index, 0x77, bytes(32), recv_key, initiator, lib.dp_device_now_ns())



def add_peers_with_keypairs(d, n: int) -> None:
    """Peers 0..n-1, each with a keypair on claimed index peer + 1."""
    for p in range(n):
        d.peer_add(p)
        d.index_claim(p + 1)
        install(d, p + 1, peer=p)

def decap(d: Device, index: int, counter: int, key: bytes = KEY_A, peer: int = 0,
          src: str = PEER_INNER) -> dict:
    """Drops by reason and packets the peer received, for one message."""
    before = d.drops()
    rx = d.stats(peer).rx_packets
    d.test_rx([data_message(index, counter, ipv4_udp(src, FAR, 64), key)], SOURCE)
    after = d.drops()
    out = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    out["delivered"] = d.stats(peer).rx_packets - rx
    return out


# ---------------------------------------------------------------- indices

def test_claim_takes_exactly_that_index_once(dev):
    dev.index_claim(0xDEADBEEF)
    with pytest.raises(DeviceError) as e:
        dev.index_claim(0xDEADBEEF)
    assert e.value.errno == errno.EEXIST and "0xdeadbeef" in str(e.value)
    assert "taken" in str(e.value)
    assert dev.memory()["indices_used"] == 1


def test_claim_refuses_zero_and_out_of_range(dev):
    for bad in (0, -1, 2**32):
        with pytest.raises(ValueError, match="1..0xffffffff"):
            dev.index_claim(bad)
    assert lib.dp_device_index_claim(dev._dev, 0) == -errno.EINVAL
    assert dev.memory()["indices_used"] == 0


def test_claim_of_a_reserved_or_live_index_is_refused(dev):
    reserved = dev.index_reserve()
    with pytest.raises(DeviceError) as e:
        dev.index_claim(reserved)
    assert e.value.errno == errno.EEXIST
    install(dev, reserved)
    with pytest.raises(DeviceError) as e:
        dev.index_claim(reserved)
    assert e.value.errno == errno.EEXIST
    # a live keypair's index cannot be released either, only retired
    assert dev.index_release(reserved) is False
    assert dev.keypair_retire(reserved) is True
    dev.index_claim(reserved)


def test_indices_that_share_low_bits_all_work(dev):
    """The old table put an index in slot `index & mask`: these all
    collided there. Each gets its own keypair and decrypts."""
    base = 0x00000ABC
    indices = [base + (k << 20) for k in range(1, 4)]
    keys = [bytes([k]) * 32 for k in range(1, 4)]
    for peer, (index, key) in enumerate(zip(indices, keys), 1):
        dev.peer_add(peer)
        dev.allowed_ip_add(peer, ipaddress.ip_network(f"10.1.0.{peer}/32"))
        dev.index_claim(index)
        install(dev, index, key, peer=peer)
    for peer, (index, key) in enumerate(zip(indices, keys), 1):
        got = decap(dev, index, 0, key, peer=peer, src=f"10.1.0.{peer}")
        assert got == {"delivered": 1}, hex(index)


def test_release_gives_the_index_back(dev):
    dev.index_claim(42)
    assert dev.index_release(42) is True
    assert dev.index_release(42) is False
    assert dev.index_release(43) is False
    dev.index_claim(42)
    assert dev.memory()["indices_used"] == 1


def test_install_needs_a_reserved_or_claimed_index(dev):
    with pytest.raises(DeviceError) as e:
        install(dev, 0x1234)
    assert e.value.errno == errno.EEXIST and "not reserved or claimed" in str(e.value)
    dev.index_claim(0x1234)
    with pytest.raises(DeviceError) as e:
        install(dev, 0x1234, peer=5)  # no such peer: the claim stays
    assert e.value.errno == errno.ENOENT
    install(dev, 0x1234)
    assert dev.stats(0).current_local_index == 0x1234


def test_reserve_until_full_then_a_clear_error():
    d = make_device(max_peers=4, index_table_log2=4)  # 16 entries: 8 indices
    try:
        got = [d.index_reserve() for _ in range(8)]
        assert len(set(got)) == 8 and 0 not in got
        with pytest.raises(DeviceError) as e:
            d.index_reserve()
        assert e.value.errno == errno.ENOSPC and "8 of 8" in str(e.value)
        with pytest.raises(DeviceError) as e:
            d.index_claim(12345)
        assert e.value.errno == errno.ENOSPC and "full" in str(e.value)
        assert d.index_release(got[3])
        d.index_claim(12345)
    finally:
        d.close()


def test_100k_random_claimed_indices_on_a_device_sized_for_100k_peers():
    max_peers, log2 = table_sizes(100_000)
    d = make_device(max_peers=max_peers, index_table_log2=log2)
    try:
        rnd = random.Random(6)
        indices = rnd.sample(range(1, 2**32), 100_000)
        for i in indices:
            d.index_claim(i)
        m = d.memory()
        assert m["indices_used"] == 100_000 and m["index_max_probe"] < 48
        # ours are still free to pick beside them
        extra = d.index_reserve()
        assert extra not in set(indices)
        collided = 0
        for i in rnd.sample(indices, 200):
            with pytest.raises(DeviceError):
                d.index_claim(i)
            collided += 1
        assert collided == 200
    finally:
        d.close()


# ---------------------------------------------------------------- keypairs

def test_decap_through_a_claimed_index_and_its_replacement(dev):
    dev.index_claim(0xC0FFEE01)
    install(dev, 0xC0FFEE01, KEY_A)
    assert decap(dev, 0xC0FFEE01, 0) == {"delivered": 1}
    assert decap(dev, 0xC0FFEE01, 0) == {"replay": 1, "delivered": 0}
    # retired: the index leads nowhere
    assert dev.keypair_retire(0xC0FFEE01)
    assert decap(dev, 0xC0FFEE01, 1) == {"unknown_index": 1, "delivered": 0}
    # the same index claimed again with new keys: old keys fail, new work
    dev.index_claim(0xC0FFEE01)
    install(dev, 0xC0FFEE01, KEY_B)
    assert decap(dev, 0xC0FFEE01, 2, KEY_A) == {"bad_mac": 1, "delivered": 0}
    assert decap(dev, 0xC0FFEE01, 0, KEY_B) == {"delivered": 1}


def test_rotation_retires_the_oldest_and_frees_its_index(dev):
    """previous/current/next as the kernel rotates: a third initiator
    keypair pushes the first out, and its index is free again."""
    idx = [0x100, 0x200, 0x300]
    for i in idx:
        dev.index_claim(i)
        install(dev, i)
    st = dev.stats(0)
    assert (st.keypairs, st.current_local_index) == (2, 0x300)
    assert decap(dev, 0x100, 0) == {"unknown_index": 1, "delivered": 0}
    assert decap(dev, 0x200, 0) == {"delivered": 1}  # previous still receives
    dev.index_claim(0x100)
    m = dev.memory()
    assert (m["keypairs_live"], m["indices_used"]) == (2, 3)


def test_install_retire_reuse_stays_in_one_chunk(dev):
    """Retired keypairs are wiped and reused: a thousand install/retire
    cycles need no more memory than one."""
    dev.index_claim(1)
    install(dev, 1)
    first = dev.memory()
    assert first["keypairs_live"] == 1 and first["keypairs_mapped"] >= 1
    for n in range(2, 1002):
        dev.index_claim(n)
        install(dev, n)
        assert dev.keypair_retire(n - 1)
    m = dev.memory()
    assert m["keypairs_mapped"] == first["keypairs_mapped"]
    assert m["locked"] == first["locked"]
    assert m["keypairs_live"] == 1 and m["keypairs_allocated"] <= 2
    assert decap(dev, 1001, 0) == {"delivered": 1}


def test_keypair_memory_grows_in_chunks_with_use():
    d = make_device(max_peers=4096, index_table_log2=14, replay_window=2048)
    try:
        empty = d.memory()
        assert empty["keypairs_mapped"] == 0 and empty["locked"] == 0
        add_peers_with_keypairs(d, 3000)
        m = d.memory()
        per = m["keypair_bytes"]
        assert m["keypairs_live"] == m["keypairs_allocated"] == 3000
        assert 3000 <= m["keypairs_mapped"] < 3000 + 512
        # locked memory is the chunks: about one keypair's size each, whole pages
        assert 3000 * per <= m["locked"] <= (3000 + 512) * per + 64 * 4096
        assert m["locked"] < 1.2 * 3000 * per
    finally:
        d.close()


def test_max_keypairs_caps_installs_with_a_clear_error():
    d = make_device(max_keypairs=8)
    try:
        for p in range(9):
            d.peer_add(p)
            d.index_claim(p + 1)
        for p in range(8):
            install(d, p + 1, peer=p)
        with pytest.raises(DeviceError) as e:
            install(d, 9, peer=8)
        assert e.value.errno == errno.ENOSPC and "max_keypairs" in str(e.value)
        assert d.keypair_retire(1)
        install(d, 9, peer=8)  # the retired one was wiped and reused
        assert d.memory()["keypairs_live"] == 8
    finally:
        d.close()


# ---------------------------------------------------------------- replay window

@pytest.mark.parametrize("bits", [1024, 2048, 4096, 8192])
def test_the_device_window_decides_how_old_a_counter_may_be(bits):
    d = make_device(replay_window=bits)
    try:
        d.peer_add(0)
        d.allowed_ip_add(0, ipaddress.ip_network(f"{PEER_INNER}/32"))
        d.index_claim(7)
        install(d, 7)
        window = bits - 64
        assert decap(d, 7, 20_000) == {"delivered": 1}
        assert decap(d, 7, 20_000 - window) == {"delivered": 1}          # at the edge
        assert decap(d, 7, 20_000 - window - 1) == {"replay": 1, "delivered": 0}
        assert d.memory()["replay_window_bits"] == bits
    finally:
        d.close()


@pytest.mark.parametrize("bits", [0, 512, 1000, 3000, 16384])
def test_bad_windows_are_refused_before_the_device_exists(bits):
    null = os.open("/dev/null", os.O_WRONLY)
    with pytest.raises(ValueError, match=r"power of two from 1024 to 8192 bits"):
        Device([null], [-1], [-1], 1420, replay_window=bits)
    with pytest.raises(OSError):
        os.fstat(null)  # the device owned the fd and closed it


def test_keypair_size_follows_the_window():
    sizes = {}
    for bits in (1024, 2048, 8192):
        d = make_device(replay_window=bits)
        sizes[bits] = d.memory()["keypair_bytes"]
        d.close()
    # two cache lines of keys, counters and links, and the bitmap
    assert sizes == {bits: 128 + bits // 8 for bits in sizes}


# ---------------------------------------------------------------- memory

def test_memory_parts_add_up_and_follow_the_config():
    d = make_device(max_peers=1000, index_table_log2=12, event_ring_log2=8)
    try:
        m = d.memory()
        parts = ("peers", "index_table", "keypairs", "allowed_ips", "event_ring", "bursts",
                 "routes", "device")
        assert m["total"] == sum(m[p] for p in parts)
        assert 100 * 1000 <= m["peers"] <= 400 * 1000
        assert 8 << 12 <= m["index_table"] <= (8 << 12) + 4096
        assert m["event_ring"] == 256 * ffi.sizeof("struct dp_event")
        # two bursts (the worker's and poll_once's), 64 packet buffers of 64 KiB and more each
        assert 2 * 64 * 65536 <= m["bursts"] <= 2 * 2 * 64 * 65536
        # no keypair yet: nothing locked, only the chunk directory
        assert m["locked"] == 0 and m["keypairs"] < 64 * 1024
        aip0 = m["allowed_ips"]
        for p in range(500):
            d.peer_add(p)
            d.allowed_ip_add(p, ipaddress.ip_network(f"10.{p // 256}.{p % 256}.1/32"))
            d.index_claim(p + 1)
            install(d, p + 1, peer=p)
        m2 = d.memory()
        assert 500 * 32 <= m2["allowed_ips"] - aip0 <= 500 * 256
        assert m2["keypairs"] - m["keypairs"] == m2["locked"]
        assert 500 * m2["keypair_bytes"] <= m2["locked"] <= 1.5 * 500 * m2["keypair_bytes"]
        assert m2["total"] == sum(m2[p] for p in parts)
    finally:
        d.close()


def _memlock_allows(nbytes: int) -> bool:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= nbytes


@pytest.mark.skipif(not _memlock_allows(64 << 20),
                    reason="needs 64 MiB of locked memory (RLIMIT_MEMLOCK) for 100k keypairs")
def test_100k_peers_with_a_2048_bit_window_fit_in_1_kib_each():
    """Issue 6's target: 100 000 peers, each with a /32 and a keypair on a
    claimed index, in at most 1 KiB of native memory a peer, everything
    the device allocated counted (bench/peer_memory.py prints the parts)."""
    peers = 100_000
    max_peers, log2 = table_sizes(peers)
    d = make_device(max_peers=max_peers, index_table_log2=log2, replay_window=2048)
    try:
        rnd = random.Random(7)
        now = lib.dp_device_now_ns()
        base = int(ipaddress.IPv4Address("10.0.0.0"))
        for i, index in enumerate(rnd.sample(range(1, 2**32), peers)):
            d.peer_add(i)
            d.allowed_ip_add(i, ipaddress.IPv4Network((base + i, 32)))
            d.index_claim(index)
            d.keypair_install(i, index, i, KEY_A, KEY_B, True, now)
        m = d.memory()
        assert m["keypairs_live"] == m["indices_used"] == peers
        assert m["total"] / peers <= 1024, m
        assert 384 <= m["keypairs"] / peers <= 1.02 * 384
        assert m["locked"] / peers <= 1.02 * 384
    finally:
        d.close()


@pytest.mark.parametrize("configured,max_peers,want", [
    (0, None, (1024, 12)),            # room for peers added at run time, 4096 entries
    (3, None, (1024, 12)),
    (100_000, None, (131_072, 19)),   # 2^19 entries: up to 2^18 indices, two a peer
    (10, 5000, (5000, 15)),           # MaxPeers given: 20 000 entries rounded up
    (0, 1 << 19, (1 << 19, 21)),      # the config's largest MaxPeers
])
def test_table_sizes_give_two_indices_a_peer_at_half_load(configured, max_peers, want):
    got = table_sizes(configured, max_peers)
    assert got == want
    peers, log2 = got
    assert (1 << log2) // 2 >= 2 * peers and log2 <= lib.DP_DEVICE_INDEX_LOG2_MAX


def test_chunks_go_back_when_their_keypairs_are_gone():
    """Memory follows the keypairs in use both ways: removing peers wipes
    their keypairs and unmaps the chunks that emptied (one stays spare);
    new installs map again and work."""
    d = make_device(max_peers=4096, index_table_log2=14, replay_window=2048)
    try:
        d.peer_add(4000)
        d.allowed_ip_add(4000, ipaddress.ip_network(f"{PEER_INNER}/32"))
        add_peers_with_keypairs(d, 3000)
        full = d.memory()
        chunk = full["keypair_chunk_bytes"]
        assert 64 << 10 <= chunk <= 160 << 10 and chunk % 4096 == 0
        assert full["locked"] >= 3000 * full["keypair_bytes"] and full["locked"] % chunk == 0
        for p in range(3000):
            d.peer_remove(p)
        d.maintain()
        m = d.memory()
        assert m["keypairs_allocated"] == m["keypairs_live"] == 0
        assert m["locked"] == chunk  # every chunk emptied: all but the spare went back
        assert full["keypairs"] - m["keypairs"] == full["locked"] - chunk
        d.index_claim(0xABCD)
        install(d, 0xABCD, KEY_B, peer=4000)
        assert decap(d, 0xABCD, 0, KEY_B, peer=4000) == {"delivered": 1}
        for p in range(600):
            d.peer_add(p)
            d.index_claim(p + 1)
            install(d, p + 1, peer=p)
        again = d.memory()
        assert again["keypairs_live"] == 601
        assert 601 * again["keypair_bytes"] <= again["locked"] <= 601 * again["keypair_bytes"] + 2 * chunk
        assert decap(d, 0xABCD, 1, KEY_B, peer=4000) == {"delivered": 1}
    finally:
        d.close()


def test_a_chunk_partly_in_use_stays():
    """One live keypair keeps its chunk: only wholly free chunks go."""
    d = make_device(max_peers=2048, index_table_log2=13, replay_window=8192)
    try:
        for p in range(1000):
            d.peer_add(p)
            d.index_claim(p + 1)
            install(d, p + 1, peer=p)
        chunk = d.memory()["keypair_chunk_bytes"]
        mapped = d.memory()["locked"] // chunk
        assert mapped >= 8
        keep = {1, 500, 1000}
        for p in range(1000):
            if p + 1 not in keep:
                d.peer_remove(p)
        d.maintain()
        m = d.memory()
        assert m["keypairs_live"] == 3
        # the chunks of the three survivors (two or three) and the spare
        assert 3 * chunk <= m["locked"] <= 4 * chunk
        for i in keep:
            assert d.keypair_retire(i)
        d.maintain()
        assert d.memory()["locked"] == chunk
    finally:
        d.close()


# ---------------------------------------------------------------- staging

def test_a_packet_queued_after_the_keypair_came_goes_out_with_it(dev):
    # A packet that found no keypair may join the queue only after the
    # install that would have flushed it (a worker races the control
    # plane). It must go out with that keypair, not wait for, and ask
    # for, a second handshake.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    dev.set_endpoint(0, Endpoint(ipaddress.ip_address("127.0.0.1"), sink.getsockname()[1]))
    pkt = ipv4_udp(FAR, PEER_INNER, 64)
    # no keypair yet: the packet waits, and one handshake is asked for
    dev.test_stage(0, pkt)
    assert dev.stats(0).staged == 1 and dev.stats(0).tx_packets == 0
    assert [e.type for e in dev.events()] == [lib.DP_EVENT_NEED_HANDSHAKE]
    dev.index_claim(1)
    install(dev, 1)  # the install flushes what waits
    assert dev.stats(0).staged == 0 and dev.stats(0).tx_packets == 1
    first = sink.recv(2048)
    # the late one
    dev.test_stage(0, pkt)
    assert dev.stats(0).staged == 0 and dev.stats(0).tx_packets == 2
    second = sink.recv(2048)
    for counter, msg in enumerate((first, second)):
        assert msg[0] == lib.DP_WG_MSG_DATA and int.from_bytes(msg[4:8], "little") == 0x77
        assert int.from_bytes(msg[8:16], "little") == counter
    assert dev.events() == [], "a handshake was asked for with a usable keypair"
    sink.close()


def test_staging_refuses_a_peer_that_is_not_there(dev):
    with pytest.raises(DeviceError) as e:
        dev.test_stage(7, ipv4_udp(FAR, PEER_INNER, 64))
    assert e.value.errno == errno.EINVAL
