"""Compiles the XDP programs ahead of time: every ebpf/*.bpf.c into
<out_dir>/<name>.bpf.o with clang for the BPF target, with BTF (-g) for
libbpf. The package build puts them in dataplane/bpf/; nothing is compiled
on an exit node.

    python ebpf/build.py [OUT_DIR]        (default: dataplane/bpf)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

EBPF_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = EBPF_DIR.parent / "dataplane" / "bpf"
# Debian's multiarch directory holds <asm/types.h>, which <linux/types.h> needs.
MULTIARCH_INCLUDE = "/usr/include/x86_64-linux-gnu"
CLANG_FLAGS = (
    "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
    "-I", str(EBPF_DIR), "-I", MULTIARCH_INCLUDE,
)


class BuildError(RuntimeError):
    """clang is missing or refused a program."""


def sources() -> list[Path]:
    return sorted(EBPF_DIR.glob("*.bpf.c"))


def object_name(source: Path) -> str:
    """wan.bpf.c -> wan.bpf.o"""
    return source.name[: -len(".c")] + ".o"


def find_clang() -> str:
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        raise BuildError("clang not found: the XDP programs are compiled with clang "
                         "(apt-get install clang, or ./scripts/setup.sh; "
                         "or set CLANG=/path/to/clang)")
    return clang


def compile_one(source: Path, out: Path, *, clang: Optional[str] = None,
                extra_flags: Sequence[str] = ()) -> Path:
    """Compiles one BPF C file into out (written whole or not at all)."""
    clang = clang or find_clang()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        cmd = [clang, *CLANG_FLAGS, *extra_flags, "-c", str(source), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"clang failed on {source} (exit {proc.returncode}):\n"
                             f"{' '.join(cmd)}\n{proc.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def build(out_dir, *, clang: Optional[str] = None,
          progress: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Compiles every ebpf/*.bpf.c into out_dir; returns the objects' paths."""
    out_dir = Path(out_dir)
    clang = clang or find_clang()
    built = []
    for source in sources():
        out = out_dir / object_name(source)
        if progress:
            progress(f"ebpf: {source.name} -> {out}")
        built.append(compile_one(source, out, clang=clang))
    return built


def main(argv: Sequence[str]) -> int:
    out_dir = Path(argv[0]) if argv else DEFAULT_OUT_DIR
    try:
        built = build(out_dir, progress=print)
    except BuildError as e:
        print(f"ebpf: {e}", file=sys.stderr)
        return 1
    print(f"ebpf: built {len(built)} object(s) in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
