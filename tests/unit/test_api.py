"""The control-plane API over its unix socket, against a real native device
in-process: every validation rule (4xx naming the field, nothing partly
applied), generations and tombstones, all-or-nothing batches, allowed-IP
conflicts, pushed sessions used by the data path and rotated without
loss, rekey/expiry events, metrics, and keys never coming back out."""
import base64
import ipaddress
import json
import logging
import os
import struct

import pytest

from dataplane import crypto
from dataplane._native import lib
from dataplane.client import ApiRequestError
from dataplane.device import Endpoint
from dataplane.keys import LOW_ORDER_POINTS, PresharedKey, PrivateKey

from .api_world import ApiWorld

SOURCE = Endpoint(ipaddress.ip_address("127.0.0.1"), 5555)


@pytest.fixture
def world():
    w = ApiWorld()
    yield w
    w.close()


def new_key() -> str:
    return PrivateKey.generate().public_key().base64()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def quoted(key: str) -> str:
    return key.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def refused(fn, status: int, field=None) -> dict:
    with pytest.raises(ApiRequestError) as e:
        fn()
    assert e.value.status == status, e.value.body
    if field is not None:
        assert e.value.body.get("field") == field, e.value.body
    return e.value.body


def ipv4_udp(src: str, dst: str, size: int = 100) -> bytes:
    payload = bytes(size - 28)
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed) + udp


def data_message(index: int, counter: int, key: bytes, src: str = "10.8.0.2") -> bytes:
    inner = ipv4_udp(src, "10.9.9.9")
    inner += bytes(-len(inner) % 16)
    return struct.pack("<IIQ", 4, index, counter) + crypto.seal(key, counter, inner)


class Session:
    """Keys as a control plane would hand them out: what the node receives
    with is what the peer sends with."""

    def __init__(self, receiver_index: int, sender_index: int = 77):
        self.receiver_index, self.sender_index = receiver_index, sender_index
        self.node_send, self.node_recv = os.urandom(32), os.urandom(32)
        self.counter = 0

    def body(self, **extra) -> dict:
        return {"receiver_index": self.receiver_index, "sender_index": self.sender_index,
                "send_key": b64(self.node_send), "receive_key": b64(self.node_recv), **extra}

    def messages(self, n: int) -> list[bytes]:
        out = [data_message(self.receiver_index, self.counter + i, self.node_recv)
               for i in range(n)]
        self.counter += n
        return out


# ---------------------------------------------------------------- validation

BAD_PEER_BODIES = [
    ({"bogus": 1}, 400, "bogus"),
    ({"allowed_ips": "10.0.0.1/32"}, 400, "allowed_ips"),
    ({"allowed_ips": ["10.0.0.1/33"]}, 400, "allowed_ips[0]"),
    ({"allowed_ips": ["10.0.0.1/32", "fd00::/129"]}, 400, "allowed_ips[1]"),
    ({"allowed_ips": ["10.0.0"]}, 400, "allowed_ips[0]"),
    ({"allowed_ips": ["10.0.0.1/+8"]}, 400, "allowed_ips[0]"),
    ({"allowed_ips": [7]}, 400, "allowed_ips[0]"),
    ({"preshared_key": "AAAA"}, 400, "preshared_key"),
    ({"preshared_key": "!" * 44}, 400, "preshared_key"),
    ({"endpoint": "example.com:51820"}, 400, "endpoint"),
    ({"endpoint": "192.0.2.1:0"}, 400, "endpoint"),
    ({"endpoint": "192.0.2.1"}, 400, "endpoint"),
    ({"endpoint": "[2001:db8::1]"}, 400, "endpoint"),
    ({"persistent_keepalive": "25"}, 400, "persistent_keepalive"),
    ({"persistent_keepalive": 65536}, 400, "persistent_keepalive"),
    ({"persistent_keepalive": True}, 400, "persistent_keepalive"),
    ({"generation": -1}, 400, "generation"),
    ({"generation": 1 << 63}, 400, "generation"),
    ({"generation": 1.5}, 400, "generation"),
    ({"replace": "yes"}, 400, "replace"),
    ({"public_key": "AAAA"}, 400, "public_key"),
    ({"session": {"receiver_index": 1}}, 400, "session.sender_index"),
    ({"session": {"receiver_index": 0, "sender_index": 1, "send_key": b64(bytes(32)),
                  "receive_key": b64(bytes(32))}}, 400, "session.receiver_index"),
    ({"session": {"receiver_index": 1, "sender_index": 1, "send_key": b64(bytes(32)),
                  "receive_key": b64(bytes(31))}}, 400, "session.receive_key"),
    ({"session": {"receiver_index": 1, "sender_index": 1, "send_key": b64(bytes(32)),
                  "receive_key": b64(bytes(32)), "lifetime": 181}}, 400, "session.lifetime"),
    ({"session": {"receiver_index": 1, "sender_index": 1, "send_key": b64(bytes(32)),
                  "receive_key": b64(bytes(32)), "what": 1}}, 400, "session.what"),
    ({"session": {"receiver_index": 1, "sender_index": 1, "send_key": b64(bytes(32)),
                  "receive_key": b64(bytes(32)), "activate": "later"}}, 400, "session.activate"),
]


@pytest.mark.parametrize("body,status,field", BAD_PEER_BODIES,
                         ids=[f"{f}-{i}" for i, (_, _, f) in enumerate(BAD_PEER_BODIES)])
def test_a_bad_peer_body_is_refused_naming_the_field_and_nothing_changes(world, body, status,
                                                                          field):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], generation=1)
    before = world.client.peer(key)
    err = refused(lambda: world.client.request("PUT", f"/v1/peers/{quoted(key)}",
                                               {"allowed_ips": ["10.8.0.9/32"], **body}),
                  status, field)
    assert field in err["error"]
    assert world.client.peer(key) == before
    assert len(world.iface.peers) == 1


@pytest.mark.parametrize("path_key,why", [
    ("AAAA", "short"), (b64(bytes(31)), "31 bytes"), ("%2F" * 44, "not base64"),
    (quoted(b64(LOW_ORDER_POINTS[0])), "low-order"),
    (quoted(b64(LOW_ORDER_POINTS[3][:31] + bytes([LOW_ORDER_POINTS[3][31] | 0x80]))),
     "low-order, bit 255 set"),
])
def test_a_bad_key_in_the_path_is_refused(world, path_key, why):
    refused(lambda: world.client.request("PUT", f"/v1/peers/{path_key}", {}), 400, "public_key")
    assert not world.iface.peers


def test_bodies_that_are_not_json_too_large_or_not_objects_are_refused(world):
    path = f"/v1/peers/{quoted(new_key())}"
    refused(lambda: world.client.request("PUT", path, b"{not json"), 400)
    refused(lambda: world.client.request("PUT", path, b"[1, 2]"), 400, "body")
    refused(lambda: world.client.request("PUT", path, b" " * (64 * 1024 + 10)), 413)
    refused(lambda: world.client.request("PUT", path, {"x": "y" * 70000}), 413)
    refused(lambda: world.client.request("PUT", path, b"[" * 60000), 400)
    refused(lambda: world.client.request("PUT", path, b'"\xff\xfe"'), 400)
    refused(lambda: world.client.request("POST", "/v1/bulk", b"[" * 60000 + b"\n",
                                         content_type="application/x-ndjson"), 400)
    assert not world.iface.peers


def test_the_own_public_key_cannot_be_a_peer(world):
    refused(lambda: world.client.put_peer(world.key.public_key().base64()), 400, "public_key")


def test_unknown_query_parameters_and_routes_are_refused_in_json(world):
    key = new_key()
    world.client.put_peer(key)
    refused(lambda: world.client.request("DELETE", f"/v1/peers/{quoted(key)}?force=1"), 400,
            "force")
    refused(lambda: world.client.request("DELETE", f"/v1/peers/{quoted(key)}?generation=x"),
            400, "generation")
    body = refused(lambda: world.client.request("GET", "/v1/nothing"), 404)
    assert "error" in body
    refused(lambda: world.client.request("POST", "/v1/peers"), 405)
    assert key in [p["public_key"] for p in world.client.peers()]


# ---------------------------------------------------------------- peers

def test_put_creates_then_is_idempotent_and_get_shows_no_keys(world):
    key, psk = new_key(), PresharedKey.generate()
    fields = dict(allowed_ips=["10.8.0.2/32", "fd08::2/128"], endpoint="[2001:db8::7]:51820",
                  preshared_key=psk.reveal_base64(), persistent_keepalive=0, generation=5)
    status, first = world.client.request("PUT", f"/v1/peers/{quoted(key)}",
                                         world.client.peer_body(**fields))
    assert status == 201
    status, again = world.client.request("PUT", f"/v1/peers/{quoted(key)}",
                                         world.client.peer_body(**fields))
    assert status == 200 and again == first
    assert first["allowed_ips"] == ["10.8.0.2/32", "fd08::2/128"]
    assert first["endpoint"] == "[2001:db8::7]:51820"
    assert first["has_preshared_key"] is True and first["generation"] == 5
    peer = world.iface.peers[base64.b64decode(key)]
    assert peer.preshared_key == psk
    # the native trie routes the prefixes to the peer
    assert world.device.lookup(ipaddress.ip_address("10.8.0.2")) == peer.id
    assert world.device.lookup(ipaddress.ip_address("fd08::2")) == peer.id
    text = json.dumps(world.client.peers()) + json.dumps(world.client.interface())
    assert psk.reveal_base64() not in text
    assert world.key.reveal_base64() not in text


def test_put_replaces_the_whole_peer(world):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32", "10.8.0.3/32"],
                          endpoint="192.0.2.1:1", persistent_keepalive=25)
    view = world.client.put_peer(key, allowed_ips=["10.8.0.4/32"])
    assert view["allowed_ips"] == ["10.8.0.4/32"]
    assert view["endpoint"] is None and view["persistent_keepalive"] == 0
    assert world.device.lookup(ipaddress.ip_address("10.8.0.2")) is None
    assert world.device.lookup(ipaddress.ip_address("10.8.0.4")) is not None
    assert view["generation"] == 2  # unversioned pushes count up


def test_stale_and_conflicting_generations_are_refused(world):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], generation=10)
    body = refused(lambda: world.client.put_peer(key, allowed_ips=["10.8.0.3/32"],
                                                 generation=9), 409, "generation")
    assert body["held"] == 10
    refused(lambda: world.client.put_peer(key, allowed_ips=["10.8.0.3/32"], generation=10),
            409, "generation")
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], generation=10)  # a repeat: fine
    refused(lambda: world.client.delete_peer(key, generation=9), 409, "generation")
    assert world.client.peer(key)["allowed_ips"] == ["10.8.0.2/32"]
    assert world.client.put_peer(key, allowed_ips=["10.8.0.3/32"],
                                 generation=11)["allowed_ips"] == ["10.8.0.3/32"]


def test_a_deleted_peer_cannot_be_brought_back_by_a_delayed_push(world):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], generation=3)
    world.client.delete_peer(key, generation=4)
    assert not world.iface.peers
    assert world.device.lookup(ipaddress.ip_address("10.8.0.2")) is None
    refused(lambda: world.client.put_peer(key, generation=3), 409, "generation")
    refused(lambda: world.client.put_peer(key, generation=4), 409, "generation")
    refused(lambda: world.client.peer(key), 404)
    assert world.client.put_peer(key, generation=5)["generation"] == 5
    refused(lambda: world.client.delete_peer(new_key()), 404)


def test_an_allowed_ip_held_by_another_peer_needs_replace(world):
    a, b = new_key(), new_key()
    world.client.put_peer(a, allowed_ips=["10.8.0.0/24"])
    body = refused(lambda: world.client.put_peer(b, allowed_ips=["10.8.1.1/32", "10.8.0.0/24"]),
                   409, "allowed_ips[1]")
    assert body["held_by"] == a
    assert len(world.iface.peers) == 1  # b was not created
    world.client.put_peer(b, allowed_ips=["10.8.0.0/24"], replace=True)
    assert world.client.peer(a)["allowed_ips"] == []
    pid_b = world.iface.peers[base64.b64decode(b)].id
    assert world.device.lookup(ipaddress.ip_address("10.8.0.9")) == pid_b
    # a different but overlapping prefix is legitimate (longest match wins)
    world.client.put_peer(a, allowed_ips=["10.8.0.9/32"])
    assert world.device.lookup(ipaddress.ip_address("10.8.0.9")) != pid_b


def test_routes_are_asked_for_what_changed_only(world):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"])
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"])  # no change: no call
    world.client.put_peer(key, allowed_ips=["10.8.0.3/32"])
    assert len(world.route_calls) == 2
    added, removed = world.route_calls[1]
    assert [x[2] for x in added] == [32] and [x[2] for x in removed] == [32]


def test_interface_patch(world):
    new = PrivateKey.generate()
    view = world.client.patch_interface(private_key=new.reveal_base64(), fwmark=7,
                                        listen_port=5555, generation=2)
    assert view["public_key"] == new.public_key().base64()
    assert new.reveal_base64() not in json.dumps(view)
    assert world.fwmarks == [7] and world.listen_ports == [5555]
    refused(lambda: world.client.patch_interface(fwmark=1, generation=1), 409, "generation")
    refused(lambda: world.client.patch_interface(private_key="xx"), 400, "private_key")
    refused(lambda: world.client.patch_interface(mtu=1), 400, "mtu")
    assert world.fwmarks == [7]


# ---------------------------------------------------------------- AmneziaWG

OBFUSCATION = {"jc": 4, "jmin": 40, "jmax": 70, "s1": 15, "s2": 18, "s3": 20, "s4": 8,
               "h1": "1000000-1000999", "h2": "2000000-2000999", "h3": "3000000-3000999",
               "h4": "4000000-4000999", "i1": "<b 0xc0ffee><r 12><t>"}
PLAIN_JSON = {"jc": 0, "jmin": 0, "jmax": 0, "s1": 0, "s2": 0, "s3": 0, "s4": 0,
              "h1": "1", "h2": "2", "h3": "3", "h4": "4",
              "i1": None, "i2": None, "i3": None, "i4": None, "i5": None}


def test_interface_shows_plain_wireguard_by_default(world):
    view = world.client.interface()
    assert view["obfuscation"] == PLAIN_JSON and view["accept_plain_wireguard"] is False


def test_obfuscation_patch_is_partial_and_reaches_the_workers(world):
    view = world.client.patch_interface(obfuscation=OBFUSCATION, generation=3)
    assert view["obfuscation"] == {**PLAIN_JSON, **OBFUSCATION} and view["generation"] == 3
    wire = world.device.wire()
    assert wire["obfuscated"] and not wire["accept_plain"]
    assert wire["padding"] == [15, 18, 20, 8] and wire["header_max"][3] == 4000999
    # only the keys given change; h as an integer; null and "" unset
    view = world.client.patch_interface(obfuscation={"h4": 5000000, "s4": None, "i1": ""})
    assert view["obfuscation"] == {**PLAIN_JSON, **OBFUSCATION, "h4": "5000000", "s4": 0,
                                   "i1": None}
    assert view["generation"] == 4
    assert world.device.wire()["padding"] == [15, 18, 20, 0]
    assert world.iface.obfuscation.h4.lo == 5000000
    # what GET says, PATCH takes back as it is
    assert world.client.patch_interface(obfuscation=view["obfuscation"])["obfuscation"] == \
        view["obfuscation"]
    # and everything back to plain WireGuard
    view = world.client.patch_interface(obfuscation={k: None for k in PLAIN_JSON})
    assert view["obfuscation"] == PLAIN_JSON and not world.device.wire()["obfuscated"]


@pytest.mark.parametrize("body,field,message", [
    ({"obfuscation": {"jc": "4"}}, "obfuscation.jc", "must be an integer or null, not a string"),
    ({"obfuscation": {"s1": True}}, "obfuscation.s1", "must be an integer or null"),
    ({"obfuscation": {"s2": 65508}}, "obfuscation.s2", "expected a padding in bytes 0..65507"),
    ({"obfuscation": {"h1": [1]}}, "obfuscation.h1", "must be an integer, a range string"),
    ({"obfuscation": {"h1": "5-4"}}, "obfuscation.h1", "the range's start is above its end"),
    ({"obfuscation": {"h3": -1}}, "obfuscation.h3", "type values are 32-bit"),
    ({"obfuscation": {"i2": 5}}, "obfuscation.i2", "must be a string of tags or null"),
    ({"obfuscation": {"i2": "<q>"}}, "obfuscation.i2", "unknown tag <q>"),
    ({"obfuscation": {"h5": 1}}, "obfuscation.h5", "unknown field"),
    ({"obfuscation": [1]}, "obfuscation", "must be a JSON object"),
    # between keys, and against what the interface holds
    ({"obfuscation": {"h2": 1000500}}, "obfuscation.h2", "1000500 overlaps h1 = 1000000-1000999"),
    ({"obfuscation": {"jmin": 71}}, "obfuscation.jmin", "71 is above Jmax (70)"),
    ({"obfuscation": {"jmax": None}}, "obfuscation.jmax", "Jc = 4 junk packets need a size"),
    ({"accept_plain_wireguard": "yes"}, "accept_plain_wireguard", "must be true or false"),
    ({"accept_plain_wireguard": True, "obfuscation": {"h3": "999999-1000000"}},
     "obfuscation.h3", "999999-1000000 overlaps h1 = 1000000-1000999"),
    ({"accept_plain_wireguard": True, "obfuscation": {"h3": "2-9"}}, "obfuscation.h3",
     "2-9 includes 2, 3 and 4, plain WireGuard message types: with accept_plain_wireguard"),
    ({"accept_plain_wireguard": True, "obfuscation": {k: None for k in PLAIN_JSON}},
     "accept_plain_wireguard", "the profile is plain WireGuard"),
])
def test_obfuscation_errors_name_the_field_and_change_nothing(world, body, field, message):
    world.client.patch_interface(obfuscation=OBFUSCATION, fwmark=3)
    before = world.client.interface()
    refusal = refused(lambda: world.client.patch_interface(fwmark=9, **body), 400, field)
    assert refusal["error"].startswith(f"{field}: ") and message in refusal["error"], refusal
    after = world.client.interface()
    assert after == before and world.fwmarks == [3]
    assert world.device.wire()["padding"] == [15, 18, 20, 8]


def test_plain_wireguard_beside_the_profile(world):
    served = {"s1": 10, "h1": 5, "h2": 6, "h3": 7, "h4": "8-1000"}
    view = world.client.patch_interface(obfuscation=served, accept_plain_wireguard=True)
    assert view["accept_plain_wireguard"] is True and world.device.wire()["accept_plain"]
    # a header range that takes in a plain type is refused while plain is served
    refused(lambda: world.client.patch_interface(obfuscation={"h4": "4-1000"}), 400,
            "obfuscation.h4")
    world.client.patch_interface(obfuscation={"h4": "9-1000"})
    assert world.client.interface()["accept_plain_wireguard"] is True
    # turning obfuscation off ends it; so does saying so
    view = world.client.patch_interface(accept_plain_wireguard=False)
    assert view["accept_plain_wireguard"] is False and not world.device.wire()["accept_plain"]
    world.client.patch_interface(accept_plain_wireguard=True)
    view = world.client.patch_interface(obfuscation={k: None for k in PLAIN_JSON})
    assert view["accept_plain_wireguard"] is False and not world.device.wire()["obfuscated"]


def test_obfuscation_follows_generations(world):
    world.client.patch_interface(obfuscation={"s1": 5}, generation=10)
    refused(lambda: world.client.patch_interface(obfuscation={"s1": 6}, generation=9), 409,
            "generation")
    assert world.client.interface()["obfuscation"]["s1"] == 5
    assert world.client.patch_interface(obfuscation={"s1": 6})["generation"] == 11


# ---------------------------------------------------------------- bulk

def test_bulk_applies_all_or_nothing(world):
    keys = [new_key() for _ in range(5)]
    ops = [{"op": "put_peer", "public_key": k, "allowed_ips": [f"10.8.1.{i}/32"]}
           for i, k in enumerate(keys)]
    bad = ops[:3] + [{"op": "put_peer", "public_key": keys[3], "allowed_ips": ["nope"]}] + ops[4:]
    body = refused(lambda: world.client.bulk(bad), 400, "allowed_ips[0]")
    assert body["line"] == 4 and body["applied"] is False
    assert not world.iface.peers
    # a conflict found only against the batch's own earlier lines
    clash = ops[:2] + [{"op": "put_peer", "public_key": keys[2], "allowed_ips": ["10.8.1.0/32"]}]
    body = refused(lambda: world.client.bulk(clash), 409)
    assert body["line"] == 3 and [r["status"] for r in body["results"]] == [0, 0, 409]
    assert not world.iface.peers
    out = world.client.bulk(ops + [{"op": "delete_peer", "public_key": keys[0]}])
    assert out["applied"] is True
    assert [r["status"] for r in out["results"]] == [201] * 5 + [204]
    assert len(world.iface.peers) == 4
    # one batch may move a prefix between its own peers with replace
    out = world.client.bulk([{"op": "put_peer", "public_key": keys[1], "allowed_ips": []},
                             {"op": "put_peer", "public_key": keys[2],
                              "allowed_ips": ["10.8.1.2/32", "10.8.1.1/32"]}])
    assert out["applied"]


def test_bulk_refuses_junk_lines_and_empty_batches(world):
    refused(lambda: world.client.request("POST", "/v1/bulk", b"{}\n",
                                         content_type="application/x-ndjson"), 400, "op")
    refused(lambda: world.client.request("POST", "/v1/bulk", b"\n\n",
                                         content_type="application/x-ndjson"), 400)
    body = refused(lambda: world.client.request(
        "POST", "/v1/bulk", b'{"op": "delete_peer", "public_key": "%s"}\n[\n' %
        new_key().encode(), content_type="application/x-ndjson"), 400)
    assert body["line"] == 2
    refused(lambda: world.client.bulk([{"op": "put_session", "public_key": new_key(),
                                        **Session(5).body()}]), 404, "public_key")


def test_bulk_sessions_with_an_index_used_twice_are_refused(world):
    a, b = new_key(), new_key()
    s = Session(0x1000)
    body = refused(lambda: world.client.bulk([
        {"op": "put_peer", "public_key": a, "session": s.body()},
        {"op": "put_peer", "public_key": b, "session": s.body()}]), 409, "session.receiver_index")
    assert body["line"] == 2
    assert not world.iface.peers


# ---------------------------------------------------------------- sessions

def test_a_pushed_session_carries_data_and_its_keys_never_come_back(world, caplog):
    caplog.set_level(logging.DEBUG)
    key, s = new_key(), Session(0xABC001)
    view = world.client.put_peer(key, allowed_ips=["10.8.0.2/32"],
                                 session=s.body(activate="now", generation=1))
    assert view["session"]["receiver_index"] == s.receiver_index
    assert view["session"]["generation"] == 1 and view["managed"] is True
    world.call(world.device.test_rx, s.messages(8), SOURCE)
    peer = world.client.peer(key)
    assert peer["rx_packets"] == 8
    # a replayed message is refused by the window, as for handshake keys
    s.counter -= 1
    world.call(world.device.test_rx, s.messages(1), SOURCE)
    assert world.client.peer(key)["rx_packets"] == 8
    everything = json.dumps(world.client.peers()) + world.client.metrics()
    for secret in (s.node_send, s.node_recv):
        assert b64(secret) not in everything
        assert b64(secret) not in caplog.text
    assert f'public_key="{key}"' in world.client.metrics()


def test_session_rotation_keeps_the_old_keys_until_the_new_ones_are_used(world):
    key = new_key()
    old, new = Session(0xA1), Session(0xA2)
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], session=old.body(activate="now"))
    received = lambda: world.client.peer(key)["rx_packets"]  # noqa: E731
    world.call(world.device.test_rx, old.messages(4), SOURCE)
    world.client.put_session(key, **{"receiver_index": new.receiver_index,
                                      "sender_index": new.sender_index,
                                      "send_key": new.node_send, "receive_key": new.node_recv})
    assert world.client.peer(key)["keypairs"] == 2
    # traffic still in flight under the old keys is accepted ...
    world.call(world.device.test_rx, old.messages(4), SOURCE)
    assert received() == 8
    # ... the new ones take over when the peer uses them ...
    world.call(world.device.test_rx, new.messages(4), SOURCE)
    assert received() == 12
    # ... and late packets under the old keys still count
    world.call(world.device.test_rx, old.messages(2), SOURCE)
    assert received() == 14
    assert not {k: v for k, v in world.device.drops().items() if v}
    assert world.device.stats(world.iface.peers[base64.b64decode(key)].id) \
        .current_local_index == new.receiver_index


def test_session_generations_repeats_and_deletion(world):
    key, s = new_key(), Session(0xB1)
    world.client.put_peer(key)
    assert world.client.put_session(key, **_kw(s, generation=4))["session"]["generation"] == 4
    # the same session again is a no-op, not a conflict
    status, _ = world.client.request("PUT", f"/v1/peers/{quoted(key)}/session",
                                     s.body(generation=4))
    assert status == 200
    other = Session(0xB2)
    refused(lambda: world.client.put_session(key, **_kw(other, generation=4)), 409, "generation")
    refused(lambda: world.client.put_session(key, **_kw(other, generation=3)), 409, "generation")
    # an index in use by the held session cannot be reused for other keys
    clash = Session(0xB1)
    refused(lambda: world.client.put_session(key, **_kw(clash, generation=9)), 409,
            "receiver_index")
    refused(lambda: world.client.delete_session(key, generation=3), 409, "generation")
    world.client.delete_session(key, generation=5)
    peer = world.client.peer(key)
    assert peer["session"] is None and peer["keypairs"] == 0
    world.call(world.device.test_rx, s.messages(2), SOURCE)
    assert world.client.peer(key)["rx_packets"] == 0
    refused(lambda: world.client.put_session(key, **_kw(other, generation=5)), 409, "generation")
    assert world.client.put_session(key, **_kw(other, generation=6))["session"]["generation"] == 6


def _kw(s: Session, **extra) -> dict:
    return {"receiver_index": s.receiver_index, "sender_index": s.sender_index,
            "send_key": s.node_send, "receive_key": s.node_recv, **extra}


def test_rekey_and_expiry_events(world):
    key, s = new_key(), Session(0xC1)
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"],
                          session=s.body(activate="now", lifetime=70, generation=2))
    world.call(world.ctrl.tick)
    assert [e.type for e in world.ctrl.events_since(0)] == []
    lib.dp_device_test_advance_clock(11 * 1_000_000_000)  # 59 s left: time to rekey
    world.call(world.ctrl.tick)
    events = world.ctrl.events_since(0)
    assert [e.type for e in events] == ["rekey_needed"]
    assert events[0].data["public_key"] == key and events[0].data["session_generation"] == 2
    lib.dp_device_test_advance_clock(60 * 1_000_000_000)
    world.call(world.ctrl.tick)
    world.call(world.ctrl.tick)
    assert [e.type for e in world.ctrl.events_since(0)] == ["rekey_needed", "expired"]
    assert world.client.peer(key)["session"]["expired"] is True
    # the data path refuses the expired keys
    world.call(world.device.test_rx, s.messages(1), SOURCE)
    assert world.client.peer(key)["rx_packets"] == 0
    # the stream replays what a reader missed, after Last-Event-ID
    stream = world.client.events(since=events[0].id, timeout=5)
    first = next(stream)
    stream.close()
    assert first["event"] == "expired" and first["data"]["public_key"] == key


def test_a_managed_peer_never_initiates_a_handshake_it_asks_for_keys(world):
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], endpoint="127.0.0.1:9",
                          session=Session(0xD1).body())
    world.client.delete_session(key)
    peer = world.iface.peers[base64.b64decode(key)]
    assert world.call(world.iface.initiate, peer) is False
    assert peer.pending is None
    kinds = [(e.type, e.data.get("reason")) for e in world.ctrl.events_since(0)]
    assert kinds == [("rekey_needed", "no session")]


# ---------------------------------------------------------------- metrics, document

def test_metrics_follow_the_common_exporter_names(world):
    key, s = new_key(), Session(0xE1)
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"], session=s.body(activate="now"))
    world.call(world.device.test_rx, s.messages(3), SOURCE)
    text = world.client.metrics()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    label = f'{{interface="apitest",public_key="{key}"}}'
    assert lines[f"wireguard_received_bytes_total{label}"] > 0
    assert lines[f"dataplane_peer_received_packets_total{label}"] == 3
    assert lines['dataplane_peers{interface="apitest"}'] == 1
    assert lines['dataplane_api_operations_total{interface="apitest",kind="sessions_installed"}'] \
        == 1
    assert any(k.startswith("dataplane_drops_total{") for k in lines)
    assert any(k.startswith('dataplane_api_requests_total{code="201"') for k in lines)
    # the whole page parses as Prometheus text, each family once
    from prometheus_client.parser import text_string_to_metric_families
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["wireguard_sent_bytes"].type == "counter"
    assert families["wireguard_latest_handshake_seconds"].type == "gauge"
    assert families["wireguard_latest_handshake_seconds"].samples[0].value > 1.7e9
    [info] = families["dataplane_info"].samples
    assert info.labels == {"interface": "apitest", "backend": "socket",
                           "crypto": crypto.active()} and info.value == 1


def test_the_openapi_document_describes_every_route(world):
    doc = world.client.openapi()
    assert doc["openapi"].startswith("3.")
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops
              if m != "parameters"}
    served = {(r.method, r.resource.canonical) for r in world.server.app.router.routes()
              if r.method != "HEAD"}
    assert served == routes


# ---------------------------------------------------------------- concurrency

def test_many_clients_pushing_at_once_leave_the_tables_as_the_api_reports(world):
    """Clients race PUTs, DELETEs and bulk batches over a shared set of
    keys and prefixes (refusals are expected); afterwards every prefix the
    API reports routes, in the native trie, to the peer the API names, and
    nothing else is there."""
    import random
    import threading

    from dataplane.client import Client

    keys = [new_key() for _ in range(12)]
    prefixes = [f"10.8.{i}.0/24" for i in range(16)]
    errors = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with Client(world.path) as c:
            for _ in range(60):
                key = rnd.choice(keys)
                try:
                    roll = rnd.random()
                    if roll < 0.6:
                        c.put_peer(key, allowed_ips=rnd.sample(prefixes, rnd.randint(0, 3)),
                                   replace=rnd.random() < 0.5)
                    elif roll < 0.8:
                        c.delete_peer(key)
                    else:
                        c.bulk([{"op": "put_peer", "public_key": k,
                                 "allowed_ips": rnd.sample(prefixes, 1)}
                                for k in rnd.sample(keys, 3)])
                except ApiRequestError as e:
                    if e.status not in (404, 409):
                        errors.append(e)
    threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    reported = {p["public_key"]: p for p in world.client.peers()}
    assert len(reported) == len(world.iface.peers)
    holder = {}
    for key, p in reported.items():
        for prefix in p["allowed_ips"]:
            assert prefix not in holder, f"{prefix} reported for two peers"
            holder[prefix] = key
    for prefix in prefixes:
        addr = ipaddress.ip_network(prefix).network_address + 1
        native = world.device.lookup(addr)
        if prefix in holder:
            assert native == world.iface.peers[base64.b64decode(holder[prefix])].id
        else:
            assert native is None, prefix
    for key, p in reported.items():
        pid = world.iface.peers[base64.b64decode(key)].id
        assert sorted(str(n) for n in world.device.allowed_ips(pid)) == sorted(p["allowed_ips"])


def test_a_large_batch_arrives_whole():
    """Bodies come in pieces over the socket; the batch is read to its end."""
    world = ApiWorld(max_peers=4096, slots_log2=14)
    try:
        _large_batch(world)
    finally:
        world.close()


def _large_batch(world):
    keys = [new_key() for _ in range(3000)]
    out = world.client.bulk([{"op": "put_peer", "public_key": k,
                              "allowed_ips": [f"10.{9 + i // 65536}.{i // 256 % 256}.{i % 256}/32"]}
                             for i, k in enumerate(keys)])
    assert out["applied"] and len(out["results"]) == 3000
    assert len(world.iface.peers) == 3000


def test_a_batch_sees_its_own_earlier_lines(world):
    a, b = new_key(), new_key()
    s = Session(0xF1)
    out = world.client.bulk([
        {"op": "put_peer", "public_key": a, "allowed_ips": ["10.8.0.2/32"], "generation": 3},
        {"op": "put_session", "public_key": a, **s.body(generation=1)},
        {"op": "delete_peer", "public_key": a, "generation": 4},
        {"op": "put_peer", "public_key": a, "allowed_ips": ["10.8.0.9/32"], "generation": 5},
        {"op": "put_peer", "public_key": b, "allowed_ips": ["10.8.0.2/32"]},
    ])
    assert [r["status"] for r in out["results"]] == [201, 201, 204, 201, 201]
    view = world.client.peer(a)
    assert view["generation"] == 5 and view["allowed_ips"] == ["10.8.0.9/32"]
    assert view["session"] is None and view["keypairs"] == 0  # went with the deletion
    assert world.client.peer(b)["allowed_ips"] == ["10.8.0.2/32"]
    # within a batch, an older generation after a newer one is stale too
    body = refused(lambda: world.client.bulk([
        {"op": "put_peer", "public_key": b, "generation": 9},
        {"op": "put_peer", "public_key": b, "generation": 8}]), 409, "generation")
    assert body["line"] == 2
    assert world.client.peer(b)["generation"] == 1
    # a session for a peer the same batch deletes first is refused
    refused(lambda: world.client.bulk([
        {"op": "delete_peer", "public_key": b},
        {"op": "put_session", "public_key": b, **Session(0xF2).body()}]), 404, "public_key")
    assert b in {p["public_key"] for p in world.client.peers()}


def test_a_batch_that_fails_while_applying_is_undone():
    """Checks cannot see every limit (here: the device's keypair cap); when
    applying fails half-way, what the batch did is undone and its claimed
    indices are free again."""
    world = ApiWorld(max_keypairs=64)
    try:
        old = new_key()
        world.client.put_peer(old, allowed_ips=["10.8.9.9/32"], generation=2)
        sessions = [Session(0x5000 + i) for i in range(100)]
        ops = [{"op": "put_peer", "public_key": new_key(), "allowed_ips": [f"10.8.1.{i}/32"],
                "session": s.body()} for i, s in enumerate(sessions)]
        ops.insert(10, {"op": "put_peer", "public_key": old, "allowed_ips": ["10.8.9.10/32"],
                        "generation": 3})
        body = refused(lambda: world.client.bulk(ops), 507)
        assert body["applied"] is False
        assert [p["public_key"] for p in world.client.peers()] == [old]
        view = world.client.peer(old)
        assert view["generation"] == 2 and view["allowed_ips"] == ["10.8.9.9/32"]
        assert world.device.lookup(ipaddress.ip_address("10.8.9.9")) is not None
        assert world.device.lookup(ipaddress.ip_address("10.8.1.5")) is None
        assert world.device.memory()["keypairs_live"] == 0
        # the indices the batch claimed can be claimed again
        out = world.client.bulk(ops[:11])
        assert out["applied"]
    finally:
        world.close()


def test_peers_come_in_pages_in_key_order(world):
    keys = [new_key() for _ in range(25)]
    for i, k in enumerate(keys):
        world.client.put_peer(k, allowed_ips=[f"10.8.4.{i}/32"])
    status, first = world.client.request("GET", "/v1/peers?limit=7")
    assert [p["public_key"] for p in first["peers"]] == \
        sorted(keys, key=base64.b64decode)[:7]
    assert first["next"] == first["peers"][-1]["public_key"]
    # a peer added between pages is not missed (the order is the keys')
    late = new_key()
    world.client.put_peer(late, allowed_ips=["10.8.4.99/32"])
    got = first["peers"]
    after = first["next"]
    while after is not None:
        _, page = world.client.request("GET", f"/v1/peers?limit=7&after={quoted(after)}")
        assert len(page["peers"]) <= 7
        got += page["peers"]
        after = page["next"]
    want = sorted(keys + [late], key=base64.b64decode)
    if base64.b64decode(late) < base64.b64decode(first["next"]):
        want.remove(late)  # it sorts into the page already read
    assert [p["public_key"] for p in got] == want
    assert len(world.client.peers(page=10)) == 26
    assert world.client.request("GET", "/v1/peers")[1]["next"] is None
    for query, field in (("limit=0", "limit"), ("limit=10001", "limit"), ("limit=x", "limit"),
                         ("after=AAAA", "after"), ("offset=3", "offset")):
        refused(lambda: world.client.request("GET", f"/v1/peers?{query}"), 400, field)


def test_a_deleted_sessions_deadline_does_not_fire_for_the_next_one(world):
    """A peer deleted and put again starts its session generations anew:
    the old session's rekey deadline must not speak for the new one."""
    key = new_key()
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"],
                          session=Session(0xD1).body(activate="now", lifetime=70))
    world.client.delete_peer(key)
    world.client.put_peer(key, allowed_ips=["10.8.0.2/32"],
                          session=Session(0xD2).body(activate="now"))
    assert world.client.peer(key)["session"]["generation"] == 1
    lib.dp_device_test_advance_clock(11 * 1_000_000_000)  # the old one's rekey time
    world.call(world.ctrl.tick)
    assert [e.type for e in world.ctrl.events_since(0)] == []
    lib.dp_device_test_advance_clock(110 * 1_000_000_000)  # the new one's (60 s left)
    world.call(world.ctrl.tick)
    assert [e.type for e in world.ctrl.events_since(0)] == ["rekey_needed"]
