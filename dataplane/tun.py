"""TUN devices: the kernel-visible end of the socket backend."""
from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04


def open_tun(name: str, offloads: bool = True, queues: int = 1) -> tuple[list[int], bool]:
    """Non-blocking fds for TUN interface `name`, one per queue (several
    queues: IFF_MULTI_QUEUE, the kernel spreads flows over them); the device
    disappears when the fds close. Also whether they carry the virtio-net
    header with checksum and TCP segmentation offloads: then the kernel
    hands over TCP super-packets of up to 64 KiB, which the data path
    segments after its lookups, instead of one packet per read."""
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offloads else 0) | \
        (IFF_MULTI_QUEUE if queues > 1 else 0)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            if offloads:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                except OSError:
                    pass  # the header stays, without offloads: one packet per read
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise OSError(e.errno, f"cannot create TUN device {name!r}: {e.strerror}") from None
    return fds, offloads
