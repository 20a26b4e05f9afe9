"""atheris harness for the AmneziaWG settings parser (dataplane/
obfuscation.py): what a wg-quick file, a UAPI `set` or an API PATCH hands
it, any text under any of the keys. Each input either is refused with an
ObfuscationError that names one of the keys given, or gives a profile that
passes its own check, survives the round trips through its UAPI settings,
its file lines and its JSON, and builds signature packets of the length
and leading bytes it promises and junk of the sizes it allows.

    .venv/bin/python fuzz/obfuscation_settings.py fuzz/corpus/obfuscation_settings -runs=100000
"""
import sys

import atheris

with atheris.instrument_imports():
    from dataplane.obfuscation import (KEYS, Obfuscation, ObfuscationError, chain_length,
                                       chain_prefix, parse_chain)


def settings_of(data: bytes) -> dict:
    """Text (the seeds: `Key = value` lines, as in an [Interface] section),
    or, from a first byte of 0, keys and values drawn by the fuzzer."""
    if data[:1] != b"\0":
        settings = {}
        for line in data.decode("utf-8", "replace").splitlines():
            key, eq, value = line.partition("=")
            if eq:
                settings[key.strip()] = value
        return settings
    fdp = atheris.FuzzedDataProvider(data[1:])
    settings = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        key = KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
        if fdp.ConsumeBool():
            key = key.lower()
        if fdp.ConsumeIntInRange(0, 7) == 0:
            settings[key] = fdp.ConsumeIntInRange(-2, 2 ** 33)  # JSON numbers
        else:
            settings[key] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    return settings


def test_one_input(data: bytes) -> None:
    settings = settings_of(data)
    try:
        obf = Obfuscation.from_settings(settings)
    except ObfuscationError as e:
        # (an unknown key is named by its first 24 characters)
        named = [k.lower() for k in settings]
        assert any(k.startswith(e.key.lower()) for k in named) or \
            (e.related or "").lower() in named, (settings, str(e))
        assert str(e).startswith(f"{e.key}: ")
        return
    obf.check()
    assert Obfuscation.from_settings(obf.settings(), lower=True) == obf, settings
    assert Obfuscation.from_settings(obf.as_json(), lower=True) == obf, settings
    lines = dict(line.split(" = ", 1) for line in obf.file_lines())
    assert Obfuscation.from_settings(lines) == obf, settings
    for spec, packet in zip([s for s in obf.signatures if s], obf.signature_packets()):
        tags = parse_chain(spec)
        assert len(packet) == chain_length(tags), (spec, len(packet))
        assert packet.startswith(chain_prefix(tags)), spec
    for junk in obf.junk_packets():
        assert obf.jmin <= len(junk) <= obf.jmax


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
