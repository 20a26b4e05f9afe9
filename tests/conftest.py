import pytest

from dataplane import crypto

REASONS = {
    "avx2": "this CPU has no AVX2",
    "avx512": "this CPU lacks AVX-512F/VL/BW; the AVX-512 build runs where the CPU has them, "
              "and its 16-lane ChaCha20 / 8-lane Poly1305 logic is tested here as avx512-on-avx2",
    "avx512-on-avx2": "this CPU has no AVX2",
    "avx512-ifma": "this CPU lacks AVX-512 IFMA (or AVX-512F/VL/BW); the IFMA build runs where "
                   "the CPU has it, and its radix-2^44 Poly1305 logic is tested here as "
                   "avx512-ifma-emulated",
    "avx512-ifma-emulated": "this CPU has no AVX2",
}


@pytest.fixture(params=crypto.all_implementations(include_test=True))
def impl(request):
    """Every built-in implementation in turn, forced for the test's duration."""
    name = request.param
    if name not in crypto.implementations(include_test=True):
        pytest.skip(REASONS.get(name, f"this CPU cannot run {name}"))
    with crypto.using(name):
        yield name
