"""`dataplane bench crypto`: ChaCha20-Poly1305 throughput of each of our
implementations against OpenSSL, on this machine.

The loops run in C (native/bench/crypto_bench.c), so Python's overhead is not
measured: ours is one dp_aead_seal_batch/dp_aead_open_batch call per batch,
OpenSSL one EVP call sequence per message, both on the same kind of buffers
(distinct random keys and counters per message, WireGuard nonces, no AD).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

SIZES = (64, 128, 256, 512, 1420, 9000)
BATCHES = (1, 32)
OPS = ("seal", "open")
DEFAULT_SECONDS = 0.2
DEFAULT_REPEAT = 3
# --quick: the points the summary reports, once each, briefly.
QUICK_SIZES = (64, 1420)
QUICK_SECONDS = 0.05
QUICK_REPEAT = 1
# The summary's points: (size, batch).
SUMMARY_POINTS = ((1420, 1), (1420, 32), (64, 32))
# CPU features the implementations depend on.
CPU_FLAGS = ("avx2", "avx512f", "avx512vl", "avx512bw", "avx512ifma")
# The C side warms up for a quarter of each measurement, at most this long.
WARMUP_MAX_SECONDS = 0.05


class BenchError(Exception):
    """A measurement could not be made; the message says which and why."""


@dataclass(frozen=True)
class Measurement:
    ns_per_msg: float
    cpu_ns_per_msg: float

    def bytes_per_s(self, size: int) -> float:
        return size * 1e9 / self.ns_per_msg


# ---------------------------------------------------------------- command line

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "crypto",
        help="ChaCha20-Poly1305 throughput of each implementation vs OpenSSL",
        description="Measure ChaCha20-Poly1305 seal/open throughput of every implementation "
                    "this CPU runs, next to OpenSSL measured in the same process, and print a "
                    "table. Each figure is the median of --repeat measurements.")
    parser.add_argument("--op", choices=("seal", "open", "both"), default="seal",
                        help="operation to measure (default: seal)")
    parser.add_argument("--impl", action="append", metavar="NAME",
                        help="implementation to measure (repeatable; default: every one this "
                             "CPU runs)")
    parser.add_argument("--size", action="append", type=_positive_int, metavar="N",
                        help="message size in bytes (repeatable; default: "
                             f"{', '.join(map(str, SIZES))})")
    parser.add_argument("--batch", action="append", type=_positive_int, metavar="N",
                        help="messages per batch call (repeatable; default: "
                             f"{', '.join(map(str, BATCHES))})")
    parser.add_argument("--seconds", type=_positive_float, metavar="S",
                        help=f"time per measurement (default: {DEFAULT_SECONDS}, "
                             f"--quick: {QUICK_SECONDS})")
    parser.add_argument("--repeat", type=_positive_int, metavar="N",
                        help=f"measurements per row, median reported (default: "
                             f"{DEFAULT_REPEAT}, --quick: {QUICK_REPEAT})")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {' and '.join(map(str, QUICK_SIZES))} only, "
                             f"{QUICK_REPEAT} short measurement each (explicit options win)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the rows to FILE as a JSON list of objects")
    parser.set_defaults(run=run)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def run(args) -> int:
    try:
        return _run(args)
    except BenchError as e:
        print(f"dataplane bench crypto: error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from dataplane._native import lib

    ops = OPS if args.op == "both" else (args.op,)
    sizes = _unique(args.size or (QUICK_SIZES if args.quick else SIZES))
    batches = _unique(args.batch or BATCHES)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    impls = select_implementations(args.impl)
    for size in sizes:
        if size > lib.DP_AEAD_MAX_BYTES:
            raise BenchError(f"--size {size} is larger than the largest message, "
                             f"{lib.DP_AEAD_MAX_BYTES} bytes")
    for batch in batches:
        if batch > lib.DP_AEAD_BATCH_MAX:
            raise BenchError(f"--batch {batch} is larger than one batch call takes, "
                             f"{lib.DP_AEAD_BATCH_MAX}")

    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise BenchError(f"cannot write --json {args.json}: {folder} is not a writable "
                             f"directory")

    machine = machine_info()
    groups = [(op, size, batch) for op in ops for size in sizes for batch in batches]
    per_measurement = seconds + min(seconds / 4, WARMUP_MAX_SECONDS)
    estimate = len(groups) * repeat * (len(impls) + 1) * per_measurement
    print(f"{_machine_line(machine)}\n"
          f"measuring {len(groups) * len(impls)} row(s) ({', '.join(impls.values())} and OpenSSL, "
          f"{repeat} x {seconds:g} s each), about {math.ceil(estimate)} s",
          file=sys.stderr, flush=True)

    rows, total = [], len(groups) * len(impls)
    for op, size, batch in groups:
        for row in measure_group(impls, op, size, batch, seconds, repeat):
            row["machine"] = machine
            rows.append(row)
            print(f"[{len(rows):{len(str(total))}}/{total}] {_row_line(row)}",
                  file=sys.stderr, flush=True)

    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
                f.write("\n")
        except OSError as e:
            raise BenchError(f"cannot write --json {args.json}: {e.strerror}") from None

    print(format_table(rows, machine))
    print()
    print("\n".join(summary_lines(rows)))
    if args.json:
        print(f"\nrows written to {args.json}", file=sys.stderr)
    return 0


def _unique(values) -> list:
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------- measuring

def select_implementations(names: Optional[list]) -> dict[int, str]:
    """{impl id: name} to measure: the requested ones, or every one this CPU
    runs except test-only builds."""
    from dataplane._native import ffi, lib

    known = {ffi.string(lib.dp_crypto_impl_name(i)).decode(): i
             for i in range(lib.DP_IMPL_COUNT)}
    runnable = [n for n, i in known.items() if lib.dp_crypto_impl_supported(i)]
    if not names:
        from dataplane import crypto

        return {known[n]: n for n in crypto.implementations()}
    chosen = {}
    for name in _unique(names):
        if name not in known:
            raise BenchError(f"unknown implementation {name!r}; known: {', '.join(known)}")
        if not lib.dp_crypto_impl_supported(known[name]):
            raise BenchError(f"this CPU cannot run {name!r}; it runs: {', '.join(runnable)}")
        chosen[known[name]] = name
    return chosen


def measure(impl: Optional[int], op: str, size: int, batch: int, seconds: float) -> Measurement:
    """One timed run in C: our implementation impl, or OpenSSL if impl is None."""
    from dataplane._native import ffi, lib

    c_op = lib.DP_BENCH_OP_SEAL if op == "seal" else lib.DP_BENCH_OP_OPEN
    result = ffi.new("struct dp_bench_result *")
    min_ns = int(seconds * 1e9)
    if impl is None:
        rc = lib.dp_bench_openssl(c_op, size, batch, min_ns, result)
    else:
        rc = lib.dp_bench_aead(impl, c_op, size, batch, min_ns, result)
    if rc < 0 or result.messages == 0:
        who = "OpenSSL" if impl is None else ffi.string(lib.dp_crypto_impl_name(impl)).decode()
        why = {-lib.DP_ENOTSUP: "this CPU cannot run it",
               -lib.DP_EINVAL: "bad arguments, out of memory, or a message failed to "
                               "seal/open or did not verify against OpenSSL (a bug in the "
                               "implementation if the arguments are valid)"}.get(rc, f"error {rc}")
        raise BenchError(f"{who} {op} of {size}-byte messages, batch {batch}: {why}")
    return Measurement(ns_per_msg=result.ns / result.messages,
                       cpu_ns_per_msg=result.cpu_ns / result.messages)


def _median(runs: list[Measurement]) -> Measurement:
    return Measurement(ns_per_msg=statistics.median(m.ns_per_msg for m in runs),
                       cpu_ns_per_msg=statistics.median(m.cpu_ns_per_msg for m in runs))


def measure_group(impls: dict[int, str], op: str, size: int, batch: int, seconds: float,
                  repeat: int) -> list[dict]:
    """Rows for every implementation at one (op, size, batch).

    OpenSSL is measured in the same rounds as our implementations (each
    round: OpenSSL, then each of ours), so a change in CPU clock or load
    during the run shifts both sides alike; every row of the group is then
    compared with the same OpenSSL median."""
    openssl_runs: list[Measurement] = []
    runs: dict[int, list[Measurement]] = {i: [] for i in impls}
    for _ in range(repeat):
        openssl_runs.append(measure(None, op, size, batch, seconds))
        for i in impls:
            runs[i].append(measure(i, op, size, batch, seconds))
    openssl_bps = _median(openssl_runs).bytes_per_s(size)
    rows = []
    for i, name in impls.items():
        m = _median(runs[i])
        bps = m.bytes_per_s(size)
        rows.append({"impl": name, "op": op, "size": size, "batch": batch,
                     "bytes_per_s": bps, "ns_per_msg": m.ns_per_msg,
                     "openssl_bytes_per_s": openssl_bps, "ratio_vs_openssl": bps / openssl_bps,
                     "cpu_ns_per_msg": m.cpu_ns_per_msg})
    return rows


# ---------------------------------------------------------------- machine

def machine_info() -> dict:
    from dataplane._native import ffi, lib

    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not cpu:
                    cpu = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "kernel": f"{platform.system()} {platform.release()}",
            "openssl": ffi.string(lib.dp_bench_openssl_version()).decode(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _machine_line(machine: dict) -> str:
    return (f"{machine['cpu']} [{' '.join(machine['cpu_flags']) or 'no AVX2/AVX-512'}], "
            f"{machine['kernel']}, {machine['openssl']}")


# ---------------------------------------------------------------- output

def _mb(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:,.0f}"


def _row_line(row: dict) -> str:
    return (f"{row['impl']} {row['op']} {row['size']} B batch {row['batch']}: "
            f"{row['ns_per_msg']:,.0f} ns/msg, {_mb(row['bytes_per_s'])} MB/s, "
            f"{row['ratio_vs_openssl']:.2f}x OpenSSL")


def format_table(rows: list[dict], machine: dict) -> str:
    header = ("impl", "op", "size", "batch", "ns/msg", "cpu ns/msg", "MB/s", "OpenSSL MB/s",
              "vs OpenSSL")
    body = [(r["impl"], r["op"], str(r["size"]), str(r["batch"]), f"{r['ns_per_msg']:,.0f}",
             f"{r['cpu_ns_per_msg']:,.0f}", _mb(r["bytes_per_s"]),
             _mb(r["openssl_bytes_per_s"]), f"{r['ratio_vs_openssl']:.2f}x")
            for r in rows]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    left = 2  # impl and op are text, the rest numbers

    def fmt(line):
        return "  ".join(cell.ljust(w) if c < left else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(line, widths))).rstrip()

    lines = [_machine_line(machine), "", fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(line) for line in body]
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    """Two lines: the fastest implementation's ratio vs OpenSSL at 1420 B
    (batch 1 and 32) and at 64 B batch 32, for each op measured."""
    ops = _unique(r["op"] for r in rows)

    def point(op, size, batch):
        candidates = [r for r in rows if (r["op"], r["size"], r["batch"]) == (op, size, batch)]
        if not candidates:
            return "not measured"
        best = max(candidates, key=lambda r: r["bytes_per_s"])
        return f"{best['ratio_vs_openssl']:.2f}x ({best['impl']})"

    lines = []
    for size in _unique(s for s, _ in SUMMARY_POINTS):
        batches = [b for s, b in SUMMARY_POINTS if s == size]
        parts = [f"{op} " + ", ".join(f"batch {b} {point(op, size, b)}" for b in batches)
                 for op in ops]
        lines.append(f"{size:>4} B, fastest vs OpenSSL: " + "; ".join(parts))
    return lines
