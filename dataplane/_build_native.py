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

# The Python-visible API: every native/<part>/dp_*.h, each self-contained
# (it may use only standard C types and its own declarations). The crypto
# header goes first so that others may use its constants.
CDEF_HEADERS = sorted(NATIVE.glob("*/dp_*.h"), key=lambda p: (p.parent.name != "crypto", str(p)))
SOURCES = sorted(NATIVE.glob("*/*.c"))
# every native/<part>/ (internal headers too, e.g. native/xsk/xsk_port.h)
INCLUDE_DIRS = sorted({str(p.parent) for p in SOURCES} | {str(p.parent) for p in CDEF_HEADERS}
                      | {str(ROOT)})

_DEFINE_INT = re.compile(r"^#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*(/\*.*\*/)?\s*$")


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
    if sanitizers():
        # FORTIFY's checked copies would hide the copies from ASan's
        # interceptors; frame pointers give whole stacks in reports
        flags = [f for f in flags if not f.startswith(("-D_FORTIFY_SOURCE", "-O"))]
        flags += ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitizers()}",
                  "-fno-sanitize-recover=all"]
        if "thread" in sanitizers().split(","):
            # gcc says (-Wtsan) that TSan does not model atomic_thread_fence,
            # which the home-made reclamation of allowed IPs and the outer
            # routes' sequence lock use (issue 20 moves the first to
            # liburcu): races it orders are not seen through them
            flags.append("-Wno-tsan")
    return flags


def sanitizers() -> str:
    """DATAPLANE_SANITIZE: the sanitizers to build the module with, with
    gcc (address,undefined or thread); Python then needs the sanitizer's
    runtime preloaded (libasan.so or libtsan.so: scripts/sanitize.py does
    all of this)."""
    return os.environ.get("DATAPLANE_SANITIZE", "")


def link_flags() -> list:
    return [f"-fsanitize={sanitizers()}"] if sanitizers() else []


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_from_header(h) for h in CDEF_HEADERS))

ffibuilder.set_source(
    "dataplane._native",
    "\n".join(f'#include "{h.relative_to(ROOT)}"' for h in CDEF_HEADERS),
    sources=[str(p.relative_to(ROOT)) for p in SOURCES],
    include_dirs=INCLUDE_DIRS,
    extra_compile_args=compile_flags(),
    extra_link_args=link_flags(),
    # libcrypto for the OpenSSL comparison; libbpf and libxdp for the XDP
    # programs' loader and AF_XDP sockets
    libraries=["crypto", "xdp", "bpf"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
