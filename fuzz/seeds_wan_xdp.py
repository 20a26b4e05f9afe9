"""Writes the seed corpus of the WAN XDP program harness (fuzz/wan_xdp.c)
to fuzz/corpus/wan_xdp: run it again when the harness's input layout
changes. Deterministic (a fixed random seed), so the committed files only
change when this script does."""
import random
import struct

from seeds import BASE, write_corpus

# header byte 0
OBF, ACCEPT, SOCKET, RATELIMIT, REST, RAW, V6, NOT_LOCAL = (1 << i for i in range(8))
# header byte 1
VLAN, OTHER_PORT, NOT_UDP, CUT = 1, 0x20, 0x40, 0x80
SHORT, LONG, ANY = 1, 2, 3          # length modes (IP: << 1, UDP: << 3)

FIXED = dict(pads=(17, 23, 9, 3), lo=(1322545867, 2079419829, 864123995, 3355713651),
             spans=(0, 0, 0, 0))
RANGES = dict(pads=(77, 31, 25, 13), lo=(100000000, 200000000, 300000000, 400000000),
              spans=(999, 63, 999, 65535))
PLAIN = dict(pads=(0, 0, 0, 0), lo=(0, 0, 0, 0), spans=(0, 0, 0, 0))


def header(f0=0, f1=0, f2=0, arrivals=1, step=0, delta=0, src=7, prof=PLAIN,
           sigs=()) -> bytes:
    """The harness's 94 header bytes. sigs: (length, prefix bytes)."""
    h = bytes([f0, f1, f2, (arrivals - 1) | step << 3, delta, src])
    h += struct.pack("<4H", *prof["pads"]) + struct.pack("<4I", *prof["lo"])
    h += struct.pack("<4H", *prof["spans"])
    h += bytes([len(sigs)])
    for i in range(5):
        length, prefix = sigs[i] if i < len(sigs) else (0, b"")
        h += struct.pack("<HB", length, len(prefix)) + prefix.ljust(8, b"\0")
    assert len(h) == 94
    return h


def message(rng, kind, pad=0, word=None, extra=0) -> bytes:
    """Kind 0..3 (initiation .. transport), behind `pad` random bytes, its
    type field `word` (the plain type by default)."""
    word = kind + 1 if word is None else word
    return rng.randbytes(pad) + struct.pack("<I", word) + rng.randbytes(BASE[kind] - 4 + extra)


def wan_xdp_seeds(rng) -> dict[str, bytes]:
    seeds = {}
    for v6 in (0, V6):
        fam = "v6" if v6 else "v4"
        for k in range(4):
            extra = 64 if k == 3 else 0
            seeds[f"{fam}-plain-kind{k + 1}"] = header(v6 | SOCKET) + message(rng, k, extra=extra)
            seeds[f"{fam}-plain-kind{k + 1}-vlan-nosocket"] = header(v6, VLAN) + \
                message(rng, k, extra=extra)
        for name, prof in (("fixed", FIXED), ("ranges", RANGES)):
            for accept in (0, ACCEPT):
                tag = f"{fam}-{name}{'-plain' if accept else ''}"
                for k in range(4):
                    seeds[f"{tag}-kind{k + 1}"] = header(v6 | OBF | accept | SOCKET, prof=prof) + \
                        message(rng, k, prof["pads"][k], prof["lo"][k] + prof["spans"][k] // 2,
                                extra=80 if k == 3 else 0)
                    seeds[f"{tag}-plain{k + 1}"] = header(v6 | OBF | accept | SOCKET, prof=prof) + \
                        message(rng, k, extra=48 if k == 3 else 0)
                seeds[f"{tag}-junk"] = header(v6 | OBF | accept, prof=prof) + \
                    rng.randbytes(rng.randrange(1, 300))
        # handshake floods: eight arrivals, back to back or 10 ms apart
        for step in (0, 1, 5):
            seeds[f"{fam}-flood-step{step}"] = header(v6 | SOCKET | RATELIMIT, arrivals=8,
                                                      step=step) + message(rng, 0)
            seeds[f"{fam}-flood-obfuscated-step{step}"] = header(
                v6 | SOCKET | RATELIMIT | OBF, arrivals=8, step=step, prof=FIXED) + \
                message(rng, 1, FIXED["pads"][1], FIXED["lo"][1])
        seeds[f"{fam}-flood-resting"] = header(v6 | RATELIMIT | REST, arrivals=8) + message(rng, 2)
        # signatures of the interface's own I1..I5
        sig = rng.randbytes(120)
        seeds[f"{fam}-signature"] = header(v6 | OBF, prof=RANGES, sigs=[(120, sig[:8]),
                                                                         (44, b"\x16\x03")]) + sig
        # what is not ours, or not whole, or broken
        seeds[f"{fam}-other-port"] = header(v6, OTHER_PORT) + message(rng, 3, extra=16)
        seeds[f"{fam}-not-local"] = header(v6 | NOT_LOCAL) + message(rng, 0)
        seeds[f"{fam}-not-udp"] = header(v6, NOT_UDP) + rng.randbytes(40)
        seeds[f"{fam}-ip-short"] = header(v6, SHORT << 1, delta=9) + message(rng, 1)
        seeds[f"{fam}-ip-long"] = header(v6, LONG << 1, delta=9) + message(rng, 1)
        seeds[f"{fam}-udp-short"] = header(v6, SHORT << 3, delta=3) + message(rng, 2)
        seeds[f"{fam}-udp-long"] = header(v6, LONG << 3, delta=3) + message(rng, 2)
        seeds[f"{fam}-udp-tiny"] = header(v6, ANY << 3, delta=0) + message(rng, 2)
        seeds[f"{fam}-cut"] = header(v6, CUT, delta=50) + message(rng, 0)
        seeds[f"{fam}-truncated-wg"] = header(v6) + b"\x04\x00"
        seeds[f"{fam}-bad-type"] = header(v6) + message(rng, 1, word=7)
        seeds[f"{fam}-bad-size"] = header(v6) + message(rng, 0, extra=1)
        for frag in (1, 2, 3):
            seeds[f"{fam}-fragment{frag}"] = header(v6, f2=frag << 4) + message(rng, 0)
    for words in (1, 10):
        seeds[f"v4-options{words}"] = header(SOCKET, f2=words) + message(rng, 3, extra=32)
    for n, longer in ((1, 0), (3, 8), (6, 0), (7, 8)):
        seeds[f"v6-ext{n}{'-long' if longer else ''}"] = header(V6 | SOCKET, f2=n | longer) + \
            message(rng, 3, extra=32)
    # whole frames as they are
    seeds["raw-arp"] = header(RAW) + bytes(12) + b"\x08\x06" + rng.randbytes(28)
    seeds["raw-short"] = header(RAW) + rng.randbytes(10)
    seeds["raw-qinq"] = header(RAW) + bytes(12) + b"\x88\xa8\x00\x07\x81\x00" + rng.randbytes(60)
    return seeds


def main() -> None:
    write_corpus("wan_xdp", wan_xdp_seeds(random.Random(20261206)))


if __name__ == "__main__":
    main()
