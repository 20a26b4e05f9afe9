"""Seeds of the bulk NDJSON harness (fuzz/bulk_ndjson.c): POST /v1/bulk
bodies of the four operations, valid and not, behind the harness's
three-byte header. Deterministic for a given rng; run it to write
fuzz/corpus/bulk_ndjson/ (fuzz/seeds.py may call bulk_ndjson_seeds
instead)."""
import base64
import json
import random
import struct

from seeds import write_corpus


# the harness's option byte
FAIL_ON_ID = 1      # a new peer's id is one in use: the apply fails there
FAIL_ON_INDEX = 2   # a session's index is taken first: the apply fails before anything
LOW_ORDER_KEY = "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc="  # of order 8
BASE_PREFIX = "10.255.1.0/24"  # a peer the harness's device has holds it


def header(options: int = 0, split: float = 0.5) -> bytes:
    return bytes([options]) + struct.pack("<H", min(int(split * 65536), 65535))


def key(rng) -> str:
    return base64.b64encode(rng.randbytes(32)).decode()


def line(fields: dict) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def session(rng, index: int, full: bool = True) -> dict:
    s = {"receiver_index": index, "sender_index": rng.randrange(1 << 32),
         "send_key": key(rng), "receive_key": key(rng)}
    if full:
        s.update(lifetime=rng.randint(1, 180), activate=rng.choice(["now", "on_receive"]),
                 generation=rng.randrange(1 << 20))
    return s


def v4(rng) -> str:
    return ".".join(str(rng.randrange(256)) for _ in range(4))


def v6(rng) -> str:
    return ":".join(f"{rng.randrange(1 << 16):x}" for _ in range(8))


def put_peer(rng, n_ips: int = 2, with_session: bool = False, index: int = 1) -> bytes:
    ips = [f"{v4(rng)}/{rng.randint(0, 32)}" if rng.random() < 0.5
           else f"{v6(rng)}/{rng.randint(0, 128)}" for _ in range(n_ips)]
    fields = {"op": "put_peer", "public_key": key(rng), "preshared_key": key(rng),
              "allowed_ips": ips,
              "endpoint": rng.choice([f"{v4(rng)}:{rng.randint(1, 65535)}",
                                      f"[{v6(rng)}]:51820", f"[::ffff:{v4(rng)}]:7"]),
              "persistent_keepalive": rng.choice([0, 25, 65535]),
              "generation": rng.randrange(1 << 40), "replace": rng.random() < 0.5}
    if with_session:
        fields["session"] = session(rng, index)
    return line(fields)


def put_session(rng, index: int) -> bytes:
    return line({"op": "put_session", "public_key": key(rng), **session(rng, index)})


def delete(rng, op: str = "delete_peer") -> bytes:
    return line({"op": op, "public_key": key(rng), "generation": rng.randrange(1 << 62)})


def bulk_ndjson_seeds(rng) -> dict[str, bytes]:
    seeds = {}
    mixed = [put_peer(rng), put_peer(rng, 0, True, 7), put_session(rng, 8), delete(rng),
             delete(rng, "delete_session"), put_peer(rng, 1)]
    seeds["mixed"] = header() + b"\n".join(mixed) + b"\n"
    seeds["mixed-crlf"] = header(split=0.3) + b"\r\n".join(mixed) + b"\r\n"
    seeds["blank-lines"] = header(split=0.7) + b"\n".join(
        [b"", b" \t\r\v\f", mixed[0], b"\r", b"", mixed[2], b"\f", b""])
    seeds["no-newline-at-end"] = header() + mixed[1] + b"\n" + mixed[3]
    seeds["minimal"] = header() + line({"op": "put_peer", "public_key": key(rng)})
    seeds["nulls-and-spaces"] = header() + (
        b' { "op" : "put_peer" ,\t"public_key":"%s", "preshared_key":null, "endpoint":null, '
        b'"session":null, "generation":null, "allowed_ips":[ ] }\r' % key(rng).encode())
    seeds["zero-psk-edges"] = header() + line(
        {"op": "put_peer", "public_key": key(rng), "preshared_key": base64.b64encode(
            bytes(32)).decode(), "allowed_ips": ["0.0.0.0/0", "::/0", "::1.2.3.4/128",
                                                 "1:2:3:4:5:6:1.2.3.4/97", "FFFF::/016"],
         "endpoint": "1.2.3.4:0000051820", "persistent_keepalive": 65535})
    # repeats past the 16 compared one by one (the hash table's path)
    many = [f"10.{i}.{rng.randrange(256)}.0/{rng.choice((20, 24, 30))}" for i in range(24)]
    many += [rng.choice(many) for _ in range(16)] + ["fd00::1/64", "fd00::2/64"]
    seeds["many-prefixes"] = header(split=0.2) + line(
        {"op": "put_peer", "public_key": key(rng), "allowed_ips": many}) + b"\n" + put_peer(rng)
    # the limit counts repeats: 1024 accepted, 1025 declined (long lines)
    for n in (1024, 1025):
        seeds[f"prefixes-{n}"] = header() + line(
            {"op": "put_peer", "public_key": key(rng), "allowed_ips": ["::"] * n})
    sessions = [put_peer(rng, 1, True, 100 + i) for i in range(13)]
    seeds["sessions-past-max"] = header(split=0.5) + b"\n".join(sessions)
    seeds["fail-on-id"] = header(FAIL_ON_ID | 2 << 2) + b"\n".join(mixed)
    seeds["fail-on-index"] = header(FAIL_ON_INDEX) + b"\n".join(mixed)
    seeds["base-prefix"] = header() + line(
        {"op": "put_peer", "public_key": key(rng), "allowed_ips": [BASE_PREFIX]}) + b"\n" + \
        put_peer(rng)
    seeds["same-index-twice"] = header() + put_peer(rng, 1, True, 9) + b"\n" + put_session(rng, 9)
    # declined: at the first bad line, for each kind of reason
    bad = {
        "unknown-field": line({"op": "delete_peer", "public_key": key(rng), "bogus": 1}),
        "repeated-field": b'{"op":"delete_peer","op":"delete_peer","public_key":"%s"}'
                          % key(rng).encode(),
        "key-padding": line({"op": "delete_peer", "public_key": key(rng)[:42] + "B="}),
        "low-order": line({"op": "delete_peer", "public_key": LOW_ORDER_KEY}),
        "escape": b'{"op":"put\\u005fpeer","public_key":"%s"}' % key(rng).encode(),
        "float": line({"op": "put_peer", "public_key": key(rng), "persistent_keepalive": 2.5}),
        "lifetime": line({"op": "put_session", "public_key": key(rng),
                          **session(rng, 3), "lifetime": 181}),
        "endpoint": line({"op": "put_peer", "public_key": key(rng), "endpoint": "[::1]:65536"}),
        "prefix": line({"op": "put_peer", "public_key": key(rng), "allowed_ips": ["1.2.3.4/33"]}),
        "nul": b"\0",
    }
    for name, text in bad.items():
        at = rng.randrange(len(mixed) + 1)
        body = mixed[:at] + [text] + mixed[at:]
        seeds[f"bad-{name}"] = header(split=rng.random()) + b"\n".join(body) + b"\n"
    seeds["empty"] = header()
    return seeds


def main() -> None:
    write_corpus("bulk_ndjson", bulk_ndjson_seeds(random.Random(20261206)))

if __name__ == "__main__":
    main()
