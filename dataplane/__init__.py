"""dataplane: a kernel-bypass, WireGuard-compatible data plane for VPN exit nodes."""

__version__ = "0.1.0"
