"""The WireGuard userspace API (UAPI): the text protocol `wg` speaks over
/var/run/wireguard/NAME.sock to userspace implementations
(https://www.wireguard.com/xplatform/). Pure protocol, no sockets: a request
framer, a parser for `set`, a formatter for `get`, and the reverse of both
for clients and tests.

A request is an operation line, `get=1` or `set=1`, then `key=value` lines,
then an empty line. The reply to `get` is the device's `key=value` lines;
every reply ends with `errno=N` and an empty line, N being 0 or a negative
errno (wireguard-go writes `errno=-22` for EINVAL; `wg` negates it back and
prints strerror). Keys are hex; `set` applies lines in order, device keys
first, then for each `public_key=` the lines of that peer.

What `wg` (wireguard-tools) sends, for checking a socket server against it.
Before every request below, `wg` connects once and closes without sending
anything, to see that a server is alive (a socket that refuses the
connection is deleted); the request then comes on a second connection.

* `wg show`, `wg show all ...`, `wg show interfaces`: list the *.sock files
  and probe each as above; then, for each interface shown, the same as
  `wg show NAME`.
* `wg show NAME [field]`, `wg showconf NAME`: `get=1\\n\\n`; read lines to
  the empty line after `errno=`. `wg` ignores keys it does not know (the
  AmneziaWG ones below included: v1.0.20210914 was checked), checks
  numbers against their ranges, and needs `errno=0`.
* `wg set NAME ...`: one `set=1` request with only what the command line
  names: `private_key` (from the file; `/dev/null` gives 64 zeros, which
  removes the key), `listen_port`, `fwmark`; then per `peer`: `public_key`,
  and either `remove=true` alone, or `preshared_key`, `endpoint` (numeric,
  `[v6]:port`), `persistent_keepalive_interval`, and for `allowed-ips`
  `replace_allowed_ips=true` followed by `allowed_ip=` lines.
* `wg setconf NAME FILE`: `set=1`, `private_key` (zeros if the file has
  none), `listen_port` (0 if none), `fwmark` (0 if none),
  `replace_peers=true`, then every peer: `public_key`, `preshared_key` if
  set, `endpoint` if set, `persistent_keepalive_interval` if set,
  `replace_allowed_ips=true` and its `allowed_ip=` lines.
* `wg addconf NAME FILE`: as setconf, but only the device keys the file has
  and no `replace_peers`.
* `wg syncconf NAME FILE`: as setconf when the file has no peers.
  Otherwise it first sends `get=1` (its own connection), and if the device
  has peers it drops `replace_peers` and puts first a `public_key` +
  `remove=true` for each running peer the file lacks. Newer releases than
  Debian 12's v1.0.20210914 also send, for a peer in both, a zero
  `preshared_key` and `persistent_keepalive_interval=0` where only the
  device has them.
* `wg-quick up/down/save/strip` use `wg setconf`/`wg showconf` (and
  `wg set ... fwmark`, `wg show NAME ...`) as above; `wg-quick` adds nothing
  of its own to the socket.

`wg` opens one connection per request and closes it after the reply;
wireguard-go also serves several requests on one connection in turn.

AmneziaWG (dataplane/obfuscation.py) adds device keys, as amneziawg-go
v0.2.19 and its `awg` tools name them: `jc jmin jmax s1 s2 s3 s4` (numbers),
`h1 h2 h3 h4` (`N` or `A-B`) and `i1`..`i5` (tag chains). `set` takes
them in any order among the device keys, each checked alone by parse_set
and all of them together with what the device holds before anything is
applied; an empty value unsets a key (and, unlike amneziawg-go, `jc=0`
means no junk). `get` writes those that differ from plain WireGuard, in
amneziawg-go's order after `fwmark`: on a plain interface the reply is
wireguard-go's, byte for byte. (amneziawg-go writes h1..h4 always, 1..4
when unset; `awg` reads a missing key as unset, which is the same.)

Differences from wireguard-go, on purpose: a `set` is parsed and checked
whole before anything is applied (wireguard-go applies line by line and
stops at the first bad one); a low-order peer public key is refused
(EINVAL); lines and requests have size limits (EMSGSIZE); a connection
closed in the middle of a request is an error (EPROTO), not a partial
`set`.
"""
from __future__ import annotations

import errno as _errno
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from dataplane.config import Endpoint, IPNetwork, parse_prefix
from dataplane.keys import (KEY_BYTES, PresharedKey, PrivateKey, PublicKey, is_low_order,
                            parse_hex_key)
from dataplane.obfuscation import (KEYS as OBFUSCATION_KEYS, PLAIN, SIGNATURE_SPEC_MAX,
                                   Obfuscation, ObfuscationError)

# errno values as wireguard-go's ipc package uses them (positive here; the
# wire carries them negated).
EIO = _errno.EIO
EPROTO = _errno.EPROTO
EINVAL = _errno.EINVAL
EADDRINUSE = _errno.EADDRINUSE
EMSGSIZE = _errno.EMSGSIZE
ENOANO = _errno.ENOANO        # wireguard-go's "unknown error"

MAX_LINE_BYTES = len("i1=") + SIGNATURE_SPEC_MAX
"""Longest line accepted, without its newline: an AmneziaWG signature
packet's spec as long as `awg` sends one (the longest line `wg` sends is
an endpoint with a scoped IPv6 address, under 100 bytes)."""
MAX_REQUEST_BYTES = 16 << 20
"""Largest request accepted: about 200,000 peers with a few lines each."""

U16_MAX, U32_MAX, U64_MAX = 2**16 - 1, 2**32 - 1, 2**64 - 1
_DIGITS = re.compile(r"[0-9]+")
_ZERO_HEX = "0" * (2 * KEY_BYTES)
_OBFUSCATION_LOWER = frozenset(k.lower() for k in OBFUSCATION_KEYS)


class UapiError(Exception):
    """A request the device refuses; `errno` (positive) goes back to the
    client as `errno=-N`."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno

    def response(self) -> str:
        return format_status(self.errno)

    def __str__(self) -> str:
        return f"{super().__str__()} (errno {self.errno}, {_errno.errorcode.get(self.errno, '?')})"


def format_status(errno: int = 0) -> str:
    """The end of every reply: `errno=0` or `errno=-N`, then an empty line."""
    return f"errno={-abs(errno)}\n\n"


# ---------------------------------------------------------------- framing

@dataclass(frozen=True)
class Request:
    operation: str                     # "get" or "set"
    lines: tuple[str, ...] = ()        # key=value lines, without the final empty line

    def __repr__(self) -> str:         # the lines of a set may hold a private key
        return f"Request({self.operation!r}, <{len(self.lines)} lines>)"


class RequestReader:
    """Incremental framer for a byte stream of requests.

    feed() takes whatever arrived and returns the requests it completed.
    A UapiError leaves the reader unusable: answer it, then close the
    connection. close() at end of stream raises if a request was cut short."""

    def __init__(self, max_line: int = MAX_LINE_BYTES,
                 max_request: int = MAX_REQUEST_BYTES) -> None:
        self.max_line, self.max_request = max_line, max_request
        self._buf = bytearray()
        self._operation: Optional[str] = None
        self._lines: list[str] = []
        self._size = 0

    @property
    def idle(self) -> bool:
        """True between requests: nothing pending."""
        return self._operation is None and not self._buf

    def feed(self, data) -> list[Request]:
        self._buf += data
        done, start = [], 0
        try:
            while True:
                end = self._buf.find(b"\n", start)
                if end < 0:
                    self._account(len(self._buf) - start, partial=True)
                    break
                self._account(end - start)
                request = self._line(bytes(self._buf[start:end]))
                start = end + 1
                if request is not None:
                    done.append(request)
        finally:
            del self._buf[:start]
        return done

    def close(self) -> None:
        if not self.idle:
            raise UapiError(EPROTO, "the connection closed in the middle of a request")

    def _account(self, length: int, partial: bool = False) -> None:
        if length > self.max_line:
            raise UapiError(EMSGSIZE, f"a line is longer than {self.max_line} bytes")
        if not partial:
            self._size += length + 1
        if self._size + (length if partial else 0) > self.max_request:
            raise UapiError(EMSGSIZE, f"the request is larger than {self.max_request} bytes")

    def _line(self, raw: bytes) -> Optional[Request]:
        if self._operation is None:
            if raw not in (b"get=1", b"set=1"):
                raise UapiError(EPROTO, f"expected get=1 or set=1, got {raw[:16]!r}")
            self._operation = raw[:3].decode()
            return None
        if raw.endswith(b"\r"):        # as Go's bufio.Scanner, which wireguard-go uses
            raw = raw[:-1]
        if raw:
            if self._operation == "get":
                raise UapiError(EINVAL, "get=1 takes no lines; end it with an empty line")
            try:
                self._lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise UapiError(EPROTO, "a line is not UTF-8 text") from None
            return None
        request = Request(self._operation, tuple(self._lines))
        self._operation, self._lines, self._size = None, [], 0
        return request


def read_request(source, max_line: int = MAX_LINE_BYTES,
                 max_request: int = MAX_REQUEST_BYTES) -> Optional[Request]:
    """One request from `source`: a bytes-like buffer holding exactly one
    request, or a binary or text stream with readline() (read up to the
    request's empty line, no further). None when the source is empty / at
    end of stream before any byte."""
    reader = RequestReader(max_line, max_request)
    if isinstance(source, (bytes, bytearray, memoryview)):
        requests = reader.feed(bytes(source))
        reader.close()
        if len(requests) > 1:
            raise UapiError(EPROTO, f"the buffer holds {len(requests)} requests, not one")
        return requests[0] if requests else None
    while True:
        chunk = source.readline(max_line + 2)        # the line, '\r' and '\n'
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        if not chunk:
            reader.close()
            return None
        requests = reader.feed(chunk)
        if requests:
            return requests[0]


# ---------------------------------------------------------------- set

@dataclass(frozen=True)
class SetPrivateKey:
    private_key: Optional[PrivateKey]      # None: remove the key (64 zeros on the wire)


@dataclass(frozen=True)
class SetListenPort:
    port: int                              # 0: a random port


@dataclass(frozen=True)
class SetFwmark:
    fwmark: int                            # 0: none


@dataclass(frozen=True)
class SetObfuscation:
    """An AmneziaWG device key (`jc`, ..., `i5`) and its value as sent,
    checked alone; "" unsets it."""
    key: str
    value: str


@dataclass(frozen=True)
class ReplacePeers:
    """Remove every peer before adding the ones that follow."""


@dataclass(frozen=True)
class SelectPeer:
    """`public_key=`: the following peer lines apply to this peer, created
    if it does not exist (unless UpdateOnly follows)."""
    public_key: PublicKey


@dataclass(frozen=True)
class RemovePeer:
    pass


@dataclass(frozen=True)
class UpdateOnly:
    """Change the peer only if it already exists."""


@dataclass(frozen=True)
class SetPresharedKey:
    preshared_key: Optional[PresharedKey]  # None: no preshared key (zeros)


@dataclass(frozen=True)
class SetEndpoint:
    endpoint: Endpoint


@dataclass(frozen=True)
class SetPersistentKeepalive:
    interval: int                          # seconds; 0 is off


@dataclass(frozen=True)
class ReplaceAllowedIPs:
    """Remove the peer's allowed IPs before adding the ones that follow."""


@dataclass(frozen=True)
class AddAllowedIP:
    network: IPNetwork


@dataclass(frozen=True)
class SetProtocolVersion:
    version: int                           # only 1 exists


Operation = Union[SetPrivateKey, SetListenPort, SetFwmark, SetObfuscation, ReplacePeers,
                  SelectPeer, RemovePeer, UpdateOnly, SetPresharedKey, SetEndpoint,
                  SetPersistentKeepalive, ReplaceAllowedIPs, AddAllowedIP, SetProtocolVersion]


def _invalid(message: str) -> UapiError:
    return UapiError(EINVAL, message)


def _uint(key: str, value: str, maximum: int) -> int:
    # Go's strconv.ParseUint(value, 10, bits): ASCII digits only, no sign.
    digits = value.lstrip("0") or "0"   # int() refuses more than 4300 digits
    if not _DIGITS.fullmatch(value) or len(digits) > 20 or int(digits) > maximum:
        raise _invalid(f"{key}: {value[:32]!r} is not a number 0..{maximum}")
    return int(digits)


def _true(key: str, value: str) -> None:
    if value != "true":
        raise _invalid(f"{key}: the only value is true, got {value[:32]!r}")


def _hex_key(key: str, value: str) -> bytes:
    try:
        return parse_hex_key(value, key)
    except ValueError as e:
        raise _invalid(str(e)) from None


def _private_key(key, value):
    raw = _hex_key(key, value)
    return SetPrivateKey(PrivateKey(raw) if any(raw) else None)


def _public_key(key, value):
    public = PublicKey(_hex_key(key, value))
    if is_low_order(public):
        raise _invalid(f"{key}: {public} is a low-order Curve25519 point; no handshake can "
                       f"succeed with it")
    return SelectPeer(public)


def _preshared_key(key, value):
    raw = _hex_key(key, value)
    return SetPresharedKey(PresharedKey(raw) if any(raw) else None)


def _endpoint(key, value):
    try:
        return SetEndpoint(Endpoint.parse(value, key, allow_hostname=False))
    except ValueError as e:
        raise _invalid(str(e)) from None


def _allowed_ip(key, value):
    try:
        return AddAllowedIP(parse_prefix(value, key, require_length=True).network)
    except ValueError as e:
        raise _invalid(str(e)) from None


def _protocol_version(key, value):
    if value != "1":
        raise _invalid(f"{key}: only version 1 exists, got {value[:32]!r}")
    return SetProtocolVersion(1)


def _obfuscation(key, value):
    try:
        Obfuscation.parse_setting(key, value, lower=True)
    except ObfuscationError as e:
        raise _invalid(str(e)) from None
    return SetObfuscation(key, value)


def merge_obfuscation(ops: Iterable[Operation], base: Obfuscation = PLAIN) -> Obfuscation:
    """The profile a set's SetObfuscation lines leave on a device holding
    `base` (the last line of a key wins), checked whole; UapiError(EINVAL)
    naming the key if it cannot be used."""
    settings = {op.key: op.value for op in ops if isinstance(op, SetObfuscation)}
    try:
        return Obfuscation.from_settings(settings, base=base, lower=True)
    except ObfuscationError as e:
        raise _invalid(str(e)) from None


def _flag(op):
    def parse(key, value):
        _true(key, value)
        return op()
    return parse


_DEVICE_KEYS = {
    "private_key": _private_key,
    "listen_port": lambda k, v: SetListenPort(_uint(k, v, U16_MAX)),
    "fwmark": lambda k, v: SetFwmark(_uint(k, v, U32_MAX)),
    "replace_peers": _flag(ReplacePeers),
    **{key.lower(): _obfuscation for key in OBFUSCATION_KEYS},
}
_PEER_KEYS = {
    "remove": _flag(RemovePeer),
    "update_only": _flag(UpdateOnly),
    "preshared_key": _preshared_key,
    "endpoint": _endpoint,
    "persistent_keepalive_interval": lambda k, v: SetPersistentKeepalive(_uint(k, v, U16_MAX)),
    "replace_allowed_ips": _flag(ReplaceAllowedIPs),
    "allowed_ip": _allowed_ip,
    "protocol_version": _protocol_version,
}


def parse_set(lines: Iterable[str]) -> list[Operation]:
    """The operations of a `set=1` request, in order, all checked before
    any is returned. Lines are `key=value` without newlines (Request.lines).
    UapiError(EPROTO) for a line without '=', UapiError(EINVAL) for an
    unknown key or a bad value, with wireguard-go's split of device keys
    (before the first public_key) and peer keys (after it)."""
    if isinstance(lines, (str, bytes)):
        raise TypeError("lines must be a list of str lines, not one string")
    ops: list[Operation] = []
    in_peer = False
    for line in lines:
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(EPROTO, f"a line without '=': {line[:32]!r}" if line
                            else "an empty line inside the request")
        if key == "public_key":
            ops.append(_public_key(key, value))
            in_peer = True
            continue
        table = _PEER_KEYS if in_peer else _DEVICE_KEYS
        parse = table.get(key)
        if parse is None:
            where = "peer" if in_peer else "device"
            other = _DEVICE_KEYS if in_peer else _PEER_KEYS
            hint = (" (device keys come before the first public_key)" if in_peer else
                    " (peer keys come after a public_key)") if key in other else ""
            raise _invalid(f"invalid UAPI {where} key {key[:32]!r}{hint}")
        ops.append(parse(key, value))
    return ops


def _op_line(op: Operation) -> str:
    if isinstance(op, SetPrivateKey):
        return "private_key=" + (op.private_key.reveal_hex() if op.private_key else _ZERO_HEX)
    if isinstance(op, SetListenPort):
        return f"listen_port={op.port}"
    if isinstance(op, SetFwmark):
        return f"fwmark={op.fwmark}"
    if isinstance(op, SetObfuscation):
        return f"{op.key}={op.value}"
    if isinstance(op, ReplacePeers):
        return "replace_peers=true"
    if isinstance(op, SelectPeer):
        return f"public_key={op.public_key.hex()}"
    if isinstance(op, RemovePeer):
        return "remove=true"
    if isinstance(op, UpdateOnly):
        return "update_only=true"
    if isinstance(op, SetPresharedKey):
        return "preshared_key=" + (op.preshared_key.reveal_hex() if op.preshared_key
                                   else _ZERO_HEX)
    if isinstance(op, SetEndpoint):
        return f"endpoint={op.endpoint}"
    if isinstance(op, SetPersistentKeepalive):
        return f"persistent_keepalive_interval={op.interval}"
    if isinstance(op, ReplaceAllowedIPs):
        return "replace_allowed_ips=true"
    if isinstance(op, AddAllowedIP):
        return f"allowed_ip={op.network}"
    if isinstance(op, SetProtocolVersion):
        return f"protocol_version={op.version}"
    raise TypeError(f"not a UAPI operation: {type(op).__name__}")


def format_set(operations: Iterable[Operation]) -> str:
    """A whole `set=1` request (the client side of parse_set)."""
    return "set=1\n" + "".join(_op_line(op) + "\n" for op in operations) + "\n"


# ---------------------------------------------------------------- get

@dataclass(frozen=True)
class PeerState:
    public_key: PublicKey
    preshared_key: Optional[PresharedKey] = None
    endpoint: Optional[Endpoint] = None            # numeric; None until known
    last_handshake_ns: int = 0                     # Unix time in ns; 0: never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()
    protocol_version: int = 1


@dataclass(frozen=True)
class DeviceState:
    private_key: Optional[PrivateKey] = None
    listen_port: int = 0                           # the bound port; 0: not bound
    fwmark: int = 0
    obfuscation: Obfuscation = PLAIN
    peers: tuple[PeerState, ...] = ()


def _check_range(name: str, value, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an int 0..{maximum}, got {value!r}")
    return value


def format_get(state: DeviceState) -> str:
    """The whole reply to `get=1`, in wireguard-go's order, ending with
    `errno=0` and the empty line."""
    out = []
    if state.private_key is not None and not state.private_key.is_zero():
        out.append(f"private_key={state.private_key.reveal_hex()}")
    if _check_range("listen_port", state.listen_port, U16_MAX):
        out.append(f"listen_port={state.listen_port}")
    if _check_range("fwmark", state.fwmark, U32_MAX):
        out.append(f"fwmark={state.fwmark}")
    out += [f"{key}={value}" for key, value in state.obfuscation.settings().items()]
    for peer in state.peers:
        psk = peer.preshared_key
        out.append(f"public_key={PublicKey(peer.public_key).hex()}")
        out.append(f"preshared_key={psk.reveal_hex() if psk is not None else _ZERO_HEX}")
        out.append(f"protocol_version={peer.protocol_version}")
        if peer.endpoint is not None:
            if peer.endpoint.address is None:
                raise ValueError(f"endpoint {peer.endpoint} of peer {peer.public_key} is not "
                                 f"resolved; the UAPI carries IP addresses only")
            out.append(f"endpoint={peer.endpoint}")
        sec, nsec = divmod(_check_range("last_handshake_ns", peer.last_handshake_ns,
                                        2**63 - 1), 10**9)
        out.append(f"last_handshake_time_sec={sec}")
        out.append(f"last_handshake_time_nsec={nsec}")
        out.append(f"tx_bytes={_check_range('tx_bytes', peer.tx_bytes, U64_MAX)}")
        out.append(f"rx_bytes={_check_range('rx_bytes', peer.rx_bytes, U64_MAX)}")
        keepalive = _check_range("persistent_keepalive_interval",
                                 peer.persistent_keepalive_interval, U16_MAX)
        out.append(f"persistent_keepalive_interval={keepalive}")
        out += [f"allowed_ip={network}" for network in peer.allowed_ips]
    return "".join(line + "\n" for line in out) + format_status(0)


def parse_get(text: str) -> DeviceState:
    """The client side of format_get: a whole `get=1` reply to a DeviceState.
    Keys it does not know are skipped, as `wg` skips them; a non-zero errno
    raises UapiError with it."""
    if not text.endswith("\n\n"):
        raise UapiError(EPROTO, "the reply does not end with an empty line")
    device: dict = {"peers": []}
    obfuscation: dict[str, str] = {}
    peer: Optional[dict] = None
    status = None
    for line in text[:-2].split("\n"):
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(EPROTO, f"a line without '=': {line[:32]!r}")
        if status is not None:
            raise UapiError(EPROTO, "lines after errno=")
        if key == "errno":
            if not re.fullmatch(r"-?[0-9]+", value):
                raise UapiError(EPROTO, f"errno: {value[:32]!r} is not a number")
            status = abs(int(value))
            continue
        if key == "public_key":
            peer = {"public_key": PublicKey(_hex_key(key, value)), "allowed_ips": []}
            device["peers"].append(peer)
            continue
        if peer is None:
            if key == "private_key":
                raw = _hex_key(key, value)
                device["private_key"] = PrivateKey(raw) if any(raw) else None
            elif key in ("listen_port", "fwmark"):
                device[key] = _uint(key, value, U16_MAX if key == "listen_port" else U32_MAX)
            elif key in _OBFUSCATION_LOWER:
                obfuscation[key] = value
            continue
        if key == "preshared_key":
            peer[key] = _preshared_key(key, value).preshared_key
        elif key == "endpoint":
            peer[key] = _endpoint(key, value).endpoint
        elif key == "allowed_ip":
            peer["allowed_ips"].append(_allowed_ip(key, value).network)
        elif key == "last_handshake_time_sec":
            peer["sec"] = _uint(key, value, 2**63 - 1)
        elif key == "last_handshake_time_nsec":
            peer["nsec"] = _uint(key, value, 10**9 - 1)
        elif key in ("tx_bytes", "rx_bytes"):
            peer[key] = _uint(key, value, U64_MAX)
        elif key == "persistent_keepalive_interval":
            peer[key] = _uint(key, value, U16_MAX)
        elif key == "protocol_version":
            peer[key] = _protocol_version(key, value).version
    if status is None:
        raise UapiError(EPROTO, "the reply has no errno= line")
    if status:
        raise UapiError(status, "the device refused the request")
    try:
        device["obfuscation"] = Obfuscation.from_settings(obfuscation, lower=True, check=False)
    except ObfuscationError as e:
        raise UapiError(EPROTO, f"the device's AmneziaWG settings: {e}") from None
    peers = []
    for p in device.pop("peers"):
        ns = p.pop("sec", 0) * 10**9 + p.pop("nsec", 0)
        peers.append(PeerState(last_handshake_ns=ns, allowed_ips=tuple(p.pop("allowed_ips")), **p))
    return DeviceState(peers=tuple(peers), **device)

