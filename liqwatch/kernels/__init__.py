"""numba kernels: small pure functions over contiguous arrays (arrays, prices, market, health, stress,
cascade), each with a plain-Python reference in tests/reference.py."""
