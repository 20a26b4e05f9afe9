"""`dataplane bench crypto` end to end on tiny settings: the command runs,
the JSON rows are well formed and internally consistent. No speed is
asserted."""
import json

from dataplane import crypto
from dataplane.cli import main

FIELDS = {"impl", "size", "batch", "bytes_per_s", "ns_per_msg", "openssl_bytes_per_s",
          "ratio_vs_openssl"}


def test_bench_crypto_writes_rows_for_every_implementation(tmp_path, capsys):
    out = tmp_path / "crypto.json"
    rc = main(["bench", "crypto", "--size", "64", "--size", "1420", "--batch", "1",
               "--batch", "32", "--seconds", "0.01", "--repeat", "1", "--op", "both",
               "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    impls = set(crypto.implementations())
    assert {(r["impl"], r["op"], r["size"], r["batch"]) for r in rows} == {
        (i, op, s, b) for i in impls for op in ("seal", "open") for s in (64, 1420)
        for b in (1, 32)}
    for r in rows:
        assert FIELDS <= r.keys()
        assert r["bytes_per_s"] > 0 and r["openssl_bytes_per_s"] > 0
        # the derived figures agree with each other
        assert abs(r["bytes_per_s"] - r["size"] * 1e9 / r["ns_per_msg"]) / r["bytes_per_s"] < 1e-6
        assert abs(r["ratio_vs_openssl"] - r["bytes_per_s"] / r["openssl_bytes_per_s"]) < 1e-3
    table = capsys.readouterr().out
    assert "vs OpenSSL" in table
    assert all(name in table for name in impls)


def test_bench_crypto_rejects_unknown_implementation(capsys):
    rc = main(["bench", "crypto", "--impl", "nonesuch", "--seconds", "0.01"])
    assert rc != 0
    assert "nonesuch" in capsys.readouterr().err
