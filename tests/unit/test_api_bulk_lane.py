"""The bulk fast lane (native parse, one-pass check, one native install)
against the model's path: the same random batches pushed to two nodes, one
with the lane and one without, must get the same answers, line for line,
and leave the same peers, sessions and native tables. And where the device
refuses a batch the lane checked, nothing of it stays."""
import base64
import ipaddress
import json
import os
import random

import pytest

from dataplane.client import ApiRequestError
from dataplane.keys import PrivateKey

from .api_world import ApiWorld

# when the view was made, not what it holds
TIMES = ("installed_at", "expires_at", "latest_handshake")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def push(world: ApiWorld, ops: list[dict]) -> tuple[int, dict]:
    body = "".join(json.dumps(op) + "\n" for op in ops).encode()
    try:
        return world.client.request("POST", "/v1/bulk", body,
                                    content_type="application/x-ndjson")
    except ApiRequestError as e:
        return e.status, e.body


def state(world: ApiWorld) -> dict:
    peers = {}
    for view in world.client.peers():
        view = dict(view)
        for t in TIMES:
            view.pop(t, None)
        if view["session"] is not None:
            view["session"] = {k: v for k, v in view["session"].items() if k not in TIMES}
        peers[view["public_key"]] = view
    mem = world.device.memory()
    return {"peers": peers, "keypairs_live": mem["keypairs_live"],
            "indices_used": mem["indices_used"]}


class Scenario:
    """Batches a control plane might push, some of them wrong."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.keys = [PrivateKey.generate().public_key().base64() for _ in range(24)]
        self.last_put: dict[str, dict] = {}
        self.next_ip = 1
        self.next_index = 0x1000
        self.used_ips: list[str] = []
        self.generation = self.session_gen = 4

    def session(self) -> dict:
        rng = self.rng
        self.next_index += rng.choice((1, 1, 1, 7))
        s = {"receiver_index": self.next_index, "sender_index": rng.randrange(1 << 32),
             "send_key": b64(os.urandom(32)), "receive_key": b64(os.urandom(32))}
        if rng.random() < 0.5:
            s["activate"] = rng.choice(("now", "on_receive"))
        if rng.random() < 0.3:
            s["lifetime"] = rng.randrange(1, 181)
        if rng.random() < 0.2:  # mostly newer, sometimes stale
            self.session_gen += rng.choice((9, 9, 9, -20))
            s["generation"] = max(0, self.session_gen)
        return s

    def put_peer(self, key: str) -> dict:
        rng = self.rng
        if key in self.last_put and rng.random() < 0.7:
            op = dict(self.last_put[key])  # the same settings again
            op.pop("session", None)
            if "generation" in op and rng.random() < 0.1:
                op["generation"] += rng.choice((-1, 1))
        else:
            ips = []
            for _ in range(rng.choice((1, 1, 1, 2))):
                if self.used_ips and rng.random() < 0.04:
                    ips.append(rng.choice(self.used_ips))  # held by someone, maybe
                else:
                    self.next_ip += 1
                    ip = f"10.{self.next_ip >> 16 & 255}.{self.next_ip >> 8 & 255}." \
                         f"{self.next_ip & 255}/32"
                    if rng.random() < 0.2:
                        ip = f"fd00::{self.next_ip:x}/128"
                    self.used_ips.append(ip)
                    ips.append(ip)
            op = {"op": "put_peer", "public_key": key, "allowed_ips": ips}
            if rng.random() < 0.3:
                op["endpoint"] = rng.choice(("192.0.2.7:51820", "[2001:db8::9]:4500",
                                             "[::ffff:192.0.2.8]:51820"))
            if rng.random() < 0.2:
                op["preshared_key"] = b64(os.urandom(32))
            if rng.random() < 0.1:
                op["persistent_keepalive"] = 25
            if rng.random() < 0.4:  # mostly newer, sometimes stale
                self.generation += rng.choice((2, 2, 2, -3))
                op["generation"] = max(0, self.generation)
            if rng.random() < 0.1:
                op["replace"] = True
            self.last_put[key] = dict(op)
        if rng.random() < 0.6:
            op["session"] = self.session()
        return op

    def batch(self) -> list[dict]:
        rng = self.rng
        ops = []
        keys = rng.sample(self.keys, rng.randrange(1, 9))
        if rng.random() < 0.05:
            keys.append(keys[0])  # a key twice in a batch
        # half the batches as a provisioning control plane sends them: puts
        # of peers (new, or the same again) and of sessions
        provisioning = rng.random() < 0.5
        for key in keys:
            r = rng.random() * (0.85 if provisioning else 1)
            if r < 0.6:
                ops.append(self.put_peer(key))
            elif r < 0.85:
                if key not in self.last_put and rng.random() < 0.8:
                    ops.append(self.put_peer(key))  # mostly sessions of known peers
                else:
                    ops.append({"op": "put_session", "public_key": key, **self.session()})
            elif r < 0.93:
                op = {"op": "delete_peer", "public_key": key}
                if rng.random() < 0.5:
                    op["generation"] = max(0, self.generation + rng.choice((1, -3)))
                ops.append(op)
            else:
                ops.append({"op": "delete_session", "public_key": key})
        if rng.random() < 0.05 and ops and "session" in ops[-1]:
            # an index already given out
            ops[-1]["session"]["receiver_index"] = 0x1001
        return ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_lane_answers_and_leaves_what_the_model_path_does(seed):
    lane, model = ApiWorld(), ApiWorld()
    model.ctrl.native_bulk = False
    try:
        scenario = Scenario(seed)
        for step in range(120):
            ops = scenario.batch()
            got, want = push(lane, ops), push(model, ops)
            assert got == want, (step, ops)
            if step % 10 == 9:
                assert state(lane) == state(model), step
        assert state(lane) == state(model)
        # both paths were taken, and both succeeded and refused
        assert lane.ctrl.counters["bulk_native"] >= 10
        assert model.ctrl.counters["bulk_native"] == 0
        assert state(lane)["peers"], "the scenario left no peers"
    finally:
        lane.close()
        model.close()


def test_a_batch_the_device_refuses_halfway_leaves_nothing():
    """The lane's checks cannot see the device's keypair cap: the install
    stops at the cap, what it did is undone, and the model's path answers
    (507) for a batch that then changes nothing."""
    world = ApiWorld(max_keypairs=64)
    try:
        ops = [{"op": "put_peer", "public_key": PrivateKey.generate().public_key().base64(),
                "allowed_ips": [f"10.7.{i >> 8}.{i & 255}/32"],
                "session": {"receiver_index": 0x9000 + i, "sender_index": i,
                            "send_key": b64(os.urandom(32)),
                            "receive_key": b64(os.urandom(32))}} for i in range(100)]
        status, body = push(world, ops)
        assert status == 507 and body["applied"] is False
        assert world.client.peers() == []
        mem = world.device.memory()
        assert mem["keypairs_live"] == 0 and mem["indices_used"] == 0
        assert world.device.lookup(ipaddress.ip_address("10.7.0.5")) is None
        assert world.iface.prefix_owner == {}
        # under the cap the same shape goes through the lane
        status, body = push(world, ops[:50])
        assert status == 200 and body["applied"]
        assert world.ctrl.counters["bulk_native"] == 1
        assert world.device.memory()["keypairs_live"] == 50
    finally:
        world.close()


def test_an_index_in_use_is_refused_before_anything_changes():
    world = ApiWorld()
    try:
        held = PrivateKey.generate().public_key().base64()
        session = {"receiver_index": 0x4242, "sender_index": 1,
                   "send_key": b64(os.urandom(32)), "receive_key": b64(os.urandom(32))}
        assert push(world, [{"op": "put_peer", "public_key": held,
                             "allowed_ips": ["10.6.0.1/32"], "session": session}])[0] == 200
        fresh = PrivateKey.generate().public_key().base64()
        status, body = push(world, [
            {"op": "put_peer", "public_key": fresh, "allowed_ips": ["10.6.0.2/32"]},
            {"op": "put_session", "public_key": held, **dict(session, send_key=b64(os.urandom(32)))},
        ])
        assert status == 409 and body["field"] == "receiver_index", body
        assert [p["public_key"] for p in world.client.peers()] == [held]
        assert world.device.memory()["indices_used"] == 1
    finally:
        world.close()


def test_sessions_a_batch_installed_together_are_due_together():
    """The lane gives the sessions of one batch one deadline (a group):
    each still gets its rekey_needed and expired events, and a session
    replaced in between is left out of the group's."""
    from dataplane._native import lib
    world = ApiWorld()
    try:
        keys = [PrivateKey.generate().public_key().base64() for _ in range(3)]
        ops = [{"op": "put_peer", "public_key": k, "allowed_ips": [f"10.5.0.{i}/32"],
                "session": {"receiver_index": 0x7000 + i, "sender_index": i, "lifetime": 70,
                            "send_key": b64(os.urandom(32)), "receive_key": b64(os.urandom(32))}}
               for i, k in enumerate(keys)]
        assert push(world, ops)[0] == 200 and world.ctrl.counters["bulk_native"] == 1
        world.call(world.ctrl.tick)
        assert world.ctrl.events_since(0) == []
        lib.dp_device_test_advance_clock(11 * 1_000_000_000)  # 59 s left
        world.call(world.ctrl.tick)
        due = world.ctrl.events_since(0)
        assert sorted((e.type, e.data["public_key"]) for e in due) == \
            sorted(("rekey_needed", k) for k in keys)
        # the control plane answers for one of them
        world.client.put_session(keys[1], receiver_index=0x7100, sender_index=9,
                                 send_key=os.urandom(32), receive_key=os.urandom(32))
        lib.dp_device_test_advance_clock(60 * 1_000_000_000)
        world.call(world.ctrl.tick)
        world.call(world.ctrl.tick)
        expired = [e.data["public_key"] for e in world.ctrl.events_since(due[-1].id)
                   if e.type == "expired"]
        assert sorted(expired) == sorted([keys[0], keys[2]])
        assert world.client.peer(keys[0])["session"]["expired"] is True
        assert world.client.peer(keys[1])["session"]["expired"] is False
    finally:
        world.close()


def test_a_batch_whose_records_fail_is_taken_back_from_the_device(monkeypatch):
    """Were recording an applied batch to fail (nothing there should), the
    device must not keep what the API does not know of."""
    from dataplane.api import controller
    world = ApiWorld()
    made = []

    def failing(*args):
        made.append(args)
        if len(made) == 5:
            raise MemoryError("test")
        return real(*args)
    real = controller.SessionRecord
    monkeypatch.setattr(controller, "SessionRecord", failing)
    try:
        ops = [{"op": "put_peer", "public_key": PrivateKey.generate().public_key().base64(),
                "allowed_ips": [f"10.4.0.{i}/32"],
                "session": {"receiver_index": 0x6000 + i, "sender_index": i,
                            "send_key": b64(os.urandom(32)), "receive_key": b64(os.urandom(32))}}
               for i in range(10)]
        status, _ = push(world, ops)
        assert status == 500
        assert world.client.peers() == [] and world.iface.prefix_owner == {}
        mem = world.device.memory()
        assert mem["keypairs_live"] == 0 and mem["indices_used"] == 0
        assert world.device.lookup(ipaddress.ip_address("10.4.0.7")) is None
        monkeypatch.setattr(controller, "SessionRecord", real)
        assert push(world, ops)[0] == 200
        assert len(world.client.peers()) == 10
    finally:
        world.close()


def test_sessions_refused_half_way_leave_the_api_and_the_device_agreeing():
    """Peers with sessions, then a batch of new sessions for them that the
    device's keypair cap stops half-way: whatever each peer is left with,
    the API reports what the device holds (a session iff keypairs)."""
    world = ApiWorld(max_keypairs=48)
    try:
        keys = [PrivateKey.generate().public_key().base64() for _ in range(20)]

        def session(index: int) -> dict:
            return {"receiver_index": index, "sender_index": index, "activate": "now",
                    "send_key": b64(os.urandom(32)), "receive_key": b64(os.urandom(32))}
        first = [{"op": "put_peer", "public_key": k, "allowed_ips": [f"10.3.0.{i}/32"],
                  "session": session(0x8000 + i)} for i, k in enumerate(keys)]
        assert push(world, first)[0] == 200
        # new sessions for half the peers (each keeps its old one as
        # previous), then more new peers than the keypair chunks hold, then
        # sessions for the other half
        sessions = [{"op": "put_session", "public_key": k, **session(0x8100 + i)}
                    for i, k in enumerate(keys)]
        second = sessions[:10]
        second += [{"op": "put_peer", "public_key": PrivateKey.generate().public_key().base64(),
                    "allowed_ips": [f"10.3.1.{i}/32"], "session": session(0x8200 + i)}
                   for i in range(100)]
        second += sessions[10:]
        status, body = push(world, second)
        assert status == 507 and body["applied"] is False, body
        views = {v["public_key"]: v for v in world.client.peers()}
        assert set(views) == set(keys)  # the new peers are gone
        for k in keys:
            v = views[k]
            assert (v["session"] is not None) == (v["keypairs"] > 0), v
            if v["session"] is not None:  # untouched: still the first batch's
                assert v["session"]["receiver_index"] < 0x8100, v
        assert world.device.memory()["indices_used"] == \
            sum(v["keypairs"] for v in views.values())
        # the device got to the first half's sessions (dropped now), not
        # to the second half's (the first batch's, still there)
        assert [views[k]["session"] is None for k in keys] == [True] * 10 + [False] * 10
        # a dropped session's generation stays held: the next one counts on
        view = world.client.put_session(keys[0], **{
            k: v for k, v in session(0x8300).items() if k != "activate"})
        assert view["session"]["generation"] == 2, view
    finally:
        world.close()
