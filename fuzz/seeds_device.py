"""Seeds of the device receive path harness (fuzz/device_rx.c), written to
fuzz/corpus/device_rx: run it again when the harness's input layout
changes. Deterministic (a fixed random seed), so the committed files only
change when this script does.

    .venv/bin/python fuzz/seeds_device.py

The layout (fuzz/device_rx.c's header comment has it in full): 4 header
bytes (device and wire profile; each peer's keypairs), then operations by
their first byte % 8: 0-3 a message sealed by the harness (20 bytes), 4 raw
bytes (12 + L), 5 end of a burst and its source (20), 6 an Ethernet frame
for the outer parse (20), 7 a copy of an earlier datagram (3).
"""
from __future__ import annotations

import random
import struct

from seeds import write_corpus

BURST = 64  # DP_DEVICE_BURST

# wire profiles (the harness's `profiles`)
PLAIN, FIXED, FIXED_ACCEPT_PLAIN, RANGES = range(4)
# counter modes
NEXT, SENT_BEFORE, WINDOW_EDGE, JUMP, REJECT_LIMIT, ANY, REORDER, SAME_AGAIN = range(8)
# inner packets: protocols and how they are broken
UDP, TCP, TCP_PSH, OTHER = range(4)
SOUND, LONGER, VERSION, HEADER_LENGTH = range(4)
# OTHER's kinds, in the size's low 2 bits
KEEPALIVE, JUNK, ICMP, JUMBO = range(4)
# mutations (below 10: none)
NONE, FLIP, TRUNCATE, EXTEND, HEADER_FLIP, TYPE_FIELD, PADDING_FLIP = 0, 10, 11, 12, 13, 14, 15
# address stems (the harness's `stems`): IPv4 0 = 10.0.0.h (peer 0 below .128,
# peer 1 above), 1 = 10.0.1.h (peer 1), 2 = 10.2.h.h (peer 2), 4 = 10.3.h.h
# (nobody); IPv6 0 = fd00::h (peer 0), 1 = fd00:1::h (peer 1), 3 =
# 2001:db8::h (peer 2), 5 = fe80::h (nobody)
OWN_STEM = {False: {0: 0, 1: 1, 2: 2}, True: {0: 0, 1: 1, 2: 3}}
NOBODY = {False: 4, True: 5}


def header(device=0, profile=PLAIN, peers=((1, 0, 0, 0),) * 3) -> bytes:
    """peers: per peer (keypairs 0..3, responder bits, the last one's age
    0..3 (2: 170 s, 3: 190 s), earlier ones 190 s old)."""
    out = [device | profile << 1]
    for count, responders, age, old in peers:
        out.append(count | responders << 2 | age << 5 | old << 7)
    return bytes(out)


class Input:
    def __init__(self, rng: random.Random, **kw):
        self.rng = rng
        self.data = bytearray(header(**kw))

    def sealed(self, peer=0, slot=0, fmt=0, counter=NEXT, value=0, v6=False, stem=None,
               proto=UDP, bad=SOUND, size=100, host=None, mutation=NONE, mparam=0, obf=0):
        if stem is None:
            stem = OWN_STEM[v6][peer]
        if host is None:
            host = self.rng.randrange(1, 100)
        self.data += bytes([self.rng.randrange(4) | self.rng.randrange(32) << 3,
                            peer | slot << 2 | fmt << 4, counter])
        self.data += struct.pack("<QBHHBHB", value, int(v6) | stem << 1 | proto << 4 | bad << 6,
                                 size, host, mutation, mparam, obf)

    def raw(self, body: bytes, prefix=0, peer=0, slot=0, counter=0):
        self.data += bytes([4 | self.rng.randrange(32) << 3, len(body), prefix,
                            peer | slot << 2]) + struct.pack("<Q", counter) + body

    def end(self, address: bytes, port: int):
        v6 = len(address) == 16
        self.data += bytes([5, int(v6)]) + address.ljust(16, b"\0") + struct.pack("<H", port)

    def frame(self, v6=False, vlan=False, qinq=False, options=0, checksum=0, corrupt=0,
              param=0, payload=60, trailing=0, sport=4321, ext=b"\0" * 6):
        desc = int(v6) | int(vlan) << 1 | int(qinq) << 2 | options << 3 | checksum << 6
        self.data += bytes([6, desc, corrupt]) + struct.pack(
            "<HHB4sH", param, payload, trailing, self.rng.randbytes(4), sport) + ext

    def dup(self, which: int):
        self.data += bytes([7]) + struct.pack("<H", which)

    def bytes(self) -> bytes:
        return bytes(self.data)


def device_rx_seeds(rng: random.Random) -> dict[str, bytes]:
    seeds = {}
    v4, v6 = bytes([198, 51, 100, 7]), bytes.fromhex("20010db8000000000000000000000042")

    for device, name in ((0, "plain"), (1, "vnet")):
        # in order: every message delivered
        s = Input(rng, device=device)
        for i in range(24):
            s.sealed(peer=i % 3, v6=bool(i & 4), size=rng.randrange(60, 1400))
        seeds[f"{name}-in-order"] = s.bytes()
        # a GRO-like burst: 64 segments of one TCP flow; then two IPv6
        # flows one after the other, one cut by a short segment, and two
        # interleaved
        s = Input(rng, device=device)
        for i in range(BURST):
            s.sealed(proto=TCP_PSH if i == BURST - 1 else TCP, host=0)
        for i in range(BURST):
            s.sealed(peer=1, v6=True, proto=TCP, host=i >= 32,
                     size=0x8000 | 300 if i in (20, 50) else 0)
        for i in range(BURST):
            s.sealed(peer=2, proto=TCP_PSH if i % 9 == 8 else TCP, host=i & 1)
        seeds[f"{name}-gro-burst"] = s.bytes()
        # jumbo packets, a full burst of them
        s = Input(rng, device=device)
        for i in range(BURST):
            s.sealed(peer=i % 3, v6=bool(i & 1), proto=OTHER,
                     size=JUMBO | rng.randrange(1400, 8000) << 2)
        seeds[f"{name}-jumbo"] = s.bytes()

    # replays: in the same burst, in a later one, exact copies
    s = Input(rng)
    for i in range(16):
        s.sealed(size=80 + i)
    for i in range(8):
        s.sealed(counter=SENT_BEFORE, value=rng.getrandbits(64))
    s.end(v4, 51820)
    for i in range(8):
        s.dup(rng.randrange(16))
        s.sealed(counter=SAME_AGAIN)
    seeds["replays"] = s.bytes()
    # the window's edge: a jump, then counters around `window` below it
    s = Input(rng, peers=((1, 0, 0, 0), (2, 0, 0, 0), (0, 0, 0, 0)))
    for peer in (0, 1):
        s.sealed(peer=peer, counter=JUMP, value=3000)
        for i in range(12):
            s.sealed(peer=peer, counter=WINDOW_EDGE, value=i)
            s.sealed(peer=peer, counter=REORDER, value=rng.randrange(64))
        s.sealed(peer=peer, slot=1, counter=JUMP, value=4999)
    seeds["window-edge"] = s.bytes()
    # the reject limit, and any counter
    s = Input(rng)
    for i in range(8):
        s.sealed(counter=REJECT_LIMIT, value=i)
        s.sealed(counter=ANY, value=rng.getrandbits(64))
    seeds["reject-limit"] = s.bytes()
    # indices: never installed, installed on another peer, not installed yet
    s = Input(rng, peers=((1, 0, 0, 0), (3, 0, 0, 0), (0, 0, 0, 0)))
    for i in range(6):
        s.sealed(peer=i % 3, slot=3)
        s.sealed(peer=2)
        s.sealed(peer=0, slot=2)
        s.sealed(peer=1, slot=i % 3)
    seeds["wrong-index"] = s.bytes()
    # mutated after sealing
    s = Input(rng)
    for mutation in (FLIP, TRUNCATE, EXTEND, HEADER_FLIP, TYPE_FIELD, PADDING_FLIP) * 3:
        s.sealed(mutation=mutation, mparam=rng.getrandbits(16), obf=rng.getrandbits(8))
        s.sealed()
    seeds["mutated"] = s.bytes()
    # sources outside the peer's allowed IPs, by family
    s = Input(rng)
    for i in range(16):
        six = bool(i & 1)
        s.sealed(peer=i % 3, v6=six, stem=rng.choice((NOBODY[six], OWN_STEM[six][(i + 1) % 3],
                                                      rng.randrange(8))),
                 host=rng.getrandbits(16))
    # and allowed, as the longest prefix says: 10.2.3.4/32 (peer 0) inside
    # 10.2.0.0/16 (peer 2), 10.0.0.128/25 (peer 1) inside 10.0.0.0/24 (peer 0)
    s.sealed(peer=0, stem=3, host=4)
    s.sealed(peer=1, stem=0, host=200)
    seeds["not-allowed"] = s.bytes()
    # broken inner packets, junk, keepalives
    s = Input(rng)
    for bad in (LONGER, VERSION, HEADER_LENGTH):
        for six in (False, True):
            s.sealed(v6=six, bad=bad, host=rng.getrandbits(16))
    for kind in (KEEPALIVE, JUNK, ICMP):
        s.sealed(proto=OTHER, size=kind | rng.randrange(64) << 2)
        s.sealed(proto=OTHER, v6=True, size=kind | rng.randrange(64) << 2)
    seeds["inner-malformed"] = s.bytes()
    # keypairs: a responder's is confirmed by its first data; an initiator's
    # 170 s old asks for a handshake; 190 s old is expired
    s = Input(rng, peers=((2, 0b10, 0, 0), (1, 0b1, 0, 0), (3, 0, 2, 1)))
    for i in range(4):
        s.sealed(peer=0, slot=0)
        s.sealed(peer=0, slot=1)
        s.sealed(peer=1, slot=0)
        s.sealed(peer=2, slot=2)
        s.sealed(peer=2, slot=i % 2)
    seeds["keypair-roles-and-ages"] = s.bytes()
    s = Input(rng, peers=((3, 0b110, 0, 0), (3, 0b011, 0, 0), (2, 0b11, 3, 0)))
    for i in range(12):
        s.sealed(peer=i % 3, slot=rng.randrange(3), size=rng.randrange(40, 300))
    seeds["keypair-rotations"] = s.bytes()

    # AmneziaWG profiles: their own format, plain, and the other one
    for profile, name in ((FIXED, "fixed"), (FIXED_ACCEPT_PLAIN, "fixed-accept-plain"),
                          (RANGES, "ranges")):
        s = Input(rng, profile=profile)
        for i in range(20):
            s.sealed(peer=i % 3, fmt=rng.choice((0, 0, 2, 3)), obf=rng.getrandbits(8),
                     mutation=rng.choice((NONE,) * 4 + (TYPE_FIELD, PADDING_FLIP)),
                     mparam=rng.getrandbits(16))
        s.raw(rng.randbytes(40), prefix=2)
        s.raw(rng.randbytes(60), prefix=1)
        seeds[f"obfuscated-{name}"] = s.bytes()

    # plain messages whose bytes at S4 fall in H4: they read as obfuscated
    # transport messages with an index nobody holds, and are read again
    # as plain (handshakes, and data of a live index)
    s = Input(rng, profile=RANGES)
    h4 = struct.pack("<I", 450000000)
    for i in range(12):
        body = bytearray(rng.randbytes((144, 88, 60)[i % 3]))
        body[9:13] = h4
        s.raw(bytes(body), prefix=3, counter=i % 3)
    for i in range(6):
        # bytes 13..16: the counter's top three, then the first of the body
        s.raw(h4[3:] + rng.randbytes(60), prefix=1, peer=i % 3,
              counter=(450000000 & 0xffffff) << 40 | rng.getrandbits(40))
        s.sealed(peer=i % 3, fmt=2, counter=ANY, value=(450000000 & 0xffffff) << 40 | i)
    seeds["obfuscated-plain-lookalikes"] = s.bytes()

    # roaming: bursts from several sources, IPv4 and IPv6
    s = Input(rng)
    for address, port in ((v4, 1000), (v6, 2000), (v4, 3000), (bytes(4), 0)):
        for i in range(5):
            s.sealed(peer=i % 3)
        s.raw(rng.randbytes(50), prefix=1)
        s.end(address, port)
    seeds["roaming"] = s.bytes()
    # handshake messages: more than the event ring leaves them
    s = Input(rng, peers=((0, 0, 0, 0),) * 3)
    for i in range(BURST):
        s.raw(rng.randbytes((144, 88, 60)[i % 3]), prefix=3, counter=i % 3)
    seeds["handshake-flood"] = s.bytes()
    # raw junk of every shape
    s = Input(rng)
    for i in range(24):
        s.raw(rng.randbytes(rng.randrange(0, 120)), prefix=rng.randrange(4),
              peer=rng.randrange(3), counter=rng.getrandbits(64))
    seeds["raw-junk"] = s.bytes()

    # WAN frames: well-formed of every kind and checksum, then corrupted
    s = Input(rng)
    for six in (False, True):
        for vlan in (False, True):
            for checksum in range(4):
                s.frame(v6=six, vlan=vlan, qinq=checksum == 1, options=rng.randrange(4),
                        checksum=checksum, payload=rng.randrange(0, 1400),
                        trailing=rng.randrange(0, 8), ext=rng.randbytes(6))
    seeds["frames"] = s.bytes()
    s = Input(rng)
    for corrupt in range(6, 16):
        for six in (False, True):
            s.frame(v6=six, options=rng.randrange(3), corrupt=corrupt,
                    param=rng.getrandbits(16), payload=rng.randrange(0, 200),
                    ext=rng.randbytes(6))
    seeds["frames-corrupt"] = s.bytes()

    # everything at once
    for device in (0, 1):
        s = Input(rng, device=device, profile=rng.randrange(4),
                  peers=[(rng.randrange(4), rng.randrange(8), rng.randrange(4), 0)
                         for _ in range(3)])
        for _ in range(80):
            what = rng.randrange(10)
            if what < 6:
                s.sealed(peer=rng.randrange(3), slot=rng.randrange(4), fmt=rng.randrange(4),
                         counter=rng.randrange(8), value=rng.getrandbits(16),
                         v6=rng.random() < 0.5, stem=rng.randrange(8), proto=rng.randrange(4),
                         bad=rng.choice((0, 0, 0, 1, 2, 3)), size=rng.getrandbits(16),
                         host=rng.getrandbits(16), mutation=rng.randrange(16),
                         mparam=rng.getrandbits(16), obf=rng.getrandbits(8))
            elif what == 6:
                s.raw(rng.randbytes(rng.randrange(100)), prefix=rng.randrange(4))
            elif what == 7:
                s.end(rng.randbytes(rng.choice((4, 16))), rng.getrandbits(16))
            elif what == 8:
                s.frame(v6=rng.random() < 0.5, options=rng.randrange(8),
                        checksum=rng.randrange(4), corrupt=rng.randrange(16),
                        param=rng.getrandbits(16), payload=rng.randrange(300))
            else:
                s.dup(rng.getrandbits(16))
        seeds[f"mixed-{('plain', 'vnet')[device]}"] = s.bytes()
    return seeds


def main() -> None:
    write_corpus("device_rx", device_rx_seeds(random.Random(20261206)))

if __name__ == "__main__":
    main()
