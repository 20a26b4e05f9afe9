"""The WAN program with an AmneziaWG profile in its `wire` map: messages of
the profile are steered (and counted as obfuscated), everything else that
reaches the port is dropped in XDP as junk, or as one of the interface's
own signature packets; plain WireGuard only beside it when accepted."""
import os
import struct

import pytest

from dataplane import xdp
from dataplane.obfuscation import (BASE_LEN, COOKIE_REPLY, INITIATION, RESPONSE, TRANSPORT,
                                   Obfuscation)
from dataplane.xdp import Verdict
from tests.unit.test_xdp_programs import (PORT, load_wan, needs_root, objects, run, v4, v6,  # noqa: F401
                                          wg)

PROFILE = Obfuscation.from_settings({
    "Jc": "3", "Jmin": "40", "Jmax": "70", "S1": "15", "S2": "18", "S3": "20", "S4": "8",
    "H1": "1000000-1000999", "H2": "2000000", "H3": "3000000-3000009", "H4": "4000000-4999999",
    "I1": "<b 0xc0ffee01><r 12><t>", "I2": "<r 30>"})
NAMES = {INITIATION: "initiation", RESPONSE: "response", COOKIE_REPLY: "cookie_reply",
         TRANSPORT: "data"}


def message(kind: int, obf: Obfuscation = PROFILE, extra: int = 0, header=None) -> bytes:
    """A message of `kind` in profile obf: padding, a header from its
    range (or `header`), filler."""
    body = bytearray(os.urandom(BASE_LEN[kind] + extra))
    struct.pack_into("<I", body, 0, obf.draw_header(kind) if header is None else header)
    return obf.wrap(kind, bytes(body))


@pytest.fixture
def wan(objects):  # noqa: F811 - the fixture of test_xdp_programs
    with load_wan(objects["wan"], listen_port=PORT) as program:
        program.set_ratelimit_rest(True)
        yield program


def steered(kind: int, obfuscated: bool = True) -> dict:
    out = {f"steer_{NAMES[kind]}": 1, "steer_no_socket": 1}
    if obfuscated:
        out["steer_obfuscated"] = 1
    return out


@needs_root
@pytest.mark.parametrize("family", [v4, v6])
@pytest.mark.parametrize("kind", [INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT])
def test_messages_of_the_profile_are_steered(wan, family, kind):
    wan.set_wire(xdp.wire_config(PROFILE))
    for extra in ((0, 1, 1400) if kind == TRANSPORT else (0,)):
        verdict, out, delta = run(wan, family(message(kind, extra=extra)))
        assert (verdict, delta) == (Verdict.PASS, steered(kind))


@needs_root
def test_header_range_ends_are_in_and_their_neighbours_out(wan):
    wan.set_wire(xdp.wire_config(PROFILE))
    for h, ok in ((1000000, True), (1000999, True), (999999, False), (1001000, False)):
        verdict, _, delta = run(wan, v4(message(INITIATION, header=h)))
        assert delta == (steered(INITIATION) if ok else {"drop_junk": 1}), h
    for h, ok in ((4000000, True), (4999999, True), (3999999, False), (5000000, False)):
        verdict, _, delta = run(wan, v4(message(TRANSPORT, extra=64, header=h)))
        assert delta == (steered(TRANSPORT) if ok else {"drop_junk": 1}), h


@needs_root
def test_plain_wireguard_junk_and_probes_never_reach_userspace(wan):
    wan.set_wire(xdp.wire_config(PROFILE))
    frames = [wg(1, 148), wg(2, 92), wg(3, 64), wg(4, 32), wg(4, 200), b"", b"\x01",
              os.urandom(7), os.urandom(148 + 15), os.urandom(1200),
              message(INITIATION, extra=1), message(RESPONSE)[:-1]]
    frames += PROFILE.junk_packets()
    for payload in frames:
        verdict, _, delta = run(wan, v4(payload))
        assert (verdict, delta) == (Verdict.DROP, {"drop_junk": 1}), len(payload)


@needs_root
def test_the_interfaces_own_signature_packets_are_counted_apart(wan):
    wan.set_wire(xdp.wire_config(PROFILE))
    i1, i2 = PROFILE.signature_packets()
    for payload in (i1, i2):
        verdict, _, delta = run(wan, v6(payload))
        assert (verdict, delta) == (Verdict.DROP, {"drop_signature": 1})
    # the right size with other leading bytes is junk
    verdict, _, delta = run(wan, v4(b"\xc0\xff\xee\x02" + i1[4:]))
    assert delta == {"drop_junk": 1}


@needs_root
def test_plain_wireguard_beside_the_profile_when_accepted(wan):
    wan.set_wire(xdp.wire_config(PROFILE, accept_plain=True))
    for kind, size in ((INITIATION, 148), (RESPONSE, 92), (COOKIE_REPLY, 64), (TRANSPORT, 96)):
        verdict, _, delta = run(wan, v4(wg(kind, size)))
        assert (verdict, delta) == (Verdict.PASS, steered(kind, obfuscated=False))
        verdict, _, delta = run(wan, v4(message(kind)))
        assert (verdict, delta) == (Verdict.PASS, steered(kind))
    for payload in (wg(1, 149), wg(5, 148), os.urandom(300)):
        verdict, _, delta = run(wan, v4(payload))
        assert (verdict, delta) == (Verdict.DROP, {"drop_junk": 1})


@needs_root
def test_a_plain_handshake_that_reads_as_obfuscated_transport_keeps_the_rate_limit(objects):  # noqa: F811,E501
    """A plain handshake whose bytes at S4 fall in H4 (1 in 43 for a wide H4)
    matches the profile's transport first; where plain is accepted it is
    steered as the handshake it is (the workers read it so), rate limit and
    all, and without that a flood of such initiations would pass unlimited."""
    with load_wan(objects["wan"], listen_port=PORT) as wan:
        wan.set_wire(xdp.wire_config(PROFILE, accept_plain=True))
        for kind, size in ((INITIATION, 148), (RESPONSE, 92), (COOKIE_REPLY, 64)):
            m = bytearray(wg(kind, size))
            struct.pack_into("<I", m, PROFILE.paddings[-1], 4321000)  # in H4
            wan.set_ratelimit_rest(True)
            verdict, _, delta = run(wan, v4(bytes(m)))
            assert (verdict, delta) == (Verdict.PASS, steered(kind, obfuscated=False))
        wan.set_ratelimit_rest(False)
        m = bytearray(wg(INITIATION, 148))
        struct.pack_into("<I", m, PROFILE.paddings[-1], 4321000)
        verdict, _, delta = run(wan, v4(bytes(m)), repeat=6)
        assert verdict == Verdict.DROP
        assert delta == {"steer_initiation": 5, "steer_no_socket": 5, "drop_ratelimited": 1}
        # not accepted: the profile's transport message it reads as
        wan.set_wire(xdp.wire_config(PROFILE))
        verdict, _, delta = run(wan, v4(bytes(m)))
        assert (verdict, delta) == (Verdict.PASS, steered(TRANSPORT))


@needs_root
def test_back_to_plain_the_profile_is_malformed_again(wan):
    wan.set_wire(xdp.wire_config(PROFILE))
    wan.set_wire(xdp.wire_config(Obfuscation()))
    verdict, _, delta = run(wan, v4(wg(1, 148)))
    assert delta == steered(INITIATION, obfuscated=False)
    verdict, _, delta = run(wan, v4(message(INITIATION)))
    assert verdict == Verdict.DROP and set(delta) <= {"drop_wg_bad_type", "drop_wg_bad_size"}


@needs_root
def test_handshakes_of_the_profile_are_rate_limited(objects):  # noqa: F811
    with load_wan(objects["wan"], listen_port=PORT) as wan:
        wan.set_wire(xdp.wire_config(PROFILE))
        verdict, _, delta = run(wan, v4(message(INITIATION)), repeat=6)
        assert verdict == Verdict.DROP
        assert delta == {"steer_initiation": 5, "steer_no_socket": 5, "steer_obfuscated": 6,
                         "drop_ratelimited": 1}
        # transport is never limited
        verdict, _, delta = run(wan, v4(message(TRANSPORT, extra=16)), repeat=50)
        assert delta == {"steer_data": 50, "steer_no_socket": 50, "steer_obfuscated": 50}


@needs_root
def test_a_backwards_range_is_refused(wan):
    config = xdp.wire_config(PROFILE)
    config.header_min[2], config.header_max[2] = 10, 9
    with pytest.raises(xdp.XdpError, match="H3"):
        wan.set_wire(config)
