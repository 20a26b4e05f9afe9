"""What the API does to the interface: peers, pushed sessions, generations,
all-or-nothing batches, and the events a control plane waits on.

Everything here runs on the daemon's event loop, one request at a time, so
the native tables and what the API reports never disagree. A batch (one
PUT or a whole NDJSON bulk) is checked whole against the state it would
meet, then applied; what fails at apply time (which the checks make rare:
an index taken by a handshake in between, memory) is undone: peers it
created are removed, settings it changed restored, indices it claimed
released; a peer that got a session from the failed batch loses its
sessions (keys cannot be taken back one by one), and peers it deleted stay
deleted (their keys were wiped at once)."""
from __future__ import annotations

import bisect
import collections
import errno
import heapq
import hmac
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from dataplane.api import bulk, model
from dataplane.api.model import ApiError, BulkOp, DeleteOp, PeerSpec, SessionSpec
from dataplane.device import DeviceError, Endpoint
from dataplane.interface import NS, REJECT_AFTER_NS, Interface, Peer
from dataplane.keys import PresharedKey, PublicKey
from dataplane.obfuscation import Obfuscation, ObfuscationError
from dataplane._native import lib

log = logging.getLogger("dataplane.api")

REKEY_AFTER_NS = lib.DP_WG_REKEY_AFTER_TIME * NS
# A session is due for replacement this long before it expires (as a
# WireGuard initiator rekeys at REKEY_AFTER_TIME of REJECT_AFTER_TIME).
REKEY_MARGIN_NS = REJECT_AFTER_NS - REKEY_AFTER_NS
# A peer with traffic but no session asks again after this long.
REASK_NS = lib.DP_WG_REKEY_TIMEOUT * NS
EVENT_HISTORY = 4096
TOMBSTONES_MAX = 1 << 20


@dataclass(slots=True)
class SessionRecord:
    generation: int
    receiver_index: int
    sender_index: int
    lifetime: float
    activate: str
    digest: bytes            # keyed hash of the keys: tells a repeat from a change
    installed_ns: int        # the data path's clock
    installed_wall: float
    expires_ns: int
    rekey_sent: bool = False
    expired_sent: bool = False


@dataclass(slots=True)
class PeerRecord:
    """What the API knows of a peer beyond the native tables."""
    generation: int = 0
    settings: Optional[bytes] = None  # digest of the last PUT (None: config or UAPI made it)
    session: Optional[SessionRecord] = None
    session_floor: int = -1  # a deleted session's generation: older pushes are stale
    asked_ns: int = -(1 << 62)


@dataclass
class Event:
    id: int
    type: str
    data: dict


@dataclass
class _Overlay:
    """The state a batch would leave, while it is being checked."""
    exists: dict = field(default_factory=dict)       # key -> bool
    generation: dict = field(default_factory=dict)   # key -> int
    stones: dict = field(default_factory=dict)       # key -> generation deleted at
    reset: set = field(default_factory=set)          # keys deleted: their record is gone
    touched: set = field(default_factory=set)        # keys put by the batch
    owner: dict = field(default_factory=dict)        # prefix -> key or None
    dropped: dict = field(default_factory=dict)      # key -> the prefixes it will hold
    session_gen: dict = field(default_factory=dict)  # key -> generation or None
    indices: set = field(default_factory=set)
    peers: int = 0
    own_public: Optional[PublicKey] = None


@dataclass
class _Step:
    """What checking decided for one operation."""
    kind: str
    gen: int = 0
    install: bool = False
    sgen: Optional[int] = None
    digest: Optional[bytes] = None


class Controller:
    def __init__(self, iface: Interface, routes_changed: Callable[[list, list], None],
                 interface_info: Callable[[], dict],
                 set_listen_port: Callable[[int], None],
                 set_fwmark: Callable[[int], None],
                 set_obfuscation: Optional[Callable[[Obfuscation, bool], None]] = None):
        self.iface = iface
        self.routes_changed = routes_changed
        self.interface_info = interface_info
        self.set_listen_port = set_listen_port
        self.set_fwmark = set_fwmark
        # the daemon's applies a profile to the XDP program as well
        self.set_obfuscation = set_obfuscation or iface.set_obfuscation
        self.records: dict[PublicKey, PeerRecord] = {}
        self.tombstones: collections.OrderedDict[PublicKey, int] = collections.OrderedDict()
        self.interface_generation = 0
        self._sorted: Optional[tuple[int, list]] = None  # (peers_version, keys in order)
        self._digest_key = os.urandom(32)
        # POST /v1/bulk tries the native parser and apply_parsed first
        self.native_bulk = True
        # (when, kind, generation or group number, key or group): kind 0 a
        # session's rekey, 1 its expiry; 2 and 3 the same for a group of
        # sessions a bulk batch installed together
        self._deadlines: list = []
        self._group_seq = 0
        self._next_event = 1
        self.history: collections.deque[Event] = collections.deque(maxlen=EVENT_HISTORY)
        self.subscribers: set = set()
        self.counters = collections.Counter()
        self._now = (0, 0)  # (data path clock, Unix ns) of the batch being applied
        iface.on_rekey_needed = self._rekey_needed

    @property
    def digest_key(self) -> bytes:
        """Keys the digests that tell a repeated push from a change."""
        return self._digest_key

    # ---------------------------------------------------------------- reading

    def record(self, key: PublicKey) -> PeerRecord:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = PeerRecord()
        return rec

    def interface(self) -> dict:
        info = self.interface_info()
        info["obfuscation"] = self.iface.obfuscation.as_json()
        info["accept_plain_wireguard"] = self.iface.accept_plain
        info["generation"] = self.interface_generation
        return info

    def peer(self, key: PublicKey, stats=None) -> dict:
        p = self.iface.peers.get(key)
        if p is None:
            raise ApiError(404, "no such peer", "public_key")
        return self._peer_view(p, stats)

    def peers(self, limit: Optional[int] = None,
              after: Optional[PublicKey] = None) -> tuple[list[dict], Optional[str]]:
        """Every peer; or, with `limit`, a page of them in the order of
        their keys' bytes, starting after the key `after`. Also the key to
        ask for the next page after (None: this was the last)."""
        peers = self.iface.peers
        if limit is None and after is None:
            table = self.iface.device.stats_table()
            return [self._peer_view(p, table[p.id]) for p in peers.values()], None
        if self._sorted is None or self._sorted[0] != self.iface.peers_version:
            self._sorted = (self.iface.peers_version, sorted(peers))
        ordered = self._sorted[1]
        start = bisect.bisect_right(ordered, after) if after is not None else 0
        end = len(ordered) if limit is None else start + limit
        page = [peers[k] for k in ordered[start:end]]
        views = [self._peer_view(p) for p in page]
        return views, (page[-1].public_key.base64() if page and end < len(ordered) else None)

    def _peer_view(self, p: Peer, row=None) -> dict:
        if row is None:  # one peer's counters (the table has every peer's)
            st = self.iface.device.stats(p.id)
            row = {"rx_bytes": st.rx_bytes, "tx_bytes": st.tx_bytes,
                   "rx_packets": st.rx_packets, "tx_packets": st.tx_packets,
                   "keypairs": st.keypairs}
        rec = self.records.get(p.public_key) or PeerRecord()
        ep = self.iface.device.endpoint(p.id)
        sess = None
        if rec.session is not None:
            s = rec.session
            sess = {"generation": s.generation, "receiver_index": s.receiver_index,
                    "sender_index": s.sender_index, "activate": s.activate,
                    "installed_at": s.installed_wall,
                    "expires_at": s.installed_wall + s.lifetime,
                    "expired": self.iface.clock() >= s.expires_ns}
        return {
            "public_key": p.public_key.base64(),
            "has_preshared_key": p.preshared_key is not None,
            "allowed_ips": sorted(model.format_prefix(k) for k in p.prefixes),
            "endpoint": _format_endpoint(ep),
            "persistent_keepalive": p.persistent_keepalive,
            "generation": rec.generation,
            "managed": p.managed,
            "session": sess,
            "latest_handshake": p.last_handshake_wall_ns / NS if p.last_handshake_wall_ns
            else None,
            "rx_bytes": int(row["rx_bytes"]), "tx_bytes": int(row["tx_bytes"]),
            "rx_packets": int(row["rx_packets"]), "tx_packets": int(row["tx_packets"]),
            "keypairs": int(row["keypairs"]),
        }

    def changed_elsewhere(self) -> None:
        """The UAPI (`wg set`) changed peers: a repeated PUT must apply again."""
        for rec in self.records.values():
            rec.settings = None

    # ---------------------------------------------------------------- writing

    def patch_interface(self, patch: model.InterfacePatch) -> dict:
        g = patch.generation
        if g is not None and g < self.interface_generation:
            raise ApiError(409, f"generation {g} is older than the interface's "
                                f"({self.interface_generation})", "generation",
                           held=self.interface_generation)
        wire = self._wire_after(patch)
        if patch.listen_port is not None:
            self.set_listen_port(patch.listen_port)
        if patch.fwmark is not None:
            self.set_fwmark(patch.fwmark)
        if patch.set_private_key:
            self.iface.set_private_key(patch.private_key)
        if wire is not None:
            self.set_obfuscation(*wire)
        self.interface_generation = g if g is not None else self.interface_generation + 1
        return self.interface()

    def _wire_after(self, patch: model.InterfacePatch) -> Optional[tuple[Obfuscation, bool]]:
        """The profile and plain-alongside setting a PATCH leaves, checked
        whole against what the interface holds; None if it changes
        neither."""
        iface = self.iface
        if not patch.obfuscation and patch.accept_plain_wireguard is None:
            return None
        try:
            obf = Obfuscation.from_settings(patch.obfuscation, base=iface.obfuscation, lower=True)
        except ObfuscationError as e:
            raise model.obfuscation_error(e) from None
        accept = patch.accept_plain_wireguard
        if accept is None:
            # turning obfuscation off ends serving plain WireGuard beside it
            accept = iface.accept_plain and not obf.profile_is_plain
        elif accept and obf.profile_is_plain:
            raise model.bad("accept_plain_wireguard",
                            "the profile is plain WireGuard (no s1..s4 or h1..h4 set), which "
                            "is all the port serves anyway; set obfuscation in the same request")
        if accept:
            try:
                obf.check_plain_alongside(lower=True, key="accept_plain_wireguard")
            except ObfuscationError as e:
                raise model.obfuscation_error(e) from None
        if (obf, accept) == (iface.obfuscation, iface.accept_plain):
            return None
        return obf, accept

    def put_peer(self, spec: PeerSpec) -> tuple[int, dict]:
        results, status = self.apply([BulkOp(1, "put_peer", spec.public_key, spec)])
        if status >= 400:
            raise results[0]["error_obj"]
        return results[0]["status"], self.peer(spec.public_key)

    def delete_peer(self, key: PublicKey, generation: Optional[int]) -> int:
        results, status = self.apply([BulkOp(1, "delete_peer", key, DeleteOp(key, generation))])
        if status >= 400:
            raise results[0]["error_obj"]
        return results[0]["status"]

    def put_session(self, key: PublicKey, spec: SessionSpec) -> tuple[int, dict]:
        results, status = self.apply([BulkOp(1, "put_session", key, spec)])
        if status >= 400:
            raise results[0]["error_obj"]
        return results[0]["status"], self.peer(key)

    def delete_session(self, key: PublicKey, generation: Optional[int]) -> int:
        results, status = self.apply([BulkOp(1, "delete_session", key,
                                             DeleteOp(key, generation))])
        if status >= 400:
            raise results[0]["error_obj"]
        return results[0]["status"]

    # ---------------------------------------------------------------- batches

    def apply(self, ops: list[BulkOp]) -> tuple[list[dict], int]:
        """Check every operation against the state the batch would meet,
        then apply all of them, or none. Returns per-operation results and
        the batch's HTTP status."""
        try:
            try:
                plan = self._check(ops)
            except _Refused as r:
                return self._refusal(ops, r), r.error.status
            claimed: list[int] = []
            for op, step in zip(ops, plan):
                if step.install:
                    index = _session_of(op).receiver_index
                    try:
                        self.iface.device.index_claim(index)
                    except DeviceError as e:
                        for i in claimed:
                            self.iface.device.index_release(i)
                        err = ApiError(409, f"{_session_field(op)}receiver_index is in use "
                                            f"({e.strerror or e}); use a fresh one",
                                       _session_field(op) + "receiver_index")
                        return self._refusal(ops, _Refused(op.line, err)), 409
                    claimed.append(index)
            results: list[dict] = []
            self._now = (self.iface.clock(), time.time_ns())
            undo: list[Callable[[], None]] = []
            installed: dict[int, PublicKey] = {}
            added, removed = [], []
            try:
                for op, step in zip(ops, plan):
                    results.append(self._apply_one(op, step, undo, installed, added, removed))
            except Exception as e:  # noqa: BLE001 - undone and reported below
                log.exception("API batch failed at line %d while applying; undoing it", op.line)
                self._undo(undo, claimed, installed)
                err = ApiError(507 if isinstance(e, (OSError, MemoryError)) else 500,
                               f"applying the batch failed at line {op.line} "
                               f"({type(e).__name__}); nothing was applied")
                return self._refusal(ops, _Refused(op.line, err)), err.status
            if added or removed:
                try:
                    self.routes_changed(added, removed)
                except Exception:  # noqa: BLE001 - the batch stands; routes are the kernel's
                    log.exception("API batch applied, but updating the kernel's routes failed")
            return results, 200
        finally:
            for op in ops:
                s = _session_of(op)
                if s is not None:
                    s.wipe()

    # ---------------------------------------------------------------- the fast lane

    def apply_parsed(self, b: bulk.Parsed) -> Optional[tuple[list[dict], int]]:
        """A batch the native parser read, applied as apply() would apply
        it, when every line is a put_peer or put_session of its own peer
        that creates a peer without conflicts, repeats one's settings,
        and/or installs a session: the common shapes of a bulk push. The
        device takes the whole batch in one call. None: the batch is not of
        that shape, or the device refused it (and nothing changed); apply()
        decides it then, with its errors."""
        iface = self.iface
        peers, records, stones, owner = iface.peers, self.records, self.tombstones, \
            iface.prefix_owner
        own = iface.private_key.public_key() if iface.private_key is not None else None
        n = b.n
        ops, flags, keys, prefixes = b.op, b.flags, b.public_key, b.prefixes
        gens, sgens = b.generation, b.session_generation
        indices, senders, lifetimes = b.receiver_index, b.sender_index, b.lifetime
        seen: set = set()
        claimed: set = set()
        taken: set = set()
        room = iface.device.max_peers - len(peers)
        actions = bytearray(n)
        gen_of = [0] * n
        sgen_of: list = [None] * n
        creating = []
        DO_CREATE, DO_SETTINGS, DO_SESSION = (lib.DP_BULK_DO_CREATE, lib.DP_BULK_DO_SETTINGS,
                                              lib.DP_BULK_DO_SESSION)
        for i in range(n):
            key = keys[i]
            if key in seen:
                return None
            seen.add(key)
            f = flags[i]
            peer = peers.get(key)
            rec = records.get(key)
            act = 0
            if ops[i] == bulk.PUT_PEER:
                if key == own:
                    return None
                g = gens[i] if f & bulk.HAS_GENERATION else None
                if peer is not None:  # the same settings again
                    if rec is None or rec.settings is None or \
                            not hmac.compare_digest(rec.settings, b.settings_digest[i]):
                        return None
                    if g is not None and g < rec.generation:
                        return None
                    for p in prefixes[i]:
                        if owner.get(p) is not peer:
                            return None
                    gen_of[i] = g if g is not None else rec.generation
                else:
                    if rec is not None:
                        return None
                    stone = stones.get(key)
                    if stone is not None and g is not None and g <= stone:
                        return None
                    room -= 1
                    if room < 0:
                        return None
                    for p in prefixes[i]:
                        if p in owner or p in taken:
                            return None
                        taken.add(p)
                    gen_of[i] = g if g is not None else (stone if stone is not None else 0) + 1
                    act = DO_CREATE | DO_SETTINGS
                    creating.append(i)
                sg_given = sgens[i] if f & bulk.SESSION_HAS_GENERATION else None
            elif ops[i] == bulk.PUT_SESSION:
                if peer is None:
                    return None
                sg_given = gens[i] if f & bulk.HAS_GENERATION else None
            else:
                return None
            if f & bulk.HAS_SESSION:
                held = rec.session if rec is not None else None
                if held is not None and (sg_given is None or sg_given == held.generation) and \
                        (held.receiver_index, held.sender_index, held.lifetime,
                         held.activate) == (indices[i], senders[i], float(lifetimes[i]),
                                            "now" if f & bulk.ACTIVATE_NOW else "on_receive") \
                        and hmac.compare_digest(held.digest, b.session_digest[i]):
                    sgen_of[i] = held.generation
                else:
                    sg = _session_gen(rec)
                    if sg_given is not None and sg is not None and sg_given <= sg:
                        return None
                    if indices[i] in claimed:
                        return None
                    claimed.add(indices[i])
                    sgen_of[i] = sg_given if sg_given is not None else \
                        (sg if sg is not None else 0) + 1
                    act |= DO_SESSION
            actions[i] = act

        # the device, in one call; ids for the new peers first
        ids = [0] * n
        try:
            for i, pid in zip(creating, iface.reserve_ids(len(creating))):
                ids[i] = pid
        except OSError:
            return None
        for i in range(n):
            if not actions[i] & DO_CREATE:
                ids[i] = peers[keys[i]].id
        now, wall = iface.clock(), time.time_ns()
        # The device installs (without the GIL) while the records are made
        # here; if either fails, both are taken back.
        native: list = []

        def install() -> None:
            try:
                native.append(iface.device.bulk_apply(b.c, ids, actions, now))
            except BaseException as e:  # noqa: BLE001 - before the device call: nothing done
                native.append((0, -errno.EFAULT, e))
        worker = threading.Thread(target=install, name="bulk-apply")
        undo = _RecordsUndo()
        failure: Optional[BaseException] = None
        worker.start()
        try:
            out = self._record_parsed(b, ids, actions, gen_of, sgen_of, now, wall, undo)
        except BaseException as e:  # noqa: BLE001 - re-raised below, once undone
            failure = e
        finally:
            worker.join()  # the batch's records stay mapped until the device is done
        done, err = native[0][:2]
        if failure is not None or err < 0:
            undo.run(self)
            self._undo_native(keys, ids, actions, done)
            touched = any(actions[i] & DO_SESSION and not actions[i] & DO_CREATE
                          for i in range(done))
            if failure is not None:
                log.error("API bulk: recording an applied batch failed; undone")
                try:
                    raise failure
                finally:
                    failure = None  # no cycle through the traceback
            at = b.line[min(done, n - 1)]
            if touched:
                # peers that had sessions lost them (as apply() would leave
                # them): the batch is refused here, not tried again
                return self._refused_parsed(b, at, err), 507
            log.info("API bulk: the device refused the batch at line %d (%s); "
                     "checking it line by line", at, os.strerror(-err))
            return None
        results, added, kick, cancel, groups, installed = out
        for peer in cancel:
            iface._cancel_pending(peer)
        for lifetime, keys_due in groups.items():
            self._group_seq += 1
            heapq.heappush(self._deadlines, (now + lifetime * NS - REKEY_MARGIN_NS, 2,
                                             self._group_seq, (now, lifetime * NS, keys_due)))
        self.counters["sessions_installed"] += installed
        self.counters["bulk_native"] += 1
        for peer in kick:
            try:
                self._kick(peer)
            except Exception:  # noqa: BLE001 - the batch stands; the timers try again
                log.exception("API bulk: starting a persistent keepalive failed")
        if added:
            try:
                self.routes_changed(added, [])
            except Exception:  # noqa: BLE001 - the batch stands; routes are the kernel's
                log.exception("API batch applied, but updating the kernel's routes failed")
        return results, 200

    def _refused_parsed(self, b: bulk.Parsed, at: int, err: int) -> list[dict]:
        """apply()'s answer for a batch that failed while applying."""
        error = ApiError(507, f"applying the batch failed at line {at} "
                              f"({os.strerror(-err)}); nothing was applied")
        return [{"line": line, "op": bulk.OP_NAMES[op], "status": error.status,
                 **error.body(), "error_obj": error} if line == at else
                {"line": line, "op": bulk.OP_NAMES[op], "status": 0, "result": "not applied"}
                for line, op in zip(b.line, b.op)]

    def _undo_native(self, keys: list, ids: list, actions: bytearray, done: int) -> None:
        """The first `done` operations of a batch, taken back from the
        device: peers it created removed, sessions it installed on other
        peers dropped with the peer's others (keys cannot be taken back one
        by one: as apply() does, the peer is left without a session)."""
        iface = self.iface
        for i in range(done):
            if actions[i] & lib.DP_BULK_DO_CREATE:
                iface.device.peer_remove(ids[i])
            elif actions[i] & lib.DP_BULK_DO_SESSION:
                peer = iface.peers[keys[i]]
                iface.drop_sessions(peer)
                rec = self.records.get(keys[i])
                if rec is not None:
                    _forget_session(rec)

    def _record_parsed(self, b: bulk.Parsed, ids: list, actions: bytearray, gen_of: list,
                       sgen_of: list, now: int, wall: int, undo: "_RecordsUndo"):
        """The protocol's and the API's records of what the device holds
        once the batch is in (the answer, prefixes added, peers to kick,
        peers whose pending handshake to cancel, session groups by
        lifetime, sessions installed); `undo` learns how to take each
        back. Runs while the device installs: nothing here calls it."""
        iface = self.iface
        peers, records, stones, owner = iface.peers, self.records, self.tombstones, \
            iface.prefix_owner
        n = b.n
        ops, flags, keys, prefixes = b.op, b.flags, b.public_key, b.prefixes
        indices, senders, lifetimes = b.receiver_index, b.sender_index, b.lifetime
        PUT_PEER, ACTIVATE_NOW = bulk.PUT_PEER, bulk.ACTIVATE_NOW
        DO_CREATE, DO_SESSION = lib.DP_BULK_DO_CREATE, lib.DP_BULK_DO_SESSION
        results: list[dict] = []
        added: list = []
        installed = 0
        by_id, line = iface.by_id, b.line
        groups: dict[int, list] = {}  # lifetime -> keys: one deadline for each
        kick: list[Peer] = []
        cancel: list[Peer] = []
        wall_s = wall / NS
        created, changed = undo.created, undo.changed
        for i in range(n):
            key = keys[i]
            f = flags[i]
            act = actions[i]
            if act & DO_CREATE:
                pid = ids[i]
                created.append((key, stones.pop(key, None) if stones else None))
                peer = Peer(pid, key)
                peers[key] = peer
                by_id[pid] = peer
                iface.peers_version += 1
                mine = peer.prefixes
                for p in prefixes[i]:
                    owner[p] = peer
                    mine.add(p)
                    added.append(p)
                if f & bulk.HAS_PSK:
                    peer.preshared_key = PresharedKey(b.preshared_key(i))
                if b.keepalive[i]:
                    iface.set_persistent_keepalive(peer, b.keepalive[i])
                rec = records[key] = PeerRecord(gen_of[i], b.settings_digest[i])
            else:
                peer = peers[key]
                rec = records.get(key)
                changed.append((key, None if rec is None else
                                (rec.generation, rec.settings, rec.session),
                                (peer.managed, peer.last_handshake_ns,
                                 peer.last_handshake_wall_ns, peer.attempt_started_ns)))
                if rec is None:
                    rec = records[key] = PeerRecord()
                if ops[i] == PUT_PEER:
                    rec.settings = b.settings_digest[i]
                    rec.generation = gen_of[i]
            if act & DO_SESSION:
                now_flag = f & ACTIVATE_NOW
                # a pending handshake is cancelled once the device has the
                # batch (its index released then, not while the device
                # claims the batch's)
                if peer.pending is not None:
                    cancel.append(peer)
                iface.adopt_session(peer, bool(now_flag), now, wall, cancel_pending=False)
                expires = now + lifetimes[i] * NS
                rec.session = SessionRecord(sgen_of[i], indices[i], senders[i],
                                            float(lifetimes[i]),
                                            "now" if now_flag else "on_receive",
                                            b.session_digest[i], now, wall_s, expires)
                installed += 1
                due = groups.get(lifetimes[i])
                if due is None:
                    due = groups[lifetimes[i]] = []
                due.append(key)
            if act & DO_CREATE and b.keepalive[i]:
                kick.append(peer)
            if ops[i] == PUT_PEER:
                result = {"line": line[i], "op": "put_peer",
                          "status": 201 if act & DO_CREATE else 200,
                          "generation": rec.generation}
                if rec.session is not None:
                    result["session_generation"] = rec.session.generation
                results.append(result)
            else:
                results.append({"line": line[i], "op": "put_session",
                                "status": 201 if act & DO_SESSION else 200,
                                "session_generation": rec.session.generation})
        return results, added, kick, cancel, groups, installed

    def _undo(self, undo: list, claimed: list[int], installed: dict) -> None:
        for fn in reversed(undo):
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("API batch: an undo step failed")
        for index in claimed:
            if index not in installed:
                self.iface.device.index_release(index)
        # keypairs installed by the batch cannot be taken back one by one
        for key in set(installed.values()):
            peer = self.iface.peers.get(key)
            if peer is not None:
                self.iface.drop_sessions(peer)
                _forget_session(self.record(key))

    def _refusal(self, ops: list[BulkOp], r: "_Refused") -> list[dict]:
        out = []
        for op in ops:
            if op.line == r.line:
                out.append({"line": op.line, "op": op.op, "status": r.error.status,
                            **r.error.body(), "error_obj": r.error})
            else:
                out.append({"line": op.line, "op": op.op, "status": 0,
                            "result": "not applied"})
        return out

    def _check(self, ops: list[BulkOp]) -> list["_Step"]:
        iface = self.iface
        own = iface.private_key
        ov = _Overlay(peers=len(iface.peers),
                      own_public=own.public_key() if own is not None else None)
        plan = []
        for op in ops:
            key = op.public_key
            exists = ov.exists.get(key, key in iface.peers)
            rec = None if key in ov.reset else self.records.get(key)
            held = ov.generation.get(key, rec.generation if rec else None)
            stone = ov.stones.get(key, self.tombstones.get(key))
            try:
                if op.op == "put_peer":
                    plan.append(self._check_put(op, ov, exists, rec, held, stone))
                elif op.op == "delete_peer":
                    g = op.spec.generation
                    if exists and g is not None and held is not None and g < held:
                        raise _stale(g, held)
                    step = _Step("delete" if exists else "absent")
                    if exists:
                        ov.exists[key] = False
                        ov.peers -= 1
                        ov.stones[key] = max(g if g is not None else 0, held or 0)
                        ov.generation.pop(key, None)
                        ov.reset.add(key)
                        for p in self._prefixes_of(key, ov):
                            if ov.owner.get(p, self._owner(p)) == key:
                                ov.owner[p] = None
                        ov.dropped[key] = ()
                        ov.session_gen[key] = None
                    plan.append(step)
                elif op.op == "put_session":
                    if not exists:
                        raise ApiError(404, "no such peer (put the peer first)", "public_key")
                    plan.append(self._check_session(op.spec, key, ov, rec, ""))
                else:  # delete_session
                    if not exists:
                        raise ApiError(404, "no such peer", "public_key")
                    sg = ov.session_gen[key] if key in ov.session_gen else _session_gen(rec)
                    g = op.spec.generation
                    if g is not None and sg is not None and g < sg:
                        raise _stale(g, sg)
                    ov.session_gen[key] = max(g if g is not None else 0, sg or 0)
                    plan.append(_Step("drop_session", sgen=ov.session_gen[key]))
            except ApiError as e:
                raise _Refused(op.line, e) from None
        return plan

    def _check_put(self, op: BulkOp, ov: _Overlay, exists: bool, rec, held, stone) -> "_Step":
        spec: PeerSpec = op.spec
        key = op.public_key
        if key == ov.own_public:
            raise model.bad("public_key", "this is the interface's own public key")
        g = spec.generation
        same = False
        digest = self._settings_digest(spec)
        if exists:
            same = rec is not None and rec.settings is not None and \
                key not in ov.touched and hmac.compare_digest(rec.settings, digest)
            if g is not None and held is not None:
                if g < held:
                    raise _stale(g, held)
                if g == held and not same and rec is not None and rec.settings is not None:
                    raise ApiError(409, f"generation {g} is already held with other settings; "
                                        f"push a newer one", "generation", held=held)
        else:
            if stone is not None and g is not None and g <= stone:
                raise ApiError(409, f"generation {g} is not newer than the peer's deletion "
                                    f"(generation {stone})", "generation", held=stone)
            if ov.peers >= self.iface.device.max_peers:
                raise ApiError(507, f"no room for another peer ([DataPlane] MaxPeers is "
                                    f"{self.iface.device.max_peers})", "public_key")
            ov.peers += 1
        for i, p in enumerate(spec.allowed_ips):
            holder = ov.owner[p] if p in ov.owner else self._owner(p)
            if holder is not None and holder != key and not spec.replace:
                raise ApiError(409, f"allowed_ips[{i}]: {model.format_prefix(p)} is held by "
                                    f"another peer; set \"replace\": true to move it",
                               f"allowed_ips[{i}]", held_by=holder.base64())
        for p in self._prefixes_of(key, ov):
            if ov.owner.get(p, self._owner(p)) == key:
                ov.owner[p] = None
        for p in spec.allowed_ips:
            holder = ov.owner[p] if p in ov.owner else self._owner(p)
            if holder is not None and holder != key:
                ov.dropped[holder] = tuple(q for q in self._prefixes_of(holder, ov) if q != p)
            ov.owner[p] = key
        ov.dropped[key] = spec.allowed_ips
        ov.exists[key] = True
        ov.touched.add(key)
        base = held if held is not None else (stone if stone is not None else 0)
        gen = g if g is not None else base + (0 if same else 1)
        ov.generation[key] = gen
        step = _Step("keep" if same else ("update" if exists else "create"), gen=gen,
                     digest=digest)
        if spec.session is not None:
            s = self._check_session(spec.session, key, ov, rec if exists else None, "session.")
            step.install, step.sgen = s.install, s.sgen
        return step

    def _check_session(self, spec: SessionSpec, key, ov: _Overlay, rec, prefix: str) -> "_Step":
        if key in ov.session_gen:
            sg, held = ov.session_gen[key], None
        else:
            sg, held = _session_gen(rec), (rec.session if rec is not None else None)
        g = spec.generation
        if held is not None and self._same_session(held, spec) and \
                (g is None or g == held.generation):
            return _Step("same_session", sgen=held.generation)
        if g is not None and sg is not None and g <= sg:
            raise ApiError(409, f"{prefix}generation {g} is not newer than the session held "
                                f"(generation {sg})", prefix + "generation", held=sg)
        if spec.receiver_index in ov.indices:
            raise ApiError(409, f"{prefix}receiver_index is used twice in this batch",
                           prefix + "receiver_index")
        ov.indices.add(spec.receiver_index)
        ov.session_gen[key] = g if g is not None else (sg if sg is not None else 0) + 1
        return _Step("install", install=True, sgen=ov.session_gen[key])

    def _same_session(self, held: SessionRecord, spec: SessionSpec) -> bool:
        return (held.receiver_index, held.sender_index, held.lifetime, held.activate) == \
            (spec.receiver_index, spec.sender_index, spec.lifetime, spec.activate) and \
            hmac.compare_digest(held.digest, self._digest(spec))

    def _settings_digest(self, spec: PeerSpec) -> bytes:
        """Tells a repeated PUT from a change, without keeping the body (or
        its preshared key) around; the native bulk parser computes the
        same."""
        return bulk.settings_digest(self._digest_key, spec.preshared_key.reveal()
                                    if spec.preshared_key else None, spec.allowed_ips,
                                    spec.endpoint, spec.persistent_keepalive)

    def _digest(self, spec: SessionSpec) -> bytes:
        return bulk.session_digest(self._digest_key, spec.send_key.reveal(),
                                   spec.receive_key.reveal())

    def _owner(self, p) -> Optional[PublicKey]:
        holder = self.iface.prefix_owner.get(p)
        return holder.public_key if holder is not None else None

    def _prefixes_of(self, key, ov: _Overlay):
        if key in ov.dropped:
            return ov.dropped[key]
        peer = self.iface.peers.get(key)
        return tuple(peer.prefixes) if peer is not None else ()

    # ---------------------------------------------------------------- applying

    def _apply_one(self, op: BulkOp, step: "_Step", undo: list, installed: dict,
                   added: list, removed: list) -> dict:
        iface = self.iface
        key = op.public_key
        out = {"line": op.line, "op": op.op}
        if op.op == "put_peer":
            spec: PeerSpec = op.spec
            created = key not in iface.peers
            peer = iface.add_peer(key, checked=True)
            if created:
                self.records.pop(key, None)
                undo.append(lambda: self._undo_create(key))
            rec = self.record(key)
            if not created:
                undo.append(self._snapshot(peer, rec))
            kick = step.kind != "keep" and self._configure(peer, spec, added, removed, created)
            rec.settings = step.digest
            rec.generation = step.gen
            if key in self.tombstones:
                stone = self.tombstones.pop(key)
                undo.append(lambda: self.tombstones.__setitem__(key, stone))
            if step.install:
                self._install(peer, rec, spec.session, step.sgen)
                installed[spec.session.receiver_index] = key
            if kick:
                self._kick(peer)
            out["status"] = 201 if created else 200
            out["generation"] = rec.generation
            if rec.session is not None:
                out["session_generation"] = rec.session.generation
        elif op.op == "delete_peer":
            if step.kind == "absent":
                out["status"] = 404
                out["result"] = "no such peer"
                return out
            peer = iface.peers[key]
            rec = self.records.pop(key, None) or PeerRecord()
            g = op.spec.generation
            removed.extend(peer.prefixes)
            iface.remove_peer(key)
            self.tombstones[key] = max(g if g is not None else 0, rec.generation)
            self.tombstones.move_to_end(key)
            while len(self.tombstones) > TOMBSTONES_MAX:
                self.tombstones.popitem(last=False)
            out["status"] = 204
        elif op.op == "put_session":
            peer = iface.peers[key]
            rec = self.record(key)
            if step.install:
                saved = (rec.session, rec.session_floor)
                undo.append(lambda: self._restore_session(key, saved))
                self._install(peer, rec, op.spec, step.sgen)
                installed[op.spec.receiver_index] = key
                out["status"] = 201
            else:
                out["status"] = 200
            out["session_generation"] = rec.session.generation
        else:
            peer = iface.peers[key]
            rec = self.record(key)
            iface.drop_sessions(peer)
            rec.session = None
            rec.session_floor = step.sgen
            out["status"] = 204
        return out

    def _restore_session(self, key: PublicKey, saved) -> None:
        rec = self.records.get(key)
        if rec is not None:
            rec.session, rec.session_floor = saved

    def _configure(self, peer: Peer, spec: PeerSpec, added: list, removed: list,
                   created: bool = False) -> bool:
        """The peer's settings as the spec has them; True when a persistent
        keepalive was just switched on (see _kick)."""
        iface = self.iface
        peer.preshared_key = spec.preshared_key
        if spec.endpoint is not None:
            iface.set_endpoint(peer, Endpoint(ipaddress.ip_address(spec.endpoint[0]),
                                              spec.endpoint[1]))
        elif not created:  # a new peer has none
            iface.set_endpoint(peer, None)
        was = peer.persistent_keepalive
        iface.set_persistent_keepalive(peer, spec.persistent_keepalive)
        old = set(peer.prefixes)
        new = set(spec.allowed_ips)
        if old != new:
            for p in old - new:
                iface.device.allowed_ip_remove_packed(*p)
                peer.prefixes.discard(p)
                if iface.prefix_owner.get(p) is peer:
                    del iface.prefix_owner[p]
            for p in spec.allowed_ips:
                if p not in old:
                    iface.add_allowed_prefix(peer, p)
            added.extend(new - old)
            removed.extend(old - new)
        return bool(spec.persistent_keepalive and not was)

    def _kick(self, peer: Peer) -> None:
        """A persistent keepalive switched on starts at once: a keepalive
        on the current session, or else a handshake (for a peer whose
        sessions are ours to make)."""
        if not self.iface.device.keepalive(peer.id) and not peer.managed:
            self.iface.initiate(peer)

    def _install(self, peer: Peer, rec: PeerRecord, spec: SessionSpec, gen: int) -> None:
        now, wall = self._now
        lifetime_ns = int(spec.lifetime * NS)
        self.iface.install_session(peer, spec.receiver_index, spec.sender_index,
                                   spec.send_key.reveal(), spec.receive_key.reveal(),
                                   lifetime_ns, spec.activate == "now", claimed=True,
                                   now=now, wall_ns=wall)
        rec.session = SessionRecord(
            generation=gen, receiver_index=spec.receiver_index,
            sender_index=spec.sender_index, lifetime=spec.lifetime, activate=spec.activate,
            digest=self._digest(spec), installed_ns=now, installed_wall=wall / NS,
            expires_ns=now + lifetime_ns)
        self.counters["sessions_installed"] += 1
        heapq.heappush(self._deadlines, (now + lifetime_ns - REKEY_MARGIN_NS, 0, gen,
                                         peer.public_key))

    def _snapshot(self, peer: Peer, rec: PeerRecord) -> Callable[[], None]:
        """An undo of a peer's settings (sessions installed since are dropped)."""
        iface = self.iface
        psk, keepalive = peer.preshared_key, peer.persistent_keepalive
        ep = iface.device.endpoint(peer.id)
        prefixes = {p: iface.prefix_owner.get(p) for p in peer.prefixes}
        saved = (rec.generation, rec.settings, rec.session)
        key = peer.public_key

        def undo():
            p = iface.peers.get(key)
            if p is None:
                return
            p.preshared_key = psk
            iface.set_persistent_keepalive(p, keepalive)
            iface.set_endpoint(p, ep)
            iface.clear_allowed_ips(p)
            for prefix, owner in prefixes.items():
                iface.add_allowed_prefix(owner if owner is not None else p, prefix)
            r = self.record(key)
            r.generation, r.settings, r.session = saved
        return undo

    def _undo_create(self, key: PublicKey) -> None:
        self.iface.remove_peer(key)
        self.records.pop(key, None)

    # ---------------------------------------------------------------- events

    def tick(self) -> None:
        """Sessions due for replacement or expired: tell the control plane."""
        now = self.iface.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            when, kind, gen, key = heapq.heappop(self._deadlines)
            if kind >= 2:
                self._group_due(kind, gen, key)
                continue
            rec = self.records.get(key)
            s = rec.session if rec is not None else None
            # this session's deadline (a generation may come again: after a
            # peer is deleted and put anew)
            if s is None or s.generation != gen or key not in self.iface.peers or \
                    when != (s.expires_ns - REKEY_MARGIN_NS if kind == 0 else s.expires_ns):
                continue
            if kind == 0:
                # a session has one deadline at a time: its expiry follows
                heapq.heappush(self._deadlines, (s.expires_ns, 1, gen, key))
                if not s.rekey_sent:
                    s.rekey_sent = True
                    self.emit("rekey_needed", key, reason="age", session=s)
            elif kind == 1 and not s.expired_sent:
                s.expired_sent = True
                self.emit("expired", key, session=s)

    def _group_due(self, kind: int, seq: int, group: tuple) -> None:
        """The deadline of the sessions a bulk batch installed together
        (one heap entry for all of them): kind 2 their rekey, then kind 3
        their expiry. A session replaced since is not theirs any more."""
        installed_ns, lifetime_ns, keys = group
        if kind == 2:
            heapq.heappush(self._deadlines, (installed_ns + lifetime_ns, 3, seq, group))
        records, peers = self.records, self.iface.peers
        for key in keys:
            rec = records.get(key)
            s = rec.session if rec is not None else None
            if s is None or s.installed_ns != installed_ns or \
                    s.expires_ns != installed_ns + lifetime_ns or key not in peers:
                continue
            if kind == 2 and not s.rekey_sent:
                s.rekey_sent = True
                self.emit("rekey_needed", key, reason="age", session=s)
            elif kind == 3 and not s.expired_sent:
                s.expired_sent = True
                self.emit("expired", key, session=s)

    def _rekey_needed(self, peer: Peer) -> None:
        """The data path wants keys for a managed peer (traffic without a
        usable session, or a session near its limits)."""
        rec = self.record(peer.public_key)
        s = rec.session
        if s is not None and not s.expired_sent and self.iface.clock() < s.expires_ns:
            if s.rekey_sent:
                return
            s.rekey_sent = True
            self.emit("rekey_needed", peer.public_key, reason="data path", session=s)
            return
        now = self.iface.clock()
        if now - rec.asked_ns < REASK_NS:
            return
        rec.asked_ns = now
        self.emit("rekey_needed", peer.public_key, reason="no session", session=None)

    def emit(self, kind: str, key: PublicKey, reason: Optional[str] = None,
             session: Optional[SessionRecord] = None) -> None:
        data = {"public_key": key.base64()}
        if reason is not None:
            data["reason"] = reason
        if session is not None:
            data["session_generation"] = session.generation
            data["receiver_index"] = session.receiver_index
            data["expires_at"] = session.installed_wall + session.lifetime
        ev = Event(self._next_event, kind, data)
        self._next_event += 1
        self.history.append(ev)
        self.counters[f"events_{kind}"] += 1
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(ev)
            except Exception:  # noqa: BLE001 - a full queue: that reader is too slow
                self.subscribers.discard(queue)
                queue.lagged = True

    def events_since(self, last_id: int) -> list[Event]:
        return [e for e in self.history if e.id > last_id]


@dataclass
class _RecordsUndo:
    """How to take back the records a parsed batch made (see
    Controller._record_parsed): the peers it created, with the tombstone
    each replaced, and what it changed of existing peers."""
    created: list = field(default_factory=list)  # (key, tombstone or None)
    changed: list = field(default_factory=list)  # (key, record fields or None, peer fields)

    def run(self, ctrl: "Controller") -> None:
        iface = ctrl.iface
        for key, stone in reversed(self.created):
            iface.forget_peer(key)  # the device's side is Controller._undo_native's
            ctrl.records.pop(key, None)
            if stone is not None:
                ctrl.tombstones[key] = stone
        for key, fields, peer_fields in reversed(self.changed):
            if fields is None:
                ctrl.records.pop(key, None)
            else:
                rec = ctrl.records[key]
                rec.generation, rec.settings, rec.session = fields
            peer = iface.peers.get(key)
            if peer is not None:
                (peer.managed, peer.last_handshake_ns, peer.last_handshake_wall_ns,
                 peer.attempt_started_ns) = peer_fields


class _Refused(Exception):
    def __init__(self, line: int, error: ApiError):
        super().__init__(error.message)
        self.line, self.error = line, error


def _stale(given: int, held: int) -> ApiError:
    return ApiError(409, f"generation {given} is older than the one held ({held})",
                    "generation", held=held)


def _forget_session(rec: PeerRecord) -> None:
    """A session dropped (its keys wiped): its generation stays the floor,
    so that older pushes are still refused."""
    if rec.session is not None:
        rec.session_floor = max(rec.session_floor, rec.session.generation)
        rec.session = None


def _session_gen(rec: Optional[PeerRecord]) -> Optional[int]:
    if rec is None:
        return None
    if rec.session is not None:
        return rec.session.generation
    return rec.session_floor if rec.session_floor >= 0 else None


def _session_of(op: BulkOp) -> Optional[SessionSpec]:
    if op.op == "put_session":
        return op.spec
    if op.op == "put_peer":
        return op.spec.session
    return None


def _session_field(op: BulkOp) -> str:
    return "session." if op.op == "put_peer" else ""


def _format_endpoint(ep) -> Optional[str]:
    if ep is None:
        return None
    return f"[{ep.address}]:{ep.port}" if ep.address.version == 6 else f"{ep.address}:{ep.port}"
