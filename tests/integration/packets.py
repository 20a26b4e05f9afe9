"""Minimal IPv4/IPv6 ICMP echo packets for checking what crosses a tunnel."""
import ipaddress
import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b"dataplane",
              reply: bool = False) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0,
                          s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return hdr + icmp
    icmp = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, s.packed, d.packed)
    return hdr + icmp


def parse_icmp_echo(packet: bytes):
    """(src, dst, is_reply, ident, seq, payload) of an ICMP echo packet, or
    None for anything else. Trailing padding is ignored."""
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0xF) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        if packet[9] != 1:
            return None
        src, dst = ipaddress.ip_address(packet[12:16]), ipaddress.ip_address(packet[16:20])
        icmp = packet[ihl:total]
        kinds = {8: False, 0: True}
    elif version == 6:
        plen = struct.unpack_from("!H", packet, 4)[0]
        if packet[6] != 58:
            return None
        src, dst = ipaddress.ip_address(packet[8:24]), ipaddress.ip_address(packet[24:40])
        icmp = packet[40:40 + plen]
        kinds = {128: False, 129: True}
    else:
        return None
    if icmp[0] not in kinds:
        return None
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return str(src), str(dst), kinds[icmp[0]], ident, seq, icmp[8:]
