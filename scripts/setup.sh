#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (as root) to a working install: system
# packages, a virtualenv in .venv, and dataplane with its test and bench
# extras; amneziawg-go, the AmneziaWG peer of the interop tests, built once
# from ../shared. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    build-essential pkg-config python3 python3-venv python3-dev
    libssl-dev openssl
    clang llvm libclang-rt-14-dev libbpf-dev libxdp-dev bpftool liburcu-dev
    iproute2 iputils-ping procps nftables wireguard-tools wireguard-go iperf3 tcpdump ethtool
    libndpi-bin tshark
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: installing system packages needs root (run as root or with sudo)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # tshark's package would otherwise ask whether non-root users may capture.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    # No recommends: wireguard-tools would pull a kernel image for its module.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# After our apt step, never beside it: build.sh runs apt-get itself for Go.
AWG_DIR=.cache/amneziawg-go
AWG_BUILD=../shared/peers/amneziawg-go/build.sh
if [ -x "$AWG_DIR/amneziawg-go" ]; then
    :
elif [ ! -f "$AWG_BUILD" ]; then
    echo "setup: $AWG_BUILD is missing: no amneziawg-go, its interop and DPI tests will skip"
else
    echo "setup: building amneziawg-go into $AWG_DIR (about 20 s; log in $AWG_DIR/build.log)"
    mkdir -p "$AWG_DIR"
    if ! bash "$AWG_BUILD" "$AWG_DIR" >"$AWG_DIR/build.log" 2>&1; then
        tail -n 20 "$AWG_DIR/build.log" >&2
        echo "setup: building amneziawg-go failed (above; all of it in $AWG_DIR/build.log)" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: building and installing dataplane (native core included)"
.venv/bin/python -m pip install -q -e '.[test,bench]'
.venv/bin/python -c 'import dataplane.crypto as c; print("setup: ok; crypto implementations on this CPU:", ", ".join(c.implementations()))'
