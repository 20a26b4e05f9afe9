"""An API served in-process over a real native device (no root, no TUN):
the device writes inner packets to /dev/null and sends on a loopback UDP
socket. The aiohttp server runs on its own event loop in a thread, on a
unix socket, as the daemon serves it; tests talk to it with
dataplane.client, as a control plane would."""
from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
from pathlib import Path

from dataplane import crypto
from dataplane.api.controller import Controller
from dataplane.api.metrics import Metrics
from dataplane.api.server import ApiServer
from dataplane.client import Client
from dataplane.device import Device
from dataplane.interface import Interface
from dataplane.keys import PrivateKey


class ApiWorld:
    def __init__(self, max_peers: int = 1024, slots_log2: int = 12, max_keypairs: int = 0):
        null = os.open("/dev/null", os.O_WRONLY)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.device = Device([null], [os.dup(self.udp.fileno())], [-1], 1420,
                             max_peers=max_peers, index_table_log2=slots_log2,
                             max_keypairs=max_keypairs)
        self.key = PrivateKey.generate()
        self.iface = Interface("apitest", self.key, self.device, self.udp.getsockname()[1])
        self.route_calls: list[tuple[list, list]] = []
        self.listen_ports: list[int] = []
        self.fwmarks: list[int] = []
        self.ctrl = Controller(self.iface, lambda a, r: self.route_calls.append((a, r)),
                               self.info, self.listen_ports.append, self.fwmarks.append)
        status = {"xdp": None, "backend": "socket", "crypto": crypto.active()}
        self.metrics = Metrics("apitest", lambda: self.iface, lambda: status,
                               lambda: dict(self.ctrl.counters))
        self.dir = tempfile.TemporaryDirectory(prefix="dp-api-")
        self.path = Path(self.dir.name) / "apitest.api.sock"
        self.server = ApiServer(self.ctrl, self.metrics, self.path)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("the API server did not start")
        self.client = Client(self.path)

    def info(self) -> dict:
        key = self.iface.private_key
        return {"name": "apitest", "public_key": key.public_key().base64() if key else None,
                "listen_port": self.iface.listen_port, "fwmark": self.iface.fwmark,
                "backend": "socket", "workers": 1, "peers": len(self.iface.peers),
                "max_peers": self.device.max_peers, "status": {}}

    def call(self, fn, *args):
        """Run fn on the server's loop (where the controller lives)."""
        async def go():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def call_async(self, coro_fn, *args):
        """Await coro_fn(*args) on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop).result(10)

    def close(self) -> None:
        self.client.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.device.close()
        self.udp.close()
        self.dir.cleanup()
