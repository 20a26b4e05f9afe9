"""cffi builder for dataplane._native (out-of-line API mode).

The cdef is read from the C headers in native/: the headers are the single
source of every declaration and size, and Python never re-types them.
"""
import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"

# Headers whose declarations form the Python-visible API, in order.
CDEF_HEADERS = [
    NATIVE / "crypto" / "dp_crypto.h",
    NATIVE / "crypto" / "dp_crypto_testing.h",
    NATIVE / "bench" / "dp_bench.h",
]
SOURCE_DIRS = [NATIVE / "crypto", NATIVE / "bench"]

_DEFINE_INT = re.compile(r"^#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*$")


def cdef_from_header(path: Path) -> str:
    """Header text minus what cffi cannot parse: preprocessor lines other
    than integer #defines (include guards, #include)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not _DEFINE_INT.match(line.strip()):
            continue
        lines.append(line)
    return "\n".join(lines)


def compile_flags() -> list:
    flags = [
        "-std=gnu11",
        "-O3",
        "-fstack-protector-strong",
        "-D_FORTIFY_SOURCE=2",
        "-fno-strict-aliasing",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
    ]
    # CI (and anyone who asks) builds with warnings as errors.
    if os.environ.get("CI") or os.environ.get("DATAPLANE_WERROR"):
        flags.append("-Werror")
    return flags


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_from_header(h) for h in CDEF_HEADERS))

_sources = sorted(str(p.relative_to(ROOT)) for d in SOURCE_DIRS for p in d.glob("*.c"))
ffibuilder.set_source(
    "dataplane._native",
    "\n".join(f'#include "{h.relative_to(ROOT)}"' for h in CDEF_HEADERS),
    sources=_sources,
    include_dirs=[str(ROOT), str(NATIVE / "crypto")],
    extra_compile_args=compile_flags(),
    libraries=["crypto"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
