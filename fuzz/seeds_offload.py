"""Writes the seed corpus of the TUN offloads harness
(fuzz/offload_roundtrip.c) to fuzz/corpus/offload_roundtrip: run it again
when the harness's input layout changes. Deterministic (a fixed random
seed), so the committed files only change when this script does. To be
folded into fuzz/seeds.py (offload_roundtrip_seeds takes the rng like the
others there)."""
import random
import struct

from seeds import write_corpus


TSO, CSUM, GRO = 0, 1, 2
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
TCP_WORDS = (0, 3, 3, 1, 2, 5, 8, 10)  # bits 5-7 of a spec's first byte
# TSO damage (bits 4-7 of byte 9)
VERSION, IHL, PROTOCOL, DATA_OFFSET, CUT, FLIP, CUT_HEADERS, LENGTH_FIELD = range(8, 16)
# GRO payloads, flags and changes
FULL, SHORT, EMPTY, OVER = 0, 5, 6, 7
F_PLAIN, F_PSH, F_FIN, F_BIT, F_RAW = 0, 4, 5, 6, 7
SEQ, ID_JUMP, IP_FIELD, TCP_FIELD, IP_OPTIONS, FRAGMENT, NOT_TCP, TRUNCATE = range(8, 16)


def spec(rng, v6=False, ip_words=0, tcp_words=3, flags=ACK) -> bytes:
    """8 bytes: family and option words, TCP flags, the fill seed, seq."""
    return bytes([int(v6) | ip_words << 1 | TCP_WORDS.index(tcp_words) << 5, flags]) + \
        struct.pack("<HI", rng.getrandbits(16), rng.getrandbits(32))


def hdr_len(v6, ip_words, tcp_words) -> int:
    return (40 if v6 else 20 + 4 * ip_words) + 20 + 4 * tcp_words


def tso(rng, v6=False, ip_words=0, tcp_words=3, flags=ACK | PSH, mss=1448, payload=10000,
        mtu=1500, first=0, from_end=False, max_=64, ecn=False, partial=True, other_family=False,
        damage=0, arg=0) -> bytes:
    gso = (3 if other_family else 0) | ecn << 2 | partial << 3 | damage << 4
    return bytes([TSO]) + spec(rng, v6, ip_words, tcp_words, flags) + bytes([gso]) + \
        struct.pack("<HHH", mss, payload, mtu) + bytes([first | from_end << 7, max_]) + \
        struct.pack("<H", arg)


def csum(rng, kind, v6=False, payload=0, start=0, offset=0, raw=b"") -> bytes:
    """kind 0 TCP, 1 UDP, 2 raw (the packet is raw, the field start+offset)"""
    return bytes([CSUM, kind]) + spec(rng, v6, 0, 3) + struct.pack("<HHH", payload, start,
                                                                    offset) + raw


def gro(rng, flows, ops) -> bytes:
    """flows: (v6, ip_words, tcp_words, flags, mss); ops: (flow, payload,
    flags, change, which, arg)"""
    out = bytearray([GRO, len(flows) - 1])
    for v6, ip_words, tcp_words, flags, mss in flows:
        out += spec(rng, v6, ip_words, tcp_words, flags) + struct.pack("<H", mss - 1)
    for flow, payload, flags, change, which, arg in ops:
        out += bytes([flow | payload << 2 | flags << 5, change | which << 4, arg])
    return bytes(out)


def run(flow, count, last=F_PSH):
    """count full segments of one flow, the last pushed"""
    return [(flow, FULL, F_PLAIN, 0, 0, 0)] * (count - 1) + [(flow, FULL, last, 0, 0, 0)]


def offload_roundtrip_seeds(rng) -> dict[str, bytes]:
    seeds = {}
    # TSO: typical super-packets, the mtu fitted exactly and one byte short
    seeds["tso-v4-1448"] = tso(rng)
    seeds["tso-v6-exact-mtu"] = tso(rng, v6=True, mss=1500 - hdr_len(True, 0, 3),
                                    payload=20000, partial=False)
    seeds["tso-v4-options-ecn"] = tso(rng, ip_words=2, tcp_words=5, flags=ACK | CWR | FIN | PSH,
                                      ecn=True, mss=536, payload=5000, mtu=1280)
    seeds["tso-v6-ecn-cwr"] = tso(rng, v6=True, flags=ACK | CWR | ECE | PSH, ecn=True,
                                  mss=1208, payload=4 * 1208, mtu=1280)
    seeds["tso-v4-jumbo"] = tso(rng, tcp_words=0, mss=8960, payload=65535 - 40, mtu=9000)
    seeds["tso-v6-no-payload"] = tso(rng, v6=True, flags=ACK | FIN, mss=1428, payload=0)
    seeds["tso-v4-tiny-mss"] = tso(rng, tcp_words=10, flags=ACK | URG | PSH, mss=7,
                                   payload=700, mtu=200, max_=5)
    seeds["tso-v4-last-two"] = tso(rng, first=2, from_end=True, max_=3, payload=9000)
    seeds["tso-v6-past-end"] = tso(rng, v6=True, first=0, from_end=True, mss=1428,
                                   payload=3000)
    seeds["tso-v4-mtu-one-short"] = tso(rng, mss=1448, mtu=hdr_len(False, 0, 3) + 1448 - 1)
    # malformed: refused whole
    seeds["tso-family-mismatch"] = tso(rng, v6=True, other_family=True)
    seeds["tso-mss-zero"] = tso(rng, mss=0)
    for name, damage, arg in (("version", VERSION, 5), ("data-offset", DATA_OFFSET, 4),
                              ("cut-headers", CUT_HEADERS, 3)):
        seeds[f"tso-bad-{name}"] = tso(rng, v6=damage % 2 == 0, payload=3000, damage=damage,
                                       arg=arg)
    # the IP length field is not what the segments' lengths come from
    seeds["tso-length-field"] = tso(rng, payload=3000, damage=LENGTH_FIELD, arg=1234)
    # checksum completion: TCP and UDP as the kernel leaves them, raw edges
    for kind, v6 in ((0, False), (0, True), (1, False), (1, True)):
        seeds[f"csum-{('tcp', 'udp')[kind]}{6 if v6 else 4}"] = csum(
            rng, kind, v6, payload=rng.randrange(1, 1500))
    body = rng.randbytes(61)
    seeds["csum-raw-edge"] = csum(rng, 2, start=20, offset=39, raw=body)  # field: last 2 bytes
    seeds["csum-raw-past"] = csum(rng, 2, start=20, offset=40, raw=body)  # one byte over
    # GRO: one flow, pushed at the end, as a bulk transfer writes it
    seeds["gro-v4-bulk"] = gro(rng, [(False, 0, 3, ACK, 1448)], run(0, 40))
    seeds["gro-v6-bulk"] = gro(rng, [(True, 0, 3, ACK, 1428)], run(0, 20) + run(0, 12))
    # two and four flows interleaved, short segments, bare ACKs, PSH mid-run
    ops = []
    for _ in range(12):
        flow = rng.randrange(2)
        ops += run(flow, rng.randrange(1, 6), last=rng.choice((F_PLAIN, F_PSH)))
        ops.append((flow, rng.choice((SHORT, EMPTY, OVER)), F_PLAIN, 0, 0, rng.getrandbits(8)))
    seeds["gro-two-flows"] = gro(rng, [(False, 0, 3, ACK, 1448), (True, 0, 0, ACK, 1000)], ops)
    flows = [(rng.random() < 0.5, 0, rng.choice(TCP_WORDS), ACK, rng.randrange(1, 1500))
             for _ in range(4)]
    ops = []
    while len(ops) < 120:
        flow = rng.randrange(4)
        ops += run(flow, rng.randrange(1, 8), last=rng.choice((F_PLAIN, F_PSH)))
        ops.append((flow, rng.choice((FULL, SHORT, EMPTY)), F_PLAIN, 0, 0, rng.getrandbits(8)))
    seeds["gro-four-flows"] = gro(rng, flows, ops)
    # the group limits: 64 segments, 65495 bytes
    seeds["gro-64-segments"] = gro(rng, [(False, 0, 0, ACK, 100)], run(0, 70))
    seeds["gro-bytes-limit"] = gro(rng, [(True, 0, 3, ACK, 9000)], run(0, 9))
    # flags that end a group, and headers that differ
    seeds["gro-flags"] = gro(rng, [(False, 0, 3, ACK, 500)], [
        (0, FULL, rng.choice((F_PLAIN, F_PLAIN, F_BIT, F_FIN, F_RAW)), 0, 0,
         rng.getrandbits(8)) for _ in range(60)])
    seeds["gro-changes"] = gro(rng, [(False, 0, 3, ACK, 700), (True, 0, 3, ACK, 700)], [
        (rng.randrange(2) if rng.random() < 0.2 else 0, FULL, F_PLAIN,
         rng.choice(range(8, 16)) if rng.random() < 0.25 else 0, rng.randrange(16),
         rng.getrandbits(8)) for _ in range(150)])
    return seeds


def main() -> None:
    write_corpus("offload_roundtrip", offload_roundtrip_seeds(random.Random(20261207)))

if __name__ == "__main__":
    main()
