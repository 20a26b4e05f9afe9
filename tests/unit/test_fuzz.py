"""The fuzz harnesses (fuzz/) run in CI: a short run of each from its seed
corpus, under AddressSanitizer and UndefinedBehaviorSanitizer for the C
ones, must find nothing; and each C harness finds a bug planted in the
code it checks from its seeds, so a clean run means something. Longer runs: fuzz/run.py
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
    """A million inputs or 30 seconds, whichever comes first (the
    allowed-IPs model is slow on the long inputs its corpus grows)."""
    runs = 1_000_000 if fuzz_run.HARNESSES[name] else 50_000
    status, done, tail = fuzz_run.run(name, runs, 30)
    assert status == 0, tail
    assert min(runs, 20_000) <= done <= runs, tail


# (harness, the source it links, the line as it is, the line with a bug in it)
PLANTED = {
    # a transport message of exactly 32 + S4 bytes taken for junk
    "wire_classify": ("native/wg/wire.c", "k < 3 ? len != need : len < need",
                      "k < 3 ? len != need : len <= need"),
    # a counter exactly at the window's edge refused
    "replay_window": ("native/tables/replay.c", "if (__builtin_expect(next + window < r->counter",
                      "if (__builtin_expect(next + window <= r->counter"),
    # a branch node (no owner) on the way down forgets the owner found above it
    "allowed_ips": ("native/tables/allowedips.c",
                    "if (peer != DP_PEER_NONE)\n            found = peer;",
                    "found = peer;"),
    # after a rebuild, indices away from their home entry cannot be found
    "index_table": ("native/tables/indextable.c", "if (distance > longest)",
                    "if (distance < longest)"),
    # a segment one byte over the mtu written into the caller's buffer
    "offload_roundtrip": ("native/wg/offload.c", "hdr > len || hdr + mss > mtu",
                          "hdr > len || hdr + mss > mtu + 1"),
    # a packet's inner source checked against its destination's owner
    "device_rx": ("native/wg/datapath.c",
                  "dp_allowedips_lookup(d->allowedips, family, src) != kp->peer_id",
                  "dp_allowedips_lookup(d->allowedips, family, dst) != kp->peer_id"),
    # the WAN XDP program takes obfuscated transport of exactly 32 + S4
    # bytes for junk (the workers read it as transport)
    "wan_xdp": ("ebpf/wan.bpf.c", "k < 3 ? msg_len != pad + base : msg_len < pad + base",
                "k < 3 ? msg_len != pad + base : msg_len <= pad + base"),
    # a line's prefixes after the 16th not put in the repeats table
    "bulk_ndjson": ("native/wg/bulk.c", "if (r->hashed_line == op)",
                    "if (r->hashed_line != op)"),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_harness_finds_a_planted_bug(tmp_path, name):
    """A clean run means something: from its seeds, each C harness finds a
    one-line bug planted in the code it checks."""
    source, line, bug = PLANTED[name]
    text = (ROOT / source).read_text()
    planted = text.replace(line, bug)
    assert planted != text, f"the line the bug is planted in has changed in {source}"
    copy = tmp_path / Path(source).name
    copy.write_text(planted)
    argv = fuzz_run.build(name, tmp_path / "out", {source: copy})
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run([*argv, str(tmp_path / "corpus"),
                           str(ROOT / "fuzz" / "corpus" / name), "-runs=5000000",
                           f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "deadly signal" in proc.stderr or "ERROR" in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.glob("crash-*")), "libFuzzer wrote the input that found it"
