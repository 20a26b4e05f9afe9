"""perf profile of the DUT's CPU while the load generator runs one
scenario of `dataplane bench`:

    .venv/bin/python bench/profile_dut.py dataplane-xdp 1420 decap 1 /tmp/dut.data
    perf report -i /tmp/dut.data --no-children --sort sym -g none

The DUT's interfaces receive in NAPI threads on its CPU, as `dataplane
bench` does by default; further arguments: `softirq` measures as `dataplane
bench --softirq` does, `realtime=N` as `dataplane bench --realtime N`.

(root; perf from linux-perf; `-e cpu-clock` works without hardware
counters, as on these VMs). PF_EVENT=EVENT records another event instead,
e.g. a uprobe that shows the burst sizes the workers open:

    perf probe -x dataplane/_native.abi3.so 'dp_aead_open_batch n=%si:u64'
    PF_EVENT=probe__native:dp_aead_open_batch .venv/bin/python bench/profile_dut.py \
        dataplane-xdp 1420 decap 1 /tmp/probe.data
    perf script -i /tmp/probe.data -F trace | grep -o 'n=[0-9]*' | sort | uniq -c"""
import os
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
    extra = sys.argv[6:]
    napi_threads = "softirq" not in extra
    realtime = next((int(a.split("=", 1)[1]) for a in extra if a.startswith("realtime=")), 0)
    with tempfile.TemporaryDirectory() as tmp, Topology("pf") as topo:
        w = World(topo, dut, int(peers), Path(tmp), pin=True, say=lambda s: None,
                  napi_threads=napi_threads, realtime=realtime)
        try:
            w.run(size, direction, 1.0, 0)  # warm-up
            res: dict = {}
            t = threading.Thread(target=lambda: res.update(w.run(size, direction, 6.0, 0)))
            t.start()
            time.sleep(0.5)
            event = os.environ.get("PF_EVENT", "cpu-clock")
            subprocess.run(["perf", "record", "-q", "-e", event, "-C", str(w.dut_cpu),
                            "-g", "-o", out, "--", "sleep", "4"], check=True)
            t.join()
            print(f"{dut} {size} B {direction}: {res['pps'] / 1e3:.1f} kpps, "
                  f"{res['cpu_ns_per_pkt']:.0f} ns/pkt on the DUT's core")
        finally:
            w.close()


if __name__ == "__main__":
    main()
