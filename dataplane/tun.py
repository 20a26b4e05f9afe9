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
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04


def open_tun(name: str, offloads: bool = True) -> tuple[int, bool]:
    """A non-blocking TUN fd for interface `name` (the device disappears
    when the fd closes), and whether it carries the virtio-net header with
    checksum and TCP segmentation offloads: then the kernel hands over TCP
    super-packets of up to 64 KiB, which the data path segments after its
    lookups, instead of one packet per read."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offloads else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise OSError(e.errno, f"cannot create TUN device {name!r}: {e.strerror}") from None
    if offloads:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            pass  # the header stays, without offloads: one packet per read
    return fd, offloads
