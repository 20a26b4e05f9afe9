"""Start `dataplane up` in a namespace and wait until it serves (the demo,
the benchmarks and the tests all need this)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from dataplane.daemon import uapi_socket_in_use
from dataplane.topology import Topology, TopologyError
from dataplane.wireguard_go import UAPI_DIR


def dataplane_exe() -> str:
    """The `dataplane` command of this installation."""
    beside = Path(sys.executable).parent / "dataplane"
    return str(beside) if beside.exists() else (shutil.which("dataplane") or str(beside))


def start_daemon(topo: Topology, ns: str, conf: Path, log: Optional[Path] = None,
                 env: Optional[dict] = None, timeout: float = 20) -> subprocess.Popen:
    """`dataplane up conf` in ns, returned once its UAPI socket exists."""
    out = log.open("w") if log else subprocess.DEVNULL
    proc = topo.popen(ns, [dataplane_exe(), "up", str(conf)], stdout=out, stderr=out, env=env)
    sock = UAPI_DIR / f"{conf.stem}.sock"
    deadline = time.monotonic() + timeout
    # the socket answering, not just existing: a daemon killed with -9
    # leaves its socket file behind
    while not uapi_socket_in_use(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            detail = log.read_text()[-2000:] if log else ""
            raise TopologyError(f"dataplane up {conf.name} did not come up. {detail}".strip())
        time.sleep(0.05)
    return proc
