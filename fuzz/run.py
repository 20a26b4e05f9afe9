"""Builds the fuzz harnesses and runs each from its seed corpus.

    .venv/bin/python fuzz/run.py                 # every harness, a short run
    .venv/bin/python fuzz/run.py wire_classify --runs 50000000
    .venv/bin/python fuzz/run.py --seconds 600   # each for ten minutes

C harnesses (fuzz/*.c) are libFuzzer targets built with clang under
AddressSanitizer and UndefinedBehaviorSanitizer (Debian's clang-14 and
libclang-rt-14-dev) from the native sources they name in HARNESSES; Python
harnesses (fuzz/*.py) run under atheris. The corpus a run grows goes to
build/fuzz/corpus/NAME (the seeds in fuzz/corpus/NAME stay as they are);
a finding is written to build/fuzz/ and the exit status is not 0.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
OUT = ROOT / "build" / "fuzz"

# name: the native sources a C harness links (besides fuzz/NAME.c), DEVICE
# for one that links the whole device (fuzz/build_device.py: its crypto is
# built with gcc), or None for a Python harness
DEVICE = "device"
HARNESSES: dict[str, list[str] | str | None] = {
    "wire_classify": ["native/wg/wire.c"],
    "replay_window": ["native/tables/replay.c"],
    "allowed_ips": ["native/tables/allowedips.c"],
    "index_table": ["native/tables/indextable.c"],
    "offload_roundtrip": ["native/wg/offload.c"],
    "device_rx": DEVICE,
    "bulk_ndjson": DEVICE,
    "wan_xdp": DEVICE,
    "obfuscation_settings": None,
}
CFLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
          "-I", str(ROOT / "native" / "wg"), "-I", str(ROOT / "native" / "tables")]


def build(name: str, out: Path = OUT, replace: dict | None = None) -> list[str]:
    """The command that runs harness `name` (built first into `out` if it
    is C); `replace` swaps a native source for another file (a copy with a
    bug planted in it)."""
    sources = HARNESSES[name]
    if sources is None:
        return [sys.executable, str(FUZZ / f"{name}.py")]
    if sources == DEVICE:
        sys.path.insert(0, str(ROOT))
        from fuzz import build_device
        return build_device.build(out, replace, name)
    replace = {k: str(v) for k, v in (replace or {}).items()}
    out.mkdir(parents=True, exist_ok=True)
    exe = out / name
    cmd = ["clang", *CFLAGS, str(FUZZ / f"{name}.c"),
           *(replace.get(s, str(ROOT / s)) for s in sources), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return [str(exe)]


def dictionary(name: str) -> list[str]:
    """libFuzzer's -dict= for a harness with fuzz/NAME.dict."""
    d = FUZZ / f"{name}.dict"
    return [f"-dict={d}"] if d.exists() else []


def run(name: str, runs: int | None, seconds: int | None) -> tuple[int, int, str]:
    """(exit status, inputs run, output's tail)."""
    argv = build(name)
    grown = OUT / "corpus" / name
    grown.mkdir(parents=True, exist_ok=True)
    limits = [f"-runs={runs}"] if runs is not None else []
    limits += [f"-max_total_time={seconds}"] if seconds is not None else []
    proc = subprocess.run(argv + [str(grown), str(FUZZ / "corpus" / name), *limits,
                                  *(dictionary(name) if HARNESSES[name] else []),
                                  f"-artifact_prefix={OUT}/{name}-", "-print_final_stats=1"],
                          capture_output=True, text=True, cwd=ROOT)
    out = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs", out)
    return proc.returncode, int(done.group(1)) if done else 0, out[-3000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"harnesses (default: all of {', '.join(HARNESSES)})")
    p.add_argument("--runs", type=int, help="inputs per harness (default 200000 "
                                            "unless --seconds)")
    p.add_argument("--seconds", type=int, help="time per harness")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in HARNESSES]
    if unknown:
        p.error(f"no harness {', '.join(unknown)} (known: {', '.join(HARNESSES)})")
    runs = args.runs if args.runs is not None or args.seconds else 200000
    failed = 0
    for name in args.names or HARNESSES:
        status, done, tail = run(name, runs, args.seconds)
        reached = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", tail)
        cov = (f", coverage {reached[-1][0]} edges, {reached[-1][1]} features, corpus "
               f"{reached[-1][2]}" if reached else "")
        print(f"{name}: {done} inputs, exit {status}{cov}")
        if status:
            print(tail)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
