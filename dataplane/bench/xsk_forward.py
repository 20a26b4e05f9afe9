"""The raw AF_XDP forwarding ceiling of `dataplane bench` (DUT xsk-forward):
the XDP backend's I/O path with nothing of WireGuard in it.

    client ──veth── WAN ─ XDP forward: UDP ─> AF_XDP ─┐
                                                       forwarding thread (native/xsk/forward.c)
    far ──veth── kernel (routes) ── INNER <─ veth ─> INNER-x ── XDP inner: all ─> AF_XDP ─┘

Frames go WAN -> INNER-x (to the kernel's end of the inner pair, which
routes them on to the far side) and INNER-x -> WAN (what the kernel routes
into the pair, to the client), through the same AF_XDP ports, XDP programs
and inner veth pair as the dataplane-xdp DUT, with the Ethernet addresses
rewritten and no crypto: what the XDP backend would cost if WireGuard were
free.

Run in the DUT's namespace by the bench (one process, so its CPU time is
its own):

    python -m dataplane.bench.xsk_forward --wan v1b --wan-macs CLIENT,WAN \\
        --inner xf1-x --inner-macs INNER,INNER_X [--busy-poll US] [--realtime PRIO]

It prints `ready` once both programs are attached, on SIGUSR1 a JSON line
{"now": counters} (the bench reads the kernel's drops at its sockets around
each run), and on SIGTERM or SIGINT a JSON line of its counters, then
exits 0. Counters: the programs' (wan_*, inner_*), the forwarding thread's
(wan_rx, inner_tx, ...) and the kernel's at its AF_XDP sockets
(xsk_wan_rx_dropped, ...; see dataplane.device.XSK_STATISTICS).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Sequence

from dataplane._native import ffi, lib
from dataplane.device import xsk_socket_statistics
from dataplane.xdp import XdpProgram

QUEUE = 0  # the bench's veths have one RX queue


def _macs(text: str) -> bytes:
    """'dst,src' (aa:bb:cc:dd:ee:ff each) -> the 12 bytes of an Ethernet
    header's addresses."""
    try:
        dst, src = text.split(",")
        out = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
    except ValueError:
        out = b""
    if len(out) != 12:
        raise argparse.ArgumentTypeError(f"expected DST,SRC as two MAC addresses, not {text!r}")
    return out


class XskForwarder:
    """The native forwarder's two AF_XDP ports (owned: close())."""

    def __init__(self, wan: str, wan_macs: bytes, inner: str, inner_macs: bytes):
        out = ffi.new("struct dp_xsk_fwd **")
        rc = lib.dp_xsk_fwd_open(wan.encode(), inner.encode(), QUEUE, wan_macs, inner_macs, out)
        if rc < 0:
            raise OSError(-rc, f"opening AF_XDP sockets on {wan} and {inner} queue {QUEUE}")
        self._f = out[0]

    def busy_poll(self, usecs: int) -> None:
        """Busy polling (see dp_xsk_fwd_busy_poll); before run()."""
        rc = lib.dp_xsk_fwd_busy_poll(self._f, usecs)
        if rc < 0:
            raise OSError(-rc, f"busy polling of {usecs} us")

    def fd(self, port: int) -> int:
        return lib.dp_xsk_fwd_fd(self._f, port)

    def run(self, stats, realtime: int = 0) -> None:
        """Blocks until stop() (cffi releases the GIL meanwhile); with
        realtime, the calling thread runs SCHED_FIFO at that priority, as
        the XDP backend's workers do with RealtimePriority."""
        if realtime:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
        lib.dp_xsk_fwd_run(self._f, -1, stats)

    def stop(self) -> None:
        lib.dp_xsk_fwd_stop(self._f)

    def close(self) -> None:
        if self._f is not None:
            lib.dp_xsk_fwd_close(self._f)
            self._f = None


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    p = argparse.ArgumentParser(prog="python -m dataplane.bench.xsk_forward",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--wan", required=True, help="interface the generator's UDP arrives on")
    p.add_argument("--wan-macs", required=True, type=_macs, metavar="DST,SRC",
                   help="Ethernet addresses of frames sent out of the WAN interface")
    p.add_argument("--inner", required=True, help="our end of the inner veth pair")
    p.add_argument("--inner-macs", required=True, type=_macs, metavar="DST,SRC",
                   help="Ethernet addresses of frames sent into the inner pair")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US",
                   help="busy polling as the XDP backend's BusyPoll does it (default 0: off)")
    p.add_argument("--realtime", type=int, default=0, metavar="PRIO",
                   help="the forwarding thread runs SCHED_FIFO at PRIO (default 0: off)")
    args = p.parse_args(argv)

    # the handlers say what came and wake the main thread (which is on the
    # DUT's CPU: it sleeps until then)
    wake, asked = threading.Event(), set()

    def on_signal(sig, _frame) -> None:
        asked.add(sig)
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    fwd = XskForwarder(args.wan, args.wan_macs, args.inner, args.inner_macs)
    programs = []
    try:
        if args.busy_poll:
            fwd.busy_poll(args.busy_poll)
        wan_prog, inner_prog = XdpProgram.forward(), XdpProgram.inner()
        programs += [wan_prog, inner_prog]
        wan_prog.set_xsk(QUEUE, fwd.fd(lib.DP_XSK_FWD_A))
        inner_prog.set_xsk(QUEUE, fwd.fd(lib.DP_XSK_FWD_B))
        inner_prog.attach(args.inner)
        wan_prog.attach(args.wan)
        stats = ffi.new("struct dp_xsk_fwd_stats *")
        worker = threading.Thread(target=fwd.run, args=(stats, args.realtime),
                                  name="xsk-forward")
        worker.start()

        def counters() -> dict:
            out = {f"{side}_{k}": v for side, prog in (("wan", wan_prog), ("inner", inner_prog))
                   for k, v in prog.counters().items()}
            for i, side in enumerate(("wan", "inner")):
                for field in ("rx", "tx", "dropped", "skipped"):
                    out[f"{side}_{field}"] = getattr(stats, field)[i]
                port = (lib.DP_XSK_FWD_A, lib.DP_XSK_FWD_B)[i]
                for k, v in xsk_socket_statistics(fwd.fd(port)).items():
                    out[f"xsk_{side}_{k}"] = v
            out["polls"] = stats.polls
            return out

        print("ready", flush=True)
        while not asked & {signal.SIGTERM, signal.SIGINT}:
            wake.wait(1.0)
            wake.clear()
            if signal.SIGUSR1 in asked:
                asked.discard(signal.SIGUSR1)
                print(json.dumps({"now": counters()}), flush=True)
        fwd.stop()
        worker.join()
        print(json.dumps(counters()), flush=True)
    finally:
        for prog in programs:
            prog.close()
        fwd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
