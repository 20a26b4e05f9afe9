"""The `dataplane` command.

Each subcommand lives in its own module, which provides add_parser(subparsers)
(registering itself and setting `run`) and run(args) -> int; this file only
wires them together: up/down/show (dataplane.commands), demo, and bench:
`dataplane bench` itself runs the packet benchmark (dataplane.bench.packets),
and other scenarios (crypto, tunnel, api) are its subcommands, listed in
BENCH_SCENARIOS.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from dataplane import __version__
from dataplane import commands as operator_commands
from dataplane import demo
from dataplane.bench import api as bench_api
from dataplane.bench import crypto as bench_crypto
from dataplane.bench import packets as bench_packets
from dataplane.bench import tunnel as bench_tunnel

# `dataplane bench <scenario>`: one module per scenario.
BENCH_SCENARIOS = (bench_crypto, bench_tunnel, bench_api)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataplane",
        description="Kernel-bypass, WireGuard-compatible data plane for VPN exit nodes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    operator_commands.add_parsers(commands)
    demo.add_parser(commands)
    bench = commands.add_parser(
        "bench", help="measure performance on this machine",
        description="Measure performance on this machine. Without a scenario: packets/s, "
                    "Gbit/s, loss, latency and DUT CPU per packet of every tunnel under test, "
                    "driven by the native load generator.",
        epilog=bench_packets.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_packets.add_options(bench)
    bench.set_defaults(run=bench_packets.run)
    scenarios = bench.add_subparsers(dest="scenario", metavar="SCENARIO", required=False)
    for scenario in BENCH_SCENARIOS:
        scenario.add_parser(scenarios)
    return parser


_MAIN_PID = os.getpid()


def _terminate(signum, frame):
    # SIGTERM (and SIGINT where the shell ignored it, as for background
    # jobs) unwind like Ctrl-C: the demo and the benchmarks remove the
    # namespaces and processes they created on the way out. Only in this
    # process: pyroute2 forks helpers (without exec) and stops them with
    # SIGTERM, and a helper must not run our cleanup.
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("demo", "bench"):
        global _MAIN_PID
        _MAIN_PID = os.getpid()
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"dataplane {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
