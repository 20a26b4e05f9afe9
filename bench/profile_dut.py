"""perf profile of the DUT's CPU while the load generator runs one
scenario of `dataplane bench`:

    .venv/bin/python bench/profile_dut.py dataplane-xdp 1420 decap 1 /tmp/dut.data
    perf report -i /tmp/dut.data --no-children --sort sym -g none

The DUT's interfaces receive in NAPI threads on its CPU, as `dataplane
bench` does by default; a seventh argument `softirq` measures as `dataplane
bench --softirq` does.

(root; perf from linux-perf; `-e cpu-clock` works without hardware
counters, as on these VMs)."""
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dataplane.bench.packets import World
from dataplane.topology import Topology


def main() -> None:
    dut, size, direction, peers, out = sys.argv[1:6]
    napi_threads = sys.argv[6:7] != ["softirq"]
    with tempfile.TemporaryDirectory() as tmp, Topology("pf") as topo:
        w = World(topo, dut, int(peers), Path(tmp), pin=True, say=lambda s: None,
                  napi_threads=napi_threads)
        try:
            w.run(size, direction, 1.0, 0)  # warm-up
            res: dict = {}
            t = threading.Thread(target=lambda: res.update(w.run(size, direction, 6.0, 0)))
            t.start()
            time.sleep(0.5)
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-C", str(w.dut_cpu),
                            "-g", "-o", out, "--", "sleep", "4"], check=True)
            t.join()
            print(f"{dut} {size} B {direction}: {res['pps'] / 1e3:.1f} kpps, "
                  f"{res['cpu_ns_per_pkt']:.0f} ns/pkt on the DUT's core")
        finally:
            w.close()


if __name__ == "__main__":
    main()
