"""The interface file: wg-quick's format, plus a [DataPlane] section.

    # /etc/dataplane/dp0.conf: the interface is named after the file
    [Interface]
    PrivateKey = <wg genkey>
    ListenPort = 51820
    Address = 10.8.0.1/24, fd08::1/64
    MTU = 1420
    # AmneziaWG (optional; see dataplane/obfuscation.py). S and H must be
    # the clients' own; J and I only matter when this side initiates.
    S1 = 15                               # random bytes before each initiation,
    S2 = 18                               # response,
    S3 = 20                               # cookie reply
    S4 = 8                                # and transport message
    H1 = 1000000-1000999                  # type field of each, a value or a range;
    H2 = 2000000-2000999                  # the four must not overlap
    H3 = 3000000-3000999
    H4 = 4000000-4000999
    Jc = 4                                # junk datagrams before an initiation,
    Jmin = 40                             # of Jmin..Jmax random bytes
    Jmax = 70
    I1 = <b 0xc0ffee><r 16><t>            # signature datagrams before the junk (I1..I5)

    [Peer]
    PublicKey = <the client's public key>
    AllowedIPs = 10.8.0.2/32, fd08::2/128
    Endpoint = [2001:db8::7]:51820        # optional; host names allowed
    PersistentKeepalive = 25              # optional; 0 or "off" disables

    [DataPlane]
    Backend = auto                        # auto (default: xdp where possible) | xdp | socket
    Workers = 2
    Queues = 2
    Interfaces = eth0                     # WAN interfaces for xdp, comma list
                                          # (default: every one with a global address)
    MaxPeers = 100000                     # room for peers added at run time
    ApiListen = 192.0.2.1:8443            # the API on TCP too (mutual TLS only)
    ApiCertificate = /etc/dataplane/api.pem       # server certificate chain (PEM)
    ApiCertificateKey = /etc/dataplane/api.key    # its private key (PEM)
    ApiClientCA = /etc/dataplane/clients-ca.pem   # CA that signs client certificates
    ReplayWindow = 2048                   # anti-replay bits a keypair: 1024..8192, default 8192
    BusyPoll = 50                         # xdp: workers busy-poll their AF_XDP sockets,
                                          # polling this many µs before they sleep (default off)
    RealtimePriority = 1                  # workers run SCHED_FIFO at this priority, 1..99
                                          # (default off: the daemon's own policy)
    AcceptPlainWireGuard = yes            # serve plain WireGuard clients on the port too
                                          # (default no); H1..H4 must then exclude 1..4

Keys are case-insensitive, '#' starts a comment, whitespace around '=' is
free, as in wg-quick. Values follow `wg`: keys are 44-character base64,
AllowedIPs with host bits set are masked (with a warning, as `wg` warns),
PersistentKeepalive and FwMark take "off". The AmneziaWG keys are those of
an AmneziaVPN or `awg-quick` file, so its [Interface] section works as it
is; an empty value leaves one unset (AmneziaVPN writes `I2 =`), as does
`Jc = 0`. wg-quick's own settings (DNS, Table, PreUp/PostUp/PreDown/
PostDown, SaveConfig) are accepted, kept for writing the file back, and
ignored with a warning. Where `wg` would take a mistake silently, this
parser refuses: unknown keys and sections, a key given twice, a peer given
twice, one prefix routed to two peers, a low-order public key or our own as
a peer. Every error is a ConfigError reading `FILE:LINE: Key: reason`; no
message repeats a value that might be a key.

Host names in Endpoint are kept as written and resolved when the interface
comes up, not here.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Union

from dataplane._native import lib
from dataplane.device import REALTIME_PRIORITY_MAX, REALTIME_PRIORITY_MIN
from dataplane.obfuscation import KEYS as OBFUSCATION_KEYS, PLAIN, Obfuscation, ObfuscationError
from dataplane.keys import PresharedKey, PrivateKey, PublicKey, is_low_order

log = logging.getLogger(__name__)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

IFNAMSIZ = 16                     # Linux, including the terminating NUL
PORT_MAX = 65535
FWMARK_MAX = 0xFFFFFFFF
MTU_MIN, MTU_MAX = 68, 65535      # Linux's range for a device MTU
WORKERS_MAX = QUEUES_MAX = 1024
MAX_PEERS_MAX = 1 << 19  # the receiver index table holds two keypairs a peer, 2^20 at most
BACKENDS = ("auto", "xdp", "socket")
# The anti-replay window of a keypair, in bits (native/tables/dp_tables.h).
REPLAY_WINDOW_MIN = lib.DP_REPLAY_BITS_MIN
REPLAY_WINDOW_MAX = lib.DP_REPLAY_BITS_MAX
BUSY_POLL_MAX_US = lib.DP_DEVICE_BUSY_POLL_MAX_US
REPLAY_WINDOW_DEFAULT = lib.DP_REPLAY_BITS_DEFAULT
WG_QUICK_ONLY = ("DNS", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")

# wg-quick's rule for the name in NAME.conf; Linux's own rule is looser.
_WG_QUICK_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_DIGITS = re.compile(r"[0-9]+")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
# What an error may quote of an unknown key: a short word. Anything else
# (say, a key pasted on a line of its own) is not repeated.
_QUOTABLE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")


class ConfigError(ValueError):
    """A file that cannot be used. str() is `FILE:LINE: reason`."""

    def __init__(self, filename: str, line: Optional[int], reason: str) -> None:
        self.filename, self.line, self.reason = filename, line, reason
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------- values

def _decimal(text: str) -> Optional[int]:
    """ASCII digits as a number; None for anything else, or for more digits
    than any value here has (int() refuses over 4300 of them)."""
    digits = text.lstrip("0") or "0"
    if not _DIGITS.fullmatch(text) or len(digits) > 20:
        return None
    return int(digits)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _number(field_name: str, text: str, lo: int, hi: int, what: str, note: str = "") -> int:
    n = _decimal(text)
    if n is None or not lo <= n <= hi:
        raise ValueError(f"{field_name}: expected {what} {lo}..{hi}{note}, got {_shown(text)}")
    return n


def _in_text(field_name: str, whole: str, part: str, what: str, lo: int, hi: int) -> int:
    """A decimal part of a larger value (a prefix length, a port)."""
    n = _decimal(part)
    if n is None or not lo <= n <= hi:
        raise ValueError(f"{field_name}: {_shown(whole)}: the {what} must be {lo}..{hi}")
    return n


def _comma_list(field_name: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"{field_name}: empty entry in the comma-separated list {text!r}")
    return items


def is_valid_interface_name(name: str) -> bool:
    """Linux's rule (dev_valid_name): 1..15 bytes, not '.' or '..', no '/',
    ':' or whitespace."""
    return (isinstance(name, str) and 0 < len(name.encode()) < IFNAMSIZ
            and name not in (".", "..") and not re.search(r"[/:\s]", name))


class Prefix(NamedTuple):
    network: IPNetwork
    masked: bool                  # the text had host bits set, now cleared


def parse_prefix(text: str, field_name: str = "AllowedIPs", require_length: bool = False) -> Prefix:
    """An IPv4 or IPv6 prefix as `wg` reads one: ADDRESS[/LENGTH], no length
    meaning a single host, host bits cleared. Addresses are strict (no
    leading zeros in IPv4, no IPv6 zone); lengths are decimal."""
    addr_text, slash, length_text = text.partition("/")
    if "%" in addr_text:
        raise ValueError(f"{field_name}: {text!r}: a prefix cannot carry an IPv6 zone (%)")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ValueError(f"{field_name}: {text!r}: {addr_text!r} is not an IPv4 or IPv6 "
                         f"address") from None
    if not slash:
        if require_length:
            raise ValueError(f"{field_name}: {text!r} has no /length")
        length = addr.max_prefixlen
    else:
        length = _in_text(field_name, text, length_text, "prefix length", 0, addr.max_prefixlen)
    network = ipaddress.ip_network((addr, length), strict=False)
    return Prefix(network, network.network_address != addr)


def parse_address(text: str, field_name: str = "Address") -> IPInterface:
    """An interface address, ADDRESS[/LENGTH] (host bits kept, as `ip addr`)."""
    prefix = parse_prefix(text, field_name)       # the same checks on the text
    addr = ipaddress.ip_address(text.partition("/")[0])
    return ipaddress.ip_interface((addr, prefix.network.prefixlen))


@dataclass(frozen=True)
class Endpoint:
    """A peer's UDP address: an IP literal or a host name, and a port.
    str() writes it back the way `wg` does: `[v6]:port` or `host:port`."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) \
                or not 1 <= self.port <= PORT_MAX:
            raise ValueError(f"Endpoint: port must be 1..{PORT_MAX}, got {self.port!r}")

    @property
    def address(self) -> Optional[IPAddress]:
        """The IP address, or None for a host name that is still to be resolved."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @classmethod
    def parse(cls, text: str, field_name: str = "Endpoint",
              allow_hostname: bool = True) -> "Endpoint":
        """`host:port`, `[ipv6]:port` (a zone, `[fe80::1%eth0]:port`, is kept);
        a bare IPv6 address needs the brackets."""
        if text.startswith("["):
            inner, bracket, rest = text[1:].partition("]")
            if not bracket:
                raise ValueError(f"{field_name}: {text!r} has '[' without a matching ']'")
            if not rest.startswith(":") or not rest[1:]:
                raise ValueError(f"{field_name}: {text!r} has no :port after the ']'")
            host, port_text = inner, rest[1:]
            try:
                addr = ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{field_name}: {text!r}: brackets hold an IPv6 address, "
                                 f"{host!r} is not one") from None
            host = str(addr)
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host or not port_text:
                raise ValueError(f"{field_name}: {text!r} is not HOST:PORT")
            if ":" in host:
                raise ValueError(f"{field_name}: {text!r}: write an IPv6 endpoint in brackets, "
                                 f"e.g. [2001:db8::1]:51820")
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                if re.fullmatch(r"[0-9.]+", host):
                    raise ValueError(f"{field_name}: {text!r}: {host!r} is not a valid "
                                     f"IPv4 address") from None
                if not allow_hostname:
                    raise ValueError(f"{field_name}: {text!r}: the host must be an IP "
                                     f"address") from None
                name = host.rstrip(".")
                if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label)
                                              for label in name.split(".")):
                    raise ValueError(f"{field_name}: {text!r}: {host!r} is neither an IP "
                                     f"address nor a valid host name") from None
        port = _in_text(field_name, text, port_text, "port", 1, PORT_MAX)
        return cls(host, port)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# ---------------------------------------------------------------- the model

@dataclass(frozen=True)
class InterfaceConfig:
    private_key: PrivateKey
    listen_port: Optional[int] = None             # None or 0: a random port
    fwmark: int = 0
    addresses: tuple[IPInterface, ...] = ()
    mtu: Optional[int] = None                     # None: chosen at bring-up
    # AmneziaWG: Jc Jmin Jmax S1..S4 H1..H4 I1..I5 (dataplane/obfuscation.py)
    obfuscation: Obfuscation = PLAIN
    # wg-quick settings we do not apply, (Key, value) in file order, kept so
    # that writing the file back loses nothing.
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True)
class PeerConfig:
    public_key: PublicKey
    preshared_key: Optional[PresharedKey] = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Optional[Endpoint] = None
    persistent_keepalive: int = 0                 # seconds; 0 is off


@dataclass(frozen=True)
class DataPlaneConfig:
    backend: str = "auto"
    workers: Optional[int] = None                 # None: chosen at bring-up
    queues: Optional[int] = None
    interfaces: tuple[str, ...] = ()              # WAN interfaces; () = chosen at bring-up
    max_peers: Optional[int] = None               # None: the file's peers, with headroom
    api_listen: Optional[tuple[str, int]] = None  # TCP address of the API (mutual TLS)
    api_certificate: Optional[str] = None
    api_certificate_key: Optional[str] = None
    api_client_ca: Optional[str] = None
    replay_window: int = REPLAY_WINDOW_DEFAULT    # anti-replay bits per keypair
    busy_poll_us: int = 0                         # xdp busy polling; 0: off
    realtime_priority: int = 0                    # workers' SCHED_FIFO priority; 0: off
    accept_plain_wireguard: bool = False          # plain WireGuard too, beside obfuscation


@dataclass(frozen=True)
class Config:
    name: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()
    dataplane: DataPlaneConfig = DataPlaneConfig()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_wg_quick(self, include_dataplane: bool = True) -> str:
        """The file text. It holds the private key in clear: write it with
        mode 0600. Without [DataPlane] (include_dataplane=False) it is a
        file stock wg-quick takes, or, with AmneziaWG keys, awg-quick."""
        i = self.interface
        out = ["[Interface]", f"PrivateKey = {i.private_key.reveal_base64()}"]
        if i.listen_port is not None:
            out.append(f"ListenPort = {i.listen_port}")
        if i.fwmark:
            out.append(f"FwMark = {i.fwmark:#x}")
        if i.addresses:
            out.append(f"Address = {', '.join(str(a) for a in i.addresses)}")
        if i.mtu is not None:
            out.append(f"MTU = {i.mtu}")
        out += i.obfuscation.file_lines()
        out += [f"{key} = {value}".rstrip() for key, value in i.ignored]
        for peer in self.peers:
            out += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
            if peer.preshared_key is not None:
                out.append(f"PresharedKey = {peer.preshared_key.reveal_base64()}")
            if peer.allowed_ips:
                out.append(f"AllowedIPs = {', '.join(str(n) for n in peer.allowed_ips)}")
            if peer.endpoint is not None:
                out.append(f"Endpoint = {peer.endpoint}")
            if peer.persistent_keepalive:
                out.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
        d = self.dataplane
        if include_dataplane and d != DataPlaneConfig():
            out += ["", "[DataPlane]", f"Backend = {d.backend}"]
            if d.workers is not None:
                out.append(f"Workers = {d.workers}")
            if d.queues is not None:
                out.append(f"Queues = {d.queues}")
            if d.interfaces:
                out.append(f"Interfaces = {', '.join(d.interfaces)}")
            if d.max_peers is not None:
                out.append(f"MaxPeers = {d.max_peers}")
            if d.api_listen is not None:
                host, port = d.api_listen
                out.append(f"ApiListen = {f'[{host}]' if ':' in host else host}:{port}")
            for name, value in (("ApiCertificate", d.api_certificate),
                                ("ApiCertificateKey", d.api_certificate_key),
                                ("ApiClientCA", d.api_client_ca)):
                if value is not None:
                    out.append(f"{name} = {value}")
            if d.replay_window != REPLAY_WINDOW_DEFAULT:
                out.append(f"ReplayWindow = {d.replay_window}")
            if d.busy_poll_us:
                out.append(f"BusyPoll = {d.busy_poll_us}")
            if d.realtime_priority:
                out.append(f"RealtimePriority = {d.realtime_priority}")
            if d.accept_plain_wireguard:
                out.append("AcceptPlainWireGuard = yes")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------- parsing

class _Section:
    """One section being read: values by canonical key, and where each was set."""

    def __init__(self, name: str, line: int) -> None:
        self.name, self.line = name, line
        self.values: dict[str, object] = {}
        self.lines: dict[str, int] = {}


# Handlers take (parser, section, canonical key, value text) and store into
# section.values. Repeatable keys accumulate lists.
_Handler = Callable[["_Parser", _Section, str, str], None]


def _set(convert):
    def handler(parser, section, key, value):
        section.values[key] = convert(key, value)
    return handler


def _private_key(key, value):
    return PrivateKey.from_base64(value, key)


def _preshared_key(key, value):
    psk = PresharedKey.from_base64(value, key)
    return None if psk.is_zero() else psk


def _listen_port(key, value):
    return _number(key, value, 0, PORT_MAX, "a port", " (0 picks one at random)")


def _fwmark(key, value):
    if value.lower() == "off":
        return 0
    if re.fullmatch(r"0x[0-9a-fA-F]+", value):
        mark = int(value, 16)
    elif _decimal(value) is not None:
        mark = _decimal(value)
    else:
        mark = -1
    if not 0 <= mark <= FWMARK_MAX:
        raise ValueError(f"{key}: expected off or a mark 0..0xffffffff (decimal or 0x hex), "
                         f"got {value!r}")
    return mark


def _mtu(key, value):
    return _number(key, value, MTU_MIN, MTU_MAX, "an MTU")


def _keepalive(key, value):
    if value.lower() == "off":
        return 0
    return _number(key, value, 0, PORT_MAX, "off or seconds")


def _backend(key, value):
    if value.lower() not in BACKENDS:
        raise ValueError(f"{key}: expected one of {', '.join(BACKENDS)}, got {value!r}")
    return value.lower()


def _replay_window(key, value):
    sizes = []
    bits = REPLAY_WINDOW_MIN
    while bits <= REPLAY_WINDOW_MAX:
        sizes.append(bits)
        bits *= 2
    if _decimal(value) not in sizes:
        raise ValueError(f"{key}: expected a window in bits, a power of two from "
                         f"{REPLAY_WINDOW_MIN} to {REPLAY_WINDOW_MAX} "
                         f"({', '.join(map(str, sizes))}; {REPLAY_WINDOW_DEFAULT} as the kernel's "
                         f"WireGuard), got {_shown(value)}")
    return _decimal(value)


def _busy_poll(key, value):
    if value.lower() == "off":
        return 0
    return _number(key, value, 0, BUSY_POLL_MAX_US, "off or microseconds")


def _realtime_priority(key, value):
    if value.lower() == "off":
        return 0
    return _number(key, value, REALTIME_PRIORITY_MIN, REALTIME_PRIORITY_MAX,
                   "off or a SCHED_FIFO priority")


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def _boolean(key, value):
    if value.lower() not in _BOOLEANS:
        raise ValueError(f"{key}: expected yes or no (true/false, on/off, 1/0), got {value!r}")
    return _BOOLEANS[value.lower()]


def _obfuscation(parser, section, key, value):
    """Checked alone here, with the others in finish()."""
    Obfuscation.parse_setting(key, value)
    section.values.setdefault("obfuscation", {})[key] = value


def _count(maximum):
    def convert(key, value):
        return _number(key, value, 1, maximum, "a count")
    return convert


def _addresses(parser, section, key, value):
    seen = section.values.setdefault(key, [])
    for item in _comma_list(key, value):
        address = parse_address(item, key)
        if address in seen:
            raise ValueError(f"{key}: {address} is listed twice")
        seen.append(address)


def _allowed_ips(parser, section, key, value):
    nets = section.values.setdefault(key, [])
    if not value:                  # `AllowedIPs =` is legal: no prefixes
        return
    for item in _comma_list(key, value):
        network, masked = parse_prefix(item, key)
        if masked:
            parser.warn(f"{key}: {item} has host bits set; using {network}, as wg does")
        if network in nets:
            parser.warn(f"{key}: {network} is listed twice for this peer")
            continue
        other = parser.routes.get(network)
        if other is not None:
            raise ValueError(f"{key}: {network} is already routed to the peer at line {other}; "
                             f"a prefix can belong to one peer only")
        parser.routes[network] = section.line
        nets.append(network)


def _interfaces(parser, section, key, value):
    names = []
    for name in _comma_list(key, value):
        if not is_valid_interface_name(name):
            raise ValueError(f"{key}: {name!r} is not a valid interface name "
                             f"(1..15 bytes, no '/', ':' or whitespace)")
        if name in names:
            raise ValueError(f"{key}: {name} is listed twice")
        names.append(name)
    section.values[key] = tuple(names)


def _api_listen(key, value):
    """ADDRESS:PORT with a literal address ([v6]:port for IPv6)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host)
        if not sep:
            raise ValueError
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not ADDRESS:PORT with a literal IP address "
                         f"(like 192.0.2.1:8443 or [2001:db8::1]:8443)") from None
    return host, _number(key, port, 1, PORT_MAX, "a port")


def _path(key, value):
    if not value.startswith("/"):
        raise ValueError(f"{key}: {value!r} must be an absolute path")
    return value


def _wg_quick_only(parser, section, key, value):
    section.values.setdefault("ignored", []).append((key, value))
    what = "does not run wg-quick hooks" if key.endswith(("Up", "Down")) \
        else "does not apply this wg-quick setting"
    parser.warn(f"{key}: dataplane {what}; ignored")


# canonical key -> (handler, repeatable)
_KEYS: dict[str, dict[str, tuple[_Handler, bool]]] = {
    "Interface": {
        "PrivateKey": (_set(_private_key), False),
        "ListenPort": (_set(_listen_port), False),
        "FwMark": (_set(_fwmark), False),
        "Address": (_addresses, True),
        "MTU": (_set(_mtu), False),
        **{key: (_obfuscation, False) for key in OBFUSCATION_KEYS},
        **{key: (_wg_quick_only, True) for key in WG_QUICK_ONLY},
    },
    "Peer": {
        "PublicKey": (_set(lambda key, value: PublicKey.from_base64(value, key)), False),
        "PresharedKey": (_set(_preshared_key), False),
        "AllowedIPs": (_allowed_ips, True),
        "Endpoint": (_set(lambda key, value: Endpoint.parse(value, key)), False),
        "PersistentKeepalive": (_set(_keepalive), False),
    },
    "DataPlane": {
        "Backend": (_set(_backend), False),
        "Workers": (_set(_count(WORKERS_MAX)), False),
        "Queues": (_set(_count(QUEUES_MAX)), False),
        "Interfaces": (_interfaces, False),
        "MaxPeers": (_set(_count(MAX_PEERS_MAX)), False),
        "ApiListen": (_set(_api_listen), False),
        "ApiCertificate": (_set(_path), False),
        "ApiCertificateKey": (_set(_path), False),
        "ApiClientCA": (_set(_path), False),
        "ReplayWindow": (_set(_replay_window), False),
        "BusyPoll": (_set(_busy_poll), False),
        "RealtimePriority": (_set(_realtime_priority), False),
        "AcceptPlainWireGuard": (_set(_boolean), False),
    },
}
_SECTIONS = {name.lower(): name for name in _KEYS}
_LOOKUP = {section: {key.lower(): key for key in keys} for section, keys in _KEYS.items()}


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lineno = 0
        self.interface: Optional[_Section] = None
        self.dataplane: Optional[_Section] = None
        self.peers: list[_Section] = []
        self.current: Optional[_Section] = None
        self.routes: dict[IPNetwork, int] = {}       # prefix -> line of its [Peer]
        self.peer_keys: dict[PublicKey, int] = {}    # public key -> line of its [Peer]
        self.warnings: list[str] = []

    def error(self, reason: str, line: Optional[int] = -1) -> ConfigError:
        return ConfigError(self.filename, self.lineno if line == -1 else line, reason)

    def warn(self, reason: str, line: Optional[int] = None) -> None:
        message = f"{self.filename}:{self.lineno if line is None else line}: {reason}"
        self.warnings.append(message)
        log.warning("%s", message)

    def feed(self, raw: str) -> None:
        self.lineno += 1
        text = raw.partition("#")[0].strip()
        if not text:
            return
        if text.startswith("["):
            self.header(text)
            return
        key_text, eq, value = text.partition("=")
        key_text, value = key_text.strip(), value.strip()
        if not eq or not key_text:
            raise self.error("expected `Key = Value` or a [Section] header")
        shown = key_text if _QUOTABLE_KEY.fullmatch(key_text) else "(not shown)"
        if self.current is None:
            raise self.error(f"{shown}: comes before any section; start the file "
                             f"with [Interface]")
        section = self.current.name
        key = _LOOKUP[section].get(key_text.lower())
        if key is None:
            home = [s for s, keys in _LOOKUP.items() if key_text.lower() in keys]
            hint = f"; it belongs in [{home[0]}]" if home else ""
            raise self.error(f"{shown}: unknown key in [{section}]{hint}")
        handler, repeatable = _KEYS[section][key]
        if not repeatable and key in self.current.lines:
            raise self.error(f"{key}: given twice in this [{section}] "
                             f"(first at line {self.current.lines[key]})")
        if not value and key != "AllowedIPs" and key not in WG_QUICK_ONLY and \
                key not in OBFUSCATION_KEYS:
            raise self.error(f"{key}: empty value")
        self.current.lines.setdefault(key, self.lineno)
        try:
            handler(self, self.current, key, value)
        except ValueError as e:
            raise self.error(str(e)) from None
        if key == "PublicKey":
            self.check_peer_key(self.current.values[key])

    def header(self, text: str) -> None:
        if not text.endswith("]"):
            raise self.error("a section header looks like [Peer]")
        name = _SECTIONS.get(text[1:-1].strip().lower())
        if name is None:
            raise self.error(f"unknown section {text}; expected [Interface], [Peer] or "
                             f"[DataPlane]")
        section = _Section(name, self.lineno)
        if name == "Peer":
            self.peers.append(section)
        else:
            first = getattr(self, name.lower())
            if first is not None:
                raise self.error(f"[{name}] appears twice (first at line {first.line})")
            setattr(self, name.lower(), section)
        self.current = section

    def check_peer_key(self, key: PublicKey) -> None:
        if is_low_order(key):
            raise self.error("PublicKey: a low-order Curve25519 point; no handshake can "
                             "succeed with it")
        if key in self.peer_keys:
            raise self.error(f"PublicKey: this peer is already defined at line "
                             f"{self.peer_keys[key]}")
        self.peer_keys[key] = self.lineno

    def finish(self, name: str) -> Config:
        i = self.interface
        if i is None:
            raise self.error("no [Interface] section", line=None)
        if "PrivateKey" not in i.values:
            raise self.error("[Interface] has no PrivateKey (make one with `wg genkey`)",
                             line=i.line)
        private_key = i.values["PrivateKey"]
        own = private_key.public_key()
        peers = []
        for p in self.peers:
            if "PublicKey" not in p.values:
                raise self.error("[Peer] has no PublicKey", line=p.line)
            if p.values["PublicKey"] == own:
                raise self.error("PublicKey: this is the interface's own public key",
                                 line=p.lines["PublicKey"])
            peers.append(PeerConfig(
                public_key=p.values["PublicKey"],
                preshared_key=p.values.get("PresharedKey"),
                allowed_ips=tuple(p.values.get("AllowedIPs", ())),
                endpoint=p.values.get("Endpoint"),
                persistent_keepalive=p.values.get("PersistentKeepalive", 0)))
        d = self.dataplane.values if self.dataplane is not None else {}
        interface = InterfaceConfig(
            private_key=private_key,
            listen_port=i.values.get("ListenPort"),
            fwmark=i.values.get("FwMark", 0),
            addresses=tuple(i.values.get("Address", ())),
            mtu=i.values.get("MTU"),
            obfuscation=self.obfuscation(i, d.get("AcceptPlainWireGuard", False)),
            ignored=tuple(i.values.get("ignored", ())))
        dataplane = DataPlaneConfig(
            backend=d.get("Backend", "auto"),
            workers=d.get("Workers"),
            queues=d.get("Queues"),
            interfaces=d.get("Interfaces", ()),
            max_peers=d.get("MaxPeers"),
            api_listen=d.get("ApiListen"),
            api_certificate=d.get("ApiCertificate"),
            api_certificate_key=d.get("ApiCertificateKey"),
            api_client_ca=d.get("ApiClientCA"),
            replay_window=d.get("ReplayWindow", REPLAY_WINDOW_DEFAULT),
            busy_poll_us=d.get("BusyPoll", 0),
            realtime_priority=d.get("RealtimePriority", 0),
            accept_plain_wireguard=d.get("AcceptPlainWireGuard", False))
        if dataplane.busy_poll_us and dataplane.backend == "socket":
            raise self.error("BusyPoll: only the xdp backend busy-polls (its AF_XDP sockets); "
                             "this file says Backend = socket",
                             line=self.dataplane.lines["BusyPoll"])
        if dataplane.busy_poll_us and dataplane.realtime_priority:
            # veth and copy mode: no NAPI to poll, so a worker polls in
            # vain, and at real-time priority the kernel's receive that
            # would feed it waits out every polling window
            raise self.error("RealtimePriority: not with BusyPoll: a real-time worker that "
                             "polls keeps the kernel's receive threads, which feed it, off "
                             "its CPU for every polling window",
                             line=self.dataplane.lines["RealtimePriority"])
        tls = {"ApiCertificate": dataplane.api_certificate,
               "ApiCertificateKey": dataplane.api_certificate_key,
               "ApiClientCA": dataplane.api_client_ca}
        if dataplane.api_listen is not None:
            missing = [k for k, v in tls.items() if v is None]
            if missing:
                raise self.error(f"ApiListen needs {', '.join(missing)}: the API serves TCP "
                                 f"with mutual TLS only (a plain TCP listener, or one without "
                                 f"client certificates, is refused)",
                                 line=self.dataplane.lines["ApiListen"])
        elif any(v is not None for v in tls.values()):
            self.warn("ApiCertificate/ApiCertificateKey/ApiClientCA are set but ApiListen is "
                      "not: the API serves only its unix socket")
        return Config(name, interface, tuple(peers), dataplane, tuple(self.warnings))

    def obfuscation(self, i: _Section, accept_plain: bool) -> Obfuscation:
        """The AmneziaWG keys of [Interface] checked together; an error
        points at the line of the key it names (for AcceptPlainWireGuard's
        rule, at that line when the key was left at its default)."""
        settings = i.values.get("obfuscation", {})
        plain_line = self.dataplane.lines.get("AcceptPlainWireGuard") if accept_plain else None
        try:
            obf = Obfuscation.from_settings(settings)
        except ObfuscationError as e:
            line = i.lines.get(e.key) or i.lines.get(e.related or "") or i.line
            raise self.error(str(e), line=line) from None
        if accept_plain:
            if obf.profile_is_plain:
                self.warn("AcceptPlainWireGuard: no S1..S4 or H1..H4 is set, so the interface "
                          "speaks plain WireGuard anyway", line=plain_line)
            try:
                obf.check_plain_alongside()
            except ObfuscationError as e:
                raise self.error(str(e), line=i.lines.get(e.key, plain_line)) from None
        return obf


def interface_name(filename: str) -> str:
    """NAME from .../NAME.conf, checked against wg-quick's rule for names."""
    base = os.path.basename(filename)
    name, dot, ext = base.rpartition(".")
    if not dot or ext != "conf" or not _WG_QUICK_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(filename, None,
                          f"the file name must be an interface name and .conf, like wg0.conf "
                          f"(a name is 1..15 of a-z A-Z 0-9 _ = + . -), got {base!r}")
    return name


def parse_config(text: str, filename: str) -> Config:
    """Parse the text of NAME.conf; `filename` names the interface and
    prefixes every error and warning."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    name = interface_name(filename)
    parser = _Parser(filename)
    for raw in text.split("\n"):
        if "\0" in raw:
            parser.lineno += 1
            raise parser.error("the line has a NUL byte; is this a text file?")
        parser.feed(raw)
    return parser.finish(name)


def load_config(path: Union[str, os.PathLike]) -> Config:
    """Read and parse an interface file (UTF-8)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(path, line, "not UTF-8 text") from None
    return parse_config(text, path)
