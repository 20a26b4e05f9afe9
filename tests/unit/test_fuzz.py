"""The fuzz harnesses (fuzz/) run in CI: a short run of each from its seed
corpus, under AddressSanitizer and UndefinedBehaviorSanitizer for the C
ones, must find nothing; and the classifier's harness finds a planted bug
(a transport message of exactly 32 + S4 bytes taken for junk) from its
seeds, so a clean run means something. Longer runs: fuzz/run.py
--seconds N."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("fuzz_run", ROOT / "fuzz" / "run.py")
fuzz_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz_run)


@pytest.fixture(scope="module", autouse=True)
def toolchain():
    assert shutil.which("clang"), "clang is missing: run ./scripts/setup.sh"
    pytest.importorskip("atheris", reason="atheris is missing: run ./scripts/setup.sh")


@pytest.mark.parametrize("name", sorted(fuzz_run.HARNESSES))
def test_a_short_run_finds_nothing(name):
    runs = 1_000_000 if fuzz_run.HARNESSES[name] else 50_000
    status, done, tail = fuzz_run.run(name, runs, None)
    assert status == 0, tail
    assert done == runs, tail


def test_the_classifier_harness_finds_a_planted_bug(tmp_path):
    wire = (ROOT / "native" / "wg" / "wire.c").read_text()
    planted = wire.replace("k < 3 ? len != need : len < need", "k < 3 ? len != need : len <= need")
    assert planted != wire, "the line the bug is planted in has changed"
    (tmp_path / "wire.c").write_text(planted)
    exe = tmp_path / "wire_classify"
    subprocess.run(["clang", *fuzz_run.CFLAGS, str(ROOT / "fuzz" / "wire_classify.c"),
                    str(tmp_path / "wire.c"), "-o", str(exe)], check=True)
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run([str(exe), str(tmp_path / "corpus"),
                           str(ROOT / "fuzz" / "corpus" / "wire_classify"), "-runs=5000000",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "deadly signal" in proc.stderr or "ERROR" in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.glob("crash-*")), "libFuzzer wrote the input that found it"
