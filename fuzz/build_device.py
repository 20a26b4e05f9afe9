"""Builds the harnesses that link the whole native device (fuzz/device_rx.c,
the receive path; fuzz/bulk_ndjson.c, the bulk parser with apply and undo;
fuzz/wan_xdp.c, the WAN XDP program built for the host against the
workers' parse) into build/fuzz/NAME.

The harness and the device's sources are built with clang under libFuzzer,
AddressSanitizer and UndefinedBehaviorSanitizer (fuzz/run.py's CFLAGS);
the crypto sources (native/crypto/*.c) use GCC's vector extensions
(__builtin_shuffle) that clang does not take, so they are built with gcc,
as dataplane/_build_native.py builds them (no -m flags: each SIMD file
names its target in a #pragma), without sanitizers, and linked in.

    from fuzz.build_device import build
    argv = build()        # device_rx: compiles and links; argv runs the harness
    argv = build(name="bulk_ndjson")
    commands()            # the commands alone, to print or run elsewhere

`replace` swaps one source for another file (a copy with a bug planted in
it, for tests/unit/test_fuzz.py): build(out, {"native/wg/datapath.c": copy}).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
OUT = ROOT / "build" / "fuzz"
NAME = "device_rx"
# each harness: the sources it adds to the device's
HARNESSES = {"device_rx": [], "bulk_ndjson": ["native/wg/bulk.c"],
             "wan_xdp": ["ebpf/wan.bpf.c"]}
# and the flags it adds: the WAN XDP program built for the host, with
# fuzz/xdp_host's stand-in for libbpf's helpers before the system's, and
# no alignment checks (its headers sit where the frame puts them, as in
# the kernel, which does not require alignment of BPF's loads on x86)
EXTRA_FLAGS = {"wan_xdp": ["-DDP_XDP_HOST", f"-I{FUZZ / 'xdp_host'}", f"-I{ROOT / 'ebpf'}",
                           "-fno-sanitize=alignment"]}

# What the device's packet path needs, built with the harness (clang,
# sanitized). xsk_port.c is there for datapath.c's AF_XDP calls, which a
# device without AF_XDP sockets never makes.
SANITIZED = ["native/wg/device.c", "native/wg/datapath.c", "native/wg/offload.c",
             "native/wg/routes.c", "native/wg/wire.c", "native/xsk/xsk_port.c",
             "native/tables/allowedips.c", "native/tables/indextable.c",
             "native/tables/replay.c"]
# Built with gcc, unsanitized.
GCC_ONLY = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "native" / "crypto").glob("*.c"))
INCLUDES = [f"-I{ROOT / 'native' / part}" for part in ("wg", "tables", "crypto", "xsk")]
CLANG_FLAGS = ["-g", "-O1", "-std=gnu11", "-fsanitize=fuzzer,address,undefined",
               "-fno-sanitize-recover=all", *INCLUDES]
# dataplane/_build_native.py's compile_flags(), without the warnings, at -O2
GCC_FLAGS = ["-std=gnu11", "-O2", "-g", "-fPIC", "-fno-strict-aliasing",
             "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", *INCLUDES]
# as _build_native.py links (libcrypto is only its OpenSSL comparison)
LIBS = ["-lxdp", "-lbpf", "-lpthread"]


def commands(out: Path = OUT, replace: dict[str, str | Path] | None = None,
             name: str = NAME) -> list[list[str]]:
    """The commands that build `out`/NAME: one gcc -c per crypto source
    (objects in `out`/NAME.objs), then one clang that compiles the rest and
    links."""
    replace = {k: str(v) for k, v in (replace or {}).items()}
    sanitized = SANITIZED + HARNESSES[name]
    unknown = set(replace) - set(sanitized) - set(GCC_ONLY)
    if unknown:
        raise ValueError(f"not a source of {name}: {', '.join(sorted(unknown))} "
                         f"(its sources: {', '.join(sanitized + GCC_ONLY)})")
    objs = out / f"{name}.objs"
    cmds, objects = [], []
    for src in GCC_ONLY:
        obj = objs / (Path(src).stem + ".o")
        cmds.append(["gcc", *GCC_FLAGS, "-c", replace.get(src, str(ROOT / src)),
                     "-o", str(obj)])
        objects.append(str(obj))
    cmds.append(["clang", *CLANG_FLAGS, *EXTRA_FLAGS.get(name, []), str(FUZZ / f"{name}.c"),
                 *(replace.get(s, str(ROOT / s)) for s in sanitized), *objects, *LIBS,
                 "-o", str(out / name)])
    return cmds


def build(out: Path = OUT, replace: dict[str, str | Path] | None = None,
          name: str = NAME) -> list[str]:
    """Build the harness; returns the command that runs it (as fuzz/run.py's
    build() does). Raises subprocess.CalledProcessError when a step fails."""
    out = Path(out)
    (out / f"{name}.objs").mkdir(parents=True, exist_ok=True)
    for cmd in commands(out, replace, name):
        subprocess.run(cmd, check=True)
    return [str(out / name)]


if __name__ == "__main__":
    for harness in sys.argv[1:] or HARNESSES:
        print(build(name=harness)[0])
    sys.exit(0)
