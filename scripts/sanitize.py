#!/usr/bin/env python3
"""Runs tests against the native module built with sanitizers.

    scripts/sanitize.py [--sanitizers address,undefined] [--keep DIR [--reuse]] [PYTEST ARGS...]
    scripts/sanitize.py --sanitizers thread      # the concurrency tests under TSan

The project's files (those git knows, or all but .venv and build) are
copied to a scratch directory, the module is built there with gcc and
DATAPLANE_SANITIZE (every UBSan report fatal), and pytest runs there with
the sanitizer's runtime preloaded into Python (a module built with ASan
needs it first in the process) and that directory first on the import
path, also for the processes the tests start. Default tests: the unit
tests but the fuzz ones (their harnesses are sanitized builds of their
own, with clang's runtime, which cannot share a process with gcc's);
with thread, the tests that run native code in several threads.

Exit status: pytest's, or 1 when a sanitizer reported anything though
pytest passed. With -x it stops at the first failure."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = {"address": "libasan.so", "thread": "libtsan.so"}
DEFAULT_TESTS = ["tests/unit", "--ignore=tests/unit/test_fuzz.py",
                 "--ignore=tests/unit/test_sanitized.py"]
# Under ThreadSanitizer: the tests where native code runs in more than one
# thread (the device's workers, the tables' readers, the bulk parser's
# helper, the load generator). Not every unit test: its runtime, preloaded
# into every process a test starts, crashes bash (wg-quick).
THREAD_TESTS = ["tests/unit/test_concurrency.py", "tests/unit/test_index_table.py",
                "tests/unit/test_allowedips.py", "tests/unit/test_keypairs.py",
                "tests/unit/test_bulk_parser.py", "tests/unit/test_loadgen.py",
                "tests/unit/test_packet_path.py", "tests/unit/test_api.py",
                "tests/unit/test_api_bulk_lane.py", "tests/unit/test_realtime.py"]
# what the runtimes print when they find something
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|WARNING: ThreadSanitizer|"
                    r"ERROR: LeakSanitizer")


def project_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                             check=True).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a checkout
        skip = {".venv", "build", ".git"}
        files = [p for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    # the compiled XDP programs are package data, built by setup
    files += [p for p in (ROOT / "dataplane" / "bpf").glob("*.o")]
    return [p for p in files if p.is_file()]


def runtime(sanitizers: str) -> str:
    for name, lib in RUNTIMES.items():
        if name in sanitizers.split(","):
            out = subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                                 text=True, check=True).stdout.strip()
            if not os.path.isabs(out):
                raise SystemExit(f"gcc has no {lib} (Debian: libgcc-12-dev)")
            return out
    return ""  # UBSan alone: gcc links its runtime into the module


def build(where: Path, sanitizers: str) -> Path:
    for p in project_files():
        dst = where / p.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    env = dict(os.environ, DATAPLANE_SANITIZE=sanitizers, CC="gcc")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=where,
                       env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the sanitized build failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    found = list((where / "dataplane").glob("_native*.so"))
    if not found:
        raise SystemExit("the sanitized build made no module")
    return found[0]


def instrumented(module: Path, sanitizers: str) -> bool:
    """The module calls into the runtimes it was built for."""
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True,
                          text=True, check=True).stdout
    want = {"address": "__asan_report_", "undefined": "__ubsan_handle_",
            "thread": "__tsan_"}
    return all(want[s] in syms for s in sanitizers.split(",") if s in want)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sanitizers", default="address,undefined")
    ap.add_argument("--keep", type=Path, help="build (and keep) the copy here")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: test the copy built there before, as it is")
    args, pytest_args = ap.parse_known_args(argv)
    where = args.keep or Path(tempfile.mkdtemp(prefix="dp-sanitize-"))
    try:
        where.mkdir(parents=True, exist_ok=True)
        found = list((where / "dataplane").glob("_native*.so"))
        module = found[0] if args.reuse and found else build(where, args.sanitizers)
        if not instrumented(module, args.sanitizers):
            print(f"{module} is not instrumented for {args.sanitizers}", file=sys.stderr)
            return 1
        env = dict(os.environ, PYTHONPATH=str(where), DATAPLANE_SANITIZED=args.sanitizers,
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
                   TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1")
        lib = runtime(args.sanitizers)
        if lib:
            env["LD_PRELOAD"] = lib
        # --capture=sys: the runtimes write their reports to fd 2, which
        # pytest would otherwise hold for the test, and a process they stop
        # never hands it back
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--capture=sys",
               *(pytest_args or (THREAD_TESTS if "thread" in args.sanitizers.split(",")
                                 else DEFAULT_TESTS))]
        print(f"sanitizers {args.sanitizers}: {' '.join(cmd[1:])} (in {where})", flush=True)
        r = subprocess.run(cmd, cwd=where, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode == 0 and REPORT.search(r.stdout):
            print("a sanitizer reported (above) though the tests passed", file=sys.stderr)
            return 1
        if r.returncode < 0:  # stopped by a runtime (abort) or a signal
            print(f"pytest was killed by signal {-r.returncode}", file=sys.stderr)
            return 1
        return r.returncode
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
