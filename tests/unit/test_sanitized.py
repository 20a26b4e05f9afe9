"""The unit tests again, against the native module built with
AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize.py):
an out-of-bounds access, a use after free or undefined behaviour anywhere
the unit tests reach in native/ stops that run with a report. And the
tests that run native code in several threads (the device's workers
against a churning control plane, the tables' readers, ...) against the
module built with ThreadSanitizer: a data race stops that run. Needs gcc
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


@pytest.fixture(scope="module")
def thread_tree(tmp_path_factory):
    """Where scripts/sanitize.py builds its ThreadSanitizer copy."""
    if not gcc_has("libtsan.so"):
        pytest.skip("gcc's ThreadSanitizer runtime is missing (run scripts/setup.sh)")
    return tmp_path_factory.mktemp("tsan") / "tree"


def sanitize(tree: Path, *args: str, sanitizers: str = "address,undefined"
             ) -> subprocess.CompletedProcess:
    reuse = ["--reuse"] if tree.exists() else []
    return subprocess.run([sys.executable, str(SCRIPT), "--sanitizers", sanitizers,
                           "--keep", str(tree), *reuse, *args],
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


def test_concurrency_tests_pass_under_tsan(thread_tree):
    r = sanitize(thread_tree, sanitizers="thread")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "WARNING: ThreadSanitizer" not in out, out[-6000:]
    # the workers-against-the-control-plane test was among them
    assert "test_concurrency.py" in out and " passed" in out, out[-2000:]
    module = next((thread_tree / "dataplane").glob("_native*.so"))
    syms = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True,
                          text=True, check=True).stdout
    assert "__tsan_" in syms


def test_a_planted_race_is_reported(thread_tree, tmp_path):
    """The TSan run is not blind: two threads checking counters against
    one replay window (which has a single writer by design) at once."""
    planted = tmp_path / "test_planted_race.py"
    planted.write_text(
        "import threading\n"
        "from dataplane._native import ffi, lib\n"
        "def test_two_writers():\n"
        "    w = ffi.new('uint8_t[]', lib.dp_replay_size(2048))\n"
        "    r = ffi.cast('struct dp_replay *', w)\n"
        "    assert lib.dp_replay_init(r, 2048) == 0\n"
        "    def hammer(first):\n"
        "        for c in range(first, first + 20000, 2):\n"
        "            lib.dp_replay_check(r, c)\n"
        "    ts = [threading.Thread(target=hammer, args=(s,)) for s in (0, 1)]\n"
        "    [t.start() for t in ts]\n"
        "    [t.join() for t in ts]\n")
    r = sanitize(thread_tree, str(planted), sanitizers="thread")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in out, out[-3000:]
    assert "dp_replay_check" in out, out[-3000:]
