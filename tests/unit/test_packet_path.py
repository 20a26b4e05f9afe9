"""The packet path driven in-process through its test entry points (no
sockets to read, no TUN, no root): decap and encap of bursts with a real
keypair, every drop counted under its reason, and the XDP backend's parse
of WAN frames, well-formed and malformed."""
import errno
import ipaddress
import os
import socket
import struct

import pytest

from dataplane import crypto
from dataplane._native import lib
from dataplane.device import (BUSY_POLL_MAX_US, Device, DeviceError, Endpoint, outer_checksum_ok,
                              parse_outer_frame)
from dataplane.obfuscation import Obfuscation
from tests.integration.packets import checksum

SEND_KEY, RECV_KEY = bytes(range(32)), bytes(range(32, 64))
REMOTE_INDEX = 0x1234
PEER_INNER, OTHER_INNER, FAR = "10.0.0.2", "10.0.0.3", "10.9.9.9"
SOURCE = Endpoint(ipaddress.ip_address("127.0.0.1"), 5555)


def ipv4_udp(src: str, dst: str, size: int) -> bytes:
    payload = bytes(size - 28)
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + udp


def padded(pkt: bytes) -> bytes:
    return pkt + bytes(-len(pkt) % 16)


def data_message(index: int, counter: int, inner: bytes, key: bytes = RECV_KEY) -> bytes:
    return struct.pack("<IIQ", 4, index, counter) + crypto.seal(key, counter, padded(inner))


class PathWorld:
    """A stopped device with one peer and one keypair: its TUN is
    /dev/null, its UDP socket sends to `sink` on loopback."""

    def __init__(self):
        null = os.open("/dev/null", os.O_WRONLY)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.settimeout(1)
        self.dev = Device([null], [os.dup(udp.fileno())], [-1], 1420)
        udp.close()
        self.dev.peer_add(0)
        self.dev.allowed_ip_add(0, ipaddress.ip_network(f"{PEER_INNER}/32"))
        self.dev.set_endpoint(0, Endpoint(ipaddress.ip_address("127.0.0.1"),
                                          self.sink.getsockname()[1]))
        self.index = self.dev.index_reserve()
        self.dev.keypair_install(0, self.index, REMOTE_INDEX, SEND_KEY, RECV_KEY, True,
                                 lib.dp_device_now_ns())
        self.counter = 0

    def messages(self, n: int, size: int = 100, src: str = PEER_INNER) -> list[bytes]:
        out = []
        for _ in range(n):
            out.append(data_message(self.index, self.counter, ipv4_udp(src, FAR, size)))
            self.counter += 1
        return out

    def close(self):
        self.dev.close()
        self.sink.close()


@pytest.fixture
def world():
    w = PathWorld()
    yield w
    w.close()


def nonzero(drops: dict) -> dict:
    return {k: v for k, v in drops.items() if v}


def test_decap_of_a_burst_delivers_every_packet_and_roams(world):
    burst = world.messages(64, size=1420)
    assert world.dev.test_rx(burst, SOURCE) == 64
    st = world.dev.stats(0)
    assert st.rx_packets == 64 and st.rx_bytes == sum(len(m) for m in burst)
    assert nonzero(world.dev.drops()) == {}
    assert world.dev.endpoint(0) == SOURCE


def test_decap_drops_are_counted_by_reason(world):
    good = world.messages(4)
    world.dev.test_rx(good, SOURCE)
    replayed = good[:2]
    tampered = bytearray(world.messages(1)[0])
    tampered[-1] ^= 1
    not_allowed = world.messages(1, src=OTHER_INNER)
    unknown = [data_message(world.index ^ 0x5A5A0000, 99, ipv4_udp(PEER_INNER, FAR, 64))]
    short = [b"\x04\x00\x00\x00" + bytes(20)]
    handshake_wrong_size = [b"\x01\x00\x00\x00" + bytes(100)]
    world.dev.test_rx(replayed + [bytes(tampered)] + not_allowed + unknown + short +
                      handshake_wrong_size, SOURCE)
    assert nonzero(world.dev.drops()) == {"replay": 2, "bad_mac": 1, "not_allowed": 1,
                                          "unknown_index": 1, "malformed": 2}
    assert world.dev.stats(0).rx_packets == 4 + 1  # not_allowed authenticated first


def test_encap_of_a_burst_sends_sealed_messages_to_the_endpoint(world):
    pkts = [ipv4_udp(FAR, PEER_INNER, size) for size in (64, 100, 1420) * 10]
    assert world.dev.test_tx(pkts) == len(pkts)
    got = []
    while len(got) < len(pkts):
        data = world.sink.recv(65536)
        got.append(data)
    for i, (msg, pkt) in enumerate(zip(got, pkts)):
        mtype, index, counter = struct.unpack_from("<IIQ", msg)
        assert (mtype, index, counter) == (4, REMOTE_INDEX, i)
        plain = crypto.open(SEND_KEY, counter, msg[16:])
        assert plain[:len(pkt)] == pkt and plain[len(pkt):] == bytes(len(plain) - len(pkt))
        assert len(plain) == min(len(padded(pkt)), 1420)
    assert world.dev.stats(0).tx_packets == len(pkts)


def test_encap_without_a_route_is_counted(world):
    world.dev.test_tx([ipv4_udp(FAR, "10.7.7.7", 64), b"\x45" + bytes(10)])
    assert nonzero(world.dev.drops()) == {"no_route": 1, "inner_malformed": 1}


# ---------------------------------------------------------------- WAN frames

MAC = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")


def udp_frame(payload: bytes, v6: bool = False, vlan: bool = False, options: bytes = b"",
              frag: int = 0x4000, ip_total_delta: int = 0, udp_len_delta: int = 0,
              ext: tuple = ()) -> bytes:
    """ext: IPv6 extension header types (8 bytes each) before UDP."""
    udp = struct.pack("!HHHH", 4321, 51820, 8 + len(payload) + udp_len_delta, 0) + payload
    if v6:
        chain = list(ext) + [17]
        headers = b"".join(bytes([chain[i + 1], 0]) + bytes(6) for i in range(len(ext)))
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(headers) + len(udp) + ip_total_delta,
                         chain[0], 64, ipaddress.IPv6Address("2001:db8::1").packed,
                         ipaddress.IPv6Address("2001:db8::2").packed) + headers
        ethertype = 0x86DD
    else:
        ihl = 5 + len(options) // 4
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp) + ip_total_delta, 0,
                         frag, 64, 17, 0, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])) + options
        ethertype = 0x0800
    tag = struct.pack("!HH", 0x8100, 7) if vlan else b""
    return MAC + tag + struct.pack("!H", ethertype) + ip + udp


@pytest.mark.parametrize("kw", [{}, {"v6": True}, {"vlan": True}, {"options": bytes(8)},
                                {"vlan": True, "v6": True}, {"v6": True, "ext": [0, 60]}])
def test_outer_parse_finds_the_message_and_its_source(kw):
    msg = b"\x04\x00\x00\x00" + bytes(40)
    frame = udp_frame(msg, **kw) + bytes(6)  # Ethernet padding after the packet is ignored
    off, length, src = parse_outer_frame(frame)
    assert frame[off:off + length] == msg
    assert src.port == 4321
    assert str(src.address) == ("2001:db8::1" if kw.get("v6") else "192.0.2.1")


@pytest.mark.parametrize("frame", [
    b"", MAC + b"\x08",                                       # no ethertype
    udp_frame(b"x" * 40)[:30],                                 # truncated IPv4
    udp_frame(b"x" * 40, v6=True)[:50],                        # truncated IPv6
    udp_frame(b"x" * 40, ip_total_delta=10),                   # IP says more than there is
    udp_frame(b"x" * 40, udp_len_delta=10),                    # UDP says more than IP
    udp_frame(b"x" * 40, udp_len_delta=-48),                   # UDP length < 8
    udp_frame(b"x" * 40, frag=0x2000),                         # first fragment
    udp_frame(b"x" * 40, frag=0x0010),                         # later fragment
    MAC + b"\x08\x06" + bytes(28),                             # ARP
    udp_frame(b"x" * 40, v6=True, ext=[44]),                   # IPv6 fragment header
    udp_frame(b"x" * 40, v6=True, ext=[0] * 9),                # too many extension headers
], ids=range(12))
def test_outer_parse_refuses_malformed_frames(frame):
    assert parse_outer_frame(frame) is None


def with_udp_checksum(frame: bytes, how: str) -> bytes:
    """The frame with its UDP checksum field set: "valid", "partial" (the
    pseudo-header sum checksum offload leaves), "zero", or "valid" then the
    source address changed ("corrupt-source") or the source port
    ("corrupt-port")."""
    off, length, src = parse_outer_frame(frame)
    l4 = off - 8
    v6 = src.address.version == 6
    l3 = l4 - (40 if v6 else 20)
    addrs = frame[l3 + 8:l3 + 40] if v6 else frame[l3 + 12:l3 + 20]
    pseudo = addrs + struct.pack("!HH", 17, length + 8)
    body = bytearray(frame)
    body[l4 + 6:l4 + 8] = b"\0\0"
    if how == "partial":
        field = ~checksum(pseudo) & 0xFFFF  # the sum itself, not its complement
    elif how == "zero":
        field = 0
    else:
        field = checksum(pseudo + bytes(body[l4:l4 + 8 + length])) or 0xFFFF
    body[l4 + 6:l4 + 8] = struct.pack("!H", field)
    if how == "corrupt-source":
        at = l3 + (8 if v6 else 12) + 3
        body[at] ^= 0x40
    elif how == "corrupt-port":
        body[l4] ^= 0x01
    return bytes(body)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_only_a_checked_udp_checksum_lets_a_frame_move_a_peer(v6):
    frame = udp_frame(b"\x04\x00\x00\x00" + os.urandom(60), v6=v6)
    assert outer_checksum_ok(with_udp_checksum(frame, "valid")) is True
    assert outer_checksum_ok(with_udp_checksum(frame, "partial")) is True
    assert outer_checksum_ok(with_udp_checksum(frame, "corrupt-source")) is False
    assert outer_checksum_ok(with_udp_checksum(frame, "corrupt-port")) is False
    # IPv4 may send none; IPv6 may not (RFC 8200)
    assert outer_checksum_ok(with_udp_checksum(frame, "zero")) is (not v6)
    # a flipped payload bit
    bad = bytearray(with_udp_checksum(frame, "valid"))
    bad[-5] ^= 0x10
    assert outer_checksum_ok(bytes(bad)) is False
    assert outer_checksum_ok(frame[:20]) is None


def test_busy_poll_needs_af_xdp_sockets_in_range_and_before_start(world):
    """BusyPoll is for the XDP backend's AF_XDP sockets: a device without
    them refuses it (EINVAL), values out of range are refused in Python
    and in C, and a running device refuses it (EBUSY)."""
    dev = world.dev
    with pytest.raises(DeviceError) as e:
        dev.xsk_busy_poll(50)
    assert e.value.errno == errno.EINVAL
    for bad in (-1, BUSY_POLL_MAX_US + 1):
        with pytest.raises(ValueError, match="busy polling takes"):
            dev.xsk_busy_poll(bad)
    assert lib.dp_device_xsk_busy_poll(dev._dev, BUSY_POLL_MAX_US + 1) == -errno.EINVAL
    assert dev.xsk_socket_options(0) == {}
    dev.start()
    try:
        assert lib.dp_device_xsk_busy_poll(dev._dev, 50) == -errno.EBUSY
    finally:
        dev.stop()


UDP_SEGMENT, UDP_GRO = 103, 104


def test_udp_gro_batches_of_any_segment_count_are_all_handled():
    """A local sender's UDP GSO datagram reaches a UDP_GRO socket whole:
    up to UDP_MAX_SEGMENTS (128 since Linux 6.x) messages in one receive
    buffer, 64 buffers a recvmmsg. Every message is decrypted and
    delivered; none is written past the receive pass's segment array
    (4096 entries, which this overflowed by 1024 before)."""
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    dev = Device([null], [os.dup(udp.fileno())], [-1], 1420)
    udp.close()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dev.peer_add(0)
        dev.allowed_ip_add(0, ipaddress.ip_network(f"{PEER_INNER}/32"))
        index = dev.index_reserve()
        dev.keypair_install(0, index, REMOTE_INDEX, SEND_KEY, RECV_KEY, True,
                            lib.dp_device_now_ns())
        per, batches = 128, 40
        msgs = [data_message(index, c, ipv4_udp(PEER_INNER, FAR, 64))
                for c in range(per * batches)]
        step = len(msgs[0])
        assert all(len(m) == step for m in msgs)
        for b in range(batches):
            gso = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", step))]
            try:
                sender.sendmsg([b"".join(msgs[b * per:(b + 1) * per])], gso, 0,
                               ("127.0.0.1", port))
            except OSError as e:
                if e.errno == errno.EINVAL and b == 0:
                    pytest.skip("this kernel takes at most 64 UDP GSO segments")
                raise
        handled = [dev.poll_once()]
        while handled[-1]:
            handled.append(dev.poll_once())
        # all in one pass: more than the segment array holds
        assert handled[0] == per * batches, handled
        assert dev.stats(0).rx_packets == per * batches
        assert nonzero(dev.drops()) == {}
    finally:
        sender.close()
        dev.close()


@pytest.mark.parametrize("kind,size", [(1, 148), (2, 92), (3, 64), (4, 100)])
def test_a_plain_message_that_reads_as_obfuscated_transport_is_read_as_plain(world, kind, size):
    """With plain WireGuard accepted beside a profile, a plain message whose
    bytes at S4 fall in H4 (about 1 in 43 for a wide H4, at random: an
    initiation's ephemeral key, a transport message's counter) first reads
    as an obfuscated transport message with an unknown index; it reaches
    the handshake, or its keypair, as plain, and is not dropped."""
    profile = Obfuscation.from_settings({"S4": "8", "H1": "100", "H2": "200", "H3": "300",
                                         "H4": "4000000-4999999"})
    world.dev.set_wire(profile, accept_plain=True)
    if kind == 4:
        inner = ipv4_udp(PEER_INNER, FAR, size)
        m = bytearray(data_message(world.index, 4000000 | 1 << 32, inner))
        assert 4000000 <= struct.unpack_from("<I", m, 8)[0] <= 4999999
    else:
        m = bytearray(struct.pack("<I", kind) + os.urandom(size - 4))
        struct.pack_into("<I", m, 8, 4321000)  # in H4
    assert world.dev.test_rx([bytes(m)], SOURCE) == 1
    assert nonzero(world.dev.drops()) == {}
    if kind == 4:
        assert world.dev.stats(0).rx_packets == 1
        return
    events = [e for e in world.dev.events() if e.message]
    assert [(e.message, e.wire, e.data) for e in events] == [(kind, lib.DP_WIRE_PLAIN, bytes(m))]
