"""Bindings of the XDP loader (native/xdp/dp_xdp.h): the WAN and inner XDP
programs of ebpf/ loaded with their settings, attached to an interface with
a bpf_link this process owns, their XSKMAP pointed at AF_XDP sockets, their
counters read, and run on test frames through BPF_PROG_TEST_RUN.

C error codes become the typed exceptions below, carrying the loader's
message (what failed, with which value, what to do). Loading and attaching
need root (CAP_BPF, CAP_NET_ADMIN).

    wan = XdpProgram.load(object_path("wan"), listen_port=51820)
    wan.attach("eth0")              # detached on close() or process exit
    wan.set_xsk(0, xsk_fd)
    wan.counters()                  # {"steer_data": 12, "drop_trunc_udp": 1, ...}
"""
from __future__ import annotations

import enum
import errno as errno_mod
import os
import socket
from pathlib import Path
from typing import Optional, Union

from dataplane._native import ffi, lib

# Where the package build puts the compiled programs (ebpf/build.py).
BPF_DIR = Path(__file__).resolve().parent / "bpf"

DEFAULT_HANDSHAKE_RATE: int = lib.DP_WG_INITIATIONS_PER_SECOND
DEFAULT_HANDSHAKE_BURST: int = lib.DP_WG_INITIATIONS_BURST
# BPF_PROG_TEST_RUN takes frames from an Ethernet header up to about a page.
TEST_RUN_MIN_BYTES = 14
# this host's addresses the WAN program can hold (DP_XDP_MAX_LOCAL_ADDRS)
MAX_LOCAL_ADDRS = lib.DP_XDP_MAX_LOCAL_ADDRS_API
# Room for a program that grows the frame (bpf_xdp_adjust_head/tail).
_TEST_RUN_GROWTH = 512


class Verdict(enum.IntEnum):
    """XDP actions, as BPF_PROG_TEST_RUN returns them."""
    ABORTED = lib.DP_XDP_ABORTED
    DROP = lib.DP_XDP_DROP
    PASS = lib.DP_XDP_PASS
    TX = lib.DP_XDP_TX
    REDIRECT = lib.DP_XDP_REDIRECT


class AttachMode(enum.IntEnum):
    NONE = lib.DP_XDP_MODE_NONE
    NATIVE = lib.DP_XDP_MODE_NATIVE
    GENERIC = lib.DP_XDP_MODE_GENERIC


class XdpError(OSError):
    """Base class: errno and the loader's message."""


class XdpObjectNotBuilt(XdpError):
    """A compiled program (dataplane/bpf/*.bpf.o) is missing."""


class XdpLoadError(XdpError):
    """Opening an object or loading it into the kernel failed (unreadable or
    foreign file, bad settings, verifier rejection, missing privileges)."""


class XdpAttachError(XdpError):
    """Attaching, detaching, or removing a stale program failed; nothing of
    ours is left attached by the failed call."""


class XskMapError(XdpError):
    """Setting or clearing an XSKMAP entry failed."""


class XdpCountersError(XdpError):
    """Reading the counters failed."""


class XdpTestRunError(XdpError):
    """BPF_PROG_TEST_RUN refused the frame or failed."""


def _raise(cls, rc: int, what: str):
    message = ffi.string(lib.dp_xdp_last_error()).decode(errors="replace")
    raise cls(-rc, message or f"{what}: {os.strerror(-rc)}")


def object_path(name: str) -> Path:
    """The compiled program `name` ("wan", "inner" or "wan.bpf.o") in
    dataplane/bpf/, where the package build puts it."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"program name must be like 'wan' or 'wan.bpf.o', got {name!r}")
    file = name if name.endswith(".bpf.o") else f"{name}.bpf.o"
    path = BPF_DIR / file
    if not path.is_file():
        raise XdpObjectNotBuilt(errno_mod.ENOENT,
                                f"{path} is missing: the package build compiles the XDP programs; "
                                f"in a source tree run `python ebpf/build.py`, otherwise reinstall "
                                f"dataplane (needs clang)")
    return path


def interface_index(interface: Union[str, int]) -> int:
    """ifindex of an interface given by name or index (in this process's
    network namespace)."""
    if isinstance(interface, bool):
        raise TypeError("interface must be a name or an ifindex, not bool")
    if isinstance(interface, int):
        if interface <= 0:
            raise ValueError(f"ifindex must be positive, got {interface}")
        return interface
    if not isinstance(interface, str):
        raise TypeError(f"interface must be a name or an ifindex, not {type(interface).__name__}")
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        message = f"no interface named {interface!r} in this network namespace"
        raise XdpAttachError(errno_mod.ENODEV, message) from None


def remove_stale(interface: Union[str, int]) -> int:
    """Removes XDP programs of ours that a process left attached to the
    interface without a bpf_link; returns how many. XdpAttachError if the
    interface has a program that is not ours, or ours held by a live link."""
    rc = lib.dp_xdp_remove_stale(interface_index(interface))
    if rc < 0:
        _raise(XdpAttachError, rc, f"removing stale XDP programs from {interface}")
    return rc


def _int_in(name: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def wire_config(obf, accept_plain: bool = False):
    """The WAN program's view of an Obfuscation: its sizes and header
    ranges, and the interface's own signature packets (I1..I5) by length
    and leading fixed bytes; plain (all zeros) for None or plain."""
    w = ffi.new("struct dp_xdp_wire_config *")
    if obf is None or obf.profile_is_plain:
        return w
    w.obfuscated = 1
    w.accept_plain = int(bool(accept_plain))
    for k, (pad, h) in enumerate(zip(obf.paddings, obf.headers)):
        w.padding[k], w.header_min[k], w.header_max[k] = pad, h.lo, h.hi
    shapes = obf.signature_shapes()[:len(w.sig_len)]
    w.n_signatures = len(shapes)
    for i, (length, prefix) in enumerate(shapes):
        w.sig_len[i] = length
        w.sig_prefix_len[i] = len(prefix)
        ffi.memmove(w.sig_prefix[i], prefix.ljust(8, b"\0"), 8)
    return w


class XdpProgram:
    """One loaded XDP program (WAN or inner) and its maps. Owns them: close()
    (or garbage collection, or process exit) detaches and unloads."""

    def __init__(self, handle, path: Path):
        self._handle = handle
        self.path = path
        self._counter_names = tuple(
            ffi.string(lib.dp_xdp_counter_name(handle, i)).decode()
            for i in range(lib.dp_xdp_counter_count(handle)))

    # ---------------------------------------------------------------- load

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, listen_port: Optional[int] = None,
             ratelimit: bool = True, rate: int = DEFAULT_HANDSHAKE_RATE,
             burst: int = DEFAULT_HANDSHAKE_BURST) -> "XdpProgram":
        """Opens a compiled object and loads its program. The WAN program
        needs listen_port; handshake messages (types 1-3) are then
        rate-limited per source (IPv4 address, IPv6 /64) to `rate` per
        second after a burst of `burst`, unless ratelimit is False. The inner
        program takes no settings."""
        path = Path(path)
        config = ffi.NULL
        if listen_port is not None:
            config = ffi.new("struct dp_xdp_config *")
            config.listen_port = _int_in("listen_port", listen_port, 1, 65535)
            if ratelimit:
                config.flags = lib.DP_XDP_RATELIMIT
                config.handshake_rate = _int_in("rate", rate, 1, 10**9)
                config.handshake_burst = _int_in("burst", burst, 1, 2**32 - 1)
        out = ffi.new("struct dp_xdp **")
        rc = lib.dp_xdp_open(os.fsencode(path), config, out)
        if rc < 0:
            _raise(XdpLoadError, rc, f"loading {path}")
        return cls(ffi.gc(out[0], lib.dp_xdp_close), path)

    @classmethod
    def wan(cls, listen_port: int, **settings) -> "XdpProgram":
        """The WAN program from dataplane/bpf/wan.bpf.o."""
        return cls.load(object_path("wan"), listen_port=listen_port, **settings)

    @classmethod
    def inner(cls) -> "XdpProgram":
        """The inner program from dataplane/bpf/inner.bpf.o."""
        return cls.load(object_path("inner"))

    @classmethod
    def forward(cls) -> "XdpProgram":
        """The raw forwarding ceiling's program (dataplane/bpf/forward.bpf.o,
        `dataplane bench` DUT xsk-forward): UDP to AF_XDP, the rest passed."""
        return cls.load(object_path("forward"))

    def close(self) -> None:
        """Detaches (if attached) and unloads. Idempotent."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            ffi.release(handle)

    def __enter__(self) -> "XdpProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _h(self):
        if self._handle is None:
            raise ValueError(f"XDP program from {self.path} is closed")
        return self._handle

    # ----------------------------------------------------------- properties

    @property
    def name(self) -> str:
        """dp_xdp_wan, dp_xdp_inner or dp_xdp_forward (the bench's forwarding ceiling)."""
        return ffi.string(lib.dp_xdp_name(self._h)).decode()

    @property
    def prog_id(self) -> int:
        """The kernel's id of the program (as `ip link` and bpftool show it)."""
        return lib.dp_xdp_prog_id(self._h)

    @property
    def max_queues(self) -> int:
        """RX queues the XSKMAP can serve (0 .. max_queues-1)."""
        return lib.dp_xdp_max_queues(self._h)

    @property
    def xsk_map_fd(self) -> int:
        """fd of the XSKMAP (owned by this object), e.g. for libxdp."""
        return lib.dp_xdp_xsk_map_fd(self._h)

    @property
    def ifindex(self) -> int:
        """The interface attached to, or 0."""
        return lib.dp_xdp_ifindex(self._h)

    @property
    def mode(self) -> AttachMode:
        return AttachMode(lib.dp_xdp_attach_mode(self._h))

    # -------------------------------------------------------------- attach

    def attach(self, interface: Union[str, int], *, allow_generic: bool = False) -> None:
        """Attaches to the interface (name or ifindex) with a bpf_link owned
        by this process, in native mode (or generic mode if allow_generic and
        the driver has no native XDP). Stale programs of ours left attached
        without a link are removed first."""
        ifindex = interface_index(interface)
        flags = lib.DP_XDP_ATTACH_ALLOW_GENERIC if allow_generic else 0
        rc = lib.dp_xdp_attach(self._h, ifindex, flags)
        if rc < 0:
            _raise(XdpAttachError, rc, f"attaching {self.name} to {interface}")

    def link_alive(self) -> bool:
        """The program's link still holds it on the interface (False once
        another process detached it, e.g. bpftool link detach)."""
        rc = lib.dp_xdp_link_alive(self._h)
        if rc < 0:
            _raise(XdpAttachError, rc, f"asking the kernel about {self.name}'s link")
        return bool(rc)

    def detach(self) -> None:
        """Detaches from the interface; a no-op when not attached."""
        rc = lib.dp_xdp_detach(self._h)
        if rc < 0:
            _raise(XdpAttachError, rc, f"detaching {self.name}")

    # -------------------------------------------------------------- XSKMAP

    def set_xsk(self, queue: int, fd: int) -> None:
        """Frames of RX queue `queue` go to the AF_XDP socket `fd`."""
        _int_in("queue", queue, 0, 2**32 - 1)
        _int_in("fd", fd, 0, 2**31 - 1)
        rc = lib.dp_xdp_set_xsk(self._h, queue, fd)
        if rc < 0:
            _raise(XskMapError, rc, f"setting the socket of RX queue {queue}")

    def set_ratelimit_rest(self, rest: bool) -> None:
        """WAN program: let the handshake rate limit rest (the control
        plane is not under load) or apply it (the state at load)."""
        rc = lib.dp_xdp_set_ratelimit_rest(self._h, int(rest))
        if rc < 0:
            _raise(XdpError, rc, "setting the handshake rate limit's state")

    def set_wire(self, config) -> None:
        """WAN program: the AmneziaWG profile to classify by (a struct
        dp_xdp_wire_config from wire_config)."""
        rc = lib.dp_xdp_set_wire(self._h, config)
        if rc < 0:
            _raise(XdpError, rc, "writing the wire profile")

    def set_local(self, addrs) -> None:
        """WAN program: this host's addresses (ipaddress objects), the
        only destinations it steers datagrams to the listen port for
        (others are the kernel's to forward). Replaces the set."""
        addrs = sorted(set(addrs), key=lambda a: (a.version, a.packed))
        if len(addrs) > MAX_LOCAL_ADDRS:
            raise XdpError(errno_mod.E2BIG, f"{len(addrs)} local addresses; the map holds "
                                            f"{MAX_LOCAL_ADDRS}")
        buf = ffi.new("struct dp_xdp_local_addr[]", max(len(addrs), 1))
        for i, a in enumerate(addrs):
            buf[i].family = a.version
            ffi.memmove(buf[i].addr, a.packed, len(a.packed))
        rc = lib.dp_xdp_set_local(self._h, buf, len(addrs))
        if rc < 0:
            _raise(XdpError, rc, "writing the local addresses")

    def clear_xsk(self, queue: int) -> None:
        """Frames of RX queue `queue` go to the kernel again."""
        _int_in("queue", queue, 0, 2**32 - 1)
        rc = lib.dp_xdp_clear_xsk(self._h, queue)
        if rc < 0:
            _raise(XskMapError, rc, f"clearing the socket of RX queue {queue}")

    # ------------------------------------------------------------ counters

    @property
    def counter_names(self) -> tuple:
        """The program's counters, in index order (names come from C)."""
        return self._counter_names

    def counters(self) -> dict:
        """Every counter, summed over CPUs: {name: value}."""
        n = len(self._counter_names)
        values = ffi.new("uint64_t[]", max(n, 1))
        rc = lib.dp_xdp_counters(self._h, values, n)
        if rc < 0:
            _raise(XdpCountersError, rc, f"reading the counters of {self.name}")
        return {name: values[i] for i, name in enumerate(self._counter_names)}

    # ------------------------------------------------------------ test run

    def test_run(self, frame, repeat: int = 1) -> tuple:
        """Runs the program on an Ethernet frame (BPF_PROG_TEST_RUN) `repeat`
        times in a row; returns (verdict of the last run, frame as the
        program left it). Test runs never see an AF_XDP socket: a steered
        frame comes back as Verdict.PASS and is counted both as steered and
        in the no-socket counter."""
        try:
            data = memoryview(frame).tobytes()
        except TypeError:
            raise TypeError(f"frame must be bytes-like, not {type(frame).__name__}") from None
        if len(data) < TEST_RUN_MIN_BYTES:
            raise ValueError(f"frame must be at least {TEST_RUN_MIN_BYTES} bytes (an Ethernet "
                             f"header) for BPF_PROG_TEST_RUN, got {len(data)}")
        _int_in("repeat", repeat, 1, 2**31 - 1)
        out = ffi.new("uint8_t[]", len(data) + _TEST_RUN_GROWTH)
        out_len = ffi.new("uint32_t *")
        verdict = ffi.new("uint32_t *")
        rc = lib.dp_xdp_test_run(self._h, ffi.from_buffer("uint8_t[]", data), len(data), out,
                                 len(out), out_len, repeat, verdict)
        if rc < 0:
            _raise(XdpTestRunError, rc, f"test run of {self.name}")
        try:
            result = Verdict(verdict[0])
        except ValueError:  # not an XDP action: the kernel treats it as ABORTED
            result = verdict[0]
        return result, bytes(ffi.buffer(out, out_len[0]))

    def __repr__(self) -> str:
        if self._handle is None:
            return f"<XdpProgram {self.path} closed>"
        where = f" on ifindex {self.ifindex} ({self.mode.name.lower()})" if self.ifindex else ""
        return f"<XdpProgram {self.name} id {self.prog_id}{where}>"
