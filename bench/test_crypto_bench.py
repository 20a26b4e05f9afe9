"""Micro benchmarks of dataplane.crypto through its Python API, so they
include the binding's per-call overhead (`dataplane bench crypto` measures
the C loops alone). Not part of the test run; run them with `pytest bench/`.

Each benchmark is parametrised over every implementation this CPU runs and
grouped by operation and shape, so pytest-benchmark lists the
implementations of one shape side by side.
"""
import os

import pytest

from dataplane import crypto

IMPLEMENTATIONS = crypto.implementations()
# (size, batch) shapes: small packets batched, and MTU-sized ones alone and batched.
BATCH_SHAPES = [(64, 32), (1420, 1), (1420, 32)]
SINGLE_SIZES = [64, 1420]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    with crypto.using(request.param):
        yield request.param


def _messages(size, batch):
    """Distinct random keys, counters and plaintexts, like packets of
    different peers."""
    keys = [os.urandom(crypto.KEY_BYTES) for _ in range(batch)]
    counters = [int.from_bytes(os.urandom(8), "little") for _ in range(batch)]
    plaintexts = [os.urandom(size) for _ in range(batch)]
    return keys, counters, plaintexts


def _label(benchmark, op, size, batch):
    benchmark.group = f"{op} {size} B x {batch}"
    benchmark.extra_info.update(size=size, batch=batch, bytes_per_round=size * batch)


@pytest.mark.parametrize("size", SINGLE_SIZES)
def test_seal(benchmark, impl, size):
    (key,), (counter,), (plaintext,) = _messages(size, 1)
    _label(benchmark, "seal", size, 1)
    sealed = benchmark(crypto.seal, key, counter, plaintext)
    assert crypto.open(key, counter, sealed) == plaintext


@pytest.mark.parametrize("size", SINGLE_SIZES)
def test_open(benchmark, impl, size):
    (key,), (counter,), (plaintext,) = _messages(size, 1)
    sealed = crypto.seal(key, counter, plaintext)
    _label(benchmark, "open", size, 1)
    assert benchmark(crypto.open, key, counter, sealed) == plaintext


@pytest.mark.parametrize("size,batch", BATCH_SHAPES)
def test_seal_batch(benchmark, impl, size, batch):
    keys, counters, plaintexts = _messages(size, batch)
    _label(benchmark, "seal_batch", size, batch)
    sealed = benchmark(crypto.seal_batch, keys, counters, plaintexts)
    assert crypto.open_batch(keys, counters, sealed) == plaintexts


@pytest.mark.parametrize("size,batch", BATCH_SHAPES)
def test_open_batch(benchmark, impl, size, batch):
    keys, counters, plaintexts = _messages(size, batch)
    sealed = crypto.seal_batch(keys, counters, plaintexts)
    _label(benchmark, "open_batch", size, batch)
    assert benchmark(crypto.open_batch, keys, counters, sealed) == plaintexts
