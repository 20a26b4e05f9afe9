"""The unit tests again, against the native module built with
AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize.py):
an out-of-bounds access, a use after free or undefined behaviour anywhere
the unit tests reach in native/ stops that run with a report. Needs gcc
and its sanitizer runtimes (scripts/setup.sh installs them)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sanitize.py"


def gcc_has(lib: str) -> bool:
    if not shutil.which("gcc"):
        return False
    out = subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                         text=True).stdout.strip()
    return os.path.isabs(out)


pytestmark = pytest.mark.skipif(bool(os.environ.get("DATAPLANE_SANITIZED")),
                                reason="this run is the sanitized one")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Where scripts/sanitize.py builds its copy (once for this module)."""
    if not gcc_has("libasan.so") or not gcc_has("libubsan.so"):
        pytest.skip("gcc's sanitizer runtimes are missing (run scripts/setup.sh)")
    return tmp_path_factory.mktemp("sanitized") / "tree"


def sanitize(tree: Path, *args: str) -> subprocess.CompletedProcess:
    reuse = ["--reuse"] if tree.exists() else []
    return subprocess.run([sys.executable, str(SCRIPT), "--keep", str(tree), *reuse, *args],
                          capture_output=True, text=True, timeout=1200)


def test_unit_tests_pass_under_asan_and_ubsan(tree):
    r = sanitize(tree)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    # it ran the tests (not zero of them) against an instrumented module
    assert " passed" in out and "no tests ran" not in out, out[-2000:]
    module = next((tree / "dataplane").glob("_native*.so"))
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True,
                          text=True, check=True).stdout
    assert "__asan_report_" in syms and "__ubsan_handle_" in syms


def test_a_planted_overflow_is_reported(tree, tmp_path):
    """The sanitized run is not blind: a test that has native code read
    one byte past a buffer (BLAKE2s over 4096 + 1 bytes of a 4096-byte
    one) fails with ASan's report."""
    planted = tmp_path / "test_planted.py"
    planted.write_text(
        "from dataplane._native import ffi, lib\n"
        "def test_reads_past_the_end():\n"
        "    buf, out = ffi.new('uint8_t[]', 4096), ffi.new('uint8_t[]', 32)\n"
        "    lib.dp_blake2s(out, 32, buf, 4096 + 1, ffi.NULL, 0)\n")
    r = sanitize(tree, str(planted))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "heap-buffer-overflow" in out, out[-3000:]
