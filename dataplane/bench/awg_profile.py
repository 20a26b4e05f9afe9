"""The AmneziaWG profile of `dataplane bench --obfuscation`, and which DUTs
speak it.

The default is a realistic AmneziaWG 2.0 profile: junk before every
handshake, padding on all four message kinds (S4 on every transport
message), header ranges (a fresh type field for every message) and one
signature packet. `--obfuscation-profile FILE` takes another one from the
`Key = value` lines of a file: an AmneziaWG client or server file works as
it is (its other keys and its sections are ignored).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dataplane.obfuscation import KEYS, Obfuscation, ObfuscationError

DEFAULT_PROFILE = Obfuscation.from_settings({
    "Jc": 4, "Jmin": 40, "Jmax": 70, "S1": 15, "S2": 18, "S3": 20, "S4": 8,
    "H1": "471800590-471800690", "H2": "1246894907-1246895000",
    "H3": "923637689-923637690", "H4": "1769581055-1769582054",
    "I1": "<b 0xc70000000108><r 8><rc 8><t>"})

# The DUTs that can be given a profile; the others run plain in an
# obfuscated run: wireguard-go cannot speak it, and xsk-forward and
# no-tunnel forward the generator's plain UDP (no WireGuard at all).
PROFILE_DUTS = ("dataplane-socket", "dataplane-xdp", "amneziawg-go")
# Suffix of an obfuscated variant's label, where the DUT's name does not
# say it (`dataplane-xdp+awg`)
AWG_SUFFIX = "+awg"
MODES = ("off", "on", "both")


def label(dut: str, obfuscated: bool) -> str:
    """The name a DUT's rows go by: `dataplane-xdp`, `dataplane-xdp+awg`."""
    return f"{dut}{AWG_SUFFIX}" if obfuscated and dut != "amneziawg-go" else dut


def variants(duts: list[str], mode: str) -> list[tuple[str, bool]]:
    """(dut, obfuscated) for every world of a run: `on` gives every DUT that
    speaks AmneziaWG the profile; `both` measures the dataplane DUTs both
    ways (amneziawg-go only with it, as it is otherwise wireguard-go)."""
    out = []
    for dut in duts:
        speaks = dut in PROFILE_DUTS and mode != "off"
        if mode == "both" and speaks and dut != "amneziawg-go":
            out.append((dut, False))
        out.append((dut, speaks))
    return out


def read_profile(path: Path) -> Obfuscation:
    """The AmneziaWG keys among a file's `Key = value` lines; everything
    else (sections, other keys, comments) is ignored. Errors name the file,
    the line and the key."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    settings, lines = {}, {}
    keys = {k.lower(): k for k in KEYS}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        key, eq, value = line.partition("=")
        if not eq or key.strip().lower() not in keys:
            continue
        key = keys[key.strip().lower()]
        settings[key], lines[key] = value.strip(), n
    try:
        profile = Obfuscation.from_settings(settings)
    except ObfuscationError as e:
        raise ValueError(f"{path}:{lines.get(e.key, '?')}: {e}") from None
    if profile.profile_is_plain:
        raise ValueError(f"{path}: no S1..S4 or H1..H4 that differ from plain WireGuard: "
                         f"nothing to measure")
    return profile


def profile_arg(text: str) -> Obfuscation:
    """argparse type of --obfuscation-profile: `default` or a file."""
    if text == "default":
        return DEFAULT_PROFILE
    try:
        return read_profile(Path(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
