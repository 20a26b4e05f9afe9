"""Writes the seed corpora of the first fuzz harnesses (fuzz/corpus/*; the
later ones have fuzz/seeds_NAME.py, which use write_corpus from here), from
the wire format and the profiles the tests use: run it again when a
harness's input layout changes. Deterministic (a fixed random seed), so
the committed files only change when this script does."""
import random
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = (148, 92, 64, 32)  # initiation, response, cookie reply, transport (empty)


def wire_bytes(pads=(0, 0, 0, 0), lo=(1, 2, 3, 4), hi=(1, 2, 3, 4), obfuscated=False,
               accept_plain=False) -> bytes:
    """struct dp_wire (native/wg/dp_wg_messages.h), little-endian."""
    return struct.pack("<4I4I4I4B", *pads, *lo, *hi, int(obfuscated), int(accept_plain), 0, 0)


def message(rng, kind, pad, header, extra=0) -> bytes:
    body = rng.randbytes(BASE[kind] - 4 + extra)
    return rng.randbytes(pad) + struct.pack("<I", header) + body


def wire_classify_seeds(rng) -> dict[str, bytes]:
    seeds = {}
    plain = wire_bytes()
    fixed = dict(pads=(17, 23, 9, 3), lo=(1322545867, 2079419829, 864123995, 3355713651),
                 hi=(1322545867, 2079419829, 864123995, 3355713651), obfuscated=True)
    ranges = dict(pads=(77, 31, 25, 13), lo=(100000000, 200000000, 300000000, 400000000),
                  hi=(100999999, 200000063, 300999999, 499999999), obfuscated=True)
    for name, prof in (("fixed", fixed), ("ranges", ranges)):
        for accept in (False, True):
            w = wire_bytes(**prof, accept_plain=accept)
            tag = f"{name}{'-plain' if accept else ''}"
            for k in range(4):
                seeds[f"{tag}-kind{k + 1}"] = w + message(
                    rng, k, prof["pads"][k], prof["lo"][k], extra=96 if k == 3 else 0)
                seeds[f"{tag}-plain{k + 1}"] = w + message(rng, k, 0, k + 1)
            seeds[f"{tag}-junk"] = w + rng.randbytes(rng.randrange(1, 300))
    for k in range(4):
        seeds[f"plain-kind{k + 1}"] = plain + message(rng, k, 0, k + 1, extra=16 if k == 3 else 0)
    seeds["plain-short"] = plain + b"\x04\x00"
    seeds["plain-empty"] = plain
    return seeds


OBFUSCATION_SEEDS = {
    "fixed": "Jc = 3\nJmin = 10\nJmax = 50\nS1 = 17\nS2 = 23\nS3 = 9\nS4 = 3\n"
             "H1 = 1322545867\nH2 = 2079419829\nH3 = 864123995\nH4 = 3355713651\n",
    "ranges": "Jc = 5\nJmin = 40\nJmax = 970\nS1 = 77\nS2 = 31\nS3 = 25\nS4 = 13\n"
              "H1 = 100000000-100999999\nH2 = 200000000-200000063\n"
              "H3 = 300000000-300999999\nH4 = 400000000-499999999\n"
              "I1 = <b 0xc0ffee17><r 12><t>\nI2 = <rc 20><rd 8>\nI3 = <r 64>\n",
    "server": "S1 = 15\nS2 = 18\nS3 = 20\nS4 = 8\nH1 = 1000000-1000999\n"
              "H2 = 2000000-2000999\nH3 = 3000000-3000999\nH4 = 4000000-4000999\n",
    "signatures": "I1 = <b 0x0102030405060708090a><r 3><rc 4><rd 5><t>\nI2 = <t><t>\n"
                  "I4 = <b 0xff>\nI5 = <r 1000>\n",
    "bad-overlap": "H1 = 5-10\nH2 = 10-20\n",
    "bad-tag": "I1 = <b 0xzz><x 3>\nJc = 200\n",
    "plain": "jc = 0\nh1 = 1\nh2 = 2\nh3 = 3\nh4 = 4\n",
}


def replay_window_seeds(rng) -> dict[str, bytes]:
    """A window byte, then 9-byte operations (kind, 8 bytes of value)."""
    def ops(kinds, value=lambda: rng.getrandbits(64)):
        return b"".join(bytes([k]) + struct.pack("<Q", value()) for k in kinds)
    seeds = {}
    for w in range(4):
        seeds[f"in-order-{1024 << w}"] = bytes([w]) + ops([0] * 64, lambda: 1)
        seeds[f"reordered-{1024 << w}"] = bytes([w]) + ops(
            [rng.choice((0, 1)) for _ in range(200)], lambda: rng.randrange(1 << 14))
        seeds[f"jumps-{1024 << w}"] = bytes([w | 4]) + ops(
            [rng.choice((0, 1, 2, 3, 4, 5)) for _ in range(200)])
    return seeds


def allowed_ips_seeds(rng) -> dict[str, bytes]:
    """20-byte operations: kind, family/stem, length, peer, 16 address bytes."""
    def op(kind, fam, stem, cidr, peer):
        return bytes([kind, fam | stem << 1, cidr, peer]) + rng.randbytes(16)
    seeds = {}
    for fam in (0, 1):
        bits = 32 if fam == 0 else 128
        nested = [op(0, fam, 0, c, c % 8) for c in range(0, bits + 1, 4)]
        seeds[f"nested-{bits}"] = b"".join(nested + [op(3, fam, 0, c, 0) for c in (8, 24, bits)])
        mixed = [op(rng.randrange(4), fam, rng.randrange(4), rng.randrange(bits + 2),
                    rng.randrange(8)) for _ in range(150)]
        seeds[f"mixed-{bits}"] = b"".join(mixed)
    return seeds


def write_corpus(name: str, seeds: dict[str, bytes | str]) -> None:
    """Seeds as the files of fuzz/corpus/NAME."""
    out = HERE / "corpus" / name
    out.mkdir(parents=True, exist_ok=True)
    for seed, data in seeds.items():
        if isinstance(data, str):
            (out / seed).write_text(data)
        else:
            (out / seed).write_bytes(data)


def main() -> None:
    rng = random.Random(20261205)
    write_corpus("wire_classify", wire_classify_seeds(rng))
    write_corpus("replay_window", replay_window_seeds(rng))
    write_corpus("allowed_ips", allowed_ips_seeds(rng))
    write_corpus("obfuscation_settings", OBFUSCATION_SEEDS)

if __name__ == "__main__":
    main()
