"""POST /v1/bulk's native parser (native/wg/bulk.c) against the model
(dataplane.api.model.bulk_line), which decides what a line means.

Random valid lines of the four operations must be accepted and read as
the model reads them, digests included. Mutated lines may be declined
for any reason, but a line the parser accepts must be one the model
accepts with the same meaning, a line the model refuses must be
declined, and a plain line (no escapes, signs, fractions or repeated
fields) the model accepts must be accepted. Then whole bodies: blank
lines, line numbers, one bad line declining everything, a large batch."""
import base64
import ipaddress
import json
import random
import socket

import orjson
import pytest

from dataplane._native import ffi, lib
from dataplane.api import bulk, model
from dataplane.keys import LOW_ORDER_POINTS

DIGEST_KEY = bytes(range(32))
GEN_MAX = model.GENERATION_MAX
INDEX_MAX = model.INDEX_MAX
LIFETIME_MAX = lib.DP_BULK_LIFETIME_MAX


# ---------------------------------------------------------------- the two readers

def model_ops(body: bytes):
    """What the API's model path makes of a body (as server._bulk splits
    it): the operations, or None when it refuses the body."""
    ops = []
    for number, raw in enumerate(body.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            ops.append(model.bulk_line(orjson.loads(raw), number))
        except Exception:
            return None
    return ops or None


def plain(body: bytes) -> bool:
    """Whether every line has only the shapes the parser promises to read:
    no string escapes, no signs, no fractions or exponents, each field
    once. (Called only on bodies the model accepted, so valid JSON.)"""
    if b"\\" in body or b"-" in body:
        return False
    repeated = floats = False

    def pairs(items):
        nonlocal repeated
        repeated |= len({k for k, _ in items}) != len(items)
        return dict(items)

    def on_float(text):
        nonlocal floats
        floats = True
        return float(text)

    for raw in body.split(b"\n"):
        if raw.strip():
            json.loads(raw, object_pairs_hook=pairs, parse_float=on_float)
    return not (repeated or floats)


def assert_same_session(parsed, i, s: model.SessionSpec, generation_flag: int, generation):
    c = parsed.c.ops[i]
    send, recv = s.send_key.reveal(), s.receive_key.reveal()
    assert parsed.receiver_index[i] == s.receiver_index
    assert parsed.sender_index[i] == s.sender_index
    assert bytes(ffi.buffer(c.send_key)) == send
    assert bytes(ffi.buffer(c.recv_key)) == recv
    assert float(parsed.lifetime[i]) == s.lifetime
    assert bool(parsed.flags[i] & bulk.ACTIVATE_NOW) == (s.activate == "now")
    assert bool(parsed.flags[i] & generation_flag) == (s.generation is not None)
    if s.generation is not None:
        assert generation == s.generation
    assert parsed.session_digest[i] == bulk.session_digest(DIGEST_KEY, send, recv)


def assert_same(parsed, i, want: model.BulkOp):
    """Op i of the parsed batch means exactly what the model's op does."""
    c = parsed.c.ops[i]
    flags = parsed.flags[i]
    spec = want.spec
    assert parsed.line[i] == want.line
    assert bulk.OP_NAMES[parsed.op[i]] == want.op
    assert parsed.public_key[i] == bytes(want.public_key)
    known = bulk.HAS_GENERATION
    if want.op == "put_peer":
        known |= bulk.HAS_PSK | lib.DP_BULK_REPLACE | bulk.HAS_SESSION
        assert bool(flags & bulk.HAS_GENERATION) == (spec.generation is not None)
        if spec.generation is not None:
            assert parsed.generation[i] == spec.generation
        psk = spec.preshared_key.reveal() if spec.preshared_key is not None else None
        assert bool(flags & bulk.HAS_PSK) == (psk is not None)
        assert parsed.preshared_key(i) == (psk or bytes(32))
        assert parsed.prefixes_of(i) == list(spec.allowed_ips)
        if spec.endpoint is None:
            assert c.endpoint_family == 0
        else:
            host, port = spec.endpoint
            v6 = ":" in host
            packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
            assert (c.endpoint_family, c.endpoint_port) == (6 if v6 else 4, port)
            assert bytes(ffi.buffer(c.endpoint_addr)) == packed.ljust(16, b"\0")
        assert parsed.keepalive[i] == spec.persistent_keepalive
        assert bool(flags & lib.DP_BULK_REPLACE) == spec.replace
        assert parsed.settings_digest[i] == bulk.settings_digest(
            DIGEST_KEY, psk, spec.allowed_ips, spec.endpoint, spec.persistent_keepalive)
        assert bool(flags & bulk.HAS_SESSION) == (spec.session is not None)
        if spec.session is not None:
            known |= bulk.ACTIVATE_NOW | bulk.SESSION_HAS_GENERATION
            assert_same_session(parsed, i, spec.session, bulk.SESSION_HAS_GENERATION,
                                parsed.session_generation[i])
    elif want.op == "put_session":
        known |= bulk.HAS_SESSION | bulk.ACTIVATE_NOW
        assert flags & bulk.HAS_SESSION
        assert_same_session(parsed, i, spec, bulk.HAS_GENERATION, parsed.generation[i])
    else:
        assert bool(flags & bulk.HAS_GENERATION) == (spec.generation is not None)
        if spec.generation is not None:
            assert parsed.generation[i] == spec.generation
    assert flags & ~known == 0, f"flags {flags:#x} has bits {want.op} cannot have"


def check(body: bytes) -> tuple[bool, bool]:
    """The differential check on one body: (parser accepted, model
    accepted). Accepted by the parser means accepted by the model with
    the same meaning; refused by the model means declined."""
    want = model_ops(body)
    parsed, line, why = bulk.parse(body, DIGEST_KEY)
    if parsed is None:
        assert why != lib.DP_BULK_DECLINED_MEMORY, "the parser ran out of (locked) memory"
        assert want is None or not plain(body), f"a plain body the model accepts, declined " \
            f"(line {line}, why {why}): {body!r}"
        return False, want is not None
    with parsed:
        assert want is not None, f"the parser accepted a body the model refuses: {body!r}"
        assert parsed.n == len(want), body
        for i, op in enumerate(want):
            assert_same(parsed, i, op)
    return True, True


# ---------------------------------------------------------------- valid lines
#
# A line is a list of (name, value); a value is JSON text, a tuple of JSON
# texts (an array) or a list of fields (an object). render() lays it out
# with random JSON whitespace.

def text(s: str) -> str:
    return f'"{s}"'


def whitespace(rng) -> str:
    if rng.random() < 0.7:
        return ""
    return "".join(rng.choice(" \t\r") for _ in range(rng.randint(1, 3)))


def render(value, rng) -> str:
    if isinstance(value, str):
        return value

    def ws():
        return whitespace(rng)

    if isinstance(value, tuple):
        return "[" + ",".join(ws() + v + ws() for v in value) + ws() + "]"
    return "{" + ",".join(f"{ws()}{text(k)}{ws()}:{ws()}{render(v, rng)}{ws()}"
                          for k, v in value) + ws() + "}"


def render_line(fields, rng) -> bytes:
    return (whitespace(rng) + render(fields, rng) + whitespace(rng)).encode()


def number(rng, low: int, high: int) -> int:
    """Edges often, small numbers often, anything in range otherwise."""
    r = rng.random()
    if r < 0.3:
        return rng.choice((low, low + 1, high - 1, high))
    if r < 0.6:
        return rng.randint(low, min(high, low + 999))
    return rng.randint(low, high)


def key_text(rng, zero: bool = False) -> str:
    return base64.b64encode(bytes(32) if zero else rng.randbytes(32)).decode()


def v4_text(rng) -> str:
    return socket.inet_ntop(socket.AF_INET, rng.randbytes(4))


def v6_text(rng) -> str:
    raw = rng.randbytes(16)
    form = rng.randrange(4)
    if form == 0:
        return "::ffff:" + v4_text(rng)
    if form == 1:  # room for "::"
        return socket.inet_ntop(socket.AF_INET6, raw[:4] + bytes(8) + raw[12:])
    if form == 2:  # every group written out, upper or lower case
        groups = ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))
        return groups.upper() if rng.random() < 0.5 else groups
    return socket.inet_ntop(socket.AF_INET6, raw)


def length_text(length: int, rng) -> str:
    digits = str(length)
    return "0" * rng.randrange(4 - len(digits)) + digits  # "/032": at most 3 digits


EDGE_PREFIXES = ["0.0.0.0/0", "0.0.0.0/000", "255.255.255.255", "::/0", "::", "::1",
                 "::1.2.3.4/128", "1:2:3:4:5:6:1.2.3.4/97", "FFFF::/16", "1:2:3:4:5:6:7:8/128"]
EDGE_ENDPOINTS = ["[::]:1", "0.0.0.0:65535", "255.255.255.255:1", "[::ffff:0.0.0.0]:1",
                  "[1:2:3:4:5:6:1.2.3.4]:5", "[FE80::1]:51820", "1.2.3.4:0000000000000000051820"]


def prefix_text(rng) -> str:
    if rng.random() < 0.05:
        return rng.choice(EDGE_PREFIXES)
    v6 = rng.random() < 0.5
    addr = v6_text(rng) if v6 else v4_text(rng)
    if rng.random() < 0.2:
        return addr
    return f"{addr}/{length_text(number(rng, 0, 128 if v6 else 32), rng)}"


def same_network(prefix: str, rng) -> str:
    """Another spelling of the prefix's network: other host bits."""
    addr, _, length = prefix.partition("/")
    if not length:
        return prefix
    net = ipaddress.ip_network((addr, int(length)), strict=False)
    other = net.network_address + rng.randrange(net.num_addresses)
    return f"{other}/{length}"


def allowed_ips(rng) -> tuple:
    ips = [prefix_text(rng) for _ in range(rng.choice((0, 1, 1, 2, 3, 4)))]
    for _ in range(rng.choice((0, 0, 1, 2))):
        if ips:  # repeats: the same text, or the same network spelt otherwise
            first = rng.choice(ips)
            ips.insert(rng.randint(0, len(ips)),
                       first if rng.random() < 0.5 else same_network(first, rng))
    return tuple(text(p) for p in ips)


def endpoint_text(rng) -> str:
    if rng.random() < 0.05:
        return rng.choice(EDGE_ENDPOINTS)
    port = str(number(rng, 1, 65535))
    port = "0" * rng.choice((0, 0, 0, 1, 4)) + port
    kind = rng.randrange(3)
    if kind == 0:
        return f"{v4_text(rng)}:{port}"
    if kind == 1:
        return f"[{socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))}]:{port}"
    return f"[::ffff:{v4_text(rng)}]:{port}"


def generation_field(rng, fields: list) -> None:
    r = rng.random()
    if r < 0.5:
        fields.append(("generation", str(number(rng, 0, GEN_MAX))))
    elif r < 0.7:
        fields.append(("generation", "null"))


def session_fields(rng) -> list:
    fields = [("receiver_index", str(number(rng, 1, INDEX_MAX))),
              ("sender_index", str(number(rng, 0, INDEX_MAX))),
              ("send_key", text(key_text(rng))), ("receive_key", text(key_text(rng)))]
    if rng.random() < 0.5:
        fields.append(("lifetime", str(number(rng, 1, LIFETIME_MAX))))
    r = rng.random()
    if r < 0.6:
        fields.append(("activate", text("now" if r < 0.3 else "on_receive")))
    generation_field(rng, fields)
    rng.shuffle(fields)
    return fields


def valid_line(rng, op: str | None = None) -> list:
    op = op or rng.choice(model.BULK_OPS)
    fields = [("op", text(op)), ("public_key", text(key_text(rng)))]
    if op == "put_peer":
        r = rng.random()
        if r < 0.15:
            fields.append(("preshared_key", "null"))
        elif r < 0.3:
            fields.append(("preshared_key", text(key_text(rng, zero=True))))
        elif r < 0.7:
            fields.append(("preshared_key", text(key_text(rng))))
        if rng.random() < 0.85:
            fields.append(("allowed_ips", allowed_ips(rng)))
        r = rng.random()
        if r < 0.6:
            fields.append(("endpoint", text(endpoint_text(rng))))
        elif r < 0.75:
            fields.append(("endpoint", "null"))
        if rng.random() < 0.6:
            fields.append(("persistent_keepalive", str(number(rng, 0, 65535))))
        if rng.random() < 0.5:
            fields.append(("replace", rng.choice(("true", "false"))))
        r = rng.random()
        if r < 0.4:
            fields.append(("session", session_fields(rng)))
        elif r < 0.55:
            fields.append(("session", "null"))
        generation_field(rng, fields)
    elif op == "put_session":
        fields += session_fields(rng)
    else:
        generation_field(rng, fields)
    rng.shuffle(fields)
    return fields


def test_valid_lines_are_accepted_and_read_as_the_model_reads_them():
    rng = random.Random(1)
    for n in range(3000):
        body = render_line(valid_line(rng, model.BULK_OPS[n % 4]), rng)
        if rng.random() < 0.5:
            body += b"\n"
        assert check(body) == (True, True), body


# ---------------------------------------------------------------- mutations

LOW_ORDER_KEYS = [base64.b64encode(p).decode() for p in LOW_ORDER_POINTS] + \
    [base64.b64encode(p[:31] + bytes([p[31] | 0x80])).decode() for p in LOW_ORDER_POINTS]


def bad_keys(rng) -> list:
    """Key texts the model refuses, and two it reads (escapes) that the
    parser must decline."""
    k = key_text(rng)
    padded = k[:42] + rng.choice("BCDFHJ") + "="  # non-zero padding bits
    return [k[:43], k + "A", k[:43] + "A", k[:42] + "==", padded, k[:10] + "-" + k[11:],
            k[:10] + "_" + k[11:], " " + k[:43], k[:10] + "é" + k[11:], "", "A" * 44,
            k[:10] + "\\u0041" + k[11:], k[:10] + "\\/" + k[11:]]


PREFIXES_BAD = ["10.0.0.1/33", "10.0.0.1/", "10.0.0.1/+8", "10.0.0.1/0x1", "::1/129",
                " 10.0.0.1/32", "10.0.0.1 /32", "10.0.0.1/ 32", "10.0.0.1/32 ", "10.0.0.1/0032",
                "10.0.0.01/32", "10.0.0/24", "10.0.0.1/-1", "1.2.3.4/32/5", "fe80::1%eth0/64",
                "1.2.3.4/3²", "256.0.0.1/8", "::ffff:1.2.3.4/129", "1::2::3/64", "/32", "",
                "10.0.0.1\\/32", "10.0.0.\\u0031/32", "10.0.0.1/3\\u0032"]
ENDPOINTS_BAD = ["1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:", "[::1]51820", "1.2.3.4", "[::1]:0",
                 "example.com:51820", "[fe80::1%eth0]:51820", "::1:51820", "[::1]:51820x",
                 "[1.2.3.4]:80", "1.2.3.4:+80", "1.2.3.4: 80", "[[::1]]:80", " 1.2.3.4:80",
                 "1.2.3.4:00000000000000000000065536", "[::1]:", "[]:80", ":80",
                 "1.2.3.4:8\\u0030", "1.2.3.4:0000000000000000051820"]


def bad_values(name: str, rng) -> list:
    """Texts for a field's value: mostly refused by the model; some
    (escapes, floats, "-0") read by it and declined by the parser; a few
    valid."""
    common = ["null", "true", "false", "0", "1", "[]", "{}", '"x"', '""', "1.5", "[1]",
              "null\0", "nullx"]
    ints = {"receiver_index": (1, INDEX_MAX), "sender_index": (0, INDEX_MAX),
            "persistent_keepalive": (0, 65535), "generation": (0, GEN_MAX),
            "lifetime": (1, LIFETIME_MAX)}
    if name in ints:
        low, high = ints[name]
        return common + [str(low - 1), str(high + 1), f"{high}.0", f"{low}.0", "1e2", "1E2",
                         "-0", "007", "-1", str(1 << 64), str(1 << 63), str(1 << 32), "65536",
                         "181", "0.5", "120.5", f'"{high}"', "0x10", "+1", "1 2", "--1",
                         "NaN", "Infinity", f"{high}e0", "1\0", "1 \0"]
    if name in ("public_key", "preshared_key", "send_key", "receive_key"):
        keys = bad_keys(rng) + (LOW_ORDER_KEYS if name == "public_key" else [])
        return common + [text(k) for k in keys]
    if name == "allowed_ips":
        return common + ['"10.0.0.1/32"', "[null]", "[5]", '["10.0.0.1/32",]', "[,]",
                         '["10.0.0.1/32" "10.0.0.2/32"]'] + \
            [f'["10.0.0.1/32",{text(p)}]' for p in PREFIXES_BAD]
    if name == "endpoint":
        return common + [text(e) for e in ENDPOINTS_BAD]
    if name == "op":
        return common + [text(s) for s in ("put_peers", "PUT_PEER", "delete", "put_peer ",
                                           "put\\u005fpeer", "put_session\\u0000")] + \
            [text(s) for s in model.BULK_OPS]
    if name == "activate":
        return common + [text(s) for s in ("later", "NOW", "now ", "n\\u006fw", "on_receive",
                                           "now")]
    if name == "replace":
        # "truefalse": a literal that does not end where a value may end
        # must leave the cursor where it was (found by fuzz/bulk_ndjson.c)
        return common + ['"true"', "True", "tru", "truee", "nul", "False", "true\0",
                         "false\v", "truefalse", "falsefalse", "truetrue", "true false"]
    if name == "session":
        return common + ['{"receiver_index":1}']
    return common


def some_fields(rng) -> list:
    """A field of every name with a value some operation takes, and a few
    names no operation has."""
    return [
        ("op", text(rng.choice(model.BULK_OPS))), ("public_key", text(key_text(rng))),
        ("generation", "5"), ("preshared_key", text(key_text(rng))),
        ("allowed_ips", '["10.0.0.0/8"]'), ("endpoint", '"1.2.3.4:5"'),
        ("persistent_keepalive", "25"), ("replace", "true"), ("session", session_fields(rng)),
        ("receiver_index", "7"), ("sender_index", "8"), ("send_key", text(key_text(rng))),
        ("receive_key", text(key_text(rng))), ("lifetime", "60"), ("activate", '"now"'),
        ("bogus", "1"), ("Op", '"put_peer"'), ("public_key ", text(key_text(rng))), ("", "1")]


def some_field(rng) -> tuple:
    return rng.choice(some_fields(rng))


def full_line(rng, op: str) -> list:
    """A valid line with every field its operation may have (a put_peer's
    session with every field too)."""
    session = [("receiver_index", "7"), ("sender_index", "8"), ("send_key", text(key_text(rng))),
               ("receive_key", text(key_text(rng))), ("lifetime", "60"), ("activate", '"now"'),
               ("generation", "9")]
    head = [("op", text(op)), ("public_key", text(key_text(rng)))]
    if op == "put_peer":
        return head + [("preshared_key", text(key_text(rng))),
                       ("allowed_ips", ('"10.0.0.1/32"', '"fd00::1/64"')),
                       ("endpoint", '"1.2.3.4:51820"'), ("persistent_keepalive", "25"),
                       ("generation", "3"), ("replace", "false"), ("session", session)]
    if op == "put_session":
        return head + session
    return head + [("generation", "3")]


def copy_line(fields: list) -> list:
    return [(k, list(v) if isinstance(v, list) else v) for k, v in fields]


def objects(fields: list) -> list:
    """The line's object and its session object, if any."""
    return [fields] + [v for _, v in fields if isinstance(v, list)]


def mutate_fields(fields: list, rng) -> list:
    """A structural change: a field's value, an added, repeated or
    removed field, or another operation."""
    fields = copy_line(fields)
    obj = rng.choice(objects(fields))
    kind = rng.randrange(6)
    if kind == 0 and obj:
        i = rng.randrange(len(obj))
        obj[i] = (obj[i][0], rng.choice(bad_values(obj[i][0], rng)))
    elif kind == 1:
        obj.insert(rng.randint(0, len(obj)), some_field(rng))
    elif kind == 2 and obj:
        name, value = rng.choice(obj)
        if rng.random() < 0.5:
            value = rng.choice(bad_values(name, rng))
        obj.insert(rng.randint(0, len(obj)), (name, value))
    elif kind == 3 and obj:
        del obj[rng.randrange(len(obj))]
    elif kind == 4:
        op = ("op", text(rng.choice(model.BULK_OPS)))
        fields[:] = [op if k == "op" else (k, v) for k, v in fields] or [op]
    else:
        name = rng.choice(["allowed_ips", "endpoint", "public_key", "send_key", "lifetime",
                           "generation", "receiver_index", "persistent_keepalive", "activate",
                           "replace", "op", "session", "preshared_key", "sender_index"])
        for o in objects(fields):
            for i, (k, _) in enumerate(o):
                if k == name:
                    o[i] = (k, rng.choice(bad_values(k, rng)))
    return fields


ODD_CHARACTERS = ["\v", "\f", "\0", "\x1f", "\x7f", "\\", '"', "é", "\u2028", "\n", " ", "\t",
                  "\r", ",", ":", "{", "}", "[", "]", "-", ".", "e", "0", "9", "/", "=", "A"]


def mutate_text(body: bytes, rng) -> bytes:
    """A change to the text: a character changed, deleted or added, the
    line cut short, something after the object, an invalid byte."""
    s = body.decode(errors="surrogateescape")  # a second change may follow an invalid byte
    i = rng.randrange(len(s) + 1)
    c = rng.choice(ODD_CHARACTERS) if rng.random() < 0.6 else chr(rng.randint(0x20, 0x7e))
    kind = rng.randrange(6)
    if kind == 0 and i < len(s):
        s = s[:i] + c + s[i + 1:]
    elif kind == 1 and i < len(s):
        s = s[:i] + s[i + 1:]
    elif kind == 2:
        s = s[:i] + c + s[i:]
    elif kind == 3:
        s = s[:rng.randrange(len(s) + 1)]
    elif kind == 4:
        s = s.rstrip("\n") + rng.choice(["x", "}", ",", "{}", " 1", "\v", "\f", "\0", " ", "\r",
                                        "\t\r ", "null", "]"])
    else:
        raw = s.encode(errors="surrogateescape")
        return raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xe9", b"\x80"]) + raw[i:]
    return s.encode(errors="surrogateescape")


def test_table_of_bad_values_missing_and_extra_fields():
    """On a line of each operation with all its fields: each field's value
    replaced by each of its bad_values, each field left out, each field
    name added (also inside a put_peer's session)."""
    rng = random.Random(2)
    accepted = {"c": 0, "model": 0}

    def count(fields):
        c_ok, model_ok = check(render_line(fields, rng))
        accepted["c"] += c_ok
        accepted["model"] += model_ok

    for op in model.BULK_OPS:
        base = full_line(rng, op)
        assert check(render_line(base, rng)) == (True, True)
        for where in range(len(objects(base))):
            for i, (name, _) in enumerate(objects(base)[where]):
                for value in bad_values(name, rng):
                    fields = copy_line(base)
                    objects(fields)[where][i] = (name, value)
                    count(fields)
                fields = copy_line(base)
                del objects(fields)[where][i]
                count(fields)
            for field in some_fields(rng):
                fields = copy_line(base)
                obj = objects(fields)[where]
                obj.insert(rng.randint(0, len(obj)), field)
                count(fields)
    assert accepted["model"] > accepted["c"] > 20, accepted


def test_mutated_lines():
    """Seeded changes to valid lines, half to their fields (mutate_fields),
    half to their text (mutate_text)."""
    rng = random.Random(3)
    total = 8000
    c_accepted = model_accepted = 0
    for n in range(total):
        fields = valid_line(rng, model.BULK_OPS[n % 4])
        if rng.random() < 0.5:
            fields = mutate_fields(fields, rng)
            body = render_line(fields, rng)
        else:
            body = render_line(fields, rng)
            for _ in range(rng.choice((1, 1, 1, 2))):
                body = mutate_text(body, rng)
        c_ok, model_ok = check(body)
        c_accepted += c_ok
        model_accepted += model_ok
    # Neither side accepts everything nor nothing: the test is not vacuous.
    assert total * 0.1 < c_accepted < model_accepted < total * 0.6, (c_accepted, model_accepted)


@pytest.mark.parametrize("count, accepted", [(1024, True), (1025, False)])
def test_allowed_ips_limit(count, accepted):
    """At most model.ALLOWED_IPS_MAX prefixes, repeats counted."""
    assert lib.DP_BULK_PREFIXES_MAX == model.ALLOWED_IPS_MAX
    ips = ",".join(text(f"10.{i >> 8 & 3}.{i & 255}.1/32") for i in range(count - 1))
    body = ('{"op":"put_peer","public_key":"%s","allowed_ips":[%s,"10.0.0.1/32"]}'
            % (key_text(random.Random(4)), ips)).encode()
    assert check(body) == (accepted, accepted)


# ---------------------------------------------------------------- bodies

def lines(rng, n: int) -> list:
    return [render_line(valid_line(rng), rng) for _ in range(n)]


def test_blank_lines_are_skipped_and_still_counted():
    rng = random.Random(5)
    a, b, c = lines(rng, 3)
    body = b"\n".join([b"", b" \t\r\v\f", a, b"\r", b"", b, b"\v", c, b"\f", b""])
    parsed, line, why = bulk.parse(body, DIGEST_KEY)
    assert parsed is not None, (line, why)
    with parsed:
        assert parsed.line == [3, 6, 8]
    assert check(body) == (True, True)


@pytest.mark.parametrize("body", [b"", b"\n", b" \t\r\v\f", b"\n\n \n\t\r\n\v\f\n"])
def test_bodies_without_operations_are_declined(body):
    parsed, line, why = bulk.parse(body, DIGEST_KEY)
    assert parsed is None and why == lib.DP_BULK_DECLINED_EMPTY
    assert model_ops(body) is None


BAD_LINES = [b'{"op":"put_peers","public_key":"%s"}', b'{"op":"delete_peer"}',
             b'{"op":"delete_peer","public_key":"%s","generation":-1}',
             b'{"op":"delete_peer","public_key":"%s"} x', b"{", b"\0",
             b'{"op":"delete_peer","public_key":"%s","session":null}']


def test_one_bad_line_declines_the_whole_body():
    rng = random.Random(6)
    for bad in BAD_LINES:
        if b"%s" in bad:
            bad = bad % key_text(rng).encode()
        for where in range(5):
            body = lines(rng, 4)
            body.insert(where, bad)
            body.insert(2, b"")  # a blank line: numbers still count it
            parsed, line, why = bulk.parse(b"\n".join(body), DIGEST_KEY)
            assert parsed is None
            assert line == (where + 1 if where < 2 else where + 2), (bad, where)
            assert why in (lib.DP_BULK_DECLINED_SYNTAX, lib.DP_BULK_DECLINED_FIELD,
                           lib.DP_BULK_DECLINED_VALUE)
            assert model_ops(b"\n".join(body)) is None


def test_a_last_line_without_newline_is_read():
    rng = random.Random(7)
    a, b = lines(rng, 2)
    for body in (a + b"\n" + b, a + b"\n" + b + b"\n", a + b"\n" + b + b"\r\n"):
        parsed, line, why = bulk.parse(body, DIGEST_KEY)
        assert parsed is not None, (line, why)
        with parsed:
            assert parsed.line == [1, 2]
        assert check(body) == (True, True)


def assert_read_as_the_model_reads(body: bytes, n: int) -> None:
    """All n operations of body parsed, each line's number and meaning as
    the model has them."""
    want = model_ops(body)
    parsed, line, why = bulk.parse(body, DIGEST_KEY)
    assert parsed is not None, (line, why)
    with parsed:
        assert parsed.n == len(want) == n
        assert parsed.line == [op.line for op in want]
        for i, op in enumerate(want):
            assert_same(parsed, i, op)


def test_a_large_body():
    """5000 operations and a few blank lines: every line number right."""
    rng = random.Random(8)
    out = []
    for text_line in lines(rng, 5000):
        out.append(text_line)
        if rng.random() < 0.05:
            out.append(rng.choice([b"", b" ", b"\t\r"]))
    body = b"\n".join(out) + b"\n"
    assert len(body) > 1 << 20, "too small for the parser's two halves"
    assert_read_as_the_model_reads(body, 5000)


def test_a_body_read_in_two_halves_joins_them():
    """Over 1 MiB the parser reads the halves on two threads: blank lines
    at the split, allowed IPs on both sides (their indices joined), and a
    bad line in either half declining the body with its number."""
    rng = random.Random(9)
    out = lines(rng, 6000)
    size = sum(len(x) + 1 for x in out)
    # blank lines where the split falls (the first newline after half)
    half, at = size // 2, 0
    for i, x in enumerate(out):
        at += len(x) + 1
        if at >= half:
            out[i + 1:i + 1] = [b"", b"  ", b""]
            break
    body = b"\n".join(out)
    assert len(body) > 1 << 20
    assert_read_as_the_model_reads(body, 6000)
    for where in (5, len(out) // 2 + 10, len(out) - 3):
        bad = list(out)
        bad[where] = b'{"op":"put_peer"}'
        parsed, line, why = bulk.parse(b"\n".join(bad), DIGEST_KEY)
        assert parsed is None and line == where + 1, (where, line)


def test_many_prefixes_with_repeats_keep_the_first_of_each():
    """Past 16 prefixes a line's repeats are found through a table: the
    same prefixes, in the same order, as the model keeps."""
    rng = random.Random(10)
    distinct = [f"10.{i >> 8}.{i & 255}.{rng.randrange(256)}/{rng.choice((24, 30, 32))}"
                for i in range(400)] + [f"fd00::{i:x}:{rng.randrange(1 << 16):x}/112"
                                        for i in range(200)]
    ips = [rng.choice(distinct) for _ in range(1024)]
    line = json.dumps({"op": "put_peer", "public_key": key_text(rng),
                       "allowed_ips": ips}).encode()
    want = model_ops(line)
    parsed, at, why = bulk.parse(line, DIGEST_KEY)
    assert parsed is not None, (at, why)
    with parsed:
        assert parsed.prefixes_of(0) == list(want[0].spec.allowed_ips)
        assert 300 < len(parsed.prefixes_of(0)) < 1024
        assert_same(parsed, 0, want[0])
